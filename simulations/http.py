"""Simulated HTTP: an httpx transport that hands each request to an in-process ASGI app, after a simulated delay.

Set it as `Runtime.transport` and every outbound call of a node goes through it without a socket: jobs to upstreams and
webhooks to receivers (edge/node.py `build_outbound`), and forwarding to other nodes (edge/placement/peers.py
`PeerClient`). Apps are mounted by authority ("host:port", the port explicit or the scheme's default), so a simulated
upstream, a webhook receiver and another node's `JobApi` are all just ASGI apps.

Every request has a source host: `for_source(host)` gives the transport a node (or a client) uses, and the
`paths` policy decides, per (source host, destination host), whether the request gets through:
- OPEN: the request leg's delay, the app, the reply leg's delay;
- REFUSED (an outage): after the request leg, `httpx.ConnectError`, as from a closed port;
- BLACKHOLE (a partition): nothing comes back; the caller waits out its own connect timeout (httpx's `timeout`
  extension, which a real transport honours) and gets `httpx.ConnectTimeout`, or waits for ever without one.
An authority nothing is mounted on is refused too. The `spikes` policy adds to an open path's delay: per (source,
destination), the most a leg may be held up on top of its latency (a delay spike on the network between nodes).

Where the app runs: by default in the caller's task (fine for stateless upstreams and receivers). A mount with a
`nursery` runs each request in a task of that nursery, as a real server runs a handler in its own task: a caller
that gives up (timeout, cancellation) only stops waiting, and the server's work carries on; a server that goes
down (`unmount`, then its nursery is cancelled) cuts every request in progress, and the callers get
`httpx.ReadError`, a reset connection. An exception in an app is not turned into a 500: it is raised (in the
caller, or in the server's nursery), so a bug in a simulated node stops the run loudly.

Hanging up: an app that reads `receive()` again after the request body waits there until its caller has gone, and
then gets `http.disconnect`, as hypercorn hands it over when an HTTP/2 stream is reset. A caller that gives up on a
request served in a nursery (it was cancelled: a race's loser, a deadline) hangs up: the disconnect reaches the
server one leg's delay later, delay spikes included (even across a partition that began meanwhile: paths are
judged when a request starts). Such a server may then end without answering. For an app that runs in the
caller's task (the providers), the caller's cancellation reaches it at once.
Every request carries, as the ASGI scope extension `simulated.sent_at`, the virtual time it left its source.

CPU (simulations/cpu.py): the `cpu` policy gives a host's `HostCpu`, or None for a host whose CPU is free (the
providers, the receivers, the clients). A mounted server's is told of each request it serves twice, in the task
that serves it: `serving` before its app runs and `served` once the app has answered, before the answer goes back;
a source's is told of each request it sends twice, in the caller's task: `sending` before it leaves and `sent` once
the answer is back, before its caller sees it. Each may wait there, on virtual time, until the host's CPU has done
the work the request cost (see simulations/world.py).

The ASGI bridge is our own, not `httpx.ASGITransport`: bodies are small and read whole, and the scope carries the
source host as the ASGI `client`, so an upstream can tell which node called it. Every exchange is recorded in the
trace: method, URL, status and a CRC of both bodies.
"""

from __future__ import annotations

import enum
import random
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, final

import httpx
import trio

from .determinism import Trace

# The ASGI application callable: scope and messages are plain dicts, as the apps it hosts (edge's job API, the
# simulated providers and receivers) take them.
AsgiApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]

DEFAULT_PORTS = {"http": 80, "https": 443}
# The source of requests sent through the SimulatedHttp itself rather than through a `for_source` view.
ANONYMOUS_SOURCE = "127.0.0.1"


class PathState(enum.Enum):
    """What the network does to requests from one host to another (see the module docstring)."""

    OPEN = "open"
    REFUSED = "refused"
    BLACKHOLE = "blackhole"


def _always_open(_source: str, _destination: str) -> PathState:
    return PathState.OPEN


def _no_spikes(_source: str, _destination: str) -> float:
    return 0.0


class HostCpu(Protocol):
    """What one host's CPU is charged for the HTTP it serves and sends (see the module docstring)."""

    async def serving(self, scope: dict[str, Any], body: bytes) -> None: ...

    async def served(self, scope: dict[str, Any], status: int) -> None: ...

    async def sending(self, request: httpx.Request) -> None: ...

    async def sent(self, request: httpx.Request, status: int) -> None: ...


def _free_cpu(_host: str) -> HostCpu | None:
    return None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """One-way delay, drawn uniformly for each leg of each request."""

    min_s: float = 0.0005
    max_s: float = 0.005

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_s <= self.max_s:
            raise ValueError("need 0 <= min_s <= max_s")


@dataclass(slots=True)
class _Mount:
    app: AsgiApp
    latency: Latency
    host: str
    port: int
    nursery: trio.Nursery | None
    # Requests in progress, each with the event its caller waits on: `unmount` sets them all.
    waiting: set[trio.Event] = field(default_factory=set)


@dataclass(slots=True)
class _Exchange:
    """One request as the app sees it, and what the app answered."""

    scope: dict[str, Any]
    body: bytes
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    request_read: bool = False
    gone: trio.Event = field(default_factory=trio.Event)  # set once the caller has hung up

    async def receive(self) -> dict[str, Any]:
        if not self.request_read:
            self.request_read = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            self.complete = not message.get("more_body", False)

    async def run(self, app: AsgiApp, cpu: HostCpu | None = None) -> None:
        if cpu is not None:
            await cpu.serving(self.scope, self.body)
        await app(self.scope, self.receive, self.send)
        if (self.status is None or not self.complete) and not self.gone.is_set():
            raise RuntimeError(f"ASGI app {app!r} returned without a complete response")
        if cpu is not None and self.status is not None:
            await cpu.served(self.scope, self.status)


def authority_of(url: httpx.URL) -> str:
    """`host:port` of a URL, with the scheme's default port filled in (IPv6 hosts in brackets)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port or DEFAULT_PORTS.get(url.scheme, 80)}"


@final
class SourcedTransport(httpx.AsyncBaseTransport):
    """The view of a `SimulatedHttp` from one host: what that host's httpx clients use as their transport.

    Closing it (a node's client closes at shut-down) does not close the shared network."""

    __slots__ = ("_http", "source")

    def __init__(self, http: SimulatedHttp, source: str) -> None:
        self._http = http
        self.source = source

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._http.exchange(request, source=self.source)


@final
class SimulatedHttp(httpx.AsyncBaseTransport):
    """Routes requests by authority to mounted ASGI apps, with a seeded latency per leg (see the module docstring)."""

    def __init__(
        self,
        *,
        rng: random.Random,
        trace: Trace,
        latency: Latency | None = None,
        paths: Callable[[str, str], PathState] = _always_open,
        spikes: Callable[[str, str], float] = _no_spikes,
        cpu: Callable[[str], HostCpu | None] = _free_cpu,
    ) -> None:
        self._rng = rng
        self._trace = trace
        self._latency = latency or Latency()
        self._mounts: dict[str, _Mount] = {}
        self.paths = paths
        self.spikes = spikes
        self.cpu = cpu

    def __repr__(self) -> str:
        return f"<SimulatedHttp {len(self._mounts)} apps mounted: {', '.join(self._mounts)}>"

    def for_source(self, host: str) -> SourcedTransport:
        """The transport for requests sent from `host` (partitions and outages are judged by it)."""
        return SourcedTransport(self, host)

    def mount(
        self, authority: str, app: AsgiApp, *, latency: Latency | None = None, nursery: trio.Nursery | None = None
    ) -> None:
        """Serve `authority` ("host:port") with `app` until `unmount`; `latency` overrides the default for it;
        with `nursery`, each request runs in a task of it (see the module docstring)."""
        if authority in self._mounts:
            raise ValueError(f"{authority} is already mounted")
        host, _, port = authority.rpartition(":")
        self._mounts[authority] = _Mount(app, latency or self._latency, host.strip("[]"), int(port), nursery)
        self._trace.record(f"http mount {authority}")

    def unmount(self, authority: str) -> None:
        """Take `authority` down: requests to it are refused from now on, and the ones in progress are cut."""
        mount = self._mounts.pop(authority)
        for waiting in mount.waiting:
            waiting.set()
        self._trace.record(f"http unmount {authority}")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.exchange(request, source=ANONYMOUS_SOURCE)

    async def exchange(self, request: httpx.Request, *, source: str) -> httpx.Response:
        """Carry one request from `source` to the app mounted at its authority, and the answer back."""
        source_cpu = self.cpu(source)
        if source_cpu is not None:
            await source_cpu.sending(request)
        sent_at = trio.current_time()
        authority = authority_of(request.url)
        path = self.paths(source, request.url.host)
        if path is PathState.BLACKHOLE:
            await self._black_hole(request, source)
        mount = self._mounts.get(authority)
        spike_s = self.spikes(source, request.url.host)
        await trio.sleep(self._draw(mount.latency if mount else self._latency, spike_s))
        mount = self._mounts.get(authority)  # it may have gone down while the request travelled
        if mount is None or path is PathState.REFUSED:
            self._trace.record(f"http refused {request.method} {request.url} from {source}")
            raise httpx.ConnectError(f"nothing is listening at {authority} on the simulated network", request=request)
        request_body = await request.aread()
        exchange = _Exchange(self._scope(request, mount, source, sent_at), request_body)
        if mount.nursery is None:
            await exchange.run(mount.app, self.cpu(mount.host))
        else:
            await self._run_in_server(exchange, mount, request, spike_s)
        body = b"".join(exchange.chunks)
        await trio.sleep(self._draw(mount.latency, spike_s))
        assert exchange.status is not None
        if source_cpu is not None:
            await source_cpu.sent(request, exchange.status)
        self._trace.record(
            f"http {request.method} {request.url} -> {exchange.status} "
            f"{zlib.crc32(request_body):08x} {zlib.crc32(body):08x} from {source}"
        )
        return httpx.Response(exchange.status, headers=exchange.headers, stream=httpx.ByteStream(body), request=request)

    async def _run_in_server(self, exchange: _Exchange, mount: _Mount, request: httpx.Request, spike_s: float) -> None:
        """Run the app in the server's nursery and wait for it; a server that goes down resets the request."""
        assert mount.nursery is not None
        finished = trio.Event()

        async def handle() -> None:
            try:
                await exchange.run(mount.app, self.cpu(mount.host))
            finally:
                finished.set()

        mount.waiting.add(finished)
        try:
            mount.nursery.start_soon(handle)
            await finished.wait()
        except BaseException:
            self._hang_up(exchange, mount, request, spike_s)
            raise
        finally:
            mount.waiting.discard(finished)
        if not exchange.complete:
            self._trace.record(f"http reset {request.method} {request.url}")
            raise httpx.ReadError("connection reset: the server went down", request=request)

    def _hang_up(self, exchange: _Exchange, mount: _Mount, request: httpx.Request, spike_s: float) -> None:
        """The caller gave up on a request its server is still working on: the server hears of it one leg later."""
        self._trace.record(f"http hangup {request.method} {request.url}")
        if self._mounts.get(authority_of(request.url)) is not mount or mount.nursery is None:
            exchange.gone.set()  # the server went down: nothing is left to tell
            return
        delay_s = self._draw(mount.latency, spike_s)

        async def tell_server() -> None:
            await trio.sleep(delay_s)
            exchange.gone.set()

        mount.nursery.start_soon(tell_server)

    async def _black_hole(self, request: httpx.Request, source: str) -> None:
        """A partitioned path: wait out the caller's connect timeout (for ever without one), then time out."""
        self._trace.record(f"http blackhole {request.method} {request.url} from {source}")
        connect_s = (request.extensions.get("timeout") or {}).get("connect")
        if connect_s is None:
            await trio.sleep_forever()
        await trio.sleep(connect_s)
        raise httpx.ConnectTimeout(f"no answer from {request.url.host} (partitioned)", request=request)

    @staticmethod
    def _scope(request: httpx.Request, mount: _Mount, source: str, sent_at: float) -> dict[str, Any]:
        url = request.url
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(name.lower(), value) for name, value in request.headers.raw],
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.split(b"?")[0],
            "query_string": url.query,
            "server": (mount.host, mount.port),
            "client": (source, 0),
            "root_path": "",
            "extensions": {"simulated": {"sent_at": sent_at}},
        }

    def _draw(self, latency: Latency, spike_s: float = 0.0) -> float:
        """One leg's delay; a spike is drawn only when there is one, so runs without spikes draw as before."""
        delay_s = self._rng.uniform(latency.min_s, latency.max_s)
        return delay_s + self._rng.uniform(0.0, spike_s) if spike_s > 0.0 else delay_s
