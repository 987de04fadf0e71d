"""The proxy's way to its upstream: one small interface, two implementations.

- `UpstreamPool`, for real sockets: keep-alive HTTP/1.1 connections of its own over trio streams, speaking
  HTTP through the sans-I/O edge/wire/response.py.
- `TransportUpstream`, for any httpx transport: the simulator's network (simulations/http.py), a test's
  `MockTransport`. The simulator runs the real `ProxyApp`, so only the last hop differs.

Why not httpx for real sockets too: httpx + httpcore were about a third of a proxied request's CPU (request, URL
and header models built per request, and a pool that re-checks every connection on each request,
encode/httpx#3215). This pool needs none of that: the gate already bounds the requests in flight to the
upstream's slots, so it never has to queue, and an idle connection is simply the last one put back (LIFO,
the one most likely still warm). A connection whose exchange did not end cleanly (cancelled, a timeout, a
short body, `Connection: close`) is closed, never reused; an idle one the upstream has closed meanwhile is
noticed before reuse (it reads as readable: EOF or stray bytes) and dropped.

Exceptions, which `ProxyApp` maps to answers:

    UpstreamError
    ├── UpstreamTimeout  504: no connection within the connect timeout, or no byte within the read timeout
    └── UpstreamFailed   502: `kind` "connect" (refused, unreachable) or "protocol" (broke HTTP, hung up)

Anything the request body raises while it streams up (a `Problem` for a slow or oversize upload, `ClientGone`)
passes through unchanged.
"""

from __future__ import annotations

import abc
import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx
import trio

from edge.config import ProtectConfig
from edge.wire.response import LAST_CHUNK, Need, ResponseHead, ResponseParser, WireError, chunk, request_head

Header = tuple[bytes, bytes]
Body = bytes | AsyncIterable[bytes]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_READ_BYTES: Final = 64 * 1024
# Methods whose empty body is still declared (Content-Length: 0), as httpx does.
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
# Connection errors that mean the upstream hung up or the network failed, as opposed to our own bugs.
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class UpstreamError(Exception):
    """The exchange with the upstream failed; nothing more can be read from this response."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamFailed(UpstreamError):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect_s: float
    read_s: float  # between bytes, both ways

    @classmethod
    def of(cls, protect: ProtectConfig) -> UpstreamTimeouts:
        return cls(connect_s=protect.upstream_connect_timeout_s, read_s=protect.upstream_read_timeout_s)


class UpstreamResponse(abc.ABC):
    """A response whose head has arrived; its body streams from `chunks()`. Always `aclose()` it."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[Header]) -> None:
        self.status = status
        self.headers = headers  # as the upstream sent them: its spelling of names, hop-by-hop ones included

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: transfer coding removed, content coding (gzip...) kept."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Give the connection back if the exchange ended cleanly, else close it."""


class Upstream(abc.ABC):
    @abc.abstractmethod
    async def send(self, method: bytes, target: bytes, headers: list[Header], body: Body) -> UpstreamResponse:
        """Send one request (`target` origin-form, `headers` end-to-end plus Host) and wait for its head."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close whatever connections are kept."""


# -- real sockets ------------------------------------------------------------------------------------------------


class _Connection:
    __slots__ = ("parser", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = ResponseParser()

    def is_stale(self) -> bool:
        """An idle connection with anything to read has been closed (or garbled) by the upstream."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        assert isinstance(stream, trio.SocketStream)
        return stream.socket.is_readable()


class UpstreamPool(Upstream):
    """Keep-alive HTTP/1.1 connections to one origin (http or https), at most `idle_max` kept idle."""

    def __init__(self, origin: str, *, timeouts: UpstreamTimeouts, idle_max: int) -> None:
        parts = urlsplit(origin)
        if parts.hostname is None or parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self._host = parts.hostname
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._authority = parts.netloc.encode("ascii")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._timeouts = timeouts
        self._idle_max = idle_max
        self._idle: list[_Connection] = []

    async def send(self, method: bytes, target: bytes, headers: list[Header], body: Body) -> UpstreamResponse:
        connection = await self._connection()
        try:
            return await self._exchange(connection, method, target, headers, body)
        except BaseException:
            await trio.aclose_forcefully(connection.stream)
            raise

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await trio.aclose_forcefully(connection.stream)

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_stale():
                return connection
            await trio.aclose_forcefully(connection.stream)
        with trio.move_on_after(self._timeouts.connect_s) as connecting:
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(self._host, self._port)
                if self._tls is not None:
                    stream = trio.SSLStream(stream, self._tls, server_hostname=self._host, https_compatible=True)
                    await stream.do_handshake()
            except (*_STREAM_ERRORS, ssl.SSLError) as error:
                raise UpstreamFailed("connect", f"could not connect ({type(error).__name__})") from error
        if connecting.cancelled_caught:
            raise UpstreamTimeout("no connection within the connect timeout")
        return _Connection(stream)

    async def _exchange(
        self, connection: _Connection, method: bytes, target: bytes, headers: list[Header], body: Body
    ) -> _PooledResponse:
        if not any(name == b"host" for name, _ in headers):
            headers = [(b"host", self._authority), *headers]
        length = next((value for name, value in headers if name == b"content-length"), None)
        try:
            if isinstance(body, bytes):
                if length is None and (body or method in _BODY_METHODS):
                    headers = [*headers, (b"content-length", b"%d" % len(body))]
                connection.parser.expect(head_only=method == b"HEAD")
                await self._write(connection, request_head(method, target, headers) + body)
            else:
                if length is None:
                    headers = [*headers, (b"transfer-encoding", b"chunked")]
                connection.parser.expect(head_only=method == b"HEAD")
                await self._write(connection, request_head(method, target, headers))
                await self._stream_body(connection, body, None if length is None else int(length))
            while True:
                event = await self._next_event(connection)
                if isinstance(event, ResponseHead):
                    return _PooledResponse(self, connection, event)
        except WireError as error:
            raise UpstreamFailed("protocol", f"the upstream broke HTTP/1.1 ({error})") from error

    async def _stream_body(self, connection: _Connection, body: AsyncIterable[bytes], length: int | None) -> None:
        """Send the body as it arrives, chunked unless the client declared its length (which is then held to).
        An upstream that answers early (a 413, say) may stop reading: then its answer is still read, as httpcore
        does, rather than reporting the broken write."""
        sent = 0
        try:
            async for data in body:
                if data:
                    sent += len(data)
                    await self._write(connection, data if length is not None else chunk(data))
            if length is None:
                await self._write(connection, LAST_CHUNK)
        except UpstreamFailed:
            return
        if length is not None and sent != length:
            raise UpstreamFailed("protocol", f"the request body was {sent} bytes, not its Content-Length {length}")

    async def _write(self, connection: _Connection, data: bytes) -> None:
        with trio.move_on_after(self._timeouts.read_s) as writing:
            try:
                await connection.stream.send_all(data)
            except _STREAM_ERRORS as error:
                raise UpstreamFailed("protocol", f"the upstream stopped reading ({type(error).__name__})") from error
        if writing.cancelled_caught:
            raise UpstreamTimeout("the upstream did not read the request in time")

    async def _next_event(self, connection: _Connection) -> ResponseHead | bytes:
        """The parser's next event (a head, a body chunk or END), reading as much as that takes."""
        parser = connection.parser
        while True:
            event = parser.next_event()
            if not isinstance(event, Need):
                return event
            with trio.move_on_after(self._timeouts.read_s) as reading:
                try:
                    data = await connection.stream.receive_some(_READ_BYTES)
                except _STREAM_ERRORS as error:
                    raise UpstreamFailed("protocol", f"the upstream hung up ({type(error).__name__})") from error
            if reading.cancelled_caught:
                raise UpstreamTimeout("the upstream sent nothing within the read timeout")
            parser.feed(bytes(data))

    async def _release(self, connection: _Connection) -> None:
        if connection.parser.reusable and len(self._idle) < self._idle_max:
            self._idle.append(connection)
        else:
            await trio.aclose_forcefully(connection.stream)


class _PooledResponse(UpstreamResponse):
    __slots__ = ("_connection", "_pool", "_released")

    def __init__(self, pool: UpstreamPool, connection: _Connection, head: ResponseHead) -> None:
        super().__init__(head.status, head.headers)
        self._pool = pool
        self._connection = connection
        self._released = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while data := await self._pool._next_event(self._connection):
                assert isinstance(data, bytes)
                yield data
        except WireError as error:
            raise UpstreamFailed("protocol", f"the upstream broke HTTP/1.1 ({error})") from error

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            await self._pool._release(self._connection)


# -- any httpx transport ---------------------------------------------------------------------------------------


class TransportUpstream(Upstream):
    """The upstream behind an httpx transport; the caller keeps ownership of the transport."""

    def __init__(self, transport: httpx.AsyncBaseTransport, origin: str, *, timeouts: UpstreamTimeouts) -> None:
        self._transport = transport
        self._origin = httpx.URL(origin)
        self._timeouts = {
            "connect": timeouts.connect_s,
            "read": timeouts.read_s,
            "write": timeouts.read_s,
            "pool": timeouts.connect_s,
        }

    async def send(self, method: bytes, target: bytes, headers: list[Header], body: Body) -> UpstreamResponse:
        try:
            url = upstream_url(self._origin, target)
        except ValueError as error:
            raise UpstreamFailed("protocol", f"httpx cannot send this target ({error})") from None
        request = httpx.Request(
            method.decode("ascii"),
            url,
            headers=headers,
            content=body,
            extensions={"timeout": self._timeouts},
        )
        with _mapped_httpx_errors():
            response = await self._transport.handle_async_request(request)
        return _TransportResponse(response)

    async def aclose(self) -> None:
        """Nothing to close: the transport is its owner's."""


def upstream_url(origin: httpx.URL, target: bytes) -> httpx.URL:
    """The URL on `origin` for a request target exactly as received (percent-encoding untouched); ValueError
    for a target httpx refuses."""
    try:
        return origin.copy_with(raw_path=target)
    except httpx.InvalidURL as error:
        raise ValueError(str(error)) from None


class _TransportResponse(UpstreamResponse):
    __slots__ = ("_response",)

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code, list(response.headers.raw))
        self._response = response

    async def chunks(self) -> AsyncIterator[bytes]:
        with _mapped_httpx_errors():
            async for chunk in self._response.aiter_raw():
                yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


@contextlib.contextmanager
def _mapped_httpx_errors() -> Iterator[None]:
    """httpx's timeout and transport errors as this module's."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise UpstreamTimeout(str(error) or type(error).__name__) from error
    except httpx.TransportError as error:
        kind = "connect" if isinstance(error, httpx.ConnectError) else "protocol"
        raise UpstreamFailed(kind, f"the upstream failed ({type(error).__name__})") from error
