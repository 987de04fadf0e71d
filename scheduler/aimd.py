"""Adaptive concurrency: find an upstream's capacity when the operator does not know it.

TCP congestion avoidance applied to concurrency slots instead of a byte window:

- additive increase: each fast success adds `increase_per_round / limit`, so a full round of `limit`
  successes (about one round trip's worth) grows the limit by `increase_per_round`;
- multiplicative decrease: an overload signal multiplies the limit by `decrease_factor` (Reno halves; 0.5);
- one decrease per round: only a request admitted *after* the last decrease may cause another, just as TCP
  reacts once per window of losses. Without this, the 50 requests already in flight when an upstream starts
  to shed load would each halve the limit and crash it to the minimum.

Overload signals are the upstream answering 429 or 503, and latency: a success slower than
`latency_tolerance` times the baseline counts as congestion (a queue is building up inside the upstream).
The baseline is the smallest latency seen over the last one to two windows of `baseline_window` samples, so
it follows an upstream that really became slower, rather than remembering one lucky sample forever (the
problem with a plain all-time minimum).

The limit only grows while it is being used (at least half the slots busy, as in Netflix's
concurrency-limits): an idle proxy must not drift up to the maximum and then meet a flood with a limit it
never tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class AimdPolicy:
    """Tunables of adaptive concurrency; the ceiling is the scheduler's configured capacity."""

    limit_initial: int = 4
    limit_min: int = 1
    increase_per_round: float = 1.0
    decrease_factor: float = 0.5
    # None: react to 429/503 only. Otherwise a success slower than tolerance x baseline latency is congestion.
    latency_tolerance: float | None = 2.0
    baseline_window: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.limit_min <= self.limit_initial:
            raise ValueError(f"need 1 <= limit_min <= limit_initial, got {self.limit_min!r}, {self.limit_initial!r}")
        if not (math.isfinite(self.increase_per_round) and self.increase_per_round > 0.0):
            raise ValueError(f"increase_per_round must be positive, got {self.increase_per_round!r}")
        if not 0.0 < self.decrease_factor < 1.0:
            raise ValueError(f"decrease_factor must be in (0, 1), got {self.decrease_factor!r}")
        if self.latency_tolerance is not None and not (
            math.isfinite(self.latency_tolerance) and self.latency_tolerance > 1.0
        ):
            raise ValueError(f"latency_tolerance must exceed 1, got {self.latency_tolerance!r}")
        if self.baseline_window < 1:
            raise ValueError(f"baseline_window must be at least 1, got {self.baseline_window!r}")


class AimdLimit:
    """The current concurrency limit of one upstream, moved by the outcomes of finished requests."""

    __slots__ = (
        "_baseline_current_s",
        "_baseline_previous_s",
        "_baseline_samples",
        "_last_decrease_at",
        "_limit",
        "_limit_max",
        "_policy",
    )

    def __init__(self, policy: AimdPolicy, *, limit_max: int) -> None:
        if limit_max < policy.limit_min:
            raise ValueError(f"limit_max {limit_max!r} is below limit_min {policy.limit_min!r}")
        self._policy = policy
        self._limit_max = limit_max
        # A small upstream (max_concurrency 2, say) simply starts at its maximum.
        self._limit = float(min(policy.limit_initial, limit_max))
        self._last_decrease_at = -math.inf
        self._baseline_current_s = math.inf
        self._baseline_previous_s = math.inf
        self._baseline_samples = 0

    @property
    def limit(self) -> int:
        """Whole slots the upstream may have in flight now."""
        return int(self._limit)

    def on_success(self, latency_s: float, *, admitted_at: float, in_use: int, now: float) -> None:
        """A request answered normally; `in_use` is the slots busy just before it finished."""
        if self._is_slow(latency_s):
            self.on_overload(admitted_at=admitted_at, now=now)
        elif 2 * in_use >= self._limit:
            self._limit = min(float(self._limit_max), self._limit + self._policy.increase_per_round / self._limit)

    def on_overload(self, *, admitted_at: float, now: float) -> None:
        """The upstream pushed back (429, 503, or too slow); shrink unless this round already did."""
        if admitted_at < self._last_decrease_at:
            return
        self._limit = max(float(self._policy.limit_min), self._limit * self._policy.decrease_factor)
        self._last_decrease_at = now

    def _is_slow(self, latency_s: float) -> bool:
        tolerance = self._policy.latency_tolerance
        if tolerance is None:
            return False
        baseline_s = min(self._baseline_current_s, self._baseline_previous_s)
        self._baseline_current_s = min(self._baseline_current_s, latency_s)
        self._baseline_samples += 1
        if self._baseline_samples >= self._policy.baseline_window:
            self._baseline_previous_s = self._baseline_current_s
            self._baseline_current_s = math.inf
            self._baseline_samples = 0
        return latency_s > tolerance * baseline_s

    def __repr__(self) -> str:
        return f"AimdLimit(limit={self._limit:.2f}, max={self._limit_max})"
