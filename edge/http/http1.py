"""The front end of every listener: HTTP/1.1 on Trio, HTTP/2 handed to edge/http/h2.py, TLS with ALPN.

Why not hypercorn (it served every listener before): a proxy or an intake endpoint is mostly
per-request overhead, and hypercorn spends more per request than the proxy's own work (a task per request, an
event queue between the protocol and the app, three writes per response). This server
does the least an HTTP/1.1 front end can: one parser per connection (edge/wire/request.py, strict, and no more
lenient than h11 anywhere) reads heads and bodies, pipelined bytes included, the app runs in the connection's own
task, and each answer is serialised here and written with its first body part in one write. Writing is ours
because what goes out is ours or was parsed on the way in.

What a client gets:
- keep-alive HTTP/1.1 with no cap on requests per connection (HTTP/1.0 and `Connection: close` get their answer,
  then the connection closes);
- a head over `header_bytes_max` is 431, a malformed one 400 (a transfer coding other than chunked 501, an HTTP
  version other than 1.0 and 1.1 505), and a connection with no request in progress
  (idle between requests, still sending its head, or still in its TLS handshake) is closed after
  `idle_timeout_s`;
- `Expect: 100-continue` is answered when the app first reads the body, so a refusal can come first;
- a response without Content-Length goes chunked (to HTTP/1.0, close-delimited); every answer has a Date, none
  a Server header;
- a body the app left unread is read and dropped after the answer (up to `_LINGER_BYTES_MAX`, within
  `_LINGER_S`), so the connection carries the next request; past that, it closes;
- the client leaving is `http.disconnect` to a wait for the next message once the body is read, and cancels the
  scopes an app gave the scope's `DisconnectWatch` (edge/http/asgi.py). Nobody reads a connection for that while
  its request is young: a request still running `_DISCONNECT_WATCH_DELAY_S` after its body ended gets a task that
  reads its connection until EOF (so a disconnect is noticed up to twice that late; most requests are over before,
  and pay for no task, no timer and no epoll registration); bytes pipelined meanwhile are kept for the next
  request;
- HTTP/2: a cleartext connection that opens with the preface (h2c prior knowledge), or a TLS one that negotiated
  "h2", is handed whole to the HTTP/2 server (edge/http/h2.py). The h2c Upgrade header is ignored: the answer comes over
  HTTP/1.1, which RFC 9110 allows (RFC 9113 deprecates that upgrade), and the connection then closes;
- stopping: the listeners close, idle connections close at once, requests in progress get `graceful_timeout_s`
  to finish (their connections close after the answer), then whatever is left is cancelled.

One connection's failure never reaches another: anything a connection raises is logged and ends only it.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, Final

import trio

from edge.http.asgi import ASGIApp, ASGIMessage, ClientGone, Endpoints, http_scope
from edge.http.h2 import H2_PREFACE, Http2Server
from edge.wire.request import END, Need, RequestHead, RequestParser, WireError

logger = logging.getLogger("ezthrottle.http")

_READ_BYTES: Final = 64 * 1024
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_DISCONNECT: Final = {"type": "http.disconnect"}
_BODY_END: Final = {"type": "http.request", "body": b"", "more_body": False}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNKED_END: Final = b"0\r\n\r\n"
_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii") for status in HTTPStatus
}
# How much a client may pipeline while its request is in progress: beyond it, the server stops reading (and so
# stops watching for a disconnect) until the answer is out, rather than buffering without bound.
_PIPELINED_BYTES_MAX: Final = 64 * 1024
# How late a client's disconnect mid-request may be noticed (its upstream slot is freed then).
_DISCONNECT_WATCH_DELAY_S: Final = 0.05


# After an answer that ends a connection early: how long and how much more of the client's sending to discard.
_LINGER_S: Final = 2.0
_LINGER_BYTES_MAX: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    header_bytes_max: int
    idle_timeout_s: float
    graceful_timeout_s: float = 5.0


class _HttpDate:
    """The Date header value, formatted once per second of `wall_clock` (injected: the simulator's time)."""

    __slots__ = ("_header", "_second", "_value", "_wall_clock")

    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._wall_clock = wall_clock
        self._second = -1
        self._value = b""
        self._header = b""

    def value(self) -> bytes:
        second = int(self._wall_clock())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True).encode("ascii")
            self._header = b"date: " + self._value + b"\r\n"
        return self._value

    def header(self) -> bytes:
        """The whole header line, for HTTP/1.1."""
        self.value()
        return self._header


class Http1Server:
    """Serves one ASGI app on its listeners until stopped; `serve` runs it. With `tls`, every connection is TLS and
    ALPN picks HTTP/2 or HTTP/1.1."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: ServerLimits,
        wall_clock: Callable[[], float],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.tls = tls
        self.date = _HttpDate(wall_clock)
        self.h2 = Http2Server(
            app, header_bytes_max=limits.header_bytes_max, idle_timeout_s=limits.idle_timeout_s, date=self.date.value
        )
        self.stopping = False
        self.idle: set[trio.CancelScope] = set()  # the waits for a next request head, cancelled on stop
        # Requests waiting for someone to watch their connection for the client leaving, oldest first, with since
        # when; `_sweep` hands those old enough a watcher task, and runs only while there are any.
        self._unwatched: dict[_Exchange, float] = {}
        self._sweeping = False
        self._connections: trio.Nursery | None = None

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown_trigger` returns (then drain, see the module docstring) or until cancelled; the
        listeners are closed on the way out. Reports their "host:port" strings ("[::1]:port" for IPv6)."""
        async with trio.open_nursery() as connections:
            self._connections = connections
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(trio.serve_listeners, self._connection, listeners, handler_nursery=connections)
                    )
                    task_status.started([_address(listener) for listener in listeners])
                    if shutdown_trigger is None:
                        await trio.sleep_forever()
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
            self.stopping = True
            for scope in self.idle:
                scope.cancel()
            self.h2.stop()
            connections.cancel_scope.deadline = trio.current_time() + self.limits.graceful_timeout_s

    def watch(self, exchange: _Exchange) -> None:
        """Have `exchange`'s connection read for the client leaving, if it is still running after
        `_DISCONNECT_WATCH_DELAY_S`."""
        self._unwatched.setdefault(exchange, trio.current_time())
        if not self._sweeping and self._connections is not None:
            self._sweeping = True
            self._connections.start_soon(self._sweep)

    def unwatch(self, exchange: _Exchange) -> None:
        self._unwatched.pop(exchange, None)

    async def _sweep(self) -> None:
        """Every `_DISCONNECT_WATCH_DELAY_S`, a watcher task for each request waiting that long; ends when none
        waits."""
        assert self._connections is not None
        try:
            while self._unwatched:
                await trio.sleep(_DISCONNECT_WATCH_DELAY_S)
                due = trio.current_time() - _DISCONNECT_WATCH_DELAY_S
                for exchange, since in list(self._unwatched.items()):
                    if since > due:
                        break  # (oldest first)
                    del self._unwatched[exchange]
                    exchange.start_watcher(self._connections)
        finally:
            self._sweeping = False

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                if self.tls is None:
                    await _Connection(self, stream, stream).run()
                else:
                    await self._tls_connection(stream)
        except _STREAM_ERRORS:
            pass  # the client went away; nobody to answer
        except Exception:
            logger.exception("a connection failed (only that connection was closed)")

    async def _tls_connection(self, transport: trio.SocketStream) -> None:
        assert self.tls is not None
        stream = trio.SSLStream(transport, self.tls, server_side=True, https_compatible=True)
        handshake = _IdleScope(self, trio.current_time() + self.limits.idle_timeout_s)
        with handshake:
            await stream.do_handshake()
        if handshake.cancelled_caught:
            return  # too slow, or the server is stopping
        if stream.selected_alpn_protocol() == "h2":
            await self.h2.serve(stream, transport)
            return
        await _Connection(self, stream, transport).run()


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection:
    """One client connection: requests one after another, each through the app."""

    __slots__ = ("endpoints", "server", "stream")

    def __init__(
        self,
        server: Http1Server,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        transport: trio.SocketStream,
    ) -> None:
        """`stream` carries the bytes: `transport` itself, or TLS over it."""
        self.server = server
        self.stream = stream
        self.endpoints = Endpoints.of(stream, transport)

    async def run(self) -> None:
        leftover = await self._opening_bytes()
        if leftover is None:
            return
        if isinstance(self.stream, trio.SocketStream) and leftover.startswith(H2_PREFACE):
            await self.server.h2.serve(self.stream, self.stream, leftover)
            return
        parser = RequestParser(head_bytes_max=self.server.limits.header_bytes_max)
        parser.feed(leftover)
        while not self.server.stopping:
            try:
                request = await self._next_head(parser)
            except WireError as error:
                await self._refuse(error.status)
                await self._linger()
                return
            if request is None:
                return
            exchange = _Exchange(self, parser, request)
            await exchange.run()
            if not parser.body_done and exchange.keep_alive and exchange.complete and not exchange.awaits_continue:
                await self._discard_body(parser)
            if not parser.body_done:
                await self._linger()
                return
            if not exchange.keep_alive or parser.closed:
                return

    async def _opening_bytes(self) -> bytes | None:
        """The connection's first bytes, enough to tell the HTTP/2 preface from an HTTP/1.1 request line."""
        received = b""
        with self._idle_scope():
            while len(received) < len(H2_PREFACE) and H2_PREFACE.startswith(received):
                data = await self.stream.receive_some(_READ_BYTES)
                if not data:
                    return None
                received += data
            return received
        return None  # idle too long, or stopping

    async def _next_head(self, parser: RequestParser) -> RequestHead | None:
        """The next request's head, or None when the client closes, idles past the limit or the server stops."""
        with self._idle_scope():
            while isinstance(head := parser.next_head(), Need):
                parser.feed(bytes(await self.stream.receive_some(_READ_BYTES)))  # (TLS may give a bytearray)
            return head
        return None

    async def _discard_body(self, parser: RequestParser) -> None:
        """Read and drop the rest of a body the app answered without reading, as far as `_LINGER_BYTES_MAX` and
        `_LINGER_S` go, so the connection can carry the next request (a client told nothing would reuse it, and
        find it closed). (A client waiting for 100-continue is sending nothing: the caller closes that one.)"""
        discarded = 0
        with trio.move_on_after(_LINGER_S):
            while discarded <= _LINGER_BYTES_MAX:
                try:
                    event = parser.next_body()
                except WireError:
                    return
                if isinstance(event, Need):
                    data = bytes(await self.stream.receive_some(_READ_BYTES))
                    discarded += len(data)
                    parser.feed(data)
                elif event is END:
                    return

    async def _linger(self) -> None:
        """Close gently a connection the client may still be writing to: closing a socket with unread bytes
        resets it, and a reset can destroy the answer before the client reads it (nginx's lingering close)."""
        with trio.move_on_after(_LINGER_S):
            await self.stream.send_eof()
            discarded = 0
            while discarded < _LINGER_BYTES_MAX:
                data = await self.stream.receive_some(_READ_BYTES)
                if not data:
                    return
                discarded += len(data)

    def _idle_scope(self) -> _IdleScope:
        return _IdleScope(self.server, trio.current_time() + self.server.limits.idle_timeout_s)

    async def _refuse(self, status: int) -> None:
        """Answer a head the parser refused (400, 431...), or a failed app, and let the connection close."""
        body = HTTPStatus(status).phrase.encode("ascii")
        head = _STATUS_LINES[status] + self.server.date.header()
        head += b"content-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        await self.stream.send_all(head + body)


class _IdleScope:
    """A cancel scope with the idle deadline that the server's stop also cancels."""

    __slots__ = ("_scope", "_server")

    def __init__(self, server: Http1Server, deadline: float) -> None:
        self._server = server
        self._scope = trio.CancelScope(deadline=deadline)

    @property
    def cancelled_caught(self) -> bool:
        return self._scope.cancelled_caught

    def __enter__(self) -> None:
        self._server.idle.add(self._scope)
        self._scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        self._server.idle.discard(self._scope)
        return self._scope.__exit__(*exc_info)


class _Exchange:
    """One request through the app: its ASGI scope, `receive` and `send`."""

    __slots__ = (
        "_body_done",
        "_chunked",
        "_connection",
        "_continued",
        "_head",
        "_no_body",
        "_on_gone",
        "_parser",
        "_request",
        "_watcher",
        "_watcher_done",
        "complete",
        "gone",
        "keep_alive",
        "started",
    )

    def __init__(self, connection: _Connection, parser: RequestParser, request: RequestHead) -> None:
        self._connection = connection
        self._parser = parser
        self._request = request
        self._body_done = False
        self._continued = False
        self._head: bytes | None = None  # the response head, held until the first body part goes with it
        self._chunked = False
        self._no_body = request.method == b"HEAD"
        self._on_gone: list[trio.CancelScope] = []  # to cancel when the client leaves (`cancel_on_disconnect`)
        self._watcher: trio.CancelScope | None = None  # the task reading the connection for EOF, once it runs
        self._watcher_done = trio.Event()
        self.gone = False
        self.started = False
        self.complete = False
        self.keep_alive = request.keep_alive

    @property
    def awaits_continue(self) -> bool:
        """The client asked for a 100 (Continue) before its body and has not had one: it sends nothing more."""
        return self._request.expects_continue and not self._continued

    async def run(self) -> None:
        request = self._request
        connection = self._connection
        scope = http_scope(
            connection.endpoints,
            http_version=request.http_version.decode("ascii"),
            method=request.method.decode("ascii"),
            target=request.target,
            headers=request.headers,
            watch=self,
        )
        try:
            await connection.server.app(scope, self.receive, self.send)
        except ClientGone:
            pass
        except Exception:
            logger.exception("the app failed on a request")
            if not self.started:
                await connection._refuse(500)
        finally:
            await self._stop_watching()
        if not self.complete:
            self.keep_alive = False

    # -- the client leaving (edge/http/asgi.py: DisconnectWatch) ----------------------------------------------

    def cancel_on_disconnect(self, scope: trio.CancelScope) -> None:
        if self.gone:
            scope.cancel()
            return
        self._on_gone.append(scope)
        if self._body_done and self._watcher is None:
            self._connection.server.watch(self)

    def start_watcher(self, nursery: trio.Nursery) -> None:
        """Start reading the connection for the client leaving (the server's sweep decides when)."""
        self._watcher = trio.CancelScope()
        nursery.start_soon(self._watch_connection, self._watcher)

    async def _watch_connection(self, watcher: trio.CancelScope) -> None:
        """Read the connection until the client closes it, keeping what it pipelines meanwhile for the next
        request (up to `_PIPELINED_BYTES_MAX`; past that, stop reading and so stop watching)."""
        parser, stream = self._parser, self._connection.stream
        try:
            with watcher:
                while parser.buffered < _PIPELINED_BYTES_MAX:
                    try:
                        data = await stream.receive_some(_READ_BYTES)
                    except _STREAM_ERRORS:
                        data = b""
                    parser.feed(bytes(data))
                    if not data:
                        self._client_left()
                        return
                await trio.sleep_forever()
        finally:
            self._watcher_done.set()

    def _client_left(self) -> None:
        self.gone = True
        for scope in self._on_gone:
            scope.cancel()
        self._on_gone.clear()

    async def _stop_watching(self) -> None:
        """The request is over: nobody waits for its client any more, and its connection is read by the next one."""
        self._on_gone.clear()
        self._connection.server.unwatch(self)
        if self._watcher is not None:  # (started, or about to: either way it ends before the next request reads)
            self._watcher.cancel()
            await self._watcher_done.wait()

    async def receive(self) -> ASGIMessage:
        if self._body_done:
            if not self.complete:
                with trio.CancelScope() as waiting:
                    self.cancel_on_disconnect(waiting)
                    await trio.sleep_forever()
            return _DISCONNECT
        parser = self._parser
        if self.awaits_continue and not self.started:
            self._continued = True
            if not parser.buffered:  # (a client that sent its body anyway needs no 100)
                await self._connection.stream.send_all(_CONTINUE)
        while True:
            try:
                event = parser.next_body()
            except WireError:  # a broken body (bad chunk framing, EOF before the end)
                self._body_done = True
                return _DISCONNECT
            if isinstance(event, Need):
                try:
                    data = await self._connection.stream.receive_some(_READ_BYTES)
                except _STREAM_ERRORS:
                    data = b""
                parser.feed(bytes(data))  # (a TLS stream may hand over a bytearray)
                continue
            if event is not END:
                return {"type": "http.request", "body": event, "more_body": True}
            self._body_done = True
            if self._on_gone:  # (scopes given while the body was still coming)
                self._connection.server.watch(self)
            return _BODY_END

    async def send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._head = self._response_head(message["status"], message.get("headers", ()))
            self.started = True
            return
        if kind != "http.response.body" or self.complete:
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self._no_body:
            body = b""
        elif self._chunked and body:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        if not more:
            self.complete = True
            if self._chunked:
                body += _CHUNKED_END
        if self._head is not None:
            body, self._head = self._head + body, None
        if body:
            try:
                await self._connection.stream.send_all(body)
            except _STREAM_ERRORS:
                self.complete = False
                raise ClientGone from None

    def _response_head(self, status: int, headers: Any) -> bytes:
        """The status line and headers, with Date, framing and Connection added as this exchange needs."""
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        has_date = has_length = False
        for name, value in headers:
            has_date = has_date or name == b"date"
            has_length = has_length or name == b"content-length"
            lines.append(name + b": " + value + b"\r\n")
        if not has_date:
            lines.append(self._connection.server.date.header())
        self._no_body = self._no_body or status in (204, 304) or status < 200
        if not has_length and not self._no_body:
            if self._request.http_version == b"1.1":
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends where the connection does
        if self._connection.server.stopping:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # One line per header: a value with a line break in it would smuggle a header (or a response) in.
        if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
            raise ValueError("a response header name or value holds a line break")
        return head
