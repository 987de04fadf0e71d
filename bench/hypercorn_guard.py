"""The benchmarks' yardstick server, hypercorn's Trio worker, patched so that one connection can never end it
(hypercorn 0.18.0 only).

The node served every listener on hypercorn once, with this patch; it now has a front end of its own
(edge/http/), and hypercorn stays only as the fixed yardstick that intake and proxy benchmarks compare with
(`bench.common.serve_on_hypercorn`), set up as the node had it. Why a patch (hypercorn is pinned to exactly 0.18.0
for it, see pyproject.toml): hypercorn's Trio worker runs every connection in a task of one shared nursery, and
any exception that escapes a connection ends that nursery, `serve()`, and everything else the caller runs beside
it (upstream pgjones/hypercorn#225 and #203; the fix in PR #228 was reverted). Two ways to get there:

- An HTTP/2 client that sends GOAWAY while responses are streaming: `TCPServer._close()` calls `send_eof()`
  without the send lock, and `send_eof()` holds the stream's send side across a checkpoint, so the HTTP/2 send
  task's `send_all()` raises `trio.BusyResourceError` (h2load -D, which ends with GOAWAY, trips it every run).
- An HTTP/2 client that keeps sending a request body after the app answered (an early 413, say): hypercorn
  looks the finished stream up and raises `KeyError`.

Without the guard, h2load's hang-up at the end of a run ended the yardstick mid-benchmark. `GuardedTCPServer`
drops send errors on a connection that is already closing and contains (logs, then closes) anything else one
connection raises. `install()` puts it where `hypercorn.trio.run.worker_serve` looks
`TCPServer` up, so it is the first code between the listener and each accepted stream, TLS handshake included.

Being there, it also takes out two per-request costs that a profile of the proxy refusing a flood put at about
a fifth of the server's CPU (bench/RESULTS.md, noisy neighbour), and which the yardstick keeps:
- hypercorn writes an HTTP/1.1 response in three socket writes (head, body, an empty end of message); the head of
  a final response is now held and written with the bytes that always follow it, and empty writes are skipped;
- hypercorn starts a keep-alive timer task each time a connection goes idle and cancels it on the next request;
  `_KeepAliveTimer` keeps one task per connection and moves its deadline.
"""

from __future__ import annotations

import logging
import math
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import hypercorn.trio.run as hypercorn_trio_run
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

# The guard overrides private methods of this exact release; re-read any other release before trusting it.
PATCHED_VERSION = "0.18.0"
# Frames shown when a contained connection error is logged: enough to find the culprit in hypercorn.
LOGGED_FRAMES_MAX = 6

logger = logging.getLogger("ezthrottle.http")

# Errors a send raises once the peer or our own close has torn the stream down.
_STREAM_GONE_ERRORS = (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError)


def installed_version() -> str:
    """The hypercorn release installed (hypercorn has no `__version__`; its distribution metadata says)."""
    return metadata.version("hypercorn")


def install() -> None:
    """Make hypercorn's Trio worker drive every accepted connection with `GuardedTCPServer` (idempotent).

    Raises RuntimeError, and patches nothing, when the installed hypercorn is not the release patched, or when
    something else has already replaced hypercorn's `TCPServer`.
    """
    found = installed_version()
    if found != PATCHED_VERSION:
        raise RuntimeError(
            f"bench.hypercorn_guard patches hypercorn {PATCHED_VERSION}, but hypercorn {found} is installed: "
            "re-check pgjones/hypercorn#225 and the overridden private methods against the new release "
            "before moving the pin in pyproject.toml"
        )
    current = vars(hypercorn_trio_run)["TCPServer"]
    if current is GuardedTCPServer:
        return
    if current is not TCPServer:
        raise RuntimeError(f"hypercorn.trio.run.TCPServer is already patched by someone else: {current!r}")
    # Through setattr: the type checker sees `TCPServer` there as hypercorn's class, which it will not reassign.
    setattr(hypercorn_trio_run, "TCPServer", GuardedTCPServer)  # noqa: B010


def is_installed() -> bool:
    return vars(hypercorn_trio_run)["TCPServer"] is GuardedTCPServer


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
            nursery = task_group._nursery
            if nursery is None:  # hypercorn restarts the timer only from inside the connection's task group
                raise RuntimeError("hypercorn restarted a keep-alive timer outside its connection's task group")
            self._scope = trio.CancelScope(deadline=deadline)
            nursery.start_soon(self._watch, self._scope)
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


def _log_contained(error: BaseException) -> None:
    logger.warning("closed an HTTP connection after an unexpected %s", _describe_without_payload(error))


def _describe_without_payload(error: BaseException) -> str:
    """Name each failure and where it was raised, but leave out messages: they can quote request headers."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe_without_payload(inner) for inner in error.exceptions)
    frames = traceback.extract_tb(error.__traceback__)[-LOGGED_FRAMES_MAX:]
    where = " <- ".join(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" for frame in frames[::-1])
    return f"{type(error).__module__}.{type(error).__qualname__} at {where}"
