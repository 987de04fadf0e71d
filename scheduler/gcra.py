"""Generic Cell Rate Algorithm: the pacer behind every outbound queue.

Why GCRA rather than a token bucket with a refill loop: it keeps a single float of state per queue (the
theoretical arrival time, TAT), needs no timer, and answers "when may the next request go?" in O(1), which
is exactly what a sleeping Trio task needs to know. With 100,000 queues, one float beats a bucket plus a
timestamp.

Model. Each send adds one *cell* of `interval = 1 / rate` seconds to the TAT; the TAT drains at wall speed.
A send at `now` conforms when the backlog before it, `TAT - now`, is at most `(burst - 1) * interval`, so
after an idle spell `burst` sends may go back to back, then they are spaced by `interval`.

Invariant (checked by simulation in tests/scheduler/test_gcra.py): over any window of length W, the number of
consumes is at most `burst + W * rate`. When the rate changes, the bound holds with `W * rate` replaced by the
integral of the rate over the window, because `set_rate` keeps the backlog measured in cells, not in seconds.
"""

from __future__ import annotations

import math


def _checked_interval(rate: float) -> float:
    if not (math.isfinite(rate) and rate > 0.0):
        raise ValueError(f"rate must be a positive finite number of requests per second, got {rate!r}")
    return 1.0 / rate


class Gcra:
    """One pacer: `ready_at` says when the next send may go, `consume` records a send."""

    __slots__ = ("_burst", "_interval", "_tat")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._interval = _checked_interval(rate)
        self._burst = burst
        # -inf: never used, so the first `burst` sends may go at once whatever the clock's origin.
        self._tat = -math.inf

    @property
    def rate(self) -> float:
        """Sends per second."""
        return 1.0 / self._interval

    @property
    def burst(self) -> int:
        return self._burst

    def ready_at(self, now: float) -> float:
        """Earliest time the next send may go; returns `now` when it may go right away."""
        return max(now, self._tat - (self._burst - 1) * self._interval)

    def consume(self, now: float) -> None:
        """Record one send at `now`. Callers consume only when `ready_at(now) <= now`; an early send still
        adds its cell, so the debt is paid by waiting longer afterwards."""
        self._tat = max(self._tat, now) + self._interval

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate, keeping the backlog as a number of cells.

        Rescaling the outstanding cells (rather than keeping the TAT, or resetting it to `now`) is what makes
        a lower rate stretch the current wait instead of letting a burst through, and a higher rate shorten it
        at once instead of waiting out a schedule computed for the old rate.
        """
        new_interval = _checked_interval(rate)
        if new_interval == self._interval:
            return
        backlog_cells = max(0.0, self._tat - now) / self._interval
        if backlog_cells > 0.0:
            self._tat = now + backlog_cells * new_interval
        self._interval = new_interval

    def __repr__(self) -> str:
        return f"Gcra(rate={self.rate:g}/s, burst={self._burst}, tat={self._tat:g})"
