"""The front end's per-connection behaviour over HTTP/1.1 (edge/http/http1.py): the keep-alive timer, the
response head held until the bytes that follow it, streaming, bodies an app leaves unread, and stopping."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import trio

from edge.http.server import ASGIReceive, ASGISend, serve_asgi

from .servers import read_body, running

KEEP_ALIVE_S = 0.5
REQUEST = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n"


async def sized_echo_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
    """Answers "<method> <body length>" with a Content-Length, so a test can frame the response itself."""
    if scope["type"] != "http":
        return
    text = f"{scope['method']} {len(await read_body(receive))}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(text))]})
    await send({"type": "http.response.body", "body": text})


async def read_response(stream: trio.SocketStream, unread: bytearray) -> bytes:
    """One Content-Length-framed response from `stream` (bytes after it stay in `unread`)."""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in unread:
            unread += await stream.receive_some(65536)
        head, _, _rest = bytes(unread).partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(unread) < len(head) + 4 + length:
            unread += await stream.receive_some(65536)
    end = len(head) + 4 + length
    response = bytes(unread[:end])
    del unread[:end]
    return response


async def closed_by_server(stream: trio.SocketStream, within_s: float) -> bool:
    with trio.move_on_after(within_s):
        return await stream.receive_some(65536) == b""
    return False


async def test_idle_keep_alive_connection_is_closed_after_the_timeout_and_not_before() -> None:
    server_cm = running(sized_echo_app, idle_timeout_s=KEEP_ALIVE_S)
    async with server_cm as server, await trio.open_tcp_stream(*server.host_port) as stream:
        unread = bytearray()
        for _ in range(3):  # each request moves the deadline: idle spells shorter than the timeout are fine
            await stream.send_all(REQUEST)
            assert (await read_response(stream, unread)).startswith(b"HTTP/1.1 200 ")
            await trio.sleep(KEEP_ALIVE_S / 2)
        started = trio.current_time()
        assert await closed_by_server(stream, within_s=5)
        assert trio.current_time() - started >= KEEP_ALIVE_S / 4  # idle since the last response, not since open


async def test_a_request_longer_than_the_keep_alive_timeout_is_not_cut() -> None:
    async def slow_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await trio.sleep(3 * KEEP_ALIVE_S)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server_cm = running(slow_app, idle_timeout_s=KEEP_ALIVE_S)
    async with server_cm as server, await trio.open_tcp_stream(*server.host_port) as stream:
        await stream.send_all(REQUEST)
        assert (await read_response(stream, bytearray())).endswith(b"\r\n\r\nok")


async def test_shutdown_closes_an_idle_connection_and_lets_a_busy_one_finish_first() -> None:
    release = trio.Event()

    async def held_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        if scope["path"] == "/held":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_asgi(
                held_app,
                bind="127.0.0.1:0",
                shutdown_trigger=stop.wait,
                graceful_timeout_s=5.0,
                task_status=task_status,
            )
        )
        host, port = bound[0].rsplit(":", 1)
        idle = await trio.open_tcp_stream(host, int(port))
        busy = await trio.open_tcp_stream(host, int(port))
        await idle.send_all(REQUEST)
        assert (await read_response(idle, bytearray())).startswith(b"HTTP/1.1 200 ")
        await busy.send_all(b"GET /held HTTP/1.1\r\nhost: t\r\n\r\n")
        await trio.sleep(0.1)
        stop.set()
        assert await closed_by_server(idle, within_s=2)  # at once, not after the keep-alive timeout
        release.set()
        assert (await read_response(busy, bytearray())).endswith(b"\r\n\r\nok")  # the held request finished
        assert await closed_by_server(busy, within_s=2)


async def test_a_streamed_response_delivers_each_chunk_without_waiting_for_the_next() -> None:
    # The head is held only until the first body bytes; a chunk must reach the client while the app still waits.
    client_saw_first_chunk = trio.Event()

    async def streaming_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        with trio.fail_after(5):
            await client_saw_first_chunk.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with running(streaming_app) as server, await trio.open_tcp_stream(*server.host_port) as stream:
        await stream.send_all(REQUEST)
        received = bytearray()
        with trio.fail_after(5):
            while b"first" not in received:
                received += await stream.receive_some(65536)
        assert received.startswith(b"HTTP/1.1 200 ")
        client_saw_first_chunk.set()
        with trio.fail_after(5):
            while not received.endswith(b"0\r\n\r\n"):
                received += await stream.receive_some(65536)


async def test_head_and_100_continue_and_server_errors_still_reach_the_client() -> None:
    async with running(sized_echo_app) as server, await trio.open_tcp_stream(*server.host_port) as stream:
        unread = bytearray()
        await stream.send_all(b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n")
        with trio.fail_after(5):
            while b"\r\n\r\n" not in unread:
                unread += await stream.receive_some(65536)
        assert unread.startswith(b"HTTP/1.1 200 ")
        unread.clear()
        await stream.send_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        with trio.fail_after(5):
            while b"\r\n\r\n" not in unread:
                unread += await stream.receive_some(65536)
        assert unread.startswith(b"HTTP/1.1 100 ")  # sent on its own, before the body is sent
        del unread[: unread.index(b"\r\n\r\n") + 4]
        await stream.send_all(b"body")
        assert (await read_response(stream, unread)).endswith(b"POST 4")
        await stream.send_all(b"NOT A REQUEST\r\n\r\n")  # h11 refuses the head: 400, then the connection closes
        with trio.fail_after(5):
            answer = await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 400 ")


async def test_a_body_the_app_leaves_unread_is_dropped_and_the_connection_carries_the_next_request() -> None:
    async def unread_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    body = b"x" * 100_000  # more than one read: the rest arrives after the answer
    async with running(unread_app) as server, await trio.open_tcp_stream(*server.host_port) as stream:
        unread = bytearray()
        for _ in range(2):
            await stream.send_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            response = await read_response(stream, unread)
            assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"ok")
            assert b"connection: close" not in response.lower()
        assert not await closed_by_server(stream, within_s=0.2)
