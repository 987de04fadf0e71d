"""The counters carried by real SwimNode cores: step by step on the instant wire, then many nodes on the simulated
network (cluster.testing) with partitions, crashes and restarts."""

from __future__ import annotations

import dataclasses
from random import Random

import pytest

from cluster import CounterChanged, CounterEntry, SwimConfig, SwimNode
from cluster.envelope import Channel
from cluster.messages import Counters, PushPull
from cluster.testing import SimCluster

from .helpers import KEYRING, Wire, address_of, inspect, started, wired

USAGE = "usage:acme:2025-01"
OTHER = "usage:globex:2025-01"
LAN = SwimConfig.lan()
# Push-pull out of the way (its first round comes at a random phase within the interval): whatever spreads,
# spreads by gossip.
GOSSIP_ONLY = dataclasses.replace(LAN, push_pull_interval=1e6, reconnect_interval=1e6)


def counter_entries_sent(wire: Wire, *, source: str | None = None) -> list[CounterEntry]:
    return [
        entry
        for delivery in wire.delivered
        if source is None or delivery.source == source
        for message in delivery.messages
        if isinstance(message, Counters)
        for entry in message.entries
    ]


# --- step by step ---


def test_a_local_add_is_reported_and_rides_the_next_datagrams_to_every_member() -> None:
    wire = wired("a", "b", "c")
    a = wire.nodes["a"]
    added = a.add_counter(USAGE, 3)
    assert added == CounterEntry(name=USAGE, node="a", value=3)
    assert a.drain_actions() == [CounterChanged(added)]  # news for the shell, nothing sent yet
    wire.run_until(1.0)
    assert counter_entries_sent(wire, source="a")
    for name in "bc":
        assert wire.nodes[name].counters().total(USAGE) == 3 and wire.nodes[name].counters().own(USAGE, "a") == 3
        assert wire.nodes[name].counters().own(USAGE, name) == 0


def test_adding_nothing_reports_nothing_and_queues_nothing() -> None:
    wire = wired("a", "b")
    a = wire.nodes["a"]
    assert a.add_counter(USAGE, 0).value == 0
    assert a.drain_actions() == [] and a.counters().version == 0
    wire.run_until(2.0)
    assert counter_entries_sent(wire) == []


def test_a_greater_value_replaces_the_queued_one_about_the_same_entry() -> None:
    wire = wired("a", "b")
    a = wire.nodes["a"]
    for _ in range(5):
        a.add_counter(USAGE, 1)
    a.add_counter(OTHER, 2)
    changed = [action for action in a.drain_actions() if isinstance(action, CounterChanged)]
    assert [action.entry.value for action in changed] == [1, 2, 3, 4, 5, 2]  # every change is reported to save
    wire.run_until(2.0)
    sent = counter_entries_sent(wire, source="a")
    assert {entry.value for entry in sent if entry.name == USAGE} == {5}  # 1..4 never left: one queued update
    assert wire.nodes["b"].counters().totals() == {USAGE: 5, OTHER: 2}


def test_a_member_passes_on_what_it_learned_and_not_what_it_already_had() -> None:
    wire = wired("a", "b", "c", "d")
    wire.nodes["a"].add_counter(USAGE, 1)
    wire.run_until(2.0)
    relayed = {delivery.source for delivery in wire.delivered for m in delivery.messages if isinstance(m, Counters)}
    assert relayed > {"a"}  # epidemic spread
    b = wire.nodes["b"]
    b.drain_actions()
    version = b.counters().version
    b.handle_packet(address_of("a"), b"", 0.0)  # garbage: dropped by the envelope
    assert b.counters().version == version and b.drain_actions() == []


def test_restored_entries_are_held_from_the_start_without_events_and_bad_ones_are_counted() -> None:
    saved = [
        CounterEntry(name=USAGE, node="a", value=40),
        CounterEntry(name=USAGE, node="b", value=2),
        CounterEntry(name="", node="a", value=5),  # a corrupt record: dropped, counted
    ]
    node = SwimNode(
        node_id="a",
        address=address_of("a"),
        config=LAN,
        rng=Random(1),
        keyring=KEYRING,
        epoch=2,
        now=0.0,
        counter_entries=saved,
    )
    assert node.counters().total(USAGE) == 42 and node.drain_actions() == []
    stats = node.statistics()
    assert (stats.counter_entries, stats.counter_refused) == (2, 1)
    assert "2 counter entries" in repr(node)
    assert node.add_counter(USAGE, 1).value == 41  # its own entry goes on from the saved value


def test_a_push_pull_carries_every_entry_both_ways() -> None:
    wire = Wire()
    a, b = wire.add("a"), wire.add("b")
    a.add_counter(USAGE, 3)
    b.add_counter(USAGE, 4)
    b.add_counter(OTHER, 1)
    a.drain_actions(), b.drain_actions()
    a.join([address_of("b")])
    (stream,) = a.drain_actions()
    (request,) = inspect(stream.data, channel=Channel.STREAM)  # type: ignore[attr-defined]
    assert isinstance(request, PushPull) and request.counters == (CounterEntry(name=USAGE, node="a", value=3),)
    reply = b.handle_stream(stream.data, 0.0)  # type: ignore[attr-defined]
    assert reply is not None
    assert a.handle_stream(reply, 0.0) is None
    assert a.counters().entries() == b.counters().entries() and a.counters().totals() == {USAGE: 7, OTHER: 1}
    learned = [action.entry for action in a.drain_actions() if isinstance(action, CounterChanged)]
    assert sorted(learned, key=lambda e: e.name) == [
        CounterEntry(name=USAGE, node="b", value=4),
        CounterEntry(name=OTHER, node="b", value=1),
    ]


def test_a_push_pull_over_the_stream_bound_shares_it_between_the_map_and_the_counters() -> None:
    """A small stream bound and more shared entries than fit: the counters still get their share, and both go
    round over successive push-pulls."""
    config = dataclasses.replace(
        LAN, stream_bytes_max=4096, push_pull_interval=1.0, gossip_interval=3600.0, reconnect_interval=3600.0
    )
    sim = SimCluster(seed=10, config=config)
    sim.add_node()
    sim.run_for(0.1)
    for index in range(60):  # ~130 bytes each: about 8 KB of shared entries, twice the bound alone
        sim.set_shared("n000", f"setting-{index:02d}", "v" * 100)
    for index in range(80):  # ~60 bytes each: about 5 KB of counters
        sim.add_counter("n000", f"counter-{index:02d}-" + "c" * 30, index + 1)
    sim.add_node()  # joins with one push-pull, then one more per second
    first = sim.run_until_true(lambda: len(sim.node("n001").counters()) > 0, timeout=2.0, step=0.01)
    assert first is not None  # the first exchange already carried counters, not shared entries only
    assert 0 < len(sim.node("n001").shared()) < 60
    done = sim.run_until_true(
        lambda: len(sim.node("n001").counters()) == 80 and len(sim.node("n001").shared()) == 60, timeout=60.0
    )
    assert done is not None
    assert sim.node("n000").statistics().push_pulls_truncated >= 2
    assert sim.node("n001").counters().entries() == sim.node("n000").counters().entries()


# --- many nodes on the simulated network ---


@pytest.mark.parametrize("seed", range(1, 4))
def test_three_nodes_count_at_once_and_every_node_converges_by_gossip_alone(seed: int) -> None:
    sim = started(3, seed=seed, config=GOSSIP_ONLY)
    streams_before = sum(sim.node(n).statistics().streams_opened for n in sim.running)
    rng = Random(seed)
    expected = {name: 0 for name in sim.running}
    for _ in range(60):  # interleaved adds, some between gossip rounds, some in bursts
        name = rng.choice(sim.running)
        amount = rng.randrange(0, 4)
        sim.add_counter(name, USAGE, amount)
        expected[name] += amount
        sim.run_for(rng.choice([0.0, 0.01, 0.3]))
    total = sum(expected.values())
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, total), timeout=10.0, step=0.01) is not None
    for observer in sim.running:
        assert {n: sim.node(observer).counters().own(USAGE, n) for n in sim.running} == expected
    assert sum(sim.node(n).statistics().streams_opened for n in sim.running) == streams_before  # no push-pull


def test_with_heavy_loss_push_pull_completes_what_gossip_missed() -> None:
    sim = started(10, seed=3, loss=0.3)
    for name in sim.running[:5]:
        sim.add_counter(name, USAGE, 2)
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 10), timeout=2 * LAN.push_pull_interval)


def test_a_node_partitioned_away_converges_by_push_pull_after_healing() -> None:
    sim = started(5, seed=4)
    for name in sim.running:
        sim.add_counter(name, USAGE, 1)
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 5), timeout=5.0)
    cut_off = "n003"
    majority = [name for name in sim.running if name != cut_off]
    sim.partition([cut_off])
    sim.add_counter("n000", USAGE, 10)  # counted on both sides of the partition, about the same counter
    sim.add_counter("n001", OTHER, 7)
    sim.add_counter(cut_off, USAGE, 100)
    sim.run_for(60.0)  # every retransmit has long run out: only push-pull can carry the news now
    assert sim.counters_agreed(USAGE, 15, majority) and sim.counters_agreed(USAGE, 105, [cut_off])
    assert sim.node(cut_off).counters().total(OTHER) == 0
    healed_at = sim.now
    sim.heal()
    converged_at = sim.run_until_true(
        lambda: sim.counters_agreed(USAGE, 115) and sim.counters_agreed(OTHER, 7), timeout=90.0
    )
    assert converged_at is not None, "the counters did not converge after the partition healed"
    assert converged_at - healed_at < 60.0
    assert len({sim.node(n).counters().entries() for n in sim.running}) == 1  # every entry, not just totals


def test_a_restarted_node_with_its_saved_entries_keeps_counting_from_its_value() -> None:
    sim = started(4, seed=6)
    sim.add_counter("n001", USAGE, 30)
    sim.add_counter("n002", USAGE, 5)
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 35), timeout=5.0)
    saved = dict(sim.saved_counters["n001"])
    assert saved[(USAGE, "n001")].value == 30 and saved[(USAGE, "n002")].value == 5  # what its caller saved

    sim.crash("n001")
    sim.add_counter("n002", USAGE, 1)  # counted while n001 is down
    sim.run_for(30.0)
    sim.restart("n001", counter_entries=saved.values())
    assert sim.node("n001").counters().own(USAGE, "n001") == 30  # at once, before it has heard anyone
    assert sim.add_counter("n001", USAGE, 2).value == 32  # from its value, not from 0
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 38), timeout=5.0) is not None
    assert sim.saved_counters["n001"][(USAGE, "n001")].value == 32
    assert sim.saved_counters["n001"][(USAGE, "n002")].value == 6  # and it was told to save what it learned


def test_a_restarted_node_without_a_disk_learns_its_own_entry_back_at_its_join() -> None:
    sim = started(4, seed=7)
    sim.add_counter("n003", USAGE, 20)
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 20), timeout=5.0)
    sim.crash("n003")
    sim.run_for(5.0)
    sim.restart("n003")  # its disk was lost
    assert sim.node("n003").counters().total(USAGE) == 0
    learned_at = sim.run_until_true(lambda: sim.node("n003").counters().own(USAGE, "n003") == 20, timeout=5.0)
    assert learned_at is not None  # from the join's push-pull, not a 30 s anti-entropy round
    assert sim.add_counter("n003", USAGE, 1).value == 21
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 21), timeout=5.0) is not None


def test_the_counters_survive_a_restart_of_the_whole_cluster() -> None:
    sim = started(4, seed=8)
    for index, name in enumerate(sim.running):
        sim.add_counter(name, USAGE, index + 1)
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 10), timeout=5.0)
    saved = {name: dict(sim.saved_counters[name]) for name in sim.running}
    for name in list(sim.running):
        sim.crash(name)
    sim.run_for(5.0)
    for name in sorted(saved):
        sim.restart(name, counter_entries=saved[name].values())
        sim.run_for(0.05)
    assert sim.run_until_true(sim.converged, timeout=30.0) is not None
    assert sim.counters_agreed(USAGE, 10)
    sim.add_counter("n000", USAGE, 1)
    assert sim.run_until_true(lambda: sim.counters_agreed(USAGE, 11), timeout=5.0) is not None
