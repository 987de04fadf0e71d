"""Exponential backoff with full jitter.

Why full jitter: when many queues hit the same provider limit at once, a deterministic or "equal jitter"
backoff brings them back in step; drawing uniformly from [0, ceiling] spreads the retries over the whole
interval and gives the fewest collisions for the same mean wait. The rng is injected so the simulator can
replay a run exactly.
"""

from __future__ import annotations

import math
from random import Random


def backoff_ceiling(attempt: int, *, base_s: float, cap_s: float) -> float:
    """`min(cap_s, base_s * 2**attempt)` for any attempt number (a queue stuck for days must not overflow)."""
    if attempt < 0:
        raise ValueError(f"attempt counts from 0, got {attempt!r}")
    if not (math.isfinite(base_s) and math.isfinite(cap_s) and base_s >= 0.0 and cap_s >= 0.0):
        raise ValueError(f"base_s and cap_s must be finite and non-negative, got {base_s!r}, {cap_s!r}")
    try:
        return min(cap_s, math.ldexp(base_s, attempt))
    except OverflowError:
        return cap_s


def full_jitter(attempt: int, *, base_s: float, cap_s: float, rng: Random) -> float:
    """A delay drawn uniformly from [0, min(cap_s, base_s * 2**attempt)]; `attempt` counts from 0."""
    return rng.uniform(0.0, backoff_ceiling(attempt, base_s=base_s, cap_s=cap_s))
