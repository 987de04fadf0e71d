"""Lifeguard's local health multiplier: when this node misses acks, it may be the sick one, so it slows down.

A score from 0 (healthy) to max - 1 stretches this node's probe interval and probe timeout by (score + 1). A
slow or overloaded node that cannot process acks in time would otherwise accuse healthy members; with the
multiplier its probes wait longer and fire less often until it recovers. The rules that move the score live
with the probe (swim.py): a direct ack -1; a failed probe +1 per missing nack (or +1 without nack-capable
relays); having to refute a suspicion about ourselves +1.
"""

from __future__ import annotations

from typing import final


@final
class Awareness:
    __slots__ = ("_max_multiplier", "_score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be >= 1")
        self._max_multiplier = max_multiplier
        self._score = 0

    @property
    def score(self) -> int:
        return self._score

    def apply_delta(self, delta: int) -> None:
        """Move the score, clamped to 0..max_multiplier - 1."""
        self._score = min(max(self._score + delta, 0), self._max_multiplier - 1)

    def scale(self, duration: float) -> float:
        return duration * (self._score + 1)
