"""Where a key owner's attempts run in a cluster: regions that are up, their health, and a runner per region.

The owner keeps the queue, the pacing and the job record (edge/engine/shell/queues.py); an attempt "in region R"
is executed by an alive node of R. When the owner is in R it runs the attempt itself; otherwise it sends it to a node
of R over the internal API (edge/placement/remote.py), which runs it through its own outbound stack, SSRF guard
included, and answers with the response. Which node of R: rendezvous hashing of the queue key over R's live members,
so one key's attempts in R go through one node (its connections stay warm) and the keys spread over R's nodes.

A region is up while it has a live member (alive or suspect, as for ownership). Health is the owner's own
experience per (origin, region) (edge/engine/regions.py): every leg reports when it started and how it ended.
What counts as a failure for health: no answer (a connection error, a timeout, a node of the region unreachable) or
a 5xx. Any other answer, a 429 included, means the region works; a race's cancelled loser teaches nothing.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import httpx
import trio

from cluster import MemberInfo, Rendezvous
from edge.engine.legs import NO_REGION, RegionView
from edge.engine.outcome import AttemptResult
from edge.engine.regions import RegionHealth
from edge.engine.shell.executor import Timeouts
from edge.engine.shell.placement import AttemptRunner
from edge.metrics import NodeMetrics
from edge.placement.peers import PeerClient
from edge.placement.remote import RemoteExecutor
from edge.runtime import Runtime

_SERVER_ERROR: Final = 500


class Members(Protocol):
    """What placement needs of the cluster member."""

    @property
    def local(self) -> MemberInfo: ...

    @property
    def version(self) -> int: ...

    def live_members(self) -> list[MemberInfo]: ...


class _NoNodeInRegion:
    """A region whose last node left between planning and running: the attempt fails at once, like a refused
    connection, and the job moves on (a reroute, or a retry)."""

    def __init__(self, region: str) -> None:
        self._region = region

    async def execute(
        self, *, method: str, url: str | httpx.URL, headers: dict[str, str], body: str | None, timeouts: Timeouts
    ) -> AttemptResult:
        await trio.lowlevel.checkpoint()
        return AttemptResult(0.0, error=f"no live node in region {self._region}")


class ClusterPlacement:
    """`Placement` for a clustered node (see the module docstring)."""

    def __init__(
        self,
        *,
        members: Members,
        peers: PeerClient,
        local: AttemptRunner,
        health: RegionHealth,
        runtime: Runtime,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._members = members
        self._metrics = metrics
        self._peers = peers
        self._local = local
        self._health = health
        self._runtime = runtime
        self._by_region: tuple[int, dict[str, list[MemberInfo]]] = (-1, {})

    @property
    def health(self) -> RegionHealth:
        return self._health

    def view(self) -> RegionView:
        now, rng = trio.current_time(), self._runtime.rng
        return RegionView(
            up=frozenset(self._regions()),
            local=self._members.local.region,
            rank=lambda origin, candidates: self._health.rank(origin, candidates, now, rng),
            p95=self._health.p95_s,
        )

    def members_by_region(self) -> dict[str, list[MemberInfo]]:
        return self._regions()

    def runner(self, region: str, key: str) -> AttemptRunner:
        local = self._members.local
        if region in (NO_REGION, local.region):
            return self._local
        members = self._regions().get(region, [])
        if not members:
            return _NoNodeInRegion(region)
        chosen = Rendezvous(m.node for m in members).owner(key)
        member = next(m for m in members if m.node == chosen)
        return RemoteExecutor(self._peers, member.api_address)

    def started(self, origin: str, region: str) -> None:
        self._health.started(origin, self._name(region), trio.current_time())

    def finished(self, origin: str, region: str, result: AttemptResult | None) -> None:
        name, now = self._name(region), trio.current_time()
        if result is None:
            self._health.finished(origin, name, now)
            outcome = "cancelled"
        elif result.status_code is None or result.status_code >= _SERVER_ERROR:
            self._health.failed(origin, name, now, rtt_s=result.duration_s or None)
            outcome = "failed"
        else:
            self._health.succeeded(origin, name, result.duration_s, now)
            outcome = "ok"
        if self._metrics is not None:
            self._metrics.region_attempts.labels(name, outcome).inc()
            if result is not None and result.status_code is not None:
                self._metrics.region_latency.labels(name).observe(result.duration_s)

    def snapshot(self, origins: set[str] | None = None) -> dict[str, Any]:
        """GET /api/v1/regions: each region with its members, and per origin the health this node has seen."""
        now, wall_ms = trio.current_time(), self._runtime.wall_ms()
        health: dict[str, dict[str, Any]] = {}
        for origin, by_region in self._health.snapshot(now=now).items():
            if origins is not None and origin not in origins:
                continue
            for region, status in by_region.items():
                wire = status.to_wire()
                ejected_until = wire.pop("ejected_until")
                wire["ejected_until_ms"] = (
                    None if ejected_until is None else wall_ms + int((ejected_until - now) * 1000)
                )
                health.setdefault(region, {})[origin] = wire
        regions = self._regions()
        return {
            "node": self._members.local.node,
            "region": self._members.local.region or None,
            "regions": [
                {
                    "region": region,
                    "up": bool(regions.get(region)),
                    "members": [m.node for m in regions.get(region, [])],
                    "origins": health.get(region, {}),
                }
                for region in sorted(set(regions) | set(health))
            ],
        }

    def _name(self, region: str) -> str:
        return region or self._members.local.region or "local"

    def _regions(self) -> dict[str, list[MemberInfo]]:
        version, by_region = self._by_region
        if version != self._members.version:
            by_region = {}
            for member in self._members.live_members():
                if member.region:
                    by_region.setdefault(member.region, []).append(member)
            self._by_region = (self._members.version, by_region)
        return by_region
