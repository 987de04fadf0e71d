"""Rendezvous ownership: stable, even, and minimal movement when membership changes."""

from __future__ import annotations

from collections import Counter

import pytest

from cluster import Rendezvous
from cluster.ownership import spread_over_machines

NODES = [f"node-{index}" for index in range(10)]
KEYS = [f"user-{index}:api-key-{index % 7}" for index in range(100_000)]
PINNED = ["node-3", "node-8", "node-7", "node-9"]


def owners(members: list[str], keys: list[str]) -> list[str | None]:
    ring = Rendezvous(members)
    return [ring.owner(key) for key in keys]


def test_keys_spread_evenly_over_ten_nodes() -> None:
    counts = Counter(owners(NODES, KEYS))
    assert set(counts) == set(NODES)
    mean = len(KEYS) / len(NODES)
    # Binomial(100,000, 1/10): sd ~ 95 keys, so 10 nodes stay within ~3.5 sd = 3.3% of the mean.
    assert max(counts.values()) / mean < 1.04
    assert min(counts.values()) / mean > 0.96


def test_when_one_of_n_leaves_only_its_keys_move_and_they_spread_over_the_rest() -> None:
    keys = KEYS[:30_000]
    before = owners(NODES, keys)
    leaver = NODES[3]
    after = owners([node for node in NODES if node != leaver], keys)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(old == leaver for old, _new in moved)  # nobody else's keys move
    assert abs(len(moved) / len(keys) - 1 / len(NODES)) < 0.01  # ~1/N of all keys
    receivers = Counter(new for _old, new in moved)
    assert len(receivers) == len(NODES) - 1
    assert max(receivers.values()) / (len(moved) / len(receivers)) < 1.2  # no single heir takes them all


def test_a_joining_node_takes_about_one_in_n_plus_one_keys_from_everyone() -> None:
    keys = KEYS[:30_000]
    before = owners(NODES, keys)
    after = owners([*NODES, "node-new"], keys)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(new == "node-new" for _old, new in moved)
    assert abs(len(moved) / len(keys) - 1 / 11) < 0.01
    assert len({old for old, _new in moved}) == len(NODES)


def test_the_owner_depends_only_on_the_member_set_and_is_stable_across_processes() -> None:
    shuffled = list(reversed(NODES)) + NODES[:2]  # order and duplicates do not matter
    assert owners(shuffled, KEYS[:1000]) == owners(NODES, KEYS[:1000])
    ring = Rendezvous(NODES)
    assert ring.owner("user-1:api-key-1") == ring.owner(b"user-1:api-key-1")
    # Pinned values: BLAKE2b, not Python's per-process salted hash(), so every node agrees on these forever.
    assert [ring.owner(f"pinned-{index}") for index in range(4)] == PINNED
    assert ring.members == sorted(NODES)


def test_no_members_no_owner() -> None:
    assert Rendezvous([]).owner("any") is None
    assert Rendezvous(["solo"]).owner("any") == "solo"


def test_ranked_starts_with_the_owner_and_its_second_is_the_owner_once_the_first_is_gone() -> None:
    members = [f"node-{i}" for i in range(7)]
    full = Rendezvous(members)
    for i in range(300):
        key = f"acct|api.example.com|{i}"
        order = full.ranked(key, len(members))
        assert sorted(order) == sorted(members)
        assert order[0] == full.owner(key)
        without_owner = Rendezvous(m for m in members if m != order[0])
        assert without_owner.owner(key) == order[1]
        assert without_owner.ranked(key, 2) == order[1:3]


def test_ranked_returns_at_most_the_members_there_are() -> None:
    assert Rendezvous(["a", "b"]).ranked("k", 3) in (["a", "b"], ["b", "a"])
    assert Rendezvous([]).ranked("k", 2) == []


# A key's members in rendezvous order, each "<machine>-w<i>" (a worker) or a machine of its own.
RANKED = ["a-w0", "a-w1", "b-w0", "c", "b-w1"]


@pytest.mark.parametrize(
    ("ranked", "count", "holders"),
    [
        (RANKED, 1, ["a-w0"]),
        (RANKED, 2, ["a-w0", "b-w0"]),  # the owner's sibling is passed over for another machine
        (RANKED, 3, ["a-w0", "b-w0", "c"]),
        (RANKED, 4, ["a-w0", "b-w0", "c", "a-w1"]),  # three machines: the fourth copy goes back in rank order
        (RANKED, 9, ["a-w0", "b-w0", "c", "a-w1", "b-w1"]),  # more than there are: everyone
        (["a-w1", "a-w0"], 2, ["a-w1", "a-w0"]),  # one machine: its workers, in rank order
        (["c", "a-w0", "d"], 2, ["c", "a-w0"]),  # machines of one member each: plain rank order
        ([], 2, []),
    ],
)
def test_replicas_prefer_other_machines(ranked: list[str], count: int, holders: list[str]) -> None:
    assert spread_over_machines(ranked, lambda member: member.split("-w")[0], count) == holders


def test_with_every_member_on_a_machine_of_its_own_the_holders_are_the_ranked_ones() -> None:
    ring = Rendezvous(NODES)
    for key in KEYS[:200]:
        assert spread_over_machines(ring.ranked(key, len(NODES)), lambda member: member, 3) == ring.ranked(key, 3)
