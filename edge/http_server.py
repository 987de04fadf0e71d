"""Serve an ASGI app with hypercorn's Trio worker, hardened so that one connection can never end the server.

One cleartext port speaks HTTP/1.1, h2c with prior knowledge and the h2c Upgrade; with a certificate it
speaks TLS with ALPN (h2, http/1.1). `serve_asgi` runs inside the caller's nursery and reports what it bound.

Why a patch (hypercorn is pinned to exactly 0.18.0 for it, see pyproject.toml): hypercorn's Trio worker runs
every connection in a task of one shared nursery, and any exception that escapes a connection ends that
nursery, `serve()`, and everything else the caller runs beside it (upstream pgjones/hypercorn#225 and #203;
the fix in PR #228 was reverted). Two ways to get there, both reproduced by tests/http:

- An HTTP/2 client that sends GOAWAY while responses are streaming: `TCPServer._close()` calls `send_eof()`
  without the send lock, and `send_eof()` holds the stream's send side across a checkpoint, so the HTTP/2 send
  task's `send_all()` raises `trio.BusyResourceError` (h2load -D, which ends with GOAWAY, trips it every run).
- An HTTP/2 client that keeps sending a request body after the app answered (an early 413, say): hypercorn
  looks the finished stream up and raises `KeyError`.

`GuardedTCPServer` drops send errors on a connection that is already closing and contains (logs, then closes)
anything else one connection raises. It is installed where `hypercorn.trio.run.worker_serve` looks `TCPServer`
up, so it is the first code between the listener and each accepted stream, TLS handshake included.

Being there, it also takes out two per-request costs that a profile of the proxy refusing a flood put at about
a fifth of the server's CPU (bench/RESULTS.md, noisy neighbour):
- hypercorn writes an HTTP/1.1 response in three socket writes (head, body, an empty end of message); the head of
  a final response is now held and written with the bytes that always follow it, and empty writes are skipped;
- hypercorn starts a keep-alive timer task each time a connection goes idle and cancels it on the next request;
  `_KeepAliveTimer` keeps one task per connection and moves its deadline.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import hypercorn.trio
import hypercorn.trio.run as hypercorn_trio_run
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], ASGIReceive, ASGISend], Awaitable[None]]

logger = logging.getLogger("ezthrottle.http")

# The guard overrides private methods of this exact release; re-read any other release before trusting it.
GUARDED_HYPERCORN_VERSION = "0.18.0"

# Hypercorn's default (1000) sends `Connection: close` / GOAWAY after 1000 requests; load generators and
# long-lived SDK clients do not reconnect and report the rest as errors.
KEEP_ALIVE_REQUESTS_MAX = 2**31 - 1
# nginx's default; enough for h2load -m 100 and for an SDK multiplexing many jobs over one connection.
H2_CONCURRENT_STREAMS_MAX = 128
# Hypercorn's default listen backlog (100) drops SYNs when a burst of clients connects at once.
LISTEN_BACKLOG = 1024
# How much of a refused request body an app reads and discards before answering: a client still writing its
# body does not read the answer, so answering early makes it see a dropped connection instead of the refusal
# (and on HTTP/2 hypercorn drops every other stream of the connection too). Past this, answer and let it drop.
REFUSED_BODY_DRAIN_BYTES_MAX = 16 * 1024 * 1024
# hypercorn's own defaults, kept: a request head up to 16 KiB (431 beyond), and 5 s for a connection with no
# request in progress, idle between requests or still sending its headers (which is also what cuts off slowloris).
HEADER_BYTES_MAX_DEFAULT = 16 * 1024
IDLE_TIMEOUT_S_DEFAULT = 5.0
# Frames shown when a contained connection error is logged: enough to find the culprit in hypercorn.
LOGGED_FRAMES_MAX = 6

# Errors a send raises once the peer or our own close has torn the stream down.
_STREAM_GONE_ERRORS = (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError)


class _KeepAliveTimer:
    """Hypercorn's keep-alive timeout (close a connection idle that long, or at once when the server stops) as one
    task per connection whose deadline moves, instead of a task started for every idle spell.

    It stands in for hypercorn's `TrioSingleTask` (`restart` when the connection goes idle, `stop` when a request
    arrives), so it keeps that interface; the action hypercorn passes is always its `_idle_timeout`, which this
    does itself."""

    __slots__ = ("_idle", "_scope", "_server", "_terminated")

    def __init__(self, server: GuardedTCPServer) -> None:
        self._server = server
        self._scope: trio.CancelScope | None = None
        self._idle = False
        self._terminated = False

    async def restart(self, task_group: TaskGroup, action: object) -> None:
        self._idle = True
        timeout_s = 0.0 if self._terminated else self._server.config.keep_alive_timeout
        deadline = trio.current_time() + timeout_s
        if self._scope is None:
            self._scope = trio.CancelScope(deadline=deadline)
            task_group._nursery.start_soon(self._watch, self._scope)
        else:
            self._scope.deadline = deadline

    async def stop(self) -> None:
        self._idle = False
        if self._scope is not None:
            self._scope.deadline = math.inf

    async def _watch(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._server.context.terminated.wait()
            self._terminated = True
            if not self._idle:
                await trio.sleep_forever()  # the request in progress ends; `restart` then closes at once
        with trio.CancelScope(shield=True):
            await self._server._initiate_server_close()


def _is_final_http11_head(data: bytes) -> bool:
    """An HTTP/1.1 response head with a final status (2xx-5xx): its body or end always follows at once. An HTTP/2
    frame cannot start like this (its length field would be megabytes), and 1xx heads must go out on their own."""
    return data.startswith(b"HTTP/1.1 ") and data[9:10] in b"2345" and data.endswith(b"\r\n\r\n")


class GuardedTCPServer(TCPServer):
    """Hypercorn's per-connection driver, made unable to take the server down with it (and cheaper per request)."""

    _closing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_task = _KeepAliveTimer(self)  # type: ignore[assignment]
        self._held_head = b""

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as error:
            _log_contained(error)
        except BaseExceptionGroup as group:
            # Cancellation and KeyboardInterrupt must keep propagating; only real failures are contained.
            failures, control_flow = group.split(Exception)
            if failures is not None:
                _log_contained(failures)
            if control_flow is not None:
                raise control_flow from None

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if not self._held_head and _is_final_http11_head(event.data):
                self._held_head = event.data  # hypercorn sends the body (or the end of message) next, at once
                return
            if self._held_head:
                event, self._held_head = RawData(data=self._held_head + event.data), b""
            if not event.data:
                return
        elif isinstance(event, Closed) and self._held_head:
            await self.protocol_send(RawData(data=b""))
        try:
            await super().protocol_send(event)
        except _STREAM_GONE_ERRORS:
            # Once closing, the bytes have nowhere to go; elsewhere it is a bug and `run` contains it.
            if not self._closing:
                raise

    async def _close(self) -> None:
        self._closing = True
        await super()._close()

    async def _initiate_server_close(self) -> None:
        self._closing = True
        await super()._initiate_server_close()


async def send_whole_response(
    send: ASGISend, status: int, body: bytes, *, content_type: bytes, headers: Mapping[str, str]
) -> None:
    """Answer with a body that is already whole: one start carrying its Content-Length, then the body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *((name.lower().encode(), value.encode()) for name, value in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_connection_guard() -> None:
    """Make hypercorn's Trio worker drive every accepted connection with `GuardedTCPServer` (idempotent)."""
    if hypercorn_trio_run.TCPServer is GuardedTCPServer:
        return
    installed = version("hypercorn")
    if installed != GUARDED_HYPERCORN_VERSION:
        raise RuntimeError(
            f"edge.http_server guards hypercorn {GUARDED_HYPERCORN_VERSION}, found {installed}: re-check "
            "pgjones/hypercorn#225 against the new release before moving the pin"
        )
    current = hypercorn_trio_run.TCPServer
    if current is not TCPServer:
        raise RuntimeError(f"hypercorn.trio.run.TCPServer is already patched by someone else: {current!r}")
    hypercorn_trio_run.TCPServer = GuardedTCPServer


async def serve_asgi(
    app: ASGIApp,
    *,
    bind: str | list[str],
    certfile: str | None = None,
    keyfile: str | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout_s: float = 5.0,
    header_bytes_max: int = HEADER_BYTES_MAX_DEFAULT,
    idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns (then drain for `graceful_timeout_s`) or until cancelled.
    A request head over `header_bytes_max` gets 431; a connection with no request in progress for `idle_timeout_s`
    (idle between requests, or still sending its head) is closed.

    Start it with `await nursery.start(partial(serve_asgi, app, bind="127.0.0.1:0"))`: the result is the list
    of bound "host:port" strings ("[::1]:port" for IPv6), with real ports where port 0 was asked for.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError("TLS needs both certfile and keyfile")
    install_connection_guard()
    # hpack logs every header it encodes or decodes at DEBUG, API keys included; keep that out of any log.
    logging.getLogger("hpack").setLevel(logging.INFO)
    config = Config()
    config.bind = [bind] if isinstance(bind, str) else list(bind)
    config.certfile = certfile
    config.keyfile = keyfile
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None  # logging each request cost ~40% throughput, and requests carry API keys
    config.errorlog = logger.getChild("hypercorn")  # not hypercorn's own stderr handler
    config.include_server_header = False
    config.keep_alive_max_requests = KEEP_ALIVE_REQUESTS_MAX
    config.h2_max_concurrent_streams = H2_CONCURRENT_STREAMS_MAX
    config.backlog = LISTEN_BACKLOG
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = idle_timeout_s
    # h11 checks the limit while a head is incomplete (reading 64 KiB at a time); h2 counts the decoded header list.
    config.h11_max_incomplete_size = header_bytes_max
    config.h2_max_header_list_size = header_bytes_max
    await hypercorn.trio.serve(
        _lifespan_optional(app),
        config,
        shutdown_trigger=shutdown_trigger,
        task_status=_BoundAddressReporter(task_status),
        mode="asgi",
    )


@dataclass(frozen=True, slots=True)
class _BoundAddressReporter(trio.TaskStatus[list[str]]):
    """Hypercorn reports "http://host:port"; callers want "host:port" to connect to or advertise."""

    caller: trio.TaskStatus[list[str]]

    def started(self, value: list[str] | None = None) -> None:
        self.caller.started([address.split("://", 1)[1] for address in value or []])


class _LifespanUnsupportedError(Exception):
    """Tells hypercorn that the app has no lifespan support, the signal it understands."""


def _lifespan_optional(app: ASGIApp) -> ASGIApp:
    """Let apps simply return from the lifespan scope, as ASGI allows.

    Hypercorn tolerates an app that *raises* there (with a warning) but crashes on one that *returns*: it then
    sends into a closed channel and `serve()` fails with ClosedResourceError. An app that returns at once gets
    the protocol answered for it; one that returns halfway through is reported to hypercorn as unsupported.
    """

    async def app_with_optional_lifespan(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        exchanged: list[str] = []

        async def watched_receive() -> ASGIMessage:
            message = await receive()
            exchanged.append(message["type"])
            return message

        async def watched_send(message: ASGIMessage) -> None:
            exchanged.append(message["type"])
            await send(message)

        await app(scope, watched_receive, watched_send)
        if not exchanged:
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif "lifespan.startup.complete" not in exchanged:
            raise _LifespanUnsupportedError("the app returned from the lifespan scope without starting up")

    return app_with_optional_lifespan


def _log_contained(error: BaseException) -> None:
    logger.warning("closed an HTTP connection after an unexpected %s", _describe_without_payload(error))


def _describe_without_payload(error: BaseException) -> str:
    """Name each failure and where it was raised, but leave out messages: they can quote request headers."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe_without_payload(inner) for inner in error.exceptions)
    frames = traceback.extract_tb(error.__traceback__)[-LOGGED_FRAMES_MAX:]
    where = " <- ".join(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" for frame in frames[::-1])
    return f"{type(error).__module__}.{type(error).__qualname__} at {where}"
