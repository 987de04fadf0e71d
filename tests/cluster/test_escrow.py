"""The escrow rules (cluster/escrow.py): rights from mints, gifts and use; and that no interleaving of spends and
gifts, with any subset of messages lost, spends more than was minted."""

from __future__ import annotations

from random import Random

import pytest

from cluster.escrow import Ledger, genesis_gifts, gift, top_up

SEED = 20_261_202


def test_rights_come_from_the_counting_mint_gifts_and_use() -> None:
    ledger = Ledger(minted={"b": 10}, given={("b", "a"): 4, ("a", "c"): 1}, used={"a": 2, "b": 1})
    assert ledger.minter == "b" and ledger.allowance == 10
    assert (ledger.rights("a"), ledger.rights("b"), ledger.rights("c")) == (3, 6, 1)
    assert (ledger.available("a"), ledger.available("b"), ledger.available("c")) == (1, 5, 1)
    assert ledger.richest(["a", "b", "c", "d"]) == ["b", "a", "c"]
    assert ledger.total_used == 3 and ledger.nodes() == {"a", "b", "c"}


def test_two_mints_count_once_the_lowest_node_ids() -> None:
    """A split at the genesis: both sides minted. The lowest id's mint counts; the other minter's own mint is void,
    so it has nothing left to spend once it learns of the other (what it spent before is the stated overshoot)."""
    ledger = Ledger(minted={"b": 10, "a": 10}, used={"b": 3})
    assert ledger.minter == "a" and ledger.allowance == 10
    assert ledger.available("a") == 10 and ledger.available("b") == -3


def test_before_the_genesis_nobody_has_rights() -> None:
    ledger = Ledger()
    assert ledger.minter is None and ledger.allowance == 0 and ledger.available("a") == 0
    assert ledger.richest(["a", "b"]) == []


@pytest.mark.parametrize(
    ("available", "wanted", "pending", "expected"),
    [
        (10, 1, 0, 5),  # half of what it has
        (10, 8, 0, 8),  # at least what was wanted, when it can spare it
        (10, 20, 0, 10),  # never more than it has
        (10, 1, 9, 1),  # spends being saved are not spare
        (1, 1, 0, 1),
        (0, 1, 0, 0),
        (10, 0, 0, 0),
    ],
)
def test_a_gift_is_half_the_givers_spare_at_least_what_was_wanted(
    available: int, wanted: int, pending: int, expected: int
) -> None:
    ledger = Ledger(minted={"a": available})
    assert gift(ledger, "a", wanted, pending=pending) == expected


def test_the_genesis_gives_each_other_member_an_equal_share() -> None:
    assert genesis_gifts(10, "b", ["a", "b", "c"]) == {"a": 3, "c": 3}  # b keeps 3 and the remainder
    assert genesis_gifts(2, "a", ["a", "b", "c"]) == {}  # shares of 0 are not given
    assert genesis_gifts(10, "a", ["a"]) == {}


def test_a_top_up_mints_only_the_growth_and_only_by_the_minter() -> None:
    ledger = Ledger(minted={"a": 10})
    assert top_up(ledger, "a", 15) == 5 and top_up(ledger, "a", 8) == 0 and top_up(ledger, "b", 15) == 0


def _ledger_of(entries: dict[tuple[str, ...], int]) -> Ledger:
    return Ledger(
        minted={k[1]: v for k, v in entries.items() if k[0] == "minted"},
        given={(k[1], k[2]): v for k, v in entries.items() if k[0] == "given"},
        used={k[1]: v for k, v in entries.items() if k[0] == "used"},
    )


def _trial(rng: Random, nodes: list[str], allowance: int) -> int:
    """One random schedule; the rights spent in all."""
    # Each node's knowledge: the entries it has (a key -> value), merged by max like G-counter entries.
    known: dict[str, dict[tuple[str, ...], int]] = {node: {} for node in nodes}
    truth: dict[tuple[str, ...], int] = {}

    def write(node: str, key: tuple[str, ...], value: int) -> None:
        known[node][key] = truth[key] = value

    write("c", ("minted", "c"), allowance)
    for _step in range(150):
        node = rng.choice(nodes)
        action = rng.random()
        ledger = _ledger_of(known[node])
        if action < 0.45 and ledger.available(node) > 0:
            write(node, ("used", node), ledger.used.get(node, 0) + 1)
        elif action < 0.7:
            receiver = rng.choice([n for n in nodes if n != node])
            amount = gift(ledger, node, rng.randrange(1, 5))
            if amount:
                write(node, ("given", node, receiver), ledger.given.get((node, receiver), 0) + amount)
        else:  # one entry travels from one node to another (or is lost: it just never does)
            source, target = rng.sample(nodes, 2)
            if known[source]:
                key = rng.choice(sorted(known[source]))
                known[target][key] = max(known[target].get(key, 0), known[source][key])
    return sum(value for key, value in truth.items() if key[0] == "used")


def test_no_schedule_of_spends_gifts_and_lost_messages_spends_more_than_was_minted() -> None:
    """Five nodes, each with its own (possibly stale) copy of the ledger's entries, spend and give as the rules
    allow while entries travel between them at random, some never: the rights spent never exceed the mint, and
    with enough travel most of it is spent."""
    rng = Random(SEED)
    spent_fractions = []
    for _trial_index in range(200):
        allowance = rng.randrange(1, 60)
        spent = _trial(rng, ["a", "b", "c", "d", "e"], allowance)
        assert spent <= allowance
        spent_fractions.append(spent / allowance)
    assert sum(spent_fractions) / len(spent_fractions) > 0.3  # the schedule does exercise spending
