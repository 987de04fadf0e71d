"""The front end's DisconnectWatch (edge/http/asgi.py): an app's cancel scopes are cancelled when its client leaves,
over HTTP/1.1 and HTTP/2, and over HTTP/1.1 only a request that lasts pays for a task reading its connection."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import trio

from edge.http.asgi import DISCONNECT_WATCH, DisconnectWatch
from edge.http.server import ASGIReceive, ASGISend

from .servers import RunningServer, read_body, running

LEAVE_NOTICED_S = 1.0  # the watch starts 0.05 s after the body and sweeps every 0.05 s: far inside this


class WatchingApp:
    """GET /wait?s=S registers a scope with the watch and sleeps S seconds inside it; records what it saw."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []  # paths whose scope the watch cancelled
        self.finished: list[str] = []
        self.left = trio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        watch: DisconnectWatch = scope["extensions"][DISCONNECT_WATCH]
        seconds = float(scope["query_string"].decode().partition("=")[2] or 0)
        with trio.CancelScope() as waiting:
            watch.cancel_on_disconnect(waiting)
            await trio.sleep(seconds)
        if waiting.cancelled_caught:
            assert watch.gone
            self.cancelled.append(scope["path"])
            self.left.set()
            return
        self.finished.append(scope["path"])
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


class WatcherCount(trio.abc.Instrument):
    """How many connection-watching tasks the server started and how many ended."""

    def __init__(self) -> None:
        self.started = self.ended = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.started += task.name.endswith("_watch_connection")

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.ended += task.name.endswith("_watch_connection")


async def read_answers(stream: trio.SocketStream, count: int) -> bytes:
    received = b""
    with trio.fail_after(5):
        while received.count(b"HTTP/1.1 200 ") < count or not received.endswith((b"/a", b"/b", b"/c")):
            chunk = await stream.receive_some()
            assert chunk, received
            received += chunk
    return received


async def test_http11_client_leaving_cancels_the_apps_scope() -> None:
    app = WatchingApp()
    async with running(app) as server:
        stream = await trio.open_tcp_stream(*server.host_port)
        await stream.send_all(b"GET /slow?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.2)  # past the watch's delay: a watcher reads the connection now
        started = trio.current_time()
        await stream.aclose()
        with trio.fail_after(LEAVE_NOTICED_S):
            await app.left.wait()
        noticed_s = trio.current_time() - started
    assert app.cancelled == ["/slow"] and app.finished == []
    assert noticed_s < LEAVE_NOTICED_S


async def test_http11_client_leaving_before_the_watch_starts_is_noticed_too() -> None:
    app = WatchingApp()
    async with running(app) as server:
        stream = await trio.open_tcp_stream(*server.host_port)
        await stream.send_all(b"GET /slow?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.aclose()  # at once, while nobody reads the connection yet
        with trio.fail_after(LEAVE_NOTICED_S):
            await app.left.wait()
    assert app.cancelled == ["/slow"]


async def test_http11_only_a_request_that_lasts_gets_a_watcher_and_pipelined_requests_are_kept() -> None:
    app = WatchingApp()
    count = WatcherCount()
    trio.lowlevel.add_instrument(count)
    try:
        async with running(app) as server:
            stream = await trio.open_tcp_stream(*server.host_port)
            for path in ("a", "b", "c"):  # answered at once: nobody reads the connection but the request loop
                await stream.send_all(b"GET /%b HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
                await read_answers(stream, 1)
            quick = count.started
            # One that lasts, with two more pipelined behind it: its watcher reads them, and they are served next.
            pipelined = (b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % target for target in (b"/a?s=0.3", b"/b", b"/c"))
            await stream.send_all(b"".join(pipelined))
            answers = await read_answers(stream, 3)
            await stream.aclose()
    finally:
        trio.lowlevel.remove_instrument(count)
    assert quick == 0
    assert count.started == 1 and count.ended == 1
    assert answers.count(b"HTTP/1.1 200 ") == 3 and app.finished == ["/a", "/b", "/c"] * 2
    assert app.cancelled == []


async def test_http11_asgi_disconnect_message_after_the_body() -> None:
    """The ASGI way still works: a wait for the next message after the body returns http.disconnect."""
    messages: list[str] = []
    left = trio.Event()

    async def app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        messages.append((await receive())["type"])
        left.set()

    async with running(app) as server:
        stream = await trio.open_tcp_stream(*server.host_port)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        await trio.sleep(0.2)
        await stream.aclose()
        with trio.fail_after(LEAVE_NOTICED_S):
            await left.wait()
    assert messages == ["http.disconnect"]


async def h2_request(server: RunningServer, path: str) -> tuple[trio.SocketStream, h2.connection.H2Connection, int]:
    stream = await trio.open_tcp_stream(*server.host_port)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    stream_id = client.get_next_available_stream_id()
    headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]
    client.send_headers(stream_id, headers, end_stream=True)
    await stream.send_all(client.data_to_send())
    return stream, client, stream_id


async def test_h2_reset_stream_cancels_the_apps_scope_and_spares_the_others() -> None:
    app = WatchingApp()
    async with running(app) as server:
        stream, client, first = await h2_request(server, "/reset?s=30")
        second = client.get_next_available_stream_id()
        client.send_headers(
            second, [(":method", "GET"), (":path", "/kept?s=0.3"), (":scheme", "http"), (":authority", "x")], True
        )
        await stream.send_all(client.data_to_send())
        await trio.sleep(0.1)
        client.reset_stream(first, h2.errors.ErrorCodes.CANCEL)
        await stream.send_all(client.data_to_send())
        with trio.fail_after(LEAVE_NOTICED_S):
            await app.left.wait()
        ended: set[int] = set()
        with trio.fail_after(5):
            while second not in ended:
                data = await stream.receive_some()
                assert data
                ended |= {e.stream_id for e in client.receive_data(data) if isinstance(e, h2.events.StreamEnded)}
        await stream.aclose()
    assert app.cancelled == ["/reset"] and app.finished == ["/kept"]


async def test_h2_connection_closing_cancels_every_streams_scope() -> None:
    app = WatchingApp()
    async with running(app) as server:
        stream, _client, _ = await h2_request(server, "/gone?s=30")
        await trio.sleep(0.1)
        await stream.aclose()
        with trio.fail_after(LEAVE_NOTICED_S):
            await app.left.wait()
    assert app.cancelled == ["/gone"]
