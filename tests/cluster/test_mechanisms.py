"""The small mechanisms on their own: suspicion timers, the retransmit queue, the probe order."""

from __future__ import annotations

from random import Random

import pytest

from cluster.broadcast import BroadcastQueue
from cluster.membership import IndexedSet
from cluster.messages import MemberState
from cluster.probe import ProbeRing
from cluster.suspicion import Suspicion


def new_suspicion(*, needed: int = 2) -> Suspicion:
    return Suspicion(accuser="a", incarnation=3, needed=needed, min_timeout=4.0, max_timeout=24.0, started_at=100.0)


def test_a_suspicion_starts_at_the_max_and_confirmations_pull_it_to_the_min() -> None:
    suspicion = new_suspicion()
    assert suspicion.deadline == 124.0
    assert suspicion.confirm("b")
    assert suspicion.deadline == pytest.approx(100.0 + 24.0 - 20.0 * 0.630929, abs=1e-3)  # log 2 / log 3
    assert suspicion.confirm("c")
    assert suspicion.deadline == 104.0
    assert suspicion.confirmations == 2


@pytest.mark.parametrize(
    ("confirmers", "counted"),
    [
        (["a"], 0),  # the accuser never confirms its own accusation
        (["b", "b", "b"], 1),  # nor does anyone twice
        (["b", "c", "d", "e"], 2),  # counting stops at the number needed
    ],
)
def test_only_new_independent_confirmations_count(confirmers: list[str], counted: int) -> None:
    suspicion = new_suspicion()
    results = [suspicion.confirm(member) for member in confirmers]
    assert suspicion.confirmations == counted
    assert results.count(True) == counted


def test_a_suspicion_that_expects_no_confirmations_runs_for_the_min() -> None:
    assert new_suspicion(needed=0).deadline == 104.0


def test_the_queue_sends_fewest_transmits_then_largest_then_newest() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    queue.enqueue("small-old", b"s" * 10)
    queue.enqueue("big", b"b" * 30)
    queue.enqueue("small-new", b"n" * 10)
    assert queue.take(1000, member_count=10) == [b"b" * 30, b"n" * 10, b"s" * 10]
    queue.enqueue("fresh", b"f" * 5)
    # The fresh one has 0 transmits; the others 1 each, in the same size-then-age order.
    assert queue.take(1000, member_count=10) == [b"f" * 5, b"b" * 30, b"n" * 10, b"s" * 10]


def test_a_newer_update_about_a_node_replaces_the_queued_one() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    queue.enqueue("x", b"suspect x")
    queue.take(1000, member_count=10)
    queue.enqueue("x", b"alive x, incarnation 2")
    assert len(queue) == 1
    assert queue.take(1000, member_count=10) == [b"alive x, incarnation 2"]


def test_updates_are_dropped_after_the_retransmit_limit() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    queue.enqueue("x", b"update")
    sent = [queue.take(1000, member_count=10) for _ in range(10)]  # limit for N=10: 8
    assert sent == [[b"update"]] * 8 + [[], []]
    assert not queue.pending_about("x")


def test_take_fills_the_space_it_is_given_and_skips_what_does_not_fit() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    for name, size in (("a", 40), ("b", 30), ("c", 20), ("d", 10)):
        queue.enqueue(name, bytes(size))
    assert [len(p) for p in queue.take(65, member_count=10)] == [40, 20]
    assert queue.take(5, member_count=10) == []
    # The ones left out are now the least sent, so they go first next time.
    assert [len(p) for p in queue.take(45, member_count=10)] == [30, 10]


class _State:
    def __init__(self, state: MemberState) -> None:
        self.state = state


def test_the_probe_ring_visits_every_live_member_once_per_pass() -> None:
    ring = ProbeRing(Random(1))
    members = {name: _State(MemberState.ALIVE) for name in "abcdef"}
    members["c"] = _State(MemberState.DEAD)
    members["d"] = _State(MemberState.SUSPECT)
    for name in members:
        ring.add(name)
    first_pass = [ring.next_target(members) for _ in range(5)]
    second_pass = [ring.next_target(members) for _ in range(5)]
    assert sorted(first_pass) == sorted(second_pass) == ["a", "b", "d", "e", "f"]  # suspects too, not the dead
    assert first_pass != second_pass  # reshuffled between passes (seeded)


def test_the_probe_ring_forgets_removed_members_and_handles_none_left() -> None:
    ring = ProbeRing(Random(2))
    members = {"a": _State(MemberState.ALIVE)}
    ring.add("a")
    ring.add("gone")
    assert [ring.next_target(members) for _ in range(3)] == ["a", "a", "a"]
    assert ring.next_target({}) is None


def test_indexed_set_samples_without_the_excluded_item() -> None:
    items = IndexedSet()
    for name in "abcd":
        items.add(name)
    items.discard("b")
    items.discard("zz")
    assert len(items) == 3 and "b" not in items
    rng = Random(3)
    for _ in range(50):
        picked = items.sample(rng, 2, exclude="a")
        assert len(picked) == 2 and "a" not in picked and len(set(picked)) == 2
    assert sorted(items.sample(rng, 10)) == ["a", "c", "d"]
