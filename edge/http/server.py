"""Serve an ASGI app with hypercorn's Trio worker, hardened so that one connection can never end the server.

One cleartext port speaks HTTP/1.1, h2c with prior knowledge and the h2c Upgrade; with a certificate it
speaks TLS with ALPN (h2, http/1.1). `serve_asgi` runs inside the caller's nursery and reports what it bound.

The hardening is a patch to hypercorn 0.18.0's per-connection driver: edge/vendor/hypercorn.py holds it and
explains why; `serve_asgi` installs it (with the other vendor patches) before it binds anything.

Answers go out whole (`send_whole_response`) or, for event streams, in parts as they come
(`start_streamed_response`); the idle timeout never applies to a connection whose response is still streaming.
The patch holds an HTTP/1.1 head until the next write, so a stream should write its first part at once.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast

import hypercorn.trio
import trio
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework

from edge import vendor
from edge.config import HEADER_BYTES_MAX_DEFAULT, IDLE_TIMEOUT_S_DEFAULT, split_listen

# The ASGI spec's scope and messages are plain dicts (hypercorn types each kind as a TypedDict; one dict type
# keeps the apps here simple, and `serve_asgi` is where the two meet).
ASGIScope = dict[str, Any]
ASGIMessage = dict[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]

logger = logging.getLogger("ezthrottle.http")

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


async def start_streamed_response(
    send: ASGISend, status: int, *, content_type: bytes, headers: Mapping[str, str]
) -> None:
    """Begin an answer whose body is written as it comes (`send_body_part`, then `end_streamed_response`): no
    Content-Length, so HTTP/1.1 sends it chunked and HTTP/2 in DATA frames, each part on the wire at once."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                *((name.lower().encode(), value.encode()) for name, value in headers.items()),
            ],
        }
    )


async def send_body_part(send: ASGISend, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def end_streamed_response(send: ASGISend) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_asgi(
    app: ASGIApp,
    *,
    bind: str | list[str],
    reuse_port: Collection[str] = (),
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout_s: float = 5.0,
    header_bytes_max: int = HEADER_BYTES_MAX_DEFAULT,
    idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns (then drain for `graceful_timeout_s`) or until cancelled.
    A request head over `header_bytes_max` gets 431; a connection with no request in progress for `idle_timeout_s`
    (idle between requests, or still sending its head) is closed. The addresses of `bind` that are also in
    `reuse_port` are bound with SO_REUSEPORT, to be shared with the node's sibling worker processes (edge/workers.py),
    the kernel spreading connections over them; every other address stays exclusive, as usual.

    Start it with `await nursery.start(partial(serve_asgi, app, bind="127.0.0.1:0"))`: the result is the list
    of bound "host:port" strings ("[::1]:port" for IPv6), with real ports where port 0 was asked for.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError("TLS needs both certfile and keyfile")
    vendor.install_all()
    # hpack logs every header it encodes or decodes at DEBUG, API keys included; keep that out of any log.
    logging.getLogger("hpack").setLevel(logging.INFO)
    config = Config()
    binds = [bind] if isinstance(bind, str) else list(bind)
    config.bind = [f"fd://{_shared_socket(address)}" if address in reuse_port else address for address in binds]
    config.certfile = None if certfile is None else os.fspath(certfile)
    config.keyfile = None if keyfile is None else os.fspath(keyfile)
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
        cast(ASGIFramework, _lifespan_optional(app)),  # the same messages, typed as TypedDicts there
        config,
        shutdown_trigger=shutdown_trigger,
        task_status=_BoundAddressReporter(task_status),
        mode="asgi",
    )


def _shared_socket(address: str) -> int:
    """A TCP socket bound to `address` with SO_REUSEPORT, as a file descriptor hypercorn takes over ("fd://N").

    hypercorn sets SO_REUSEPORT itself only in its own multi-worker mode (`Config.workers > 1`), which `serve`
    does not run; it listens on the descriptor and sets the rest (SO_REUSEADDR, non-blocking) as for its own."""
    host, port = split_listen(address)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock.detach()


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

    async def app_with_optional_lifespan(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
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
