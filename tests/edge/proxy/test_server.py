"""The listener's own HTTP/1.1 front end (edge/http/http1.py) and pool framings, over raw sockets both ways."""

from __future__ import annotations

import functools

import h2.config
import h2.connection
import httpx
import trio

from tests.edge.proxy.support import harness
from tests.edge.proxy.test_refusals import wait_until
from tests.edge.proxy.test_slow_clients import connect, read_answer


async def read_until(stream: trio.SocketStream, marker: bytes, count: int = 1) -> bytes:
    received = b""
    with trio.fail_after(5):
        while received.count(marker) < count:
            chunk = await stream.receive_some(65536)
            assert chunk, received
            received += chunk
    return received


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async with harness() as h, await connect(h) as stream:
        pipelined = b"".join(b"GET /headers?n=%d HTTP/1.1\r\nhost: x\r\n\r\n" % n for n in (1, 2))
        await stream.send_all(pipelined)
        answers = await read_until(stream, b"HTTP/1.1 200 OK", count=2)
        await wait_until(lambda: h.upstream.started == 2)
    assert answers.index(b"/headers?n=1") < answers.index(b"/headers?n=2")
    assert answers.count(b"\r\ndate: ") == 2


async def test_expect_100_continue_is_answered_when_the_body_is_wanted() -> None:
    async with harness() as h, await connect(h) as stream:
        await stream.send_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        interim = await read_until(stream, b"\r\n\r\n")
        await stream.send_all(b"hello")
        final = await read_until(stream, b"}")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 OK") and b'"bytes": 5' in final


async def test_http10_and_connection_close_get_their_answer_then_the_connection_closes() -> None:
    async with harness() as h:
        for request in (b"GET /work HTTP/1.0\r\n\r\n", b"GET /work HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"):
            async with await connect(h) as stream:
                await stream.send_all(request)
                answer = b""
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(65536):
                        answer += chunk  # until the server closes
            assert answer.startswith(b"HTTP/1.1 200 OK") and b"\r\nconnection: close\r\n" in answer
            assert answer.endswith(b'{"ok":true}')


async def raw_upstream(response: bytes, stream: trio.SocketStream) -> None:
    """Answer one request with `response`, then close: a close-delimited or hand-framed upstream."""
    async with stream:
        await read_until(stream, b"\r\n\r\n")
        await stream.send_all(response)


async def test_upstream_bodies_framed_by_chunks_or_by_close_reach_the_client_whole() -> None:
    framings = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nhello world",
    )
    for response in framings:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, functools.partial(raw_upstream, response), 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            async with harness(upstream_url=f"http://127.0.0.1:{port}") as h:
                answer = await h.client.get("/anything")
            nursery.cancel_scope.cancel()
        assert answer.status_code == 200 and answer.text == "hello world"
        assert answer.headers["transfer-encoding"] == "chunked"  # re-framed for the client: no length was known


async def test_abrupt_http2_disconnects_end_only_their_own_connections() -> None:
    # stack-notes: hypercorn's driver can raise when an HTTP/2 client goes away mid-response; here that must
    # stay inside the one connection. Each client asks for a large download and hangs up while it streams.
    async def hang_up_mid_download(address: tuple[str, int]) -> None:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        headers = [(":method", "GET"), (":path", "/download?bytes=5000000"), (":scheme", "http"), (":authority", "x")]
        for stream_id in (1, 3, 5):
            client.send_headers(stream_id, headers, end_stream=True)
        async with await trio.open_tcp_stream(*address) as stream:
            await stream.send_all(client.data_to_send())
            await stream.receive_some(65536)

    async with harness(http2=True) as h:
        for _ in range(3):
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(hang_up_mid_download, h.proxy.server.host_port)
        assert not h.proxy.server.stopped.is_set()
        answers = [await h.client.get("/work") for _ in range(3)]
    assert {answer.status_code for answer in answers} == {200}
    assert {answer.http_version for answer in answers} == {"HTTP/2"}


async def test_stopping_closes_idle_connections_and_lets_requests_in_progress_finish() -> None:
    async with harness() as h:
        idle = await connect(h)
        busy = await connect(h)
        await idle.send_all(b"GET /work HTTP/1.1\r\nhost: x\r\n\r\n")
        await read_until(idle, b'{"ok":true}')
        await busy.send_all(b"GET /sleep?s=0.5 HTTP/1.1\r\nhost: x\r\n\r\n")
        await wait_until(lambda: h.stats().inflight == 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.proxy.stop)
            assert await read_answer(idle) == b""  # closed at once, without an answer
            finished = await read_answer(busy)
    assert finished.startswith(b"HTTP/1.1 200 OK") and b"\r\nconnection: close\r\n" in finished
    async with httpx.AsyncClient() as client:
        try:
            await client.get(h.proxy.url + "/work")
            raise AssertionError("the stopped listener still answered")
        except httpx.ConnectError:
            pass
