"""A harness for multi-region tests with real processes: one `ezthrottle serve` per region, and an upstream that
tells which region each request came from.

Every node binds its outbound connections (jobs, webhooks) to its own loopback source address
(`[http_client] source_address`, 127.0.0.11, 127.0.0.12, ...: on Linux all of 127.0.0.0/8 is loopback, nothing to
configure), so `RegionUpstream`, served on 127.0.0.1, maps the ASGI scope's `client` address back to a region.

    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    upstream.behave(region="lax", delay_s=2)                 # every path, in lax
    upstream.behave(region="iad", path="/charge", status=500)
    cluster = await start_region_cluster(nursery, tmp_path)  # iad, lax, ord; returns once all see all alive
    job_id = await cluster.submit({"url": f"{url}/charge"}, via=cluster["ord"])
    doc = await cluster.wait_finished(job_id)
    [visit] = upstream.visits                                # visit.region, .status, .disconnected, ...
    await cluster["iad"].kill()                              # SIGKILL; .restart() brings it back on its data dir
    await cluster.wait_live({"lax", "ord"})

Times (`Visit.started`, `.ended`, `.disconnected_at`) are on Trio's clock in the test process (`trio.current_time()`,
monotonic), so a test compares them with its own `trio.current_time()`.

Cleanup: `start_region_cluster` starts a task in the caller's nursery whose exit SIGKILLs every node process, so
the processes end with the test, passed or failed (pytest-trio cancels the `nursery` fixture at the end of the test).
Every wait here is bounded in time and in number of polls, and fails naming what it saw, with the tail of each
node's log (`RegionNode.log_path`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from edge.config import load_config
from simulations.actors import Receive, Scope, Send
from tests.e2e.support import ACCOUNT_KEY, OTHER_KEY, WEBHOOK_SECRET, auth, serve

DEFAULT_REGIONS = ("iad", "lax", "ord")
CLUSTER_KEY_HEX = "3c" * 32
UNKNOWN_REGION = "?"  # a request from an address no region uses (the test itself, say)
LIVE_STATES = frozenset({"alive", "suspect"})  # the members that own keys and make a region "up"

FORM_TIMEOUT_S = 30.0  # until every node sees every other alive
READY_TIMEOUT_S = 20.0  # from spawning a process until its /readyz answers 200
KILL_WAIT_S = 10.0  # for a SIGKILLed process to be reaped
STOP_WAIT_S = 15.0  # for a SIGTERMed process to drain and exit
POLL_INTERVAL_S = 0.1
REQUEST_TIMEOUT_S = 3.0  # each status request of the harness
LOG_TAIL_LINES = 15
HTTPBIN_DELAY_S_MAX = 10.0  # httpbin caps /delay/<n> at 10 s; so does this


def source_address(index: int) -> str:
    """The loopback source address of the `index`-th node: 127.0.0.11, 127.0.0.12, ..."""
    if not 0 <= index < 240:
        raise ValueError(f"no loopback source address for node {index}")
    return f"127.0.0.{11 + index}"


def region_sources(regions: Sequence[str] = DEFAULT_REGIONS) -> dict[str, str]:
    """{source address: region} for nodes started by `start_region_cluster(..., regions=regions)`."""
    return {source_address(index): region for index, region in enumerate(regions)}


# -- the upstream ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How the upstream answers; a field left None is decided by a less specific rule (see `RegionUpstream`)."""

    delay_s: float | None = None
    status: int | None = None
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] | None = None


@dataclass
class Visit:
    """One request as the upstream saw it."""

    region: str  # from the client's source address; UNKNOWN_REGION if no node uses it
    client: tuple[str, int]
    method: str
    path: str
    query: str
    headers: dict[str, str]
    started: float  # when the request head arrived
    status: int  # what it answered, or was going to answer when the client went away
    body: bytes = b""  # the request body, once read
    ended: float | None = None  # when the answer was sent, or the client went away; None while in progress
    disconnected_at: float | None = None  # when the client went away before the answer was sent

    @property
    def disconnected(self) -> bool:
        return self.disconnected_at is not None

    @property
    def answered(self) -> bool:
        return self.ended is not None and self.disconnected_at is None

    @property
    def finished(self) -> bool:
        return self.ended is not None


_STATUS_PATH = re.compile(r"/status/([0-9]{3})")
_DELAY_PATH = re.compile(r"/delay/([0-9]+(?:\.[0-9]+)?)")
_NO_BODY_STATUSES = frozenset({204, 304})


def _httpbin(path: str) -> Behaviour:
    """What httpbin does for `path`, for the two routes the SDKs' integration tests use: `/status/<code>` answers
    that code (200-599), `/delay/<seconds>` answers 200 after that long (at most 10 s)."""
    if (match := _STATUS_PATH.fullmatch(path)) and 200 <= int(match[1]) <= 599:
        return Behaviour(status=int(match[1]))
    if match := _DELAY_PATH.fullmatch(path):
        return Behaviour(delay_s=min(float(match[1]), HTTPBIN_DELAY_S_MAX))
    return Behaviour()


class RegionUpstream:
    """An ASGI upstream that knows each caller's region (by its source address) and answers per region and path.

    Rules: `behave(region=..., path=..., delay_s=..., status=..., body=..., headers=...)`; region None means every
    region, path None every path (paths match exactly, without the query). Each field of the answer comes from the
    most specific rule that sets it: (region, path), then (region, any path), (any region, path), (any, any), then
    httpbin's meaning of the path (`/status/500`, `/delay/2`), then the default: 200 at once, with a JSON body
    naming the region, method, path and status.

    The answer waits in a task beside one awaiting `receive()`: an `http.disconnect` before the answer is sent
    ends the wait and is recorded as `Visit.disconnected_at` (a race's loser being cut off, a client timeout).
    """

    def __init__(self, regions_by_source: Mapping[str, str] | None = None) -> None:
        self.regions_by_source = dict(region_sources() if regions_by_source is None else regions_by_source)
        self.visits: list[Visit] = []
        self.url: str | None = None
        self._rules: dict[tuple[str | None, str | None], Behaviour] = {}
        self._changed = trio.Event()

    async def serve(self, nursery: trio.Nursery) -> str:
        """Serve on an ephemeral port of 127.0.0.1 (in `nursery`); the base URL, also kept as `self.url`."""
        self.url = await serve(nursery, self)
        return self.url

    def behave(
        self,
        *,
        region: str | None = None,
        path: str | None = None,
        delay_s: float | None = None,
        status: int | None = None,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Set fields of the rule for (region, path); the fields not given keep what the rule had."""
        if delay_s is not None and not (math.isfinite(delay_s) and delay_s >= 0):
            raise ValueError(f"delay_s must be a finite number >= 0 (got {delay_s!r})")
        if status is not None and not 200 <= status <= 599:
            raise ValueError(f"status must be a final status, 200-599 (got {status!r})")
        if path is not None and not path.startswith("/"):
            raise ValueError(f"path must start with / (got {path!r})")
        rule = self._rules.get((region, path), Behaviour())
        changes: dict[str, Any] = {}
        if delay_s is not None:
            changes["delay_s"] = float(delay_s)
        if status is not None:
            changes["status"] = status
        if body is not None:
            changes["body"] = body.encode() if isinstance(body, str) else body
        if headers is not None:
            changes["headers"] = tuple(headers.items())
        self._rules[(region, path)] = replace(rule, **changes)

    def reset(self) -> None:
        """Forget every rule and every visit."""
        self._rules.clear()
        self.visits.clear()

    def behaviour(self, region: str, path: str) -> Behaviour:
        """The answer a request from `region` for `path` gets now, every field decided."""
        layers = [self._rules.get(key) for key in ((region, path), (region, None), (None, path), (None, None))]
        chosen = [layer for layer in layers if layer is not None] + [_httpbin(path)]

        def first(name: str, default: Any) -> Any:
            return next((value for layer in chosen if (value := getattr(layer, name)) is not None), default)

        status = first("status", 200)
        return Behaviour(
            delay_s=first("delay_s", 0.0),
            status=status,
            body=first("body", None),  # None: the default JSON, made per request
            headers=first("headers", ()),
        )

    def regions_seen(self) -> list[str]:
        return [visit.region for visit in self.visits]

    def visits_in(self, region: str) -> list[Visit]:
        return [visit for visit in self.visits if visit.region == region]

    async def wait_for(
        self, predicate: Callable[[list[Visit]], bool] | None = None, *, count: int = 1, timeout_s: float = 10.0
    ) -> list[Visit]:
        """The visits, once `predicate(visits)` holds (default: at least `count` visits finished); fails after
        `timeout_s` showing what arrived."""
        check = predicate or (lambda visits: sum(visit.finished for visit in visits) >= count)
        with trio.move_on_after(timeout_s):
            # Every change sets the event, so the loop runs at most once per change; the cap is a backstop.
            for _ in range(100_000):
                if check(self.visits):
                    return self.visits
                await self._changed.wait()
        raise AssertionError(f"upstream: condition not met within {timeout_s:g} s; visits: {self.visits}")

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = tuple(scope.get("client") or ("", 0))
        region = self.regions_by_source.get(str(client[0]), UNKNOWN_REGION)
        path = scope["path"]
        plan = self.behaviour(region, path)
        visit = Visit(
            region=region,
            client=(str(client[0]), int(client[1])),
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers={name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]},
            started=trio.current_time(),
            status=plan.status or 200,
        )
        self.visits.append(visit)
        self._note_change()
        try:
            await self._answer(visit, plan, receive, send)
        finally:
            self._note_change()

    async def _answer(self, visit: Visit, plan: Behaviour, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                visit.disconnected_at = visit.ended = trio.current_time()
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        visit.body = b"".join(chunks)
        answering = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                # Bounded: after a disconnect (or the answer) nothing more arrives, and the task is cancelled.
                for _ in range(1000):
                    message = await receive()
                    # Once the answer is on its way, the disconnect that follows a completed response is not one.
                    if message["type"] == "http.disconnect" and not answering:
                        visit.disconnected_at = visit.ended = trio.current_time()
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch)
            await trio.sleep(plan.delay_s or 0.0)
            answering = True
            await self._send(visit, plan, send)
            visit.ended = trio.current_time()
            nursery.cancel_scope.cancel()

    async def _send(self, visit: Visit, plan: Behaviour, send: Send) -> None:
        status = visit.status
        body = plan.body
        if body is None:
            default = {"region": visit.region, "method": visit.method, "path": visit.path, "status": status}
            body = json.dumps(default).encode()
        headers = [(name.lower().encode(), value.encode()) for name, value in plan.headers or ()]
        if not any(name == b"content-type" for name, _value in headers):
            headers.append((b"content-type", b"application/json"))
        if status in _NO_BODY_STATUSES:
            body = b""
        else:
            headers.append((b"content-length", str(len(body)).encode()))
        if visit.method == "HEAD":
            body = b""  # the length stays what a GET would get
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# -- the nodes ---------------------------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports, each free for TCP and for UDP a moment ago (gossip uses both on one port).
    The probes stay bound until all are found, so no two ports are the same."""
    ports: list[int] = []
    with contextlib.ExitStack() as probes:
        for _ in range(count * 20):
            if len(ports) == count:
                return ports
            tcp = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} of {count} free loopback ports")
    return ports


def _join_cgroup(cgroup: Path) -> None:
    """In the child before exec: move into `cgroup`, so every socket the node opens belongs to it."""
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))


def _child_env() -> dict[str, str]:
    """The test's environment without what would change a node's configuration behind the harness's back."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("EZTHROTTLE_") and name not in ("FLY_REGION", "FLY_ALLOC_ID")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class RegionNode:
    """One `ezthrottle serve` process of a region cluster."""

    region: str
    node_id: str
    source_address: str
    api_port: int
    gossip_port: int
    directory: Path  # the node's config, log and data dir (directory / "data") are here
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # A cgroup v2 directory the process starts in (tests/e2e/partition.py cuts it off by its sockets' cgroup).
    cgroup: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gossip_address(self) -> str:
        return f"127.0.0.1:{self.gossip_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "ezthrottle.toml"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start the process (not waiting for it); its output is appended to `log_path`."""
        if self.running:
            raise RuntimeError(f"{self.node_id} is already running")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- harness: start {self.starts} of {self.node_id} ({self.region})\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                preexec_fn=None if self.cgroup is None else partial(_join_cgroup, self.cgroup),
            )

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until GET /readyz answers 200; fails at once if the process exits, with its log."""

        async def ready(client: httpx.AsyncClient) -> bool:
            self.check_running()
            try:
                return (await client.get(f"{self.base_url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await _poll(ready, timeout_s, f"{self.node_id} ready", [self])

    def check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"{self.node_id} ({self.region}) is not running (exit {code})\n{self.log_tail()}")

    async def kill(self) -> None:
        """SIGKILL (a crash: no leave message, nothing flushed), and reap the process."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL)
        with trio.fail_after(KILL_WAIT_S):
            await trio.to_thread.run_sync(self.process.wait, abandon_on_cancel=True)

    async def stop(self) -> None:
        """SIGTERM (a graceful stop: the node leaves the cluster), then SIGKILL if it takes over STOP_WAIT_S."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_WAIT_S):
            await trio.to_thread.run_sync(self.process.wait, abandon_on_cancel=True)
        await self.kill()

    async def restart(self, *, wait_ready: bool = True) -> None:
        """Start again on the same config, data dir and ports (killing it first if it runs); by default return once
        its API is ready. Rejoining takes `RegionCluster.wait_alive`."""
        await self.kill()
        self.spawn()
        if wait_ready:
            await self.wait_ready()

    def kill_now(self) -> None:
        """Synchronous SIGKILL and reap, for cleanup (which may run in a cancelled scope)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=KILL_WAIT_S)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"[{self.node_id}: no log]"
        return "\n".join(f"[{self.node_id}] {line}" for line in text[-lines:])


_Result = TypeVar("_Result")


async def _poll(
    check: Callable[[httpx.AsyncClient], Awaitable[_Result | bool | None]],
    timeout_s: float,
    what: str,
    nodes: Iterable[RegionNode],
    describe: Callable[[], str] = lambda: "",
) -> _Result:
    """`check(client)` every POLL_INTERVAL_S until it returns something truthy (returned); bounded by `timeout_s`
    and by the number of polls that fit in it. On timeout, fails with `describe()` and the nodes' logs."""
    polls = math.ceil(timeout_s / POLL_INTERVAL_S) + 1
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        with trio.move_on_after(timeout_s):
            for _ in range(polls):
                result = await check(client)
                if result:
                    return result  # type: ignore[return-value]
                await trio.sleep(POLL_INTERVAL_S)
    logs = "\n".join(node.log_tail() for node in nodes)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}. {describe()}\n{logs}")


# -- config files --------------------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it: tables merge key by key, anything else (arrays included) is replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string (ASCII, \" \\ \n \uXXXX escapes) is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value here")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _toml_table(path: tuple[str, ...], table: Mapping[str, Any], header: str | None, lines: list[str]) -> None:
    if header is not None:
        lines += ["", header]
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        dotted = ".".join(_toml_key(part) for part in (*path, key))
        if isinstance(value, Mapping):
            _toml_table((*path, key), value, f"[{dotted}]", lines)
        elif _is_table_array(value):
            for item in value:
                _toml_table((*path, key), item, f"[[{dotted}]]", lines)


def to_toml(document: Mapping[str, Any]) -> str:
    """A TOML document for `document` (what tomllib reads back as the same dict); enough for node configs."""
    lines: list[str] = []
    _toml_table((), document, None, lines)
    text = "\n".join(lines).lstrip("\n") + "\n"
    if tomllib.loads(text) != json.loads(json.dumps(document)):
        raise ValueError("the TOML written does not read back as the document")
    return text


def _node_document(node: RegionNode, seeds: list[str]) -> dict[str, Any]:
    return {
        "server": {"listen": f"127.0.0.1:{node.api_port}", "data_dir": str(node.data_dir), "node_id": node.node_id},
        "security": {"allow_private_targets": True},
        "http_client": {"source_address": node.source_address},
        "cluster": {
            "bind": node.gossip_address,
            "seeds": seeds,
            "keys": [CLUSTER_KEY_HEX],
            "profile": "local",
            "region": node.region,
        },
        "accounts": [
            {"id": "acme", "key": ACCOUNT_KEY, "plan": "pro", "webhook_secret": WEBHOOK_SECRET},
            {"id": "other", "key": OTHER_KEY, "plan": "pro"},
        ],
    }


# -- the cluster -------------------------------------------------------------------------------------------------


@dataclass
class RegionCluster:
    """The nodes of `start_region_cluster`, one per region, in the order of its `regions`."""

    nodes: list[RegionNode]
    _by_region: dict[str, RegionNode] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_region = {node.region: node for node in self.nodes}

    def __getitem__(self, region: str) -> RegionNode:
        return self._by_region[region]

    def __iter__(self) -> Iterator[RegionNode]:
        return iter(self.nodes)

    @property
    def regions(self) -> list[str]:
        return [node.region for node in self.nodes]

    @property
    def regions_by_source(self) -> dict[str, str]:
        return {node.source_address: node.region for node in self.nodes}

    def node_by_id(self, node_id: str) -> RegionNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def running(self) -> list[RegionNode]:
        return [node for node in self.nodes if node.running]

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill_now()

    async def view(self, node: RegionNode, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
        """GET /api/v1/cluster on `node`."""
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S))
            response = await client.get(f"{node.base_url}/api/v1/cluster", headers=auth())
            response.raise_for_status()
            return dict(response.json())

    async def _views(self, client: httpx.AsyncClient) -> dict[str, dict[str, Any]] | None:
        views = {}
        for node in self.running():
            try:
                views[node.region] = await self.view(node, client)
            except (httpx.TransportError, httpx.HTTPStatusError):
                return None
        return views

    async def _wait_views(
        self, states: frozenset[str], regions: Iterable[str], timeout_s: float, what: str
    ) -> dict[str, dict[str, Any]]:
        wanted = {self[region].node_id: region for region in regions}
        last: dict[str, Any] = {}

        async def agreed(client: httpx.AsyncClient) -> dict[str, dict[str, Any]] | None:
            for node in self.nodes:
                if node.region in wanted.values():
                    node.check_running()
            views = await self._views(client)
            if views is None:
                return None
            last.clear()
            last.update({region: members_in(view, states) for region, view in views.items()})
            return views if all(seen == wanted for seen in last.values()) else None

        def describe() -> str:
            return f"wanted {wanted} in states {sorted(states)} on every running node; last seen {last}"

        return await _poll(agreed, timeout_s, what, self.nodes, describe)

    async def wait_alive(
        self, regions: Iterable[str] | None = None, timeout_s: float = FORM_TIMEOUT_S
    ) -> dict[str, dict[str, Any]]:
        """Until every running node sees exactly the nodes of `regions` (default: all) alive, each with its region.
        The views, by the region of the node asked."""
        regions = list(self.regions if regions is None else regions)
        return await self._wait_views(frozenset({"alive"}), regions, timeout_s, f"{regions} alive")

    async def wait_live(self, regions: Iterable[str], timeout_s: float = FORM_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """Until every running node counts exactly the nodes of `regions` live (alive or suspect: what makes a
        region up); after a kill, this waits out the failure detection."""
        regions = list(regions)
        return await self._wait_views(LIVE_STATES, regions, timeout_s, f"{regions} live")

    async def submit(self, job: Mapping[str, Any], *, via: RegionNode | None = None, key: str = ACCOUNT_KEY) -> str:
        """POST the job to `via` (default: the first running node); its job_id, once acknowledged (201)."""
        node = via or self.running()[0]
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S * 5) as client:
            response = await client.post(f"{node.base_url}/api/v1/jobs", json=dict(job), headers=auth(key))
        assert response.status_code == 201, (node.node_id, response.status_code, response.text)
        return str(response.json()["job_id"])

    async def wait_finished(
        self, job_id: str, *, timeout_s: float = 20.0, via: RegionNode | None = None, key: str = ACCOUNT_KEY
    ) -> dict[str, Any]:
        """GET /api/v1/jobs/{job_id} (on `via`, else on any running node: reads find the job wherever it is) until
        it is success, failed or cancelled; the job's view."""
        last: dict[str, Any] = {}

        async def finished(client: httpx.AsyncClient) -> dict[str, Any] | None:
            candidates = [via] if via is not None else self.running()
            for node in candidates:
                try:
                    response = await client.get(f"{node.base_url}/api/v1/jobs/{job_id}", headers=auth(key))
                except httpx.TransportError:
                    continue
                if response.status_code == 200:
                    last.clear()
                    last.update(response.json())
                    return last if last.get("status") in ("success", "failed", "cancelled") else None
            return None

        return await _poll(finished, timeout_s, f"job {job_id} finished", self.nodes, lambda: f"last view: {last}")

    async def queues(self, *, via: RegionNode | None = None, key: str = ACCOUNT_KEY) -> list[dict[str, Any]]:
        """GET /api/v1/queues on `via` (default: the first running node): the account's queues, with their owner
        in `node`."""
        node = via or self.running()[0]
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S * 5) as client:
            response = await client.get(f"{node.base_url}/api/v1/queues", headers=auth(key))
        response.raise_for_status()
        return list(response.json()["queues"])


def members_in(view: Mapping[str, Any], states: Iterable[str] = ("alive",)) -> dict[str, str]:
    """{node_id: region} of the members of a GET /api/v1/cluster view in `states`."""
    wanted = set(states)
    return {member["node"]: member["region"] for member in view["members"] if member["state"] in wanted}


async def _kill_at_exit(cluster: RegionCluster, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        cluster.kill_all()


async def start_region_cluster(
    nursery: trio.Nursery,
    tmp_path: Path,
    regions: Sequence[str] = DEFAULT_REGIONS,
    extra_config: str = "",
    *,
    region_config: Mapping[str, str] | None = None,
    cgroups: Mapping[str, Path] | None = None,
    timeout_s: float = FORM_TIMEOUT_S,
) -> RegionCluster:
    """One real `ezthrottle serve` per region, seeded with each other; returns once every node sees all alive.

    Node i gets `cluster.region = regions[i]`, node_id "<region>-1", its own data dir under tmp_path/<region>,
    free API and gossip ports, the cluster key, `profile = "local"`, `security.allow_private_targets = true`,
    `[http_client] source_address = source_address(i)` and the accounts of tests/e2e/support.py (ACCOUNT_KEY,
    OTHER_KEY). `extra_config` (TOML, every node) and `region_config[region]` (TOML, that node) are laid over it:
    tables merge key by key (`[cluster]\\njoin_wait_s = 1` keeps the rest of [cluster]), arrays are replaced.
    `cgroups[region]` is a cgroup v2 directory that region's process starts in (tests/e2e/partition.py).

    Every process is SIGKILLed when `nursery` ends (the test's end, pass or fail). A config the node would refuse
    fails here, before any process starts, with the node's own ConfigError.
    """
    if len(set(regions)) != len(regions) or not regions:
        raise ValueError(f"regions must be distinct and not empty (got {list(regions)})")
    extra = tomllib.loads(extra_config)
    per_region = {region: tomllib.loads(text) for region, text in (region_config or {}).items()}
    unknown = set(per_region) - set(regions)
    if unknown:
        raise ValueError(f"region_config names regions not started: {sorted(unknown)}")
    ports = _free_ports(2 * len(regions))
    nodes = [
        RegionNode(
            region=region,
            node_id=f"{region}-1",
            source_address=source_address(index),
            api_port=ports[2 * index],
            gossip_port=ports[2 * index + 1],
            directory=tmp_path / region,
            cgroup=(cgroups or {}).get(region),
        )
        for index, region in enumerate(regions)
    ]
    for node in nodes:
        node.directory.mkdir(parents=True, exist_ok=True)
        seeds = [peer.gossip_address for peer in nodes if peer is not node]
        document = _merge(_merge(_node_document(node, seeds), extra), per_region.get(node.region, {}))
        node.config_path.write_text(to_toml(document))
        load_config(node.config_path, env={})  # refuse a bad config here, naming the key
    cluster = RegionCluster(nodes)
    await nursery.start(_kill_at_exit, cluster)
    for node in nodes:
        node.spawn()
    for node in nodes:
        await node.wait_ready()
    await cluster.wait_alive(timeout_s=timeout_s)
    return cluster
