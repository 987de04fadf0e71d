"""The node's outbound transport for real sockets: keep-alive HTTP/1.1 connections of its own, per origin.

Job attempts and webhook deliveries go through it (edge/outbound/client.py hands it httpx requests). It speaks
HTTP/1.1 through the sans-I/O edge/wire/response.py over trio streams, and opens every connection through a
`Connect` function, which is where the SSRF guard vets the address (edge/outbound/ssrf.py).

Why not httpx's own transport: httpcore's pool re-examines every connection for every queued request each time a
request starts or a response closes (encode/httpx#3215), so its cost grows with the product of the two. On it the
node completed 0.5-0.8x the jobs per second of a plain `httpx.AsyncClient` loop against the same upstream; on this
transport about 1.6x (`python -m bench execution`, bench/RESULTS.md). Here a request takes the last idle
connection to its origin (LIFO: the one most likely still warm) or opens one, in O(1).

Limits, as httpx names them: at most `connections_max` connections at once, idle ones included (when all are
taken, a request waits up to its `pool` timeout for one, and an idle connection to another origin is closed to
make room rather than waited for); at most `idle_max` idle ones kept; an idle connection older than
`idle_expiry_s`, or one with anything to read (the peer closed it, or sent bytes no request asked for), is closed
instead of reused. A connection whose exchange did not end cleanly (cancelled, timed out, a body left unread, a
`Connection: close`) is closed, never reused.

Errors are httpx's, as `httpx.AsyncHTTPTransport` raises them: `ConnectError` / `ConnectTimeout` (the connect
timeout covers the resolver, every address tried and the TLS handshake), `PoolTimeout`, `WriteError` /
`WriteTimeout`, `ReadError` / `ReadTimeout` (between bytes), `RemoteProtocolError` (the peer broke HTTP/1.1). A
refusal by the SSRF guard is a `ConnectError` caused by the guard's `TargetRefused`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from edge.wire.response import Need, ResponseHead, ResponseParser, WireError, request_head

# Opens a TCP connection to (host, port): a name or an IP literal, as the URL has it. Raises OSError when it cannot,
# or anything else that says why (the SSRF guard's TargetRefused).
Connect = Callable[[str, int], Awaitable[trio.SocketStream]]
Origin = tuple[bytes, bytes, int]  # scheme, host, port

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
_READ_BYTES: Final = 64 * 1024
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class PoolLimits:
    connections_max: int
    idle_max: int
    idle_expiry_s: float


class _Connection:
    __slots__ = ("closed", "idle_since", "origin", "parser", "socket", "stream")

    def __init__(self, origin: Origin, stream: trio.abc.Stream, socket: trio.SocketStream) -> None:
        self.origin = origin
        self.stream = stream
        self.socket = socket
        self.parser = ResponseParser()
        self.idle_since = 0.0
        self.closed = False

    def is_stale(self, now: float, expiry_s: float) -> bool:
        """Idle too long, or readable while idle: closed (or garbled) by the peer."""
        return now - self.idle_since > expiry_s or self.socket.socket.is_readable()


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Pooled HTTP/1.1 for any number of origins (http and https), every connection opened by `connect`."""

    def __init__(self, *, connect: Connect, limits: PoolLimits, ssl_context: ssl.SSLContext | None = None) -> None:
        self._connect = connect
        self._limits = limits
        self._tls = ssl_context
        self._slots = trio.Semaphore(limits.connections_max)  # one per open connection, idle ones included
        self._idle: dict[Origin, list[_Connection]] = {}  # per origin, the most recently used last
        self._idle_count = 0
        self._connections: set[_Connection] = set()  # in use or idle

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        read_s = _seconds(timeouts.get("read"))
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"only http and https URLs can be sent, not {url}", request=request)
        origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        connection = await self._acquire(origin, request, timeouts)
        try:
            head = await self._exchange(connection, request, read_s, _seconds(timeouts.get("write")))
        except BaseException:
            await self._close(connection)
            raise
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_ResponseBody(self, connection, request, read_s),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        """Close every connection, those in use too: their exchanges fail (a caller going away must be seen by
        the peer at once, as a closed connection)."""
        self._idle, self._idle_count = {}, 0
        for connection in list(self._connections):
            await self._close(connection)

    # -- connections -----------------------------------------------------------------------------------------

    async def _acquire(self, origin: Origin, request: httpx.Request, timeouts: dict[str, float | None]) -> _Connection:
        reused = await self._idle_connection(origin)
        if reused is not None:
            return reused
        if not self._take_slot():
            with trio.move_on_after(_seconds(timeouts.get("pool"))) as waiting:
                await self._slots.acquire()
            if waiting.cancelled_caught:
                raise httpx.PoolTimeout("every connection of the pool stayed in use", request=request)
        try:
            return await self._open(origin, request, _seconds(timeouts.get("connect")))
        except BaseException:
            self._slots.release()
            raise

    async def _idle_connection(self, origin: Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        now = trio.current_time()
        while connections:
            connection = connections.pop()
            self._idle_count -= 1
            if not connections:
                del self._idle[origin]
            if not connection.is_stale(now, self._limits.idle_expiry_s):
                return connection
            await self._close(connection)
        return None

    def _take_slot(self) -> bool:
        """A slot at once: a free one, or one an idle connection to another origin gives up."""
        try:
            self._slots.acquire_nowait()
            return True
        except trio.WouldBlock:
            pass
        if not self._idle:
            return False
        origin, connections = next(iter(self._idle.items()))  # the origin idle the longest, roughly
        victim = connections.pop(0)
        self._idle_count -= 1
        if not connections:
            del self._idle[origin]
        self._close_nowait(victim)
        self._slots.acquire_nowait()
        return True

    async def _open(self, origin: Origin, request: httpx.Request, connect_s: float) -> _Connection:
        scheme, host, port = origin
        name = host.decode("ascii")
        with trio.move_on_after(connect_s) as connecting:
            try:
                socket = await self._connect(name, port)
            except OSError as error:
                raise httpx.ConnectError(f"could not connect to {name}:{port} ({error})", request=request) from error
            except Exception as error:  # what `connect` refused, the SSRF guard's TargetRefused say
                raise httpx.ConnectError(str(error), request=request) from error
            stream: trio.abc.Stream = socket
            if scheme == b"https":
                tls = trio.SSLStream(socket, self._tls_context(), server_hostname=name, https_compatible=True)
                try:
                    await tls.do_handshake()
                except (*_STREAM_ERRORS, ssl.SSLError) as error:
                    await trio.aclose_forcefully(socket)
                    raise httpx.ConnectError(f"TLS with {name}:{port} failed ({error})", request=request) from error
                stream = tls
        if connecting.cancelled_caught:
            raise httpx.ConnectTimeout(f"connecting to {name}:{port} took over {connect_s:g} s", request=request)
        connection = _Connection(origin, stream, socket)
        self._connections.add(connection)
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # certifi's roots, or SSL_CERT_FILE's, as httpx would
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls

    async def _release(self, connection: _Connection) -> None:
        """Keep a connection whose exchange ended cleanly, if there is room; close any other."""
        if not connection.closed and connection.parser.reusable and self._idle_count < self._limits.idle_max:
            connection.idle_since = trio.current_time()
            self._idle.setdefault(connection.origin, []).append(connection)
            self._idle_count += 1
        else:
            await self._close(connection)

    async def _close(self, connection: _Connection) -> None:
        if self._forget(connection):
            await trio.aclose_forcefully(connection.stream)

    def _close_nowait(self, connection: _Connection) -> None:
        """Close at once, without a checkpoint (closing the socket is enough: no TLS goodbye)."""
        if self._forget(connection):
            connection.socket.socket.close()

    def _forget(self, connection: _Connection) -> bool:
        """Give the connection's slot back, once: whether it was still open."""
        if connection.closed:
            return False
        connection.closed = True
        self._connections.discard(connection)
        self._slots.release()
        return True

    # -- one exchange ----------------------------------------------------------------------------------------

    async def _exchange(
        self, connection: _Connection, request: httpx.Request, read_s: float, write_s: float
    ) -> ResponseHead:
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        method = request.method.encode("ascii")
        try:
            head = request_head(method, request.url.raw_path, request.headers.raw)
        except WireError as error:
            raise httpx.LocalProtocolError(str(error), request=request) from None
        connection.parser.expect(head_only=method == b"HEAD")
        with trio.move_on_after(write_s) as writing:
            try:
                await connection.stream.send_all(head + body)
            except _STREAM_ERRORS as error:
                raise httpx.WriteError(f"the peer stopped reading ({type(error).__name__})", request=request) from error
        if writing.cancelled_caught:
            raise httpx.WriteTimeout("the peer did not read the request in time", request=request)
        event = await self._next_event(connection, request, read_s)
        assert isinstance(event, ResponseHead)  # the parser's first event after `expect`
        return event

    async def _next_event(self, connection: _Connection, request: httpx.Request, read_s: float) -> ResponseHead | bytes:
        """The parser's next event (a head, a body chunk or the end), reading as much as that takes."""
        parser = connection.parser
        while True:
            try:
                event = parser.next_event()
            except WireError as error:
                raise httpx.RemoteProtocolError(f"the peer broke HTTP/1.1 ({error})", request=request) from None
            if not isinstance(event, Need):
                return event
            with trio.move_on_after(read_s) as reading:
                try:
                    data = await connection.stream.receive_some(_READ_BYTES)
                except _STREAM_ERRORS as error:
                    raise httpx.ReadError(f"the peer hung up ({type(error).__name__})", request=request) from error
            if reading.cancelled_caught:
                raise httpx.ReadTimeout("the peer sent nothing within the read timeout", request=request)
            parser.feed(bytes(data))


class _ResponseBody(httpx.AsyncByteStream):
    """A response's body as it arrives (transfer coding removed; httpx removes the content coding)."""

    def __init__(
        self, pool: KeepAliveTransport, connection: _Connection, request: httpx.Request, read_s: float
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._request = request
        self._read_s = read_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        while data := await self._pool._next_event(connection, self._request, self._read_s):
            assert isinstance(data, bytes)
            yield data

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool._release(connection)


def _seconds(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout
