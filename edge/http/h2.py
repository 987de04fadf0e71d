"""HTTP/2 for the front end (edge/http/http1.py hands over every connection that speaks it): h2's state machine,
one task per connection reading frames and one per stream running the app.

The front end reads a cleartext connection's first bytes; when they are the h2c preface, the connection comes
here with those bytes, and a TLS connection that negotiated "h2" by ALPN comes here after its handshake. The h2
library parses and checks every frame, header block and stream transition (RFC 9113) and keeps both sides' flow
control windows; this module decides when to read, when to write and what the app sees.

Why not hypercorn any more (it served HTTP/2 before): per request it ran an event queue between the protocol and
the app, a send task per connection with a priority tree, and three to four socket writes per response. With this
module the node's CPU per job accepted over h2c went from about the same as before the job engine's refactor to
half of it (1.14 -> 0.58 ms in one run, bench/RESULTS.md, "Job engine refactor"). Here a response's headers, body
and end go out in one write, the body the app reads is acknowledged to the client when it is read (flow control is
the app's backpressure), and nothing runs between the connection's reader and the app's task.

What a client gets:
- up to `H2_CONCURRENT_STREAMS_MAX` open streams at once (SETTINGS say so; h2 holds the client to it); apps go on
  running after the client resets their stream (they see `http.disconnect`), and a stream opened while
  `RUNNING_STREAMS_MAX` apps run on the connection is refused (REFUSED_STREAM), so a flood of resets (the
  "rapid reset" attack) cannot pile up work;
- a header list over `header_bytes_max` is refused by h2 (its SETTINGS say so first);
- a stream the client resets is `http.disconnect` to its app, as is the connection closing;
- no cap on requests per connection; a connection with no open stream for `idle_timeout_s` gets GOAWAY and
  closes;
- stopping: GOAWAY at once, streams in progress finish (the front end bounds them by `graceful_timeout_s`);
- a protocol error from the client ends its connection with GOAWAY, as RFC 9113 says; an app that fails
  before answering gets a 500, after starting its answer a reset (INTERNAL_ERROR).

Writes are shielded once their bytes are taken from h2 (a cancellation between taking and writing would lose
frames h2 believes sent, and the connection's HPACK state with them), and bounded by `WRITE_TIMEOUT_S`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import GoAwayFrame

from edge.http.asgi import ASGIApp, ASGIMessage, ASGIScope, ClientGone, Endpoints, http_scope

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# nginx's default; enough for h2load -m 100 and for an SDK multiplexing many jobs over one connection.
H2_CONCURRENT_STREAMS_MAX: Final = 128
# Apps running on one connection, those of streams the client reset included: room for a burst of cancelled calls
# (a node's peer cancels a race's losers) while a reset flood stays bounded.
RUNNING_STREAMS_MAX: Final = 4 * H2_CONCURRENT_STREAMS_MAX
WRITE_TIMEOUT_S: Final = 30.0

logger = logging.getLogger("ezthrottle.http")

_READ_BYTES: Final = 64 * 1024
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_DISCONNECT: Final = {"type": "http.disconnect"}
_BODY_END: Final = {"type": "http.request", "body": b"", "more_body": False}
_ERROR_HEADERS: Final = [(b"content-type", b"text/plain")]
_ERROR_BODY: Final = b"Internal Server Error"
_H2_CONFIG: Final = h2.config.H2Configuration(client_side=False, header_encoding=None)


class Http2Server:
    """Serves one ASGI app over the HTTP/2 connections the front end hands over."""

    def __init__(self, app: ASGIApp, *, header_bytes_max: int, idle_timeout_s: float, date: Callable[[], bytes]):
        """`date` gives the Date header's value for a response starting now."""
        self.app = app
        self.header_bytes_max = header_bytes_max
        self.idle_timeout_s = idle_timeout_s
        self.date = date
        self.stopping = False
        self._connections: set[_H2Connection] = set()

    async def serve(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        transport: trio.SocketStream,
        received: bytes = b"",
    ) -> None:
        """Serve one connection (`stream` over `transport`, its socket) whose first bytes, already read, were
        `received`, until it closes."""
        connection = _H2Connection(self, stream, transport)
        self._connections.add(connection)
        try:
            await connection.run(received)
        finally:
            self._connections.discard(connection)

    def stop(self) -> None:
        """GOAWAY on every connection: no new streams; those in progress finish, then each connection closes."""
        self.stopping = True
        for connection in self._connections:
            connection.go_away()


class _H2Connection:
    """One HTTP/2 connection: the reader (`run`), the streams' tasks, and the writes they share."""

    def __init__(
        self,
        server: Http2Server,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        transport: trio.SocketStream,
    ) -> None:
        self.server = server
        self.stream = stream
        self.endpoints = Endpoints.of(stream, transport)
        self.h2 = h2.connection.H2Connection(_H2_CONFIG)
        self.streams: dict[int, _H2Stream] = {}  # every stream whose app runs, reset ones included
        self.closing = False  # GOAWAY sent or received: no new streams
        self.broken = False  # a write failed: nothing more can be sent
        self._write_lock = trio.Lock()
        self._announced = b""  # a graceful GOAWAY, written ahead of what h2 queued (see `go_away`)
        self._reading = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    async def run(self, received: bytes) -> None:
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: H2_CONCURRENT_STREAMS_MAX,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.server.header_bytes_max,
            },
        )
        self.h2.initiate_connection()
        if self.server.stopping:
            self.go_away()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._read(received)
            finally:
                # Whatever ended the reading, nothing more arrives: the apps still running see the client gone
                # (they are not cancelled: a submission being saved must finish and be queued).
                self._break()

    def go_away(self) -> None:
        """Say no new streams will be served; the connection closes when the open ones end.

        h2's own GOAWAY (`close_connection`) ends the connection's state machine, and with it every stream still
        answering; so while streams are open, the GOAWAY that announces the end is written here, and h2's follows
        when the last stream is done."""
        if self.closing:
            return
        self.closing = True
        if not self.streams:
            self._reading.cancel()  # the reader closes the connection on its way out
            return
        announcement = GoAwayFrame(0)
        announcement.last_stream_id = self.h2.highest_inbound_stream_id
        announcement.error_code = h2.errors.ErrorCodes.NO_ERROR
        self._announced = announcement.serialize()
        if self._nursery is not None:
            self._nursery.start_soon(self._flush)

    # -- reading ---------------------------------------------------------------------------------------------

    async def _read(self, data: bytes) -> None:
        while True:
            if data:
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await self._flush()  # h2 queued the GOAWAY that says why
                    return
                for event in events:
                    self._handle(event)
                await self._flush()
            if self.broken:
                return
            if self.closing and not self.streams:
                await self._say_goodbye()
                return
            self._reading = trio.CancelScope()
            if not self.streams:
                self._reading.deadline = trio.current_time() + self.server.idle_timeout_s
            with self._reading:
                try:
                    data = bytes(await self.stream.receive_some(_READ_BYTES))
                except _STREAM_ERRORS:
                    return
                if not data:
                    return  # the client closed the connection
            if self._reading.cancelled_caught:  # idle too long, stopping with every stream done, or broken
                if not self.broken:
                    await self._say_goodbye()
                return

    async def _say_goodbye(self) -> None:
        """h2's GOAWAY, the connection's last frame."""
        with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 closed it already (a protocol error)
            self.h2.close_connection()
        await self._flush()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._open(event)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.reset:
                # Nobody reads it: give the window back at once, so other streams keep flowing.
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.received(event.data, event.flow_controlled_length)
            if event.stream_ended is not None and stream is not None:
                stream.body_ended()
        elif isinstance(event, h2.events.StreamEnded):
            if stream := self.streams.get(event.stream_id):
                stream.body_ended()
        elif isinstance(event, h2.events.StreamReset):
            if stream := self.streams.get(event.stream_id):
                stream.reset = True
                stream.wake()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                self._wake_all()  # the connection's window opened: any stream may send
            elif stream := self.streams.get(event.stream_id):
                stream.wake()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_all()  # a new initial window size changes every stream's window
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client's GOAWAY: h2 then sends nothing more on any stream, so every answer in progress is lost.
            self.closing = True
            self._break()
        elif isinstance(event, h2.events.TrailersReceived) and (stream := self.streams.get(event.stream_id)):
            stream.body_ended()  # trailers are not passed on

    def _open(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.closing or len(self.streams) >= RUNNING_STREAMS_MAX:
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        method = path = b""
        authority = None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in event.headers:
            if name[:1] != b":":
                headers.append((name, value))
            elif name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
        if method == b"CONNECT" or not path:
            self._reset(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if authority is not None:
            headers.insert(0, (b"host", authority))
        stream = self.streams[stream_id] = _H2Stream(self, stream_id, method == b"HEAD")
        scope = http_scope(
            self.endpoints,
            http_version="2",
            method=method.decode("latin-1"),  # h2 checked it is a token
            target=path,
            headers=headers,
            watch=stream,
        )
        if event.stream_ended is not None:
            stream.body_ended()
        assert self._nursery is not None
        self._nursery.start_soon(self._run_stream, stream, scope)

    def _wake_all(self) -> None:
        for stream in self.streams.values():
            stream.wake()

    def _stream_done(self, stream: _H2Stream) -> None:
        del self.streams[stream.stream_id]
        if not self.streams:
            if self.closing:
                self._reading.cancel()
            else:  # idle from now on
                self._reading.deadline = min(self._reading.deadline, trio.current_time() + self.server.idle_timeout_s)

    # -- the streams' tasks ----------------------------------------------------------------------------------

    async def _run_stream(self, stream: _H2Stream, scope: ASGIScope) -> None:
        try:
            await self.server.app(scope, stream.receive, stream.send)
        except ClientGone:
            pass
        except Exception:
            logger.exception("the app failed on a request")
        finally:
            with trio.CancelScope(shield=True):
                await self._conclude(stream)

    async def _conclude(self, stream: _H2Stream) -> None:
        """After the app: a 500 if it never answered, a reset if it stopped halfway."""
        if not stream.complete and not stream.gone:
            try:
                if not stream.started:
                    await stream.send({"type": "http.response.start", "status": 500, "headers": _ERROR_HEADERS})
                    await stream.send({"type": "http.response.body", "body": _ERROR_BODY})
                else:
                    self._reset(stream.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except ClientGone:
                pass
        self._stream_done(stream)
        await self._flush()

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # closed already: the client's reset crossed ours
            self.h2.reset_stream(stream_id, code)

    async def _flush(self) -> None:
        """Write what h2 has queued. Whoever holds the lock writes everyone's bytes."""
        if self.broken:
            return
        async with self._write_lock:
            data = self._announced + self.h2.data_to_send()
            self._announced = b""
            if not data:
                return
            with trio.CancelScope(shield=True), trio.move_on_after(WRITE_TIMEOUT_S) as writing:
                try:
                    await self.stream.send_all(data)
                except _STREAM_ERRORS:
                    self._break()
                    return
            if writing.cancelled_caught:
                self._break()

    def _break(self) -> None:
        """The connection can carry nothing more: its reader stops, and its streams see the client gone."""
        self.broken = True
        self._reading.cancel()
        self._wake_all()


class _H2Stream:
    """One request: the body the client sent so far, and the response the app sends."""

    __slots__ = (
        "_body",
        "_body_done",
        "_connection",
        "_ended",
        "_headers",
        "_on_gone",
        "_unacknowledged",
        "_wakeup",
        "complete",
        "head_only",
        "reset",
        "started",
        "stream_id",
    )

    def __init__(self, connection: _H2Connection, stream_id: int, head_only: bool) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self.head_only = head_only
        self._body: list[bytes] = []
        self._unacknowledged = 0  # flow-controlled bytes received, to give back when the app reads them
        self._ended = False  # the client's side of the stream ended
        self._body_done = False  # the app was told so
        self._headers: list[tuple[bytes, bytes]] | None = None  # the response head, held until the first body
        self._wakeup = trio.Event()
        self._on_gone: list[trio.CancelScope] = []
        self.started = False
        self.complete = False
        self.reset = False

    # -- from the reader -------------------------------------------------------------------------------------

    def received(self, data: bytes, flow_controlled_length: int) -> None:
        if data:
            self._body.append(data)
        self._unacknowledged += flow_controlled_length
        self.wake()

    def body_ended(self) -> None:
        self._ended = True
        self.wake()

    def wake(self) -> None:
        """Something changed for the stream (every reset and every break of the connection comes through here)."""
        self._wakeup.set()
        if self._on_gone and self.gone:
            for scope in self._on_gone:
                scope.cancel()
            self._on_gone.clear()

    async def _wait(self) -> None:
        await self._wakeup.wait()
        self._wakeup = trio.Event()

    @property
    def gone(self) -> bool:
        """The client reset the stream, or the connection is gone."""
        return self.reset or self._connection.broken

    # -- ASGI ------------------------------------------------------------------------------------------------

    def cancel_on_disconnect(self, scope: trio.CancelScope) -> None:
        """edge/http/asgi.py: DisconnectWatch. The reader tells a reset or a lost connection at once (`wake`)."""
        if self.gone:
            scope.cancel()
        else:
            self._on_gone.append(scope)

    async def receive(self) -> ASGIMessage:
        while True:
            if self.gone or self.complete:
                return _DISCONNECT
            if self._body:
                body = b"".join(self._body) if len(self._body) > 1 else self._body[0]
                self._body.clear()
                more = not self._ended
                self._body_done = not more
                await self._acknowledge(more)  # (more may arrive meanwhile: it waits for the next receive)
                return {"type": "http.request", "body": body, "more_body": more}
            if self._ended and not self._body_done:
                self._body_done = True
                await self._acknowledge(False)
                return _BODY_END
            await self._wait()  # more body, or (once it is all read) the client leaving

    async def _acknowledge(self, more: bool) -> None:
        """Give the client back the window of what the app has read; with `more` body to come, at once (the client
        may be waiting for it), else with the next write."""
        size, self._unacknowledged = self._unacknowledged, 0
        if size and not self.gone:
            connection = self._connection
            try:
                connection.h2.acknowledge_received_data(size, self.stream_id)
            except h2.exceptions.ProtocolError:  # the stream or the connection closed meanwhile
                return
            if more:
                await connection._flush()

    async def send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = [(b":status", b"%d" % message["status"])]
            has_date = False
            for name, value in message.get("headers", ()):
                has_date = has_date or name == b"date"
                headers.append((name, value))
            if not has_date:
                headers.append((b"date", self._connection.server.date()))
            self._headers = headers
            self.started = True
            return
        if kind != "http.response.body" or self.complete:
            return
        if self.gone:
            raise ClientGone
        body: bytes = b"" if self.head_only else message.get("body", b"")
        end = not message.get("more_body", False)
        connection = self._connection
        try:
            if self._headers is not None:
                headers, self._headers = self._headers, None
                connection.h2.send_headers(self.stream_id, headers, end_stream=end and not body)
            elif end and not body:
                connection.h2.end_stream(self.stream_id)
            if body:
                await self._send_data(body, end)
        except h2.exceptions.ProtocolError:  # the client reset the stream, or the connection is closing
            raise ClientGone from None
        if end:
            self.complete = True
        await connection._flush()
        if self.gone:
            raise ClientGone

    async def _send_data(self, body: bytes, end: bool) -> None:
        """The body in frames as the flow control windows allow, waiting for the client to open them."""
        h2_connection = self._connection.h2
        view = memoryview(body)
        while view:
            window = min(h2_connection.local_flow_control_window(self.stream_id), h2_connection.max_outbound_frame_size)
            if window <= 0:
                await self._connection._flush()
                await self._wait()
                if self.gone:
                    raise ClientGone
                continue
            frame, view = view[:window], view[window:]
            h2_connection.send_data(self.stream_id, bytes(frame), end_stream=end and not view)
