"""An attempt runner that executes on another node: what the key's owner calls to run an attempt in a region it
is not in (edge/placement/regions.py chooses the node).

`RemoteExecutor.execute` has the signature of `edge.engine.shell.executor.Executor.execute` and keeps its promise:
it never raises for network trouble. What the serving node's executor produced comes back as it is (its SSRF
guard's refusal included, not retryable); a node that cannot be reached, refuses the call or does not answer in
time becomes an error result that is retryable, like a connection error, so the job moves on (a reroute or a
retry). Cancelling `execute` cancels the attempt on the serving node too (edge/placement/peers.py, "Cancellation
end to end").
"""

from __future__ import annotations

from typing import final

import httpx
import trio

from edge.engine.outcome import AttemptResult
from edge.engine.shell.executor import Timeouts
from edge.placement.peers import PeerClient, PeerError

UNREACHABLE_PREFIX = "region node unreachable: "


@final
class RemoteExecutor:
    """Runs attempts on the node at `api_address` through `peers`."""

    __slots__ = ("_api_address", "_peers")

    def __init__(self, peers: PeerClient, api_address: str) -> None:
        self._peers = peers
        self._api_address = api_address

    def __repr__(self) -> str:
        return f"<RemoteExecutor via {self._api_address}>"

    async def execute(
        self,
        *,
        method: str,
        url: str | httpx.URL,
        headers: dict[str, str],
        body: str | None,
        timeouts: Timeouts,
    ) -> AttemptResult:
        started = trio.current_time()
        try:
            return await self._peers.attempt(
                self._api_address, method=method, url=url, headers=headers, body=body, timeouts=timeouts
            )
        except PeerError as exc:
            return AttemptResult(trio.current_time() - started, error=f"{UNREACHABLE_PREFIX}{exc}", retryable=True)
