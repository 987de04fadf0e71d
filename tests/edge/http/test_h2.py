"""The HTTP/2 server (edge/http/h2.py) against real clients on loopback: httpx for what SDKs do, and a raw h2 client
where a test needs frames a library would not send (resets, stalls, a reset flood)."""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from functools import partial
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import trio

from edge.http.h2 import RUNNING_STREAMS_MAX
from edge.http.server import ASGIReceive, ASGISend, serve_asgi

from .servers import read_body, running

BIG = 3 * 1024 * 1024 + 17  # past every default flow control window, and not a multiple of any frame size


def request_headers(method: str, path: str) -> list[tuple[str, str]]:
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "localhost")]


async def digest_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
    """Answers the body's SHA-256, then `BIG` bytes; "/fail" and "/half" fail before and after answering."""
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    if scope["path"] == "/fail":
        raise RuntimeError("the app failed before answering")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-digest", hashlib.sha256(body).hexdigest().encode())],
        }
    )
    if scope["path"] == "/half":
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("the app failed halfway")
    await send({"type": "http.response.body", "body": b"y" * BIG})


async def test_large_bodies_flow_both_ways_on_many_streams() -> None:
    payload = bytes(range(256)) * (BIG // 256)
    responses: list[httpx.Response] = []
    async with (
        running(digest_app) as server,
        httpx.AsyncClient(http1=False, http2=True, timeout=30) as client,
        trio.open_nursery() as nursery,
    ):

        async def post() -> None:
            responses.append(await client.post(f"{server.url}/echo", content=payload))

        for _ in range(4):
            nursery.start_soon(post)
    assert len(responses) == 4
    for response in responses:
        assert response.http_version == "HTTP/2" and response.status_code == 200
        assert response.headers["x-digest"] == hashlib.sha256(payload).hexdigest()
        assert len(response.content) == BIG
        assert "date" in response.headers


async def test_an_app_failing_before_answering_is_a_500_after_starting_a_reset() -> None:
    async with running(digest_app) as server, httpx.AsyncClient(http1=False, http2=True) as client:
        failed = await client.get(f"{server.url}/fail")
        assert (failed.status_code, failed.text) == (500, "Internal Server Error")
        try:
            await client.get(f"{server.url}/half")
        except httpx.RemoteProtocolError as error:
            assert "INTERNAL_ERROR" in str(error) or "error_code:2" in str(error)
        else:
            raise AssertionError("a half-sent answer must be reset, not look complete")
        fine = await client.post(f"{server.url}/ok", content=b"x")  # the connection carries on
        assert fine.status_code == 200


class RawClient:
    """An h2 client over one loopback connection, for tests that need to choose the frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.events: list[h2.events.Event] = []

    async def flush(self) -> None:
        await self.stream.send_all(self.h2.data_to_send())

    async def read_until(self, done: Any) -> None:
        while not done():
            data = await self.stream.receive_some()
            if not data:
                return
            self.events.extend(self.h2.receive_data(data))
            await self.flush()

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id)]


async def test_a_reset_is_a_disconnect_to_the_app_and_a_reset_flood_is_bounded() -> None:
    running_apps = 0
    disconnects = 0
    release = trio.Event()

    async def waiting_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Counts itself, then waits for the test (not for the client), as an app deaf to disconnects would."""
        nonlocal running_apps, disconnects
        if scope["type"] != "http":
            return
        running_apps += 1
        if scope["path"] == "/listen":
            assert (await receive())["type"] == "http.request"
            if (await receive())["type"] == "http.disconnect":
                disconnects += 1
        elif scope["path"] == "/ok":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await release.wait()
        running_apps -= 1

    async with running(waiting_app) as server:
        client = RawClient(await trio.open_tcp_stream(*server.host_port))
        client.h2.send_headers(1, request_headers("GET", "/listen"), end_stream=True)
        await client.flush()
        with trio.fail_after(5):
            while running_apps < 1:
                await trio.sleep(0.01)
        client.h2.reset_stream(1)
        await client.flush()
        with trio.fail_after(5):
            while disconnects < 1:
                await trio.sleep(0.01)

        # Open and reset, over and over: the apps go on running, and once RUNNING_STREAMS_MAX of them run on the
        # connection, a new stream is refused; when they end, streams are served again.
        for _ in range(RUNNING_STREAMS_MAX + 20):
            stream_id = client.h2.get_next_available_stream_id()
            client.h2.send_headers(stream_id, request_headers("GET", "/wait"), end_stream=True)
            client.h2.reset_stream(stream_id)
        client.h2.ping(b"flooded!")  # answered after every frame before it was handled
        await client.flush()
        with trio.fail_after(10):
            await client.read_until(lambda: client.of(h2.events.PingAckReceived))
        assert running_apps == RUNNING_STREAMS_MAX  # as many as the bound allows (the /listen app has returned)

        refused = client.h2.get_next_available_stream_id()
        client.h2.send_headers(refused, request_headers("GET", "/wait"), end_stream=True)
        await client.flush()
        with trio.fail_after(5):
            await client.read_until(lambda: client.of(h2.events.StreamReset, refused))
        assert client.of(h2.events.StreamReset, refused)[0].error_code == h2.errors.ErrorCodes.REFUSED_STREAM

        release.set()
        served = client.h2.get_next_available_stream_id()
        with trio.fail_after(5):
            while running_apps:
                await trio.sleep(0.01)
            client.h2.send_headers(served, request_headers("GET", "/ok"), end_stream=True)
            await client.flush()
            await client.read_until(lambda: client.of(h2.events.StreamEnded, served))
        assert dict(client.of(h2.events.ResponseReceived, served)[0].headers)[b":status"] == b"200"
        await client.stream.aclose()


async def test_an_idle_connection_gets_goaway_and_closes() -> None:
    async with running(digest_app, idle_timeout_s=0.3) as server:
        client = RawClient(await trio.open_tcp_stream(*server.host_port))
        await client.flush()
        started = trio.current_time()
        with trio.fail_after(5):
            await client.read_until(lambda: False)  # until the server closes
    assert client.of(h2.events.ConnectionTerminated)
    assert 0.25 < trio.current_time() - started < 3


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each whole frame in `data` (RFC 9113 section 4.1)."""
    found, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind, flags = data[offset + 3], data[offset + 4]
        stream_id = int.from_bytes(data[offset + 5 : offset + 9], "big") & 0x7FFF_FFFF
        found.append((kind, flags, stream_id, data[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    return found


GOAWAY, DATA, END_STREAM = 0x7, 0x0, 0x1


async def test_stopping_says_goaway_and_lets_the_stream_in_progress_finish() -> None:
    """h2's own client refuses every frame after a GOAWAY, so this one reads the frames itself."""
    answered = trio.Event()
    release = trio.Event()

    async def slow_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        answered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_asgi, slow_app, bind="127.0.0.1:0", shutdown_trigger=stop.wait))
        host, port = bound[0].rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, request_headers("GET", "/"), end_stream=True)
        await stream.send_all(client.data_to_send())
        with trio.fail_after(5):
            await answered.wait()
        stop.set()
        received = b""
        with trio.fail_after(5):
            while not any(kind == GOAWAY for kind, *_ in frames(received)):
                received += await stream.receive_some()
            release.set()
            while data := await stream.receive_some():  # the server closes the connection once the stream is done
                received += data
        seen = frames(received)
        kinds = [kind for kind, *_ in seen]
        body = [(flags, payload) for kind, flags, stream_id, payload in seen if kind == DATA and stream_id == 1]
        assert body == [(END_STREAM, b"done")]
        assert kinds.index(GOAWAY) < kinds.index(DATA)  # the announcement came first, the answer after it
        await stream.aclose()
