"""Escrow: a ceiling that no split of the cluster can overshoot, built from G-counters (a bounded counter).

Why a G-counter is not enough. The cluster-wide count of a G-counter (cluster/counters.py) tells each node how
much was used, as fast as the gossip carries it. A ceiling enforced on that count over-admits by whatever the
other nodes accept before their increments arrive, and across a partition by up to the whole remainder on each
side: gubernator's GLOBAL mode and the multi-region limiters of Envoy and Upstash accept that by design.

Rights. Here the allowance of one quota (an account's jobs in one month) exists as *rights*, and a node accepts a
job only by spending one of its own. The ledger of one quota is four families of G-counter entries, each written
by one node only, so every node can compute every node's rights from what the gossip brought:

    rights(n)    = minted(n) + sum over g of given(g -> n) - sum over r of given(n -> r)
    available(n) = rights(n) - used(n)

`minted(n)` is the allowance, created once by one node (the genesis); `given(g -> n)` is how much g handed to n
in all; `used(n)` is how much n spent. A node spends and gives only while its own `available` stays >= 0, and its
view of its own rights is never above the truth: what it wrote itself (minted, given away, used) it knows exactly,
and a gift to it counts only once it has arrived. So the rights spent, over every node, never exceed what was
minted, whatever the network does: a partitioned node spends what it holds and no more, and rights in transit
are simply not spendable yet.

The genesis, and the one bound that is not zero. The allowance must be minted exactly once. The node that mints
is the one the caller names (edge/placement/usage.py: the rendezvous owner of the account among the live
members), when no mint is known yet. Two mints can only happen if two nodes disagree about that at the moment of
the quota's first use (a split cluster when the month begins); then the mint of the lowest node id counts and
the other minter's rights are void from the moment it learns of it (it stops spending; what it spent before
that is the overshoot, at most what one side of the split accepted in the meantime). Everything after the
genesis is exact.

Moving rights. At the genesis the minter keeps one share and gives each other live member one (`genesis_gifts`),
so nodes rarely need to ask. A node that runs out borrows from the node its ledger says is richest, which gives
half of what it has available (`gift`): rights spread geometrically toward demand, and what remains at the end is
less than one right per node. Rights held by a node that is gone for good are lost until the quota's period ends:
the price of never counting a right twice, paid as under-admission, never overshoot.

Raising the allowance later (a plan changed mid-month) mints the difference (`top_up`); lowering it cannot take
back rights already spread, so the caller also refuses once the known cluster-wide use reaches the new ceiling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import final


@final
@dataclass(frozen=True, slots=True)
class Ledger:
    """One quota's rights as a node knows them: mints, gifts (giver, receiver) and use, per node."""

    minted: Mapping[str, int] = field(default_factory=dict)
    given: Mapping[tuple[str, str], int] = field(default_factory=dict)
    used: Mapping[str, int] = field(default_factory=dict)

    @property
    def minter(self) -> str | None:
        """The node whose mint counts: the lowest node id among those that minted (see the module docstring)."""
        return min((node for node, amount in self.minted.items() if amount > 0), default=None)

    @property
    def allowance(self) -> int:
        """What the counting mint created (0 before the genesis)."""
        minter = self.minter
        return 0 if minter is None else self.minted[minter]

    def rights(self, node: str) -> int:
        received = sum(amount for (_giver, receiver), amount in self.given.items() if receiver == node)
        gave = sum(amount for (giver, _receiver), amount in self.given.items() if giver == node)
        minted = self.minted.get(node, 0) if node == self.minter else 0
        return minted + received - gave

    def available(self, node: str) -> int:
        return self.rights(node) - self.used.get(node, 0)

    @property
    def total_used(self) -> int:
        return sum(self.used.values())

    def nodes(self) -> set[str]:
        """Every node the ledger names."""
        named = set(self.minted) | set(self.used)
        for giver, receiver in self.given:
            named.update((giver, receiver))
        return named

    def richest(self, candidates: Iterable[str]) -> list[str]:
        """The candidates with rights available, most first (ties: by node id, so every node asks alike)."""
        ranked = [(-self.available(node), node) for node in candidates if self.available(node) > 0]
        return [node for _amount, node in sorted(ranked)]


def gift(ledger: Ledger, giver: str, wanted: int, *, pending: int = 0) -> int:
    """How much `giver` hands to a node that asked for `wanted` rights: half of what it has available (less the
    `pending` spends it is making), at least what was wanted when it can spare it, never more than it has."""
    spare = ledger.available(giver) - pending
    if spare <= 0 or wanted <= 0:
        return 0
    return min(spare, max(wanted, spare // 2))


def genesis_gifts(allowance: int, minter: str, members: Sequence[str]) -> dict[str, int]:
    """What the minter gives each other member right after minting: an equal share each (the minter keeps its
    own share and the remainder of the division)."""
    others = sorted(set(members) - {minter})
    share = allowance // (len(others) + 1)
    return {node: share for node in others if share > 0}


def top_up(ledger: Ledger, minter: str, allowance: int) -> int:
    """How much more `minter` mints when the allowance grew beyond what its mint created (0 otherwise)."""
    if ledger.minter != minter:
        return 0
    return max(0, allowance - ledger.minted.get(minter, 0))
