"""Slow and malformed clients get clean errors within the configured limits and never pin an upstream slot.

Raw sockets play the misbehaving clients, so every byte and every pause is the test's own choice.
"""

from __future__ import annotations

import contextlib

import trio

from tests.edge.proxy.support import Harness, harness
from tests.edge.proxy.test_refusals import wait_until

# Long enough to notice a hang, short enough to keep the suite fast.
ANSWER_TIMEOUT_S = 5.0


async def connect(h: Harness) -> trio.SocketStream:
    return await trio.open_tcp_stream(*h.proxy.server.host_port)


async def read_answer(stream: trio.SocketStream, timeout_s: float = ANSWER_TIMEOUT_S) -> bytes:
    """Everything the server sends until it closes the connection or has sent a complete problem body."""
    received = b""
    with trio.fail_after(timeout_s):
        while True:
            chunk = await stream.receive_some(65536)
            received += chunk
            if not chunk or (b"\r\n\r\n" in received and received.rstrip().endswith(b"}")):
                return received


async def trickle(stream: trio.SocketStream, data: bytes, every_s: float) -> None:
    """Send `data` a byte at a time; stop quietly once the server has closed the connection."""
    try:
        for index in range(len(data)):
            await stream.send_all(data[index : index + 1])
            await trio.sleep(every_s)
    except trio.BrokenResourceError:
        return


async def test_malformed_request_line_gets_400_from_the_front_end() -> None:
    async with harness() as h, await connect(h) as stream:
        await stream.send_all(b"NOT A REQUEST\r\n\r\n")
        answer = await read_answer(stream)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert h.upstream.started == 0


async def test_oversize_headers_get_431_from_the_front_end() -> None:
    async with harness() as h, await connect(h) as stream:
        # h11 refuses an unfinished head over the 16 KiB default limit. It checks only while the head is
        # incomplete, and reads 64 KiB at a time, so a head that arrives whole may reach 64 KiB.
        await stream.send_all(b"GET /work HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = await read_answer(stream)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert h.upstream.started == 0


async def test_headers_that_trickle_in_are_cut_off_without_reaching_the_upstream() -> None:
    idle_timeout_s = 1.0
    async with harness(idle_timeout_s=idle_timeout_s) as h, await connect(h) as stream, trio.open_nursery() as nursery:
        nursery.start_soon(trickle, stream, b"GET /work HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100, 0.1)
        started = trio.current_time()
        # The idle timeout covers a connection that has not finished its headers.
        answer = await read_answer(stream, timeout_s=5.0)
        nursery.cancel_scope.cancel()
    assert answer == b""  # closed, nothing half-sent
    assert idle_timeout_s - 0.1 <= trio.current_time() - started < idle_timeout_s + 2.0
    assert h.upstream.started == 0


async def test_the_configured_header_limit_applies() -> None:
    # A 10 KB head, sent in two parts so h11 sees it incomplete: within the default 16 KiB, over a 4 KiB limit.
    head = b"GET /work HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 10_000
    answers = []
    for limit in (None, 4096):
        settings = {} if limit is None else {"header_bytes_max": limit}
        async with harness(**settings) as h, await connect(h) as stream:
            await stream.send_all(head)
            await trio.sleep(0.2)
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(b"\r\n\r\n")
            answers.append(await read_answer(stream))
    assert answers[0].startswith(b"HTTP/1.1 200 ")
    assert answers[1].startswith(b"HTTP/1.1 431 ")


async def test_a_small_body_that_trickles_in_gets_408_before_taking_a_slot() -> None:
    async with harness(body_timeout_s=0.5) as h, await connect(h) as stream, trio.open_nursery() as nursery:
        await stream.send_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        nursery.start_soon(trickle, stream, b"x" * 100, 0.05)
        started = trio.current_time()
        answer = await read_answer(stream)
        elapsed_s = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"body-timeout" in answer
    assert 0.4 < elapsed_s < 1.5
    assert h.stats().tiers[-1].admitted_total == 0  # free tier: never admitted
    assert h.upstream.started == 0
    assert h.proxy.metric("ezthrottle_proxy_client_failures_total", listener="test", kind="body-timeout") == 1


async def test_a_large_body_below_the_minimum_rate_gets_408_and_frees_its_slot() -> None:
    settings = {"body_timeout_s": 0.5, "body_buffer_bytes": 1024, "body_rate_min_bytes_per_s": 10_000.0}
    async with harness(**settings) as h, await connect(h) as stream, trio.open_nursery() as nursery:
        await stream.send_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
        await stream.send_all(b"x" * 2048)  # the head: read at once, then the slot is taken
        await wait_until(lambda: h.stats().inflight == 1)
        nursery.start_soon(trickle, stream, b"x" * 1000, 0.05)  # 20 bytes/s
        started = trio.current_time()
        answer = await read_answer(stream)
        elapsed_s = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert elapsed_s < 2.0
    assert h.stats().inflight == 0 and h.stats().tiers[-1].admitted_total == 1
    assert h.upstream.started == 1  # the upload had begun streaming upstream, and was cut


async def test_oversize_bodies_get_413_whether_declared_or_chunked() -> None:
    async with harness(body_bytes_max=1000, body_buffer_bytes=256) as h:
        async with await connect(h) as stream:
            await stream.send_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n" + b"x" * 5000)
            declared = await read_answer(stream)
        async with await connect(h) as stream:
            chunk = b"x" * 500
            body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
            await stream.send_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + body)
            chunked = await read_answer(stream)
    assert declared.startswith(b"HTTP/1.1 413 ") and b"body-too-large" in declared
    assert chunked.startswith(b"HTTP/1.1 413 ") and b"body-too-large" in chunked
    assert h.upstream.started == 1  # only the chunked one got as far as streaming, and was cut
    assert h.stats().inflight == 0


async def test_a_client_that_disconnects_while_queued_gives_its_place_back() -> None:
    async with harness(max_concurrency=1) as h, await connect(h) as holder, await connect(h) as waiter:
        await holder.send_all(b"GET /sleep?s=2 HTTP/1.1\r\nhost: x\r\n\r\n")
        await wait_until(lambda: h.stats().inflight == 1)
        await waiter.send_all(b"GET /work HTTP/1.1\r\nhost: x\r\n\r\n")
        await wait_until(lambda: h.stats().queued == 1)
        await waiter.aclose()
        await wait_until(lambda: h.stats().queued == 0, timeout_s=1.0)
        assert h.stats().tiers[-1].cancelled_total == 1
        assert h.stats().inflight == 1  # the holder is untouched
    assert h.proxy.metric("ezthrottle_proxy_queued", listener="test", tier="free", key="anonymous") == 0


async def test_a_client_that_disconnects_mid_request_frees_its_slot_at_once() -> None:
    async with harness(max_concurrency=1) as h:
        async with await connect(h) as stream:
            await stream.send_all(b"GET /sleep?s=5 HTTP/1.1\r\nhost: x\r\n\r\n")
            await wait_until(lambda: h.stats().inflight == 1)
        await wait_until(lambda: h.stats().inflight == 0, timeout_s=1.0)
        assert h.proxy.metric("ezthrottle_proxy_client_failures_total", listener="test", kind="disconnected") == 1
        assert h.proxy.metric("ezthrottle_proxy_in_flight", listener="test", tier="free") == 0
