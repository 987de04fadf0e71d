"""Serve an ASGI app: every listener of a node (the job API, the protected listeners) and the test servers.

One cleartext port speaks HTTP/1.1 and h2c with prior knowledge; with a certificate it speaks TLS with ALPN (h2,
http/1.1). Both protocols are this project's own front end, on sans-I/O parsers: HTTP/1.1 in edge/http/http1.py
(on edge/wire/request.py), HTTP/2 in edge/http/h2.py (on h2); each says what a client gets and why. The app's
lifespan protocol runs around the serving, as ASGI servers do; an app without one is served all the same.

Answers go out whole (`send_whole_response`) or, for event streams, in parts as they come
(`start_streamed_response`); the idle timeout never applies to a connection whose response is still streaming.
An HTTP/1.1 head is held until the first body part, so a stream should write its first part at once.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Final

import trio

from edge.config import HEADER_BYTES_MAX_DEFAULT, IDLE_TIMEOUT_S_DEFAULT, split_listen
from edge.http.asgi import ASGIApp as ASGIApp
from edge.http.asgi import ASGIMessage as ASGIMessage
from edge.http.asgi import ASGIReceive as ASGIReceive
from edge.http.asgi import ASGIScope as ASGIScope
from edge.http.asgi import ASGISend as ASGISend
from edge.http.http1 import Http1Server, ServerLimits
from edge.runtime import system_wall_clock

logger = logging.getLogger("ezthrottle.http")

# Hypercorn's default listen backlog (100) drops SYNs when a burst of clients connects at once.
LISTEN_BACKLOG: Final = 1024
# How much of a refused request body an app reads and discards before answering: a client still writing its
# body does not read the answer, so answering early makes it see a dropped connection instead of the refusal.
# Past this, answer and let it drop.
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
    wall_clock: Callable[[], float] = system_wall_clock,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns (then drain for `graceful_timeout_s`) or until cancelled.
    A request head over `header_bytes_max` gets 431; a connection with no request in progress for `idle_timeout_s`
    (idle between requests, or still sending its head) is closed. The addresses of `bind` that are also in
    `reuse_port` are bound with SO_REUSEPORT, to be shared with the node's sibling worker processes (edge/workers.py),
    the kernel spreading connections over them; every other address stays exclusive, as usual. `wall_clock` (unix
    seconds) dates the answers (the simulator's clock in a simulation).

    Start it with `await nursery.start(partial(serve_asgi, app, bind="127.0.0.1:0"))`: the result is the list
    of bound "host:port" strings ("[::1]:port" for IPv6), with real ports where port 0 was asked for, reported once
    the app's lifespan startup is complete.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError("TLS needs both certfile and keyfile")
    # hpack logs every header it encodes or decodes at DEBUG, API keys included; keep that out of any log.
    logging.getLogger("hpack").setLevel(logging.INFO)
    tls = None if certfile is None or keyfile is None else _tls_context(certfile, keyfile)
    limits = ServerLimits(header_bytes_max, idle_timeout_s, graceful_timeout_s)
    server = Http1Server(app, limits=limits, wall_clock=wall_clock, tls=tls)
    async with _lifespan(app, graceful_timeout_s):
        binds = [bind] if isinstance(bind, str) else list(bind)
        listeners = [_listener(address, shared=address in reuse_port) for address in binds]
        await server.serve(listeners, shutdown_trigger=shutdown_trigger, task_status=task_status)


def _tls_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def _listener(address: str, *, shared: bool) -> trio.SocketListener:
    """A TCP listener on `address`; `shared` sets SO_REUSEPORT, so sibling processes can listen there too.

    Made by hand rather than by `trio.open_tcp_listeners`, which would set IPV6_V6ONLY: "[::]:8080" keeps
    taking IPv4 connections too, as it did on hypercorn."""
    host, port = split_listen(address)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


@asynccontextmanager
async def _lifespan(app: ASGIApp, shutdown_timeout_s: float) -> AsyncIterator[None]:
    """Run the app's lifespan scope around the body: startup before, shutdown after (for at most
    `shutdown_timeout_s`), then the scope's task is cancelled.

    ASGI lets an app without lifespan support simply return (or raise) at once: it is then served without one,
    quietly. One that leaves halfway (it took the startup message and never answered it) is served without it
    too, with a warning. A `lifespan.startup.failed` answer is an error: the server does not start.
    """
    to_app, app_receives = trio.open_memory_channel[ASGIMessage](1)
    app_sends, from_app = trio.open_memory_channel[ASGIMessage](math.inf)
    answered = False

    async def send(message: ASGIMessage) -> None:
        nonlocal answered
        answered = True
        await app_sends.send(message)

    async def run() -> None:
        async with app_sends:
            try:
                await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, app_receives.receive, send)
            except Exception:
                if answered:  # raising before any answer is one way an app says it has no lifespan
                    raise

    async def exchange(kind: str) -> bool:
        """Send `kind`; True once the app answered it, False if it returned without answering."""
        to_app.send_nowait({"type": kind})
        try:
            answer = await from_app.receive()
        except trio.EndOfChannel:
            return False
        if answer["type"] == f"{kind}.failed":
            raise RuntimeError(f"the app failed its {kind}: {answer.get('message', '')}")
        return True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, name="lifespan")
        started = await exchange("lifespan.startup")
        if not started and app_receives.statistics().current_buffer_used == 0:
            logger.warning(
                "the app left the lifespan protocol before its startup completed; continuing without Lifespan support"
            )
        try:
            yield
        finally:
            if started:
                with trio.move_on_after(shutdown_timeout_s) as waited:
                    waited.shield = True
                    await exchange("lifespan.shutdown")
            nursery.cancel_scope.cancel()
