"""Probe bookkeeping: the randomized round-robin order, our probe in flight, and probes we relay for others.

Round-robin over a shuffled list (SWIM section 4.3) bounds the time until any given member is probed by this
node to two passes of the list, where picking uniformly at random would leave a member unprobed for
arbitrarily long. A member that joins is inserted at a random position, so it is probed within the current
pass or the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

from .messages import Address, MemberState

if TYPE_CHECKING:
    from random import Random


class _HasState(Protocol):
    @property
    def state(self) -> MemberState: ...


@final
class ProbeRing:
    """The order in which this node probes the others."""

    __slots__ = ("_index", "_order", "_rng")

    def __init__(self, rng: Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._index = 0

    def add(self, node: str) -> None:
        """Insert a new member at a random position (memberlist: append, then swap with a random slot)."""
        self._order.append(node)
        slot = self._rng.randrange(len(self._order))
        self._order[slot], self._order[-1] = self._order[-1], self._order[slot]

    def next_target(self, members: Mapping[str, _HasState]) -> str | None:
        """The next live member to probe, or None if there is none. A finished pass reshuffles the order and
        forgets members no longer in `members`; at most one pass is scanned per call."""
        for _ in range(len(self._order) + 1):
            if self._index >= len(self._order):
                self._order = [node for node in self._order if node in members]
                self._rng.shuffle(self._order)
                self._index = 0
                if not self._order:
                    return None
            node = self._order[self._index]
            self._index += 1
            member = members.get(node)
            if member is not None and member.state.is_live:
                return node
        return None


@final
@dataclass(slots=True, kw_only=True)
class Probe:
    """Our probe in flight: direct ping until `ack_deadline`, then indirect pings until `final_deadline`."""

    seq: int
    target: str
    address: Address
    ack_deadline: float
    final_deadline: float
    indirect_sent: bool = False
    nacks_expected: int = 0
    nacks: int = 0


@final
@dataclass(slots=True, kw_only=True)
class Relay:
    """An indirect ping we run for `requester`: relay the target's ack, or send a nack at `deadline`."""

    requester: Address
    requester_seq: int
    want_nack: bool
    deadline: float
