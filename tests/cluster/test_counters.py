"""The grow-only counters on their own: own entries and totals, the merge's algebra, bounds and refusals, restarts."""

from __future__ import annotations

import itertools
from random import Random

import pytest

from cluster import CounterEntry, CounterMap
from cluster.counters import (
    COUNTER_ENTRIES_MAX,
    COUNTER_NAME_BYTES_MAX,
    COUNTER_VALUE_MAX,
    refusal,
)

USAGE = "usage:acme:2025-01"
OTHER = "usage:globex:2025-01"


def entry(name: str = USAGE, node: str = "a", value: int = 1) -> CounterEntry:
    return CounterEntry(name=name, node=node, value=value)


def map_of(*entries: CounterEntry) -> CounterMap:
    counters = CounterMap()
    for item in entries:
        counters.merge(item)
    return counters


def join(*maps: CounterMap) -> CounterMap:
    """The state-based merge of whole maps: what push-pulls between their holders converge to."""
    return map_of(*(item for counters in maps for item in counters.entries()))


def test_each_node_adds_to_its_own_entry_and_the_total_is_their_sum() -> None:
    counters = CounterMap()
    assert counters.add(USAGE, "a", 3) == entry(value=3)
    assert counters.add(USAGE, "a", 2) == entry(value=5)
    counters.merge(entry(node="b", value=7))
    counters.add(OTHER, "a", 1)
    assert (counters.total(USAGE), counters.own(USAGE, "a"), counters.own(USAGE, "b")) == (12, 5, 7)
    assert counters.total(OTHER) == 1 and counters.total("never") == 0 and counters.own(USAGE, "c") == 0
    assert counters.entries() == (entry(value=5), entry(node="b", value=7), entry(name=OTHER, value=1))
    assert counters.entries_named("usage:acme:") == (entry(value=5), entry(node="b", value=7))
    assert counters.totals("usage:") == {USAGE: 12, OTHER: 1} and counters.names("usage:g") == [OTHER]
    assert len(counters) == 3 and USAGE in counters and "never" not in counters
    assert counters.entry(USAGE, "b") == entry(node="b", value=7) and counters.entry(USAGE, "c") is None


def test_the_version_grows_on_every_change_and_only_then() -> None:
    counters = CounterMap()
    assert counters.version == 0
    counters.add(USAGE, "a", 1)
    assert counters.version == 1
    assert counters.add(USAGE, "a", 0) == entry(value=1)  # adding nothing changes nothing
    assert counters.add(OTHER, "a", 0) == entry(name=OTHER, value=0) and OTHER not in counters
    assert not counters.merge(entry(value=1))  # the same value again
    assert not counters.merge(entry(value=0))  # a smaller one
    assert not counters.merge(entry(node="b", value=0))  # an absent entry is 0 already
    assert counters.version == 1 and len(counters) == 1
    assert counters.merge(entry(node="b", value=4)) and counters.merge(entry(value=2))
    assert counters.version == 3 and counters.total(USAGE) == 6


@pytest.mark.parametrize(
    ("current", "incoming", "after"),
    [
        (5, 6, 6),  # a greater value wins
        (6, 5, 6),  # a smaller one never does: nothing is counted twice, nothing taken back
        (5, 5, 5),
    ],
)
def test_the_merge_keeps_the_greater_value(current: int, incoming: int, after: int) -> None:
    counters = map_of(entry(value=current))
    assert counters.merge(entry(value=incoming)) is (after != current)
    assert counters.own(USAGE, "a") == counters.total(USAGE) == after


def random_maps(rng: Random, count: int) -> list[CounterMap]:
    """Maps that saw different subsets of a history of adds by four nodes to three counters (as members do)."""
    history: dict[tuple[str, str], list[int]] = {}
    for _ in range(60):
        about = (rng.choice(["x", "y", "z"]), rng.choice("abcd"))
        values = history.setdefault(about, [0])
        values.append(values[-1] + rng.randrange(0, 5))
    maps = []
    for _ in range(count):
        seen = [
            CounterEntry(name=name, node=node, value=rng.choice(values))
            for (name, node), values in history.items()
            if rng.random() < 0.7
        ]
        rng.shuffle(seen)
        maps.append(map_of(*seen))
    return maps


@pytest.mark.parametrize("seed", range(20))
def test_the_merge_is_commutative_associative_and_idempotent(seed: int) -> None:
    a, b, c = random_maps(Random(seed), 3)
    assert join(a, b).entries() == join(b, a).entries()
    assert join(join(a, b), c).entries() == join(a, join(b, c)).entries()
    assert join(a, a).entries() == a.entries() and join(join(a, b), b).entries() == join(a, b).entries()


@pytest.mark.parametrize("seed", range(10))
def test_every_delivery_order_with_repeats_ends_in_the_same_state(seed: int) -> None:
    """Gossip delivers entries in any order, some several times: the result is the element-wise max."""
    rng = Random(seed)
    entries = [entry(name=rng.choice("xy"), node=rng.choice("abc"), value=rng.randrange(0, 100)) for _ in range(12)]
    expected: dict[tuple[str, str], int] = {}
    for item in entries:
        if item.value:
            expected[(item.name, item.node)] = max(expected.get((item.name, item.node), 0), item.value)
    states = set()
    for _ in range(30):
        deliveries = entries + rng.choices(entries, k=6)
        rng.shuffle(deliveries)
        counters = map_of(*deliveries)
        states.add(counters.entries())
        assert {(e.name, e.node): e.value for e in counters.entries()} == expected
        for name in "xy":
            assert counters.total(name) == sum(v for (n, _node), v in expected.items() if n == name)
    assert len(states) == 1


def test_totals_stay_right_through_every_kind_of_change() -> None:
    """The total is kept as a running sum: it must match the entries after adds, merges up, and merges refused."""
    rng = Random(3)
    counters = CounterMap()
    for _ in range(500):
        name, node = rng.choice("xyz"), rng.choice("abcdef")
        if node == "a":
            counters.add(name, node, rng.randrange(0, 4))
        else:
            counters.merge(entry(name=name, node=node, value=rng.randrange(0, 50)))
    for name in "xyz":
        assert counters.total(name) == sum(e.value for e in counters.entries() if e.name == name)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (entry(name=""), "name"),
        (entry(name="n" * (COUNTER_NAME_BYTES_MAX + 1)), "name"),
        (entry(name="ü" * (COUNTER_NAME_BYTES_MAX // 2 + 1)), "name"),  # bytes count, not characters
        (entry(name="\ud800"), "name"),  # a lone surrogate: no UTF-8 at all
        (CounterEntry(name=1, node="a", value=1), "name"),  # type: ignore[arg-type]
        (entry(node=""), "node"),
        (entry(node="n" * 129), "node"),
        (entry(value=-1), "value"),
        (entry(value=COUNTER_VALUE_MAX + 1), "value"),
        (entry(value=True), "value"),  # a bool is not a count
        (CounterEntry(name=USAGE, node="a", value=1.0), "value"),  # type: ignore[arg-type]
    ],
)
def test_a_remote_entry_over_a_bound_is_refused_and_counted_never_raised(bad: CounterEntry, reason: str) -> None:
    refused = refusal(bad)
    assert refused is not None and reason in refused
    counters = map_of(entry(value=3))
    assert counters.merge(bad) is False
    assert counters.refused == 1 and counters.entries() == (entry(value=3),) and counters.version == 1


def test_the_largest_entry_within_bounds_is_held() -> None:
    largest = CounterEntry(name="n" * COUNTER_NAME_BYTES_MAX, node="m" * 128, value=COUNTER_VALUE_MAX)
    assert refusal(largest) is None and map_of(largest).total(largest.name) == COUNTER_VALUE_MAX


@pytest.mark.parametrize(
    ("name", "node", "amount"),
    [
        ("", "a", 1),
        ("n" * (COUNTER_NAME_BYTES_MAX + 1), "a", 1),
        (USAGE, "", 1),
        (USAGE, "a", -1),  # a G-counter never goes down
        (USAGE, "a", 1.5),
        (USAGE, "a", True),
    ],
)
def test_a_local_add_over_a_bound_raises(name: str, node: str, amount: int) -> None:
    counters = CounterMap()
    with pytest.raises(ValueError, match="refused"):
        counters.add(name, node, amount)
    assert counters.version == 0 and len(counters) == 0


def test_an_add_that_would_overflow_64_bits_raises_and_changes_nothing() -> None:
    counters = CounterMap()
    counters.add(USAGE, "a", COUNTER_VALUE_MAX - 1)
    counters.add(USAGE, "a", 1)
    with pytest.raises(ValueError, match="overflow"):
        counters.add(USAGE, "a", 1)
    assert counters.own(USAGE, "a") == COUNTER_VALUE_MAX and counters.version == 2


def test_a_full_map_refuses_new_entries_but_known_ones_still_grow() -> None:
    counters = CounterMap()
    for index in range(COUNTER_ENTRIES_MAX):
        counters.merge(entry(name=f"c{index}", node="b", value=1))
    assert len(counters) == COUNTER_ENTRIES_MAX
    assert not counters.merge(entry(name="c0", node="c", value=1))  # a new node of a known counter: new entry
    assert not counters.merge(entry(name="new", node="b", value=1))
    assert counters.refused == 2
    with pytest.raises(ValueError, match="full"):
        counters.add("new", "a", 1)
    assert counters.add("new", "a", 0).value == 0  # adding nothing needs no room
    assert counters.merge(entry(name="c0", node="b", value=9)) and counters.total("c0") == 9
    assert not counters.merge(entry(name="c1", node="c", value=0))  # a 0 is no entry: not refused either
    assert counters.refused == 2


def test_a_restarted_node_restoring_its_saved_entry_goes_on_from_it_never_back() -> None:
    before = CounterMap()
    before.add(USAGE, "a", 40)
    before.merge(entry(node="b", value=10))
    saved = before.entries()

    restarted = map_of(*saved)  # what the caller restores at boot
    assert restarted.own(USAGE, "a") == 40 and restarted.total(USAGE) == 50
    assert restarted.add(USAGE, "a", 1).value == 41  # not 1
    # A peer's copy of our entry that is older than the disk (it missed the last broadcasts) takes nothing back,
    # and one that is newer (the disk missed the last save) wins: the greater, whichever side it is on.
    assert not restarted.merge(entry(value=35))
    assert restarted.merge(entry(value=45)) and restarted.add(USAGE, "a", 1).value == 46


def test_a_node_that_lost_its_disk_learns_its_entry_back_and_goes_on_from_there() -> None:
    peer = map_of(entry(value=40))  # what the cluster knows of a's entry
    empty = CounterMap()
    empty.add(USAGE, "a", 2)  # adds before the join's reply: absorbed by the max (an undercount, never more)
    assert empty.merge_all(peer.entries()) == [entry(value=40)]
    assert empty.add(USAGE, "a", 1).value == 41
    assert join(peer, empty).own(USAGE, "a") == 41


def test_views_follow_the_map() -> None:
    counters = CounterMap()
    view = counters.view()
    counters.add(USAGE, "a", 2)
    counters.merge(entry(node="b", value=3))
    assert (view.total(USAGE), view.own(USAGE, "b"), view.version, len(view), USAGE in view) == (5, 3, 2, 2, True)
    assert view.entries() == counters.entries() and view.entries_named("usage:") == counters.entries()
    assert view.totals() == {USAGE: 5} and view.names() == [USAGE] and view.entry(USAGE, "a") == entry(value=2)
    assert "2 entries" in repr(view) and list(counters) == [USAGE]


def test_the_same_entries_in_any_order_make_equal_maps() -> None:
    entries = [entry(name=n, node=m, value=v) for n, m, v in itertools.product("xy", "ab", (1, 5))]
    orders = {map_of(*order).entries() for order in itertools.permutations(entries[:5])}
    assert len(orders) == 1
