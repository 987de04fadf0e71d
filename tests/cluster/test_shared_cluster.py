"""The shared map carried by real SwimNode cores: step by step on the instant wire, then many nodes on the
simulated network (cluster.testing) with partitions, crashes and restarts."""

from __future__ import annotations

import dataclasses
from random import Random

import pytest

from cluster import SharedChanged, SharedEntry, SwimConfig, SwimNode
from cluster.broadcast import BroadcastQueue, retransmit_limit
from cluster.envelope import Channel
from cluster.messages import PushPull, Shared
from cluster.testing import SimCluster

from .helpers import KEYRING, Wire, address_of, inspect, started, wired

STRIPE = "account_queue:https://api.stripe.com"
GITHUB = "account_queue:https://api.github.com"
LAN = SwimConfig.lan()
# Push-pull out of the way (its first round comes at a random phase within the interval: 11 days): whatever
# spreads, spreads by gossip.
GOSSIP_ONLY = dataclasses.replace(LAN, push_pull_interval=1e6, reconnect_interval=1e6)


def shared_messages(wire: Wire, *, source: str | None = None) -> list[Shared]:
    return [
        message
        for delivery in wire.delivered
        if source is None or delivery.source == source
        for message in delivery.messages
        if isinstance(message, Shared)
    ]


def test_a_local_set_is_reported_and_rides_the_next_datagrams_to_every_member() -> None:
    wire = wired("a", "b", "c")
    a = wire.nodes["a"]
    written = a.set_shared(STRIPE, True, wall_ms=1000)
    assert written == SharedEntry(key=STRIPE, value=True, wall_ms=1000, node="a")
    assert a.drain_actions() == [SharedChanged(written)]  # news for the shell, nothing sent yet
    wire.run_until(1.0)
    assert shared_messages(wire, source="a")  # it went out as gossip...
    for name in "bc":
        assert wire.nodes[name].shared().entry(STRIPE) == written  # ...and arrived as the same entry


def test_a_newer_write_replaces_the_queued_one_about_the_same_key() -> None:
    wire = wired("a", "b")
    a = wire.nodes["a"]
    a.set_shared(STRIPE, 1, wall_ms=1000)
    a.set_shared(STRIPE, 2, wall_ms=1000)
    a.set_shared(GITHUB, "x", wall_ms=1000)
    wire.run_until(2.0)
    sent = shared_messages(wire, source="a")
    assert {message.entry.value for message in sent if message.entry.key == STRIPE} == {2}  # 1 never left
    assert {message.entry.key for message in sent} == {STRIPE, GITHUB}
    assert wire.nodes["b"].shared().items() == [(GITHUB, "x"), (STRIPE, 2)]


def test_a_key_never_displaces_a_member_update_whatever_the_node_is_called() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    queue.enqueue(STRIPE, b"alive of a node whose id looks like a key")
    queue.enqueue(("shared", STRIPE), b"a write to the key")
    assert len(queue) == 2


def test_a_member_passes_on_what_it_learned() -> None:
    """Epidemic spread: the writer's neighbour re-gossips the entry, as it would a membership update."""
    wire = wired("a", "b", "c", "d")
    wire.nodes["a"].set_shared(STRIPE, True, wall_ms=1000)
    wire.run_until(2.0)
    relayed = {delivery.source for delivery in wire.delivered for m in delivery.messages if isinstance(m, Shared)}
    assert relayed > {"a"}


def test_an_older_write_from_a_peer_changes_nothing_and_is_not_passed_on() -> None:
    wire = wired("a", "b")
    a, b = wire.nodes["a"], wire.nodes["b"]
    a.set_shared(STRIPE, "new", wall_ms=2000)
    wire.run_until(2.0)
    wire.delivered.clear()
    version = b.shared().version
    b.set_shared(STRIPE, "newer", wall_ms=1)  # b's clock is far behind, yet its write is newer than what it saw
    assert b.shared().entry(STRIPE) == SharedEntry(key=STRIPE, value="newer", wall_ms=2001, node="b")
    wire.run_until(4.0)
    assert a.shared().get(STRIPE) == "newer" and b.shared().version == version + 1


def test_restored_entries_are_held_from_the_start_without_events_and_bad_ones_are_counted() -> None:
    saved = [
        SharedEntry(key=STRIPE, value=True, wall_ms=5, node="a"),
        SharedEntry(key="", value=True, wall_ms=5, node="a"),  # a corrupt record: dropped, counted
    ]
    node = SwimNode(
        node_id="a",
        address=address_of("a"),
        config=LAN,
        rng=Random(1),
        keyring=KEYRING,
        epoch=2,
        now=0.0,
        shared_entries=saved,
    )
    assert node.shared().items() == [(STRIPE, True)]
    assert node.drain_actions() == []
    stats = node.statistics()
    assert (stats.shared_entries, stats.shared_refused) == (1, 1)
    assert "1 shared" in repr(node)


def test_a_push_pull_carries_the_whole_map_both_ways() -> None:
    wire = Wire()
    a, b = wire.add("a"), wire.add("b")
    a.set_shared(STRIPE, True, wall_ms=10)
    b.set_shared(GITHUB, False, wall_ms=10)
    a.drain_actions(), b.drain_actions()
    a.join([address_of("b")])
    (stream,) = a.drain_actions()
    (request,) = inspect(stream.data, channel=Channel.STREAM)  # type: ignore[attr-defined]
    assert isinstance(request, PushPull) and [e.key for e in request.shared] == [STRIPE]
    reply = b.handle_stream(stream.data, 0.0)  # type: ignore[attr-defined]
    assert reply is not None
    assert a.handle_stream(reply, 0.0) is None
    assert a.shared().items() == b.shared().items() == [(GITHUB, False), (STRIPE, True)]


def test_a_map_larger_than_the_stream_bound_arrives_over_several_push_pulls() -> None:
    """A small stream bound: each push-pull carries what fits, and successive ones go round the map."""
    config = dataclasses.replace(
        LAN, stream_bytes_max=4096, push_pull_interval=1.0, gossip_interval=3600.0, reconnect_interval=3600.0
    )
    sim = SimCluster(seed=9, config=config)
    sim.add_node()
    sim.run_for(0.1)
    for index in range(60):  # ~130 bytes each on the wire: about 8 KB, twice the bound
        sim.set_shared("n000", f"setting-{index:02d}", "v" * 100)
    sim.add_node()  # joins with one push-pull, then one more per second
    assert sim.run_until_true(lambda: len(sim.node("n001").shared()) == 60, timeout=30.0) is not None
    assert sim.node("n000").statistics().push_pulls_truncated >= 2
    assert sim.node("n001").shared().items() == sim.node("n000").shared().items()


# --- many nodes on the simulated network ---


@pytest.mark.parametrize("seed", range(1, 6))
def test_a_set_on_one_of_twenty_nodes_reaches_all_by_gossip_within_the_retransmit_bound(seed: int) -> None:
    """Each update is sent retransmit_limit times, one gossip round apart at worst: by then it is everywhere."""
    rounds = retransmit_limit(GOSSIP_ONLY.retransmit_mult, 20)
    sim = started(20, seed=seed, config=GOSSIP_ONLY)
    streams_before = sum(sim.node(n).statistics().streams_opened for n in sim.running)
    written_at = sim.now
    sim.set_shared("n007", STRIPE, True)
    reached_at = sim.run_until_true(lambda: sim.shared_agreed(STRIPE, True), timeout=10.0, step=0.01)
    assert reached_at is not None and reached_at - written_at <= rounds * GOSSIP_ONLY.gossip_interval
    assert sum(sim.node(n).statistics().streams_opened for n in sim.running) == streams_before  # no push-pull


def test_with_heavy_loss_push_pull_completes_what_gossip_missed() -> None:
    sim = started(20, seed=3, loss=0.3)
    sim.set_shared("n002", STRIPE, True)
    assert sim.run_until_true(lambda: sim.shared_agreed(STRIPE, True), timeout=2 * LAN.push_pull_interval)


def test_a_node_partitioned_away_while_the_value_changes_converges_after_healing() -> None:
    sim = started(12, seed=4)
    sim.set_shared("n000", STRIPE, False)
    assert sim.run_until_true(lambda: sim.shared_agreed(STRIPE, False), timeout=5.0)
    cut_off = "n005"
    majority = [name for name in sim.running if name != cut_off]
    sim.partition([cut_off])
    sim.set_shared("n000", STRIPE, True)  # changed twice on the majority side...
    sim.run_for(5.0)
    sim.set_shared("n008", STRIPE, "paused")
    sim.set_shared(cut_off, GITHUB, True)  # ...and once on the cut-off side, about another key
    sim.run_for(60.0)  # every retransmit has long run out: only push-pull can carry the news now
    assert sim.shared_agreed(STRIPE, "paused", majority) and sim.shared_agreed(GITHUB, True, [cut_off])
    assert sim.node(cut_off).shared().get(STRIPE) is False and GITHUB not in sim.node("n000").shared()
    healed_at = sim.now
    sim.heal()
    converged_at = sim.run_until_true(
        lambda: sim.shared_agreed(STRIPE, "paused") and sim.shared_agreed(GITHUB, True), timeout=90.0
    )
    assert converged_at is not None, "the map did not converge after the partition healed"
    assert converged_at - healed_at < 60.0
    assert len({tuple(sim.node(n).shared().entries()) for n in sim.running}) == 1  # versions too, not just values


def test_concurrent_writes_on_both_sides_of_a_partition_settle_on_one_winner_everywhere() -> None:
    sim = started(10, seed=5)
    left, right = sim.running[:5], sim.running[5:]
    sim.partition(left, right)
    sim.set_shared("n001", STRIPE, "left", wall_ms=2_000_000_000_000)
    sim.set_shared("n007", STRIPE, "right", wall_ms=2_000_000_000_000)  # the same ms: "n007" > "n001" decides
    sim.run_for(10.0)
    assert sim.shared_agreed(STRIPE, "left", left) and sim.shared_agreed(STRIPE, "right", right)
    sim.heal()
    assert sim.run_until_true(lambda: sim.shared_agreed(STRIPE, "right"), timeout=90.0) is not None
    sim.run_for(10.0)
    assert sim.shared_agreed(STRIPE, "right")  # and it stays settled


def test_restarted_nodes_keep_their_saved_entries_and_an_empty_one_learns_them_from_peers() -> None:
    sim = started(8, seed=6)
    sim.set_shared("n001", STRIPE, True)
    sim.set_shared("n002", GITHUB, False)
    assert sim.run_until_true(lambda: sim.shared_agreed(STRIPE, True) and sim.shared_agreed(GITHUB, False), timeout=5)
    saved = dict(sim.saved_shared["n003"])
    assert set(saved) == {STRIPE, GITHUB}  # what n003's caller was told to persist

    sim.crash("n003")
    sim.crash("n004")
    sim.set_shared("n005", GITHUB, True)  # changes while both are down
    sim.run_for(30.0)
    sim.restart("n003", shared_entries=saved.values())
    assert sim.shared_view("n003") == {STRIPE: True, GITHUB: False}  # at once, before it has heard anyone
    sim.restart("n004")  # its disk was lost
    assert sim.shared_view("n004") == {}
    learned_at = sim.run_until_true(
        lambda: all(sim.shared_view(n) == {STRIPE: True, GITHUB: True} for n in ("n003", "n004")), timeout=5.0
    )
    assert learned_at is not None  # from the join's push-pull, not a 30 s anti-entropy round
    assert sim.saved_shared["n004"][GITHUB].value is True  # and each was told to persist what it learned


def test_the_map_survives_a_restart_of_the_whole_cluster() -> None:
    sim = started(6, seed=7)
    sim.set_shared("n004", STRIPE, True)
    assert sim.run_until_true(lambda: sim.shared_agreed(STRIPE, True), timeout=5.0)
    saved = {name: dict(sim.saved_shared[name]) for name in sim.running}
    for name in list(sim.running):
        sim.crash(name)
    sim.run_for(5.0)
    for name in sorted(saved):
        sim.restart(name, shared_entries=saved[name].values())
        sim.run_for(0.05)
    assert sim.run_until_true(sim.converged, timeout=30.0) is not None
    assert sim.shared_agreed(STRIPE, True)
    written = saved["n004"][STRIPE]
    assert all(sim.node(n).shared().entry(STRIPE) == written for n in sim.running)  # the same write, not a new one
