"""The fast model's clock: a heap of timed callbacks, run in time order on one thread.

Ties run in the order they were scheduled (a sequence number breaks them), so a run is a function of its seed and
nothing else. There is no task, no await and no cancellation: a callback that must not run any more (a crashed
node's attempt) checks, when it runs, whether the state it was scheduled for still holds.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, final


@final
class EventLoop:
    """`at(when, callback, *args)` books a call; `run_until(t)` makes them, in time order, up to `t`."""

    __slots__ = ("_heap", "_sequence", "events", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0  # callbacks run so far: the run's size, reported where the full model gives its trace
        self._sequence = 0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []

    def __repr__(self) -> str:
        return f"<EventLoop t={self.now:.3f}: {len(self._heap)} pending, {self.events} run>"

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Call `callback(*args)` at `when` (at once, after what is due now, if `when` has passed)."""
        self._sequence += 1
        heapq.heappush(self._heap, (max(when, self.now), self._sequence, callback, args))

    def run_until(self, until: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            when, _sequence, callback, args = pop(heap)
            self.now = when
            self.events += 1
            callback(*args)
        self.now = max(self.now, until)
