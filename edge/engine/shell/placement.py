"""Where a key owner's attempts run: the protocol the queue shell and webhook delivery use, and a lone node's.

A clustered node's implementation, with regions, is edge/placement/regions.py.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from edge.engine.legs import RegionView
from edge.engine.outcome import AttemptResult
from edge.engine.shell.executor import Timeouts


class AttemptRunner(Protocol):
    """Runs one attempt and reports its result, never raising for network trouble (Executor, or a remote node)."""

    async def execute(
        self,
        *,
        method: str,
        url: str | httpx.URL,
        headers: dict[str, str],
        body: str | None,
        timeouts: Timeouts,
    ) -> AttemptResult: ...


class Placement(Protocol):
    """Where attempts run: what the owner knows of regions, and a runner for each (edge/placement/regions.py)."""

    def view(self) -> RegionView: ...

    def runner(self, region: str, key: str) -> AttemptRunner: ...

    def started(self, origin: str, region: str) -> None: ...

    def finished(self, origin: str, region: str, result: AttemptResult | None) -> None: ...


class LocalPlacement:
    """A node alone: every attempt runs here, whatever region it names."""

    def __init__(self, executor: AttemptRunner, region: str = "") -> None:
        self._executor = executor
        self._view = RegionView.single(region)

    def view(self) -> RegionView:
        return self._view

    def runner(self, region: str, key: str) -> AttemptRunner:
        return self._executor

    def started(self, origin: str, region: str) -> None:
        pass

    def finished(self, origin: str, region: str, result: AttemptResult | None) -> None:
        pass
