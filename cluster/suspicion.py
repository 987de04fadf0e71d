"""Lifeguard's dynamic suspicion timeout: long while one member accuses, short once several agree.

A suspicion starts at the max timeout. Each *independent* confirmation (another member that suspects the same
node at the same time) pulls the deadline toward the min, on a log scale: after k confirmations it is the min.
The first accuser never counts as a confirmation, nor does anyone twice. A node that is merely slow gets the
long timeout (and time to refute); a node that many members cannot reach is declared dead quickly.
"""

from __future__ import annotations

import math
from typing import final


def suspicion_timeout_bounds(
    *, suspicion_mult: int, max_timeout_mult: int, member_count: int, probe_interval: float
) -> tuple[float, float]:
    """(min, max) suspicion timeout: min = mult * max(1, log10 N) * interval, max = max_timeout_mult * min.

    The log10 term widens the timeout in big clusters, where gossip takes more rounds to reach the suspect.
    """
    node_scale = max(1.0, math.log10(max(1, member_count)))
    minimum = suspicion_mult * node_scale * probe_interval
    return minimum, max_timeout_mult * minimum


def remaining_suspicion_time(
    confirmations: int, needed: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Seconds left before a suspicion that started `elapsed` ago fires (negative: overdue).

    timeout = max - (max - min) * log(n + 1) / log(k + 1), floored to whole milliseconds and never below min.
    With k < 1 no confirmations are expected and the timeout is the min.
    """
    if needed < 1:
        return min_timeout - elapsed
    fraction = math.log(confirmations + 1) / math.log(needed + 1)
    timeout = math.floor(1000 * (max_timeout - fraction * (max_timeout - min_timeout))) / 1000
    return max(timeout, min_timeout) - elapsed


@final
class Suspicion:
    """The timer of one suspected member: who accused it, who confirmed, and when it fires."""

    __slots__ = (
        "_confirmed_by",
        "accuser",
        "deadline",
        "incarnation",
        "max_timeout",
        "min_timeout",
        "needed",
        "started_at",
    )

    def __init__(
        self,
        *,
        accuser: str,
        incarnation: int,
        needed: int,
        min_timeout: float,
        max_timeout: float,
        started_at: float,
    ) -> None:
        self.accuser = accuser
        # The incarnation it was armed for: when it fires, the member must still be suspect at it.
        self.incarnation = incarnation
        self.needed = needed
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.started_at = started_at
        self._confirmed_by: dict[str, None] = {}
        self.deadline = started_at + remaining_suspicion_time(0, needed, 0.0, min_timeout, max_timeout)

    @property
    def confirmations(self) -> int:
        return len(self._confirmed_by)

    def confirm(self, member: str) -> bool:
        """Count `member` as an independent confirmation; True if new (the caller then re-gossips it)."""
        if len(self._confirmed_by) >= self.needed or member == self.accuser or member in self._confirmed_by:
            return False
        self._confirmed_by[member] = None
        self.deadline = self.started_at + remaining_suspicion_time(
            len(self._confirmed_by), self.needed, 0.0, self.min_timeout, self.max_timeout
        )
        return True
