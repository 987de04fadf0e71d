"""The socket transport on real loopback UDP and TCP: what only it does (IPv6 and dual stack, send errors counted,
what bad peers cost). What every Transport does is in test_transport_conformance.py, run on these sockets too."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import trio

from cluster.shell import SocketTransport, TransportError, TransportLimits, open_socket_transport

from .support import ipv6_loopback_available, wait_until

LIMITS = TransportLimits(packet_bytes_max=1400, stream_bytes_max=64 * 1024, stream_timeout_s=0.5, streams_max=4)
needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")


def echo_upper(request: bytes) -> bytes | None:
    """Answers a request with it upper-cased."""
    return request.upper()


@contextlib.asynccontextmanager
async def served(bind: tuple[str, int] = ("127.0.0.1", 0)) -> AsyncIterator[SocketTransport]:
    """A transport answering streams with `echo_upper`; serving stops before its sockets close."""
    async with open_socket_transport(bind, LIMITS) as transport, trio.open_nursery() as nursery:
        await nursery.start(transport.serve_streams, echo_upper)
        yield transport
        nursery.cancel_scope.cancel()


async def test_a_slow_peer_costs_its_stream_its_timeout_and_nothing_else() -> None:
    async with served() as transport:
        host, port = transport.local_address
        silent = [await trio.open_tcp_stream(host, port) for _ in range(LIMITS.streams_max + 2)]
        await wait_until(
            lambda: transport.statistics().streams_refused == 2, timeout_s=2, what="streams over the cap refused"
        )
        await wait_until(
            lambda: transport.statistics().stream_timeouts == LIMITS.streams_max, timeout_s=2, what="timeouts"
        )
        for stream in silent:
            await stream.aclose()
        async with open_socket_transport(("127.0.0.1", 0), LIMITS) as client:
            assert await client.exchange(transport.local_address, b"still there?", 2) == b"STILL THERE?"


async def test_a_peer_that_never_answers_an_exchange_times_out() -> None:
    with socket.socket() as mute:  # listens and accepts (the kernel does), never replies
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        async with open_socket_transport(("127.0.0.1", 0), LIMITS) as client:
            started = trio.current_time()
            with pytest.raises(TransportError, match="TooSlow"):
                await client.exchange(mute.getsockname(), b"hello?", 0.2)
            assert trio.current_time() - started < 1


@needs_ipv6
async def test_ipv6_packets_and_exchanges() -> None:
    async with open_socket_transport(("::1", 0), LIMITS) as first, served(("::1", 0)) as second:
        assert first.local_address[0] == "::1"
        await first.send_packet(second.local_address, b"ping6")
        with trio.fail_after(2):
            assert await second.receive_packet() == (first.local_address, b"ping6")
        assert await first.exchange(second.local_address, b"v6", 2) == b"V6"


@needs_ipv6
async def test_dual_stack_wildcard_speaks_plain_ipv4_to_the_core() -> None:
    async with served(("::", 0)) as dual, open_socket_transport(("127.0.0.1", 0), LIMITS) as ipv4:
        await ipv4.send_packet(("127.0.0.1", dual.local_address[1]), b"from v4")
        with trio.fail_after(2):
            source, data = await dual.receive_packet()
        assert (source, data) == (ipv4.local_address, b"from v4")  # not ::ffff:127.0.0.1
        await dual.send_packet(source, b"reply to v4")
        with trio.fail_after(2):
            assert await ipv4.receive_packet() == (("127.0.0.1", dual.local_address[1]), b"reply to v4")
        assert await ipv4.exchange(("127.0.0.1", dual.local_address[1]), b"tcp too", 2) == b"TCP TOO"


async def test_a_send_the_network_refuses_is_counted_not_raised() -> None:
    async with open_socket_transport(("127.0.0.1", 0), LIMITS) as ipv4_only:
        await ipv4_only.send_packet(("::1", 7946), b"wrong family")
        assert ipv4_only.statistics().packet_send_errors == 1
