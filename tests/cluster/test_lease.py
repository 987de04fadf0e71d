"""The partition rule (cluster/lease.py): the majority lease, the wait before a takeover, the quiet after a refuted
death; the pure gate by tables, then SWIM nodes on a simulated network split in two."""

from __future__ import annotations

import pytest

from cluster.lease import RunGate, lease_duration, takeover_wait
from cluster.testing import SimCluster

INTERVAL, TIMEOUT = 1.0, 0.5
MEMBERS = ["me", "b", "c", "d", "e"]


def gate() -> RunGate:
    return RunGate(node="me", probe_interval=INTERVAL, probe_timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("members", "lease"),
    [(1, 1.5), (2, 2.5), (3, 4.5), (5, 8.5), (10, 18.5)],
)
def test_the_lease_covers_probing_a_majority_once(members: int, lease: float) -> None:
    assert lease_duration(INTERVAL, TIMEOUT, members) == lease
    assert takeover_wait(INTERVAL, TIMEOUT, members) > lease  # always longer than the lease it waits out


@pytest.mark.parametrize(
    ("known", "in_touch", "holds"),
    [
        (["me"], [], True),  # a one-member cluster
        (["me", "b"], [], False),  # two members: one alone is no majority
        (["me", "b"], ["b"], True),
        (["me", "b", "c"], ["b"], True),
        (["me", "b", "c"], [], False),
        (MEMBERS, ["b"], False),
        (MEMBERS, ["b", "c"], True),
    ],
)
def test_a_majority_of_the_known_members_holds_the_lease(known: list[str], in_touch: list[str], holds: bool) -> None:
    rule = gate()
    for member in in_touch:
        rule.heard(member, 10.0)
    assert rule.has_quorum(known, 10.0) is holds


def test_the_lease_lapses_without_new_round_trips_and_returns_with_one() -> None:
    rule, known = gate(), ["me", "b", "c"]
    rule.heard("b", 10.0)
    lease = rule.lease_s(len(known))
    assert rule.has_quorum(known, 10.0 + lease)
    assert rule.next_change(known, 10.0) == 10.0 + lease
    assert not rule.has_quorum(known, 10.0 + lease + 0.001)
    rule.heard("c", 20.0)
    assert rule.has_quorum(known, 20.0)


def test_a_fallen_members_keys_wait_then_go() -> None:
    rule = gate()
    rule.fell("b", 5.0)
    wait = rule.takeover_wait_s(3)
    assert rule.waiting(5.0 + wait - 0.001, 3) == {"b"}
    assert rule.next_change(["me", "b", "c"], 5.0) == 5.0 + wait
    assert rule.waiting(5.0 + wait, 3) == frozenset()
    rule.fell("c", 6.0)
    rule.rose("c")  # a refuted death: nothing waits for it
    assert rule.waiting(6.0, 3) == {"b"}


def test_a_refuted_death_keeps_the_node_quiet_for_a_lease() -> None:
    rule, known = gate(), ["me", "b", "c"]
    rule.refuted_death(30.0, len(known))
    rule.heard("b", 31.0)
    assert not rule.has_quorum(known, 31.0)
    assert rule.has_quorum(known, 30.0 + rule.lease_s(3))


def test_a_split_leaves_at_most_one_side_running_and_the_majority_takes_over_after_the_wait() -> None:
    sim = SimCluster(seed=5)
    for _ in range(5):
        sim.add_node()
    names = sim.running
    assert sim.run_until_true(lambda: sim.converged(), timeout=30) is not None
    sim.run_for(10)
    assert all(sim.node(name).may_run_keys(sim.now) for name in names)

    minority, majority = names[:2], names[2:]
    sim.partition(minority, majority)
    split_at = sim.now
    stopped_at: dict[str, float] = {}
    first_takeover: float | None = None
    while sim.now < split_at + 60:
        sim.run_for(0.05)
        for name in minority:
            if name not in stopped_at and not sim.node(name).may_run_keys(sim.now):
                stopped_at[name] = sim.now
            assert name not in stopped_at or not sim.node(name).may_run_keys(sim.now)
        for name in majority:
            assert sim.node(name).may_run_keys(sim.now), name  # the majority never stops
        observer = sim.node(majority[0])
        split_seen = set(sim.live_view(majority[0])) == set(majority)
        if first_takeover is None and split_seen and not observer.keys_waiting(sim.now):
            first_takeover = sim.now  # the minority's keys may run on the majority from now on
        if first_takeover is not None and len(stopped_at) == len(minority):
            break
    assert first_takeover is not None and len(stopped_at) == len(minority)
    # Both minority nodes stopped before the majority ran any of their keys.
    assert max(stopped_at.values()) < first_takeover, (stopped_at, first_takeover)

    sim.heal()
    assert sim.run_until_true(lambda: sim.converged(), timeout=120) is not None
    sim.run_for(15)
    assert all(sim.node(name).may_run_keys(sim.now) for name in names)
