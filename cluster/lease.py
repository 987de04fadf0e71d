"""Who may run queue keys while the cluster may be split: a majority lease, and a wait before a takeover.

Rendezvous ownership alone lets both sides of a partition run a key: each side declares the other dead and
computes its own owners. A node may run (dispatch) its keys only while this gate allows it:

- Majority lease. The node holds a lease while it has heard (an authenticated datagram or stream) from enough
  members in the last `lease_s` that, with itself, they are a strict majority of the members it knows (alive,
  suspect or dead; members that left gracefully do not count). Two disjoint sides cannot both hold a majority,
  so the side that loses it stops dispatching within `lease_s` of the last it heard from the other side. A lone
  member of a one-member cluster always holds it.
- Wait before a takeover. When a member falls (declared dead), the keys it owned wait `takeover_wait_s` before
  their new owner dispatches them. If the fallen member is alive across a clean split, the last it heard from
  this side came before it was declared dead, and the wait is longer than its lease, with a margin for the gossip
  that carried the news and for clocks that run at slightly different rates: it has stopped.
- Quiet after a declared death. A node that hears it was declared dead (and refutes it) stops for `lease_s`,
  again at every such message: the others may be running its keys, and stop only when its refutation reaches
  them. This also covers a one-way split, where a node still hears the others but cannot reach them: they
  declare it dead, keep telling it so (gossip to the dead), and it stays quiet.

What it relies on. Only durations measured on each node's own monotonic clock, so clock offsets between nodes do
not matter; their rates may differ by up to TAKEOVER_DRIFT (10%), far more than real clocks drift. The lease
scales with the cluster: every member probes every other once per pass of its shuffled probe order (one member
per probe interval), so the lease is two passes (2 (N - 1) intervals), in which a live member is heard at least
once even without other traffic.

What it costs: a key changes hands `takeover_wait_s` later than failure detection alone would allow; a side
without a majority runs no key at all (its nodes keep accepting jobs, which run when it heals); a cluster of two
members stops dispatching when one of them dies, since it cannot tell death from a split (three members or more
keep running with one lost); a member that died for good counts in the majority until it is forgotten
(`reconnect_timeout`), unless it left gracefully.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Final, final

TAKEOVER_DRIFT: Final = 0.10  # the clock-rate difference between two nodes the wait absorbs


def lease_duration(probe_interval: float, probe_timeout: float, member_count: int) -> float:
    """How long a round trip with a member counts: two passes of the shuffled probe order, so that any window
    this long probes every other member at least once (one pass may visit a member first, the next last)."""
    return max(1, 2 * (member_count - 1)) * probe_interval + probe_timeout


def takeover_wait(probe_interval: float, probe_timeout: float, member_count: int) -> float:
    """How long the keys of a fallen member wait: its lease, one more probe interval (the news of its death
    travelling), and the drift margin."""
    lease = lease_duration(probe_interval, probe_timeout, member_count)
    return lease * (1 + TAKEOVER_DRIFT) + probe_interval


@final
class RunGate:
    """The partition rule for one node (see the module docstring). Times are the node's monotonic seconds."""

    __slots__ = (
        "_contact",
        "_fallen",
        "_node",
        "_probe_interval",
        "_probe_timeout",
        "_quiet_until",
        "times_declared_dead",
    )

    def __init__(self, *, node: str, probe_interval: float, probe_timeout: float) -> None:
        self._node = node
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._contact: dict[str, float] = {}  # member -> the last time this node heard from it
        self._fallen: dict[str, float] = {}  # member -> when this node learned it was dead
        self._quiet_until = -math.inf
        # How often others declared this node dead: each time, its keys may have run elsewhere meanwhile, so the
        # node syncs them before it runs them again (edge/placement/replication.py).
        self.times_declared_dead = 0

    def lease_s(self, member_count: int) -> float:
        return lease_duration(self._probe_interval, self._probe_timeout, member_count)

    def takeover_wait_s(self, member_count: int) -> float:
        return takeover_wait(self._probe_interval, self._probe_timeout, member_count)

    # -- what happened ------------------------------------------------------------------------------------------

    def heard(self, member: str, now: float) -> None:
        """An authenticated message from `member` arrived now."""
        self._contact[member] = now

    def fell(self, member: str, now: float) -> None:
        """`member` was declared dead (not: left, which hands its keys over at once)."""
        self._fallen.setdefault(member, now)

    def rose(self, member: str) -> None:
        """`member` is alive again, or left, or was forgotten: its keys are its own or handed over."""
        self._fallen.pop(member, None)

    def forget(self, member: str) -> None:
        self._fallen.pop(member, None)
        self._contact.pop(member, None)

    def refuted_death(self, now: float, member_count: int) -> None:
        """This node heard it was declared dead, and refutes: others may run its keys until they hear that."""
        self._quiet_until = max(self._quiet_until, now + self.lease_s(member_count))
        self.times_declared_dead += 1

    # -- the answers --------------------------------------------------------------------------------------------

    def has_quorum(self, known: Collection[str], now: float) -> bool:
        """Whether this node holds the majority lease over `known` (every member not left, this one included)."""
        if now < self._quiet_until:
            return False
        lease = self.lease_s(len(known))
        in_touch = 1 + sum(
            1 for member in known if member != self._node and now <= self._contact.get(member, -math.inf) + lease
        )
        return 2 * in_touch > len(known)

    def waiting(self, now: float, member_count: int) -> frozenset[str]:
        """The fallen members whose keys still wait before their new owners may run them."""
        wait = self.takeover_wait_s(member_count)
        return frozenset(member for member, at in self._fallen.items() if now < at + wait)

    def next_change(self, known: Collection[str], now: float) -> float:
        """The next moment an answer may change without new events: a lease lapsing, a wait ending."""
        lease = self.lease_s(len(known))
        wait = self.takeover_wait_s(len(known))
        moments = [at + lease for member, at in self._contact.items() if at + lease > now]
        moments += [at + wait for at in self._fallen.values() if at + wait > now]
        if self._quiet_until > now:
            moments.append(self._quiet_until)
        return min(moments, default=math.inf)
