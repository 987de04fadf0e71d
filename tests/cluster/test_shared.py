"""The shared map on its own: version order, the clock going back, bounds, and the merge's algebra."""

from __future__ import annotations

import itertools
from random import Random

import pytest

from cluster import SharedEntry, SharedMap, SharedValue
from cluster.shared import (
    SHARED_ENTRIES_MAX,
    SHARED_KEY_BYTES_MAX,
    SHARED_VALUE_BYTES_MAX,
    refusal,
    supersedes,
)

KEY = "account_queue:https://api.stripe.com"


def entry(key: str = KEY, value: SharedValue = True, wall_ms: int = 1000, node: str = "a") -> SharedEntry:
    return SharedEntry(key=key, value=value, wall_ms=wall_ms, node=node)


def state(shared: SharedMap) -> tuple[tuple[object, ...], ...]:
    """The entries with each value's type: `0 == False` in Python, but they are different settings."""
    return tuple((e.key, type(e.value), e.value, e.wall_ms, e.node) for e in shared.entries())


def map_of(*entries: SharedEntry) -> SharedMap:
    shared = SharedMap()
    for item in entries:
        shared.merge(item)
    return shared


def join(*maps: SharedMap) -> SharedMap:
    """The state-based merge of whole maps: what push-pulls between their holders converge to."""
    return map_of(*(item for shared in maps for item in shared.entries()))


@pytest.mark.parametrize(
    ("current", "incoming", "replaces"),
    [
        (entry(wall_ms=1000), entry(wall_ms=1001), True),  # a later write wins
        (entry(wall_ms=1001), entry(wall_ms=1000), False),  # an older one never does
        (entry(wall_ms=1000, node="a"), entry(wall_ms=1000, node="b"), True),  # same ms: the node id decides
        (entry(wall_ms=1000, node="b"), entry(wall_ms=1000, node="a"), False),
        (entry(wall_ms=1000, node="b"), entry(wall_ms=999, node="z"), False),  # the time comes first
        (entry(wall_ms=1000), entry(wall_ms=1000), False),  # the same entry again changes nothing
        # An exact version tie with different values (a reused node id): the greater packed value, both ways.
        (entry(value=False), entry(value=True), True),  # msgpack: False is 0xc2, True is 0xc3
        (entry(value=True), entry(value=False), False),
    ],
)
def test_the_merge_keeps_the_greater_version(current: SharedEntry, incoming: SharedEntry, replaces: bool) -> None:
    assert supersedes(incoming, current) is replaces
    shared = map_of(current)
    before = shared.version
    assert shared.merge(incoming) is replaces
    assert shared.entry(KEY) == (incoming if replaces else current)
    assert shared.version == before + replaces


def test_set_stamps_the_writer_and_its_wall_clock() -> None:
    shared = SharedMap()
    written = shared.set(KEY, True, 1_700_000_000_000, "a")
    assert written == entry(wall_ms=1_700_000_000_000)
    assert written.version == (1_700_000_000_000, "a")
    assert shared.get(KEY) is True and shared.entry(KEY) == written
    assert shared.get("missing") is None and shared.get("missing", False) is False
    assert shared.version == 1


@pytest.mark.parametrize(
    ("writes", "expected_wall_ms"),
    [
        ([(1000, "a"), (2000, "a")], [1000, 2000]),  # the clock moves on: its time is used
        ([(1000, "a"), (500, "a")], [1000, 1001]),  # the clock went back: one ms past the current
        ([(1000, "a"), (1000, "a"), (1000, "a")], [1000, 1001, 1002]),  # a burst inside one ms
        ([(1000, "b"), (900, "a")], [1000, 1001]),  # another writer behind in time still overrides what it saw
    ],
)
def test_a_write_is_always_newer_than_what_it_overwrites(
    writes: list[tuple[int, str]], expected_wall_ms: list[int]
) -> None:
    shared = SharedMap()
    versions = []
    for index, (wall_ms, node) in enumerate(writes):
        written = shared.set(KEY, index, wall_ms, node)
        versions.append(written.version)
        assert shared.get(KEY) == index  # each write took effect
    assert [wall_ms for wall_ms, _node in versions] == expected_wall_ms
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_the_version_counter_grows_on_every_change_and_only_then() -> None:
    shared = SharedMap()
    shared.set("x", 1, 10, "a")
    shared.set("y", 1, 10, "a")
    shared.set("x", 1, 10, "a")  # the same value again is still a write (a newer version)
    assert shared.version == 3
    assert not shared.merge(entry(key="x", wall_ms=5))
    assert not shared.merge(shared.entry("y"))  # type: ignore[arg-type]
    assert shared.version == 3
    assert shared.merge(entry(key="z"))
    assert shared.version == 4
    assert shared.items() == [("x", 1), ("y", 1), ("z", True)]
    assert [item.key for item in shared.entries()] == ["x", "y", "z"]
    assert repr(shared) == "<SharedMap: 3 entries | version 4 | 0 refused>"


def test_the_view_reads_the_live_map_and_cannot_write() -> None:
    shared = SharedMap()
    view = shared.view()
    shared.set("k", "v", 1, "a")
    assert ("k" in view, len(view), view.get("k"), view.version) == (True, 1, "v", 1)
    assert view.items() == [("k", "v")] and view.entries() == shared.entries()
    assert not hasattr(view, "set") and not hasattr(view, "merge")


OVER_BOUNDS: list[tuple[str, SharedEntry]] = [
    ("empty key", entry(key="")),
    ("key over by a byte", entry(key="k" * (SHARED_KEY_BYTES_MAX + 1))),
    ("key over in UTF-8 bytes, not characters", entry(key="é" * (SHARED_KEY_BYTES_MAX // 2 + 1))),
    ("key with a lone surrogate", entry(key="\ud800")),
    ("value over by a byte packed", entry(value="v" * (SHARED_VALUE_BYTES_MAX - 1))),  # str8: 2-byte header
    ("int beyond msgpack", entry(value=2**64)),
    ("bytes value", entry(value=b"raw")),  # type: ignore[arg-type]
    ("list value", entry(value=[1])),  # type: ignore[arg-type]
    ("negative wall_ms", entry(wall_ms=-1)),
    ("wall_ms beyond uint64", entry(wall_ms=2**64)),
    ("bool wall_ms", entry(wall_ms=True)),
    ("empty node", entry(node="")),
    ("node over 128 bytes", entry(node="n" * 129)),
]
WITHIN_BOUNDS: list[SharedEntry] = [
    entry(key="k" * SHARED_KEY_BYTES_MAX),
    entry(key="é" * (SHARED_KEY_BYTES_MAX // 2)),
    entry(value="v" * (SHARED_VALUE_BYTES_MAX - 2)),  # 2 + 254 = 256 bytes packed, exactly the bound
    entry(value=None),
    entry(value=-(2**63)),
    entry(value=2**64 - 1),
    entry(value=1.5),
    entry(wall_ms=0),
    entry(wall_ms=2**64 - 1),
    entry(node="n" * 128),
]


@pytest.mark.parametrize(("why", "over"), OVER_BOUNDS, ids=[why for why, _ in OVER_BOUNDS])
def test_an_entry_over_a_bound_is_refused_locally_with_an_error_and_remotely_with_a_count(
    why: str, over: SharedEntry
) -> None:
    assert refusal(over) is not None
    shared = SharedMap()
    with pytest.raises(ValueError, match="refused"):
        shared.set(over.key, over.value, over.wall_ms, over.node)
    assert not shared.merge(over)
    assert (len(shared), shared.version, shared.refused) == (0, 0, 1)


@pytest.mark.parametrize("within", WITHIN_BOUNDS, ids=range(len(WITHIN_BOUNDS)))
def test_an_entry_at_a_bound_is_taken(within: SharedEntry) -> None:
    assert refusal(within) is None
    assert map_of(within).entry(within.key) == within
    assert SharedMap().set(within.key, within.value, within.wall_ms, within.node) == within


def test_a_full_map_refuses_new_keys_but_takes_newer_versions_of_known_ones() -> None:
    shared = SharedMap()
    for index in range(SHARED_ENTRIES_MAX):
        shared.set(f"k{index}", index, 1, "a")
    with pytest.raises(ValueError, match="full"):
        shared.set("one-more", 1, 1, "a")
    assert not shared.merge(entry(key="one-more"))
    assert shared.refused == 1 and len(shared) == SHARED_ENTRIES_MAX
    shared.set("k0", "updated", 1, "a")
    assert shared.merge(entry(key="k1", value="from b", wall_ms=5, node="b"))
    assert (shared.get("k0"), shared.get("k1"), len(shared)) == ("updated", "from b", SHARED_ENTRIES_MAX)


HAND_BUILT = [
    entry(value=1, wall_ms=10, node="a"),
    entry(value=2, wall_ms=10, node="b"),  # concurrent with the first: b wins
    entry(value=3, wall_ms=9, node="c"),  # older than both
    entry(key="other", value="x", wall_ms=1, node="c"),
    entry(key="other", value=None, wall_ms=2, node="a"),  # a clear is a write like any other
    entry(value=False, wall_ms=10, node="b"),  # an exact tie with the second: packed False (0xc2) beats 2 (0x02)
]


def test_the_merge_is_order_free_on_hand_built_entries() -> None:
    results = {state(map_of(*order)) for order in itertools.permutations(HAND_BUILT)}
    assert len(results) == 1
    (winner,) = results
    assert {key: (kind, value) for key, kind, value, _wall_ms, _node in winner} == {
        KEY: (bool, False),
        "other": (type(None), None),
    }


def random_entries(rng: Random, count: int) -> list[SharedEntry]:
    """Few keys, nodes and times, so collisions (same version, exact ties, older writes) are common."""
    values: list[SharedValue] = [None, True, False, 0, 1, -7, 2.5, "", "on", "off"]
    return [
        entry(
            key=rng.choice(["a", "b", "c"]),
            value=rng.choice(values),
            wall_ms=rng.randrange(5),
            node=rng.choice(["n1", "n2", "n3"]),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("seed", range(20))
def test_the_merge_is_idempotent_commutative_and_associative(seed: int) -> None:
    rng = Random(seed)
    a, b, c = (map_of(*random_entries(rng, rng.randrange(1, 12))) for _ in range(3))
    assert state(join(a, a)) == state(a)  # idempotent
    assert state(join(a, b)) == state(join(b, a))  # commutative
    assert state(join(join(a, b), c)) == state(join(a, join(b, c)))  # associative
    # And entry by entry: any delivery order, with duplicates, ends in the same state.
    sequence = random_entries(rng, 30)
    expected = state(map_of(*sequence))
    for _ in range(10):
        shuffled = sequence + rng.sample(sequence, 10)
        rng.shuffle(shuffled)
        assert state(map_of(*shuffled)) == expected
    # The state is the greatest entry per key under the merge rule, whatever the order.
    for item in map_of(*sequence).entries():
        assert not any(supersedes(other, item) for other in sequence if other.key == item.key)
