"""Real peers for proxy tests: a fixed-capacity upstream on loopback, and the proxy itself in front of it.

Both listen on 127.0.0.1 on the project's own `serve_asgi` (its HTTP/1.1 and HTTP/2 front end), so
every test exercises real sockets, the listener's HTTP server in front and the proxy's upstream pool behind.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import trio
from prometheus_client import CollectorRegistry

from edge.config import ENV_PROTECT, ProtectConfig, ProtectKeyConfig, load_config
from edge.http.server import serve_asgi
from edge.proxy import ProxyApp, ProxyMetrics, open_proxy
from scheduler.fair import SchedulerStatistics
from tests.edge.http.servers import STOP_TIMEOUT_S, RunningServer, running

Scope = dict[str, Any]
CHUNK_BYTES = 64 * 1024
KEY_HEADER = "x-api-key"


async def respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Upstream:
    """An API with `capacity` concurrent slots, each request on /work holding one for `service_s`.

    Beyond capacity it answers 503 at once, so a proxy that sends too much shows up as `overloaded`.
    Other routes: /headers (echo what arrived), /status/<code>, /sleep?s=, /download?bytes=, /upload.
    """

    capacity: int = 8
    service_s: float = 0.02
    in_flight: int = 0
    in_flight_max: int = 0
    overloaded: int = 0
    served_by_key: Counter[str] = field(default_factory=Counter)
    served_log: list[tuple[float, str]] = field(default_factory=list)  # (finished at, key)
    connections: set[tuple[str, int]] = field(default_factory=set)
    started: int = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.started += 1
        self.connections.add(tuple(scope["client"]))
        path = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        if path == "/upload":
            await self._upload(receive, send)
            return
        await _drain(receive)
        if path.startswith("/headers"):
            seen = {
                "method": scope["method"],
                "target": (scope["raw_path"] + b"?" + scope["query_string"]).decode(),
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            }
            await respond(send, 200, json.dumps(seen).encode(), [(b"x-upstream", b"1")])
        elif path.startswith("/status/"):
            await respond(send, int(path.rsplit("/", 1)[1]), b"{}")
        elif path == "/sleep":
            await trio.sleep(float(query["s"]))
            await respond(send, 200, b"{}")
        elif path == "/download":
            await self._download(send, int(query["bytes"]))
        elif path == "/hop-by-hop":
            await respond(
                send,
                200,
                b"{}",
                [
                    (b"connection", b"x-private"),
                    (b"x-private", b"1"),
                    (b"keep-alive", b"timeout=5"),
                    (b"proxy-authenticate", b"Basic"),
                    (b"x-kept", b"1"),
                ],
            )
        else:
            await self._work(scope, send)

    async def _work(self, scope: Scope, send: Any) -> None:
        key = next((v.decode() for k, v in scope["headers"] if k == KEY_HEADER.encode()), "-")
        if self.in_flight >= self.capacity:
            self.overloaded += 1
            await respond(send, 503, b"{}")
            return
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            await trio.sleep(self.service_s)
        finally:
            self.in_flight -= 1
        self.served_by_key[key] += 1
        self.served_log.append((trio.current_time(), key))
        await respond(send, 200, b'{"ok":true}')

    async def _upload(self, receive: Any, send: Any) -> None:
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        await respond(send, 200, json.dumps({"bytes": size, "sha256": digest.hexdigest()}).encode())

    async def _download(self, send: Any, size: int) -> None:
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = bytes(range(256)) * (CHUNK_BYTES // 256)
        sent = 0
        while sent < size:
            piece = chunk[: min(CHUNK_BYTES, size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})


async def _drain(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


def expected_download_sha256(size: int) -> str:
    chunk = bytes(range(256)) * (CHUNK_BYTES // 256)
    digest = hashlib.sha256()
    for start in range(0, size, CHUNK_BYTES):
        digest.update(chunk[: min(CHUNK_BYTES, size - start)])
    return digest.hexdigest()


@dataclass
class RunningProxy:
    app: ProxyApp
    server: RunningServer
    registry: CollectorRegistry
    stopping: trio.Event

    async def stop(self) -> None:
        """Stop the listener gracefully (as the node's stop does) and wait until it has."""
        self.stopping.set()
        with trio.fail_after(STOP_TIMEOUT_S):
            await self.server.stopped.wait()

    @property
    def url(self) -> str:
        return self.server.url

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@asynccontextmanager
async def proxy_to(upstream_url: str, **settings: Any) -> AsyncIterator[RunningProxy]:
    """A protected listener on 127.0.0.1 in front of `upstream_url`, with `settings` as its [[protect]] keys."""
    protect = ProtectConfig(listen="127.0.0.1:0", upstream=upstream_url, name="test", **settings)
    registry = CollectorRegistry()
    stop, stopped = trio.Event(), trio.Event()
    async with open_proxy(protect, metrics=ProxyMetrics(registry)) as app, trio.open_nursery() as nursery:

        async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve_asgi(
                    app,
                    bind=protect.listen,
                    header_bytes_max=protect.header_bytes_max,
                    idle_timeout_s=protect.idle_timeout_s,
                    graceful_timeout_s=1.0,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            finally:
                stopped.set()

        bound = await nursery.start(serve)
        running_proxy = RunningProxy(app, RunningServer(bound=bound, stopped=stopped), registry, stop)
        yield running_proxy
        await running_proxy.stop()


@dataclass
class Harness:
    upstream: Upstream
    proxy: RunningProxy
    client: httpx.AsyncClient

    def stats(self) -> SchedulerStatistics:
        return self.proxy.app.gate.scheduler.statistics()


@asynccontextmanager
async def harness(
    upstream: Upstream | None = None, *, upstream_url: str | None = None, http2: bool = False, **settings: Any
) -> AsyncIterator[Harness]:
    """An upstream (unless `upstream_url` names another), the proxy in front of it, and a client of the proxy."""
    upstream = upstream or Upstream()
    limits = httpx.Limits(max_connections=500)
    async with (
        running(upstream) as served,
        proxy_to(upstream_url or served.url, **settings) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30, limits=limits, http1=not http2, http2=http2) as client,
    ):
        yield Harness(upstream, proxy, client)


def protect_keys(tables: Iterable[dict[str, Any]]) -> tuple[ProtectKeyConfig, ...]:
    """`[[protect.keys]]` tables as the config loader builds them (plain keys hashed)."""
    config = load_config(
        None, env={ENV_PROTECT: json.dumps([{"listen": "127.0.0.1:0", "upstream": "http://a", "keys": list(tables)}])}
    )
    return config.protect[0].keys
