"""Simulated HTTP: an httpx transport that hands each request to an in-process ASGI app, after a simulated delay.

Set it as `Runtime.transport` and every outbound call of a node goes through it without a socket: jobs to
upstreams and webhooks to receivers (edge/node.py `build_client`), and forwarding to other nodes (edge/internal.py
`PeerClient`). Apps are mounted by authority ("host:port", the port explicit or the scheme's default), so a
simulated upstream, a webhook receiver and another node's `JobApi` are all just ASGI apps.

Each app is called through `httpx.ASGITransport`, in the caller's task: the request leg's delay, the app, then the
reply leg's delay. What that model leaves out, on purpose for now:
- a caller that gives up (timeout, race loser) also cancels the app's work, where a real server would carry on;
- an exception in an app is raised to the caller (ASGITransport's `raise_app_exceptions`) instead of becoming a
  500, so a bug in a simulated node stops the run loudly.
An authority nothing is mounted on fails like a refused connection (`httpx.ConnectError`), after the request leg.
Every exchange is recorded in the trace: method, URL, status and a CRC of both bodies.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, final

import httpx
import trio

from .determinism import Trace

# The ASGI application callable, as httpx.ASGITransport takes it.
AsgiApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[MutableMapping[str, Any]]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

DEFAULT_PORTS = {"http": 80, "https": 443}


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """One-way delay, drawn uniformly for each leg of each request."""

    min_s: float = 0.0005
    max_s: float = 0.005

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_s <= self.max_s:
            raise ValueError("need 0 <= min_s <= max_s")


@dataclass(frozen=True, slots=True)
class _Mount:
    transport: httpx.ASGITransport
    latency: Latency


def authority_of(url: httpx.URL) -> str:
    """`host:port` of a URL, with the scheme's default port filled in (IPv6 hosts in brackets)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port or DEFAULT_PORTS.get(url.scheme, 80)}"


@final
class SimulatedHttp(httpx.AsyncBaseTransport):
    """Routes requests by authority to mounted ASGI apps, with a seeded latency per leg (see the module docstring)."""

    def __init__(self, *, rng: random.Random, trace: Trace, latency: Latency | None = None) -> None:
        self._rng = rng
        self._trace = trace
        self._latency = latency or Latency()
        self._mounts: dict[str, _Mount] = {}

    def __repr__(self) -> str:
        return f"<SimulatedHttp {len(self._mounts)} apps mounted: {', '.join(self._mounts)}>"

    def mount(self, authority: str, app: AsgiApp, *, latency: Latency | None = None) -> None:
        """Serve `authority` ("host:port") with `app` until `unmount`; `latency` overrides the default for it."""
        if authority in self._mounts:
            raise ValueError(f"{authority} is already mounted")
        transport = httpx.ASGITransport(app=app)
        self._mounts[authority] = _Mount(transport, latency or self._latency)
        self._trace.record(f"http mount {authority}")

    def unmount(self, authority: str) -> None:
        """Take `authority` down: requests to it are refused from now on (a crash or an outage)."""
        del self._mounts[authority]
        self._trace.record(f"http unmount {authority}")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        authority = authority_of(request.url)
        mount = self._mounts.get(authority)
        await trio.sleep(self._draw(mount.latency if mount else self._latency))
        mount = self._mounts.get(authority)  # it may have gone down while the request travelled
        if mount is None:
            self._trace.record(f"http refused {request.method} {request.url}")
            raise httpx.ConnectError(f"nothing is listening at {authority} on the simulated network", request=request)
        request_body = await request.aread()
        response = await mount.transport.handle_async_request(request)
        body = await response.aread()
        await trio.sleep(self._draw(mount.latency))
        self._trace.record(
            f"http {request.method} {request.url} -> {response.status_code} "
            f"{zlib.crc32(request_body):08x} {zlib.crc32(body):08x}"
        )
        return httpx.Response(
            response.status_code, headers=response.headers, stream=httpx.ByteStream(body), request=request
        )

    def _draw(self, latency: Latency) -> float:
        return self._rng.uniform(latency.min_s, latency.max_s)
