"""What every cluster `Transport` must do: one suite, run against each implementation.

The implementations are real UDP and TCP sockets on 127.0.0.1 (`open_socket_transport`, cluster/shell/transport.py)
and the simulated network the simulator runs members on (`SimulatedNetwork.open_transport`, simulations/network.py).
A test here is a promise the shell relies on, so it must hold on both: the simulator is only as good as its
transport is faithful. What only one of them does (dual-stack IPv6, the inbound stream cap, the per-stream timeout
of the sockets; loss, duplication, jitter and partitions of the simulation) is tested beside that implementation,
in test_transport.py and tests/simulations/test_network.py.

The contract, from the `Transport` and `TransportFactory` docstrings and the module docstring of transport.py:

Binding (`TransportFactory`)
  B1. `factory(bind, limits)` binds `bind` for the life of the context. `local_address` is the address actually
      bound: the host asked for and, when asked for port 0, a real port (two such binds get different ports).
  B2. Binding an address that is bound already raises OSError(EADDRINUSE).
  B3. Leaving the context unbinds the address: an exchange with it raises TransportError, a datagram sent to it
      raises nothing, and the same address can be bound again at once.
Packets: best effort
  P1. `receive_packet` returns the next datagram as (source, data): the bytes as sent and the sender's
      `local_address`, so a reply sent to the source reaches the sender, whoever else sends too.
  P2. A datagram of up to `packet_bytes_max` bytes arrives whole; a longer one "may arrive cut to one byte over":
      as its first `packet_bytes_max + 1` bytes, so the receiver sees that it was oversize.
  P3. "A failed send is counted, never raised": `send_packet` does not raise for an address nobody is bound to, an
      address of the other family, or a datagram too big for UDP, and the transport goes on working. (Whether such
      a send counts as failed depends on what the implementation can see: the sockets count the last two, the
      simulated network delivers or drops them downstream.) Loss and reordering are allowed, so no test here
      depends on their absence beyond a single datagram on an idle loopback or fault-free simulated link.
Streams: reliable, one request frame and one reply frame
  S1. `exchange(address, request, timeout_s)` hands `request` to the handler given to the peer's `serve_streams`
      and returns exactly what the handler returned. Empty frames are frames; concurrent exchanges each get their
      own reply.
  S2. A handler that returns None answers nothing ("just close"): the caller gets TransportError.
  S3. `stream_bytes_max` bounds every frame: exactly the limit passes; a reply over the caller's limit raises
      TransportError; a request over the server's limit is refused (counted in its `stream_frames_refused`) and
      the caller gets TransportError. Either way the server goes on serving.
  S4. "Any failure raises TransportError", no other exception, and no later than `timeout_s`: nobody bound at the
      address, bound but not serving streams, serving stopped.
  S5. `serve_streams` answers from the moment `nursery.start` returns it until it is cancelled.
Statistics
  T1. `statistics()` is a frozen `TransportStatistics` snapshot: later traffic shows in the next snapshot, never in
      an earlier one. Every inbound stream whose request reaches the handler counts once in `streams_accepted` of
      the side serving it, whether the handler replies or not.

Not promised, and the implementations differ (so not tested): how soon S4 fails (the simulated network refuses a
peer that is not serving at once, sockets wait out the timeout because the kernel accepts the connection); whether
a stream whose request is refused for size also counts in `streams_accepted` (sockets: yes, simulated: no); what a
handler that raises does (sockets: takes down `serve_streams`; simulated: raises into the caller's `exchange`).

Both implementations run on trio's real clock here, so the simulated network's delays are real milliseconds; its
virtual-time behaviour is tested in tests/simulations/test_network.py.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import trio

from cluster.messages import Address
from cluster.shell import (
    Transport,
    TransportError,
    TransportFactory,
    TransportLimits,
    TransportStatistics,
    open_socket_transport,
)
from simulations.determinism import Trace
from simulations.network import open_simulated_network

from .support import wait_until

HOST = "127.0.0.1"
LIMITS = TransportLimits(packet_bytes_max=1400, stream_bytes_max=64 * 1024, stream_timeout_s=0.5, streams_max=4)
# Bounds on waits for something that happens at once on loopback or in the simulation: generous, so a loaded
# machine passes; a real hang still fails.
ARRIVAL_TIMEOUT_S = 5.0
EXCHANGE_TIMEOUT_S = 5.0
# For exchanges expected to fail: short, since the sockets wait all of it out for a peer that is not serving.
FAILING_EXCHANGE_TIMEOUT_S = 0.3
# How far past its timeout a failing exchange may end: scheduling on a loaded machine, not a second timeout.
TIMEOUT_SLACK_S = 1.0
UDP_PAYLOAD_BYTES_MAX = 65_507  # IPv4: 65535 - 20 (IP header) - 8 (UDP header)


@dataclass(frozen=True)
class Bench:
    """One implementation: how to bind transports on it, and an address nobody is bound to."""

    name: str
    open_transport: TransportFactory
    unbound_address: Callable[[], Address]


def closed_port_address() -> Address:
    """A loopback port just released: nothing listens on it (another process could take it, but hardly will)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return HOST, probe.getsockname()[1]


@pytest.fixture(params=["sockets", "simulated"])
async def bench(request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    if request.param == "sockets":
        yield Bench("sockets", open_socket_transport, closed_port_address)
        return
    async with open_simulated_network(rng=random.Random(7), trace=Trace()) as network:
        # Port 0 binds count up from simulations.network.EPHEMERAL_PORT_FIRST; port 9 is never handed out.
        yield Bench("simulated", network.open_transport, lambda: (HOST, 9))


def answer(request: bytes) -> bytes | None:
    """The peer's stream handler: upper-cases the request, with a few requests that ask for something else."""
    if request == b"quiet":
        return None
    if request == b"empty":
        return b""
    if request == b"at the limit":
        return b"r" * LIMITS.stream_bytes_max
    if request == b"over the limit":
        return b"r" * (LIMITS.stream_bytes_max + 1)
    return request.upper()


@dataclass(frozen=True)
class Pair:
    """Two transports on one bench; `server` answers streams with `answer`, `client` serves none."""

    bench: Bench
    client: Transport
    server: Transport


@pytest.fixture
async def pair(bench: Bench) -> AsyncIterator[Pair]:
    async with (
        bench.open_transport((HOST, 0), LIMITS) as client,
        bench.open_transport((HOST, 0), LIMITS) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve_streams, answer)
        yield Pair(bench, client, server)
        nursery.cancel_scope.cancel()  # serving stops before the transports close


async def receive(transport: Transport) -> tuple[Address, bytes]:
    with trio.fail_after(ARRIVAL_TIMEOUT_S):
        return await transport.receive_packet()


async def exchange(client: Transport, address: Address, request: bytes) -> bytes:
    return await client.exchange(address, request, EXCHANGE_TIMEOUT_S)


async def assert_exchange_fails_in_time(client: Transport, address: Address, request: bytes = b"anyone?") -> None:
    """S4: TransportError (pytest.raises lets no other exception through), no later than the timeout."""
    with trio.fail_after(FAILING_EXCHANGE_TIMEOUT_S + TIMEOUT_SLACK_S), pytest.raises(TransportError):
        await client.exchange(address, request, FAILING_EXCHANGE_TIMEOUT_S)


# --- B: binding ---


async def test_port_zero_binds_a_real_port_on_the_host_asked_for(bench: Bench) -> None:
    async with bench.open_transport((HOST, 0), LIMITS) as first, bench.open_transport((HOST, 0), LIMITS) as second:
        for transport in (first, second):
            host, port = transport.local_address
            assert host == HOST and 0 < port < 65536
        assert first.local_address != second.local_address


async def test_binding_an_address_in_use_raises_address_in_use(bench: Bench) -> None:
    async with bench.open_transport((HOST, 0), LIMITS) as first:
        with pytest.raises(OSError) as refused:
            async with bench.open_transport(first.local_address, LIMITS):
                pass
        assert refused.value.errno == errno.EADDRINUSE


async def test_leaving_the_context_unbinds_and_the_address_binds_again_at_once(bench: Bench) -> None:
    async with bench.open_transport((HOST, 0), LIMITS) as peer:
        async with bench.open_transport((HOST, 0), LIMITS) as gone:
            address = gone.local_address
        await peer.send_packet(address, b"anyone?")
        await assert_exchange_fails_in_time(peer, address)
        async with bench.open_transport(address, LIMITS) as again:
            assert again.local_address == address
            await peer.send_packet(address, b"back")
            # The datagram sent while nobody was bound may still have been on its way (the simulated network
            # delays it, as a real one may): it is allowed to arrive, ahead of the one sent after the rebind.
            with trio.fail_after(ARRIVAL_TIMEOUT_S):
                while (arrived := await again.receive_packet()) == (peer.local_address, b"anyone?"):
                    pass
            assert arrived == (peer.local_address, b"back")


# --- P: packets ---


async def test_packets_arrive_with_the_senders_address_and_a_reply_to_it_arrives(pair: Pair) -> None:
    await pair.client.send_packet(pair.server.local_address, b"ping")
    source, data = await receive(pair.server)
    assert (source, data) == (pair.client.local_address, b"ping")
    await pair.server.send_packet(source, b"ack")
    assert await receive(pair.client) == (pair.server.local_address, b"ack")


async def test_each_datagram_carries_its_own_senders_address(bench: Bench) -> None:
    async with (
        bench.open_transport((HOST, 0), LIMITS) as receiver,
        bench.open_transport((HOST, 0), LIMITS) as first,
        bench.open_transport((HOST, 0), LIMITS) as second,
    ):
        await first.send_packet(receiver.local_address, b"from first")
        await second.send_packet(receiver.local_address, b"from second")
        arrived = {await receive(receiver), await receive(receiver)}  # in either order
        assert arrived == {(first.local_address, b"from first"), (second.local_address, b"from second")}


async def test_a_datagram_at_the_limit_arrives_whole_and_a_longer_one_cut_to_one_byte_over(pair: Pair) -> None:
    at_the_limit = bytes(range(256)) * (LIMITS.packet_bytes_max // 256) + b"x" * (LIMITS.packet_bytes_max % 256)
    assert len(at_the_limit) == LIMITS.packet_bytes_max
    await pair.client.send_packet(pair.server.local_address, at_the_limit)
    assert await receive(pair.server) == (pair.client.local_address, at_the_limit)
    oversize = at_the_limit + b"tail" * 900
    await pair.client.send_packet(pair.server.local_address, oversize)
    _source, data = await receive(pair.server)
    assert data == oversize[: LIMITS.packet_bytes_max + 1]


async def test_sends_that_cannot_succeed_never_raise_and_the_transport_goes_on(pair: Pair) -> None:
    await pair.client.send_packet(pair.bench.unbound_address(), b"nobody home")
    await pair.client.send_packet(("::1", pair.server.local_address[1]), b"wrong family")
    await pair.client.send_packet(pair.server.local_address, bytes(UDP_PAYLOAD_BYTES_MAX + 1))
    # Whatever of the too-big datagram got through arrives first (cut), then the datagram sent after it.
    await pair.client.send_packet(pair.server.local_address, b"still here")
    with trio.fail_after(ARRIVAL_TIMEOUT_S):
        while (arrived := await receive(pair.server))[1] != b"still here":
            assert len(arrived[1]) == LIMITS.packet_bytes_max + 1
    assert arrived == (pair.client.local_address, b"still here")


# --- S: streams ---


async def test_exchange_returns_exactly_what_the_handler_returned(pair: Pair) -> None:
    big = bytes(range(97, 123)) * 2000  # 52 000 bytes: several TCP segments each way
    assert await exchange(pair.client, pair.server.local_address, b"hello") == b"HELLO"
    assert await exchange(pair.client, pair.server.local_address, big) == big.upper()
    assert await exchange(pair.client, pair.server.local_address, b"") == b""  # an empty request
    assert await exchange(pair.client, pair.server.local_address, b"empty") == b""  # an empty reply is a reply


async def test_concurrent_exchanges_each_get_their_own_reply(pair: Pair) -> None:
    replies: dict[bytes, bytes] = {}

    async def one(request: bytes) -> None:
        replies[request] = await exchange(pair.client, pair.server.local_address, request)

    requests = [f"request {index}".encode() * (index + 1) for index in range(LIMITS.streams_max)]
    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
    assert replies == {request: request.upper() for request in requests}


async def test_no_reply_from_the_handler_is_a_transport_error(pair: Pair) -> None:
    await assert_exchange_fails_in_time(pair.client, pair.server.local_address, b"quiet")
    assert await exchange(pair.client, pair.server.local_address, b"after") == b"AFTER"


async def test_frames_at_the_stream_limit_pass_and_longer_ones_are_refused(pair: Pair) -> None:
    limit = LIMITS.stream_bytes_max
    assert await exchange(pair.client, pair.server.local_address, b"q" * limit) == b"Q" * limit
    assert await exchange(pair.client, pair.server.local_address, b"at the limit") == b"r" * limit
    await assert_exchange_fails_in_time(pair.client, pair.server.local_address, b"over the limit")  # the reply
    await assert_exchange_fails_in_time(pair.client, pair.server.local_address, b"q" * (limit + 1))  # the request
    await wait_until(
        lambda: pair.server.statistics().stream_frames_refused == 1,
        timeout_s=ARRIVAL_TIMEOUT_S,
        what="the oversize request counted as refused",
    )
    assert await exchange(pair.client, pair.server.local_address, b"after") == b"AFTER"


async def test_an_exchange_with_an_address_nobody_is_bound_to_fails(pair: Pair) -> None:
    await assert_exchange_fails_in_time(pair.client, pair.bench.unbound_address())


async def test_an_exchange_with_a_peer_not_serving_streams_fails(bench: Bench) -> None:
    async with bench.open_transport((HOST, 0), LIMITS) as client, bench.open_transport((HOST, 0), LIMITS) as mute:
        await assert_exchange_fails_in_time(client, mute.local_address)


async def test_serving_answers_from_start_until_cancelled(bench: Bench) -> None:
    async with (
        bench.open_transport((HOST, 0), LIMITS) as client,
        bench.open_transport((HOST, 0), LIMITS) as server,
        trio.open_nursery() as nursery,
    ):
        serving, stopped = trio.CancelScope(), trio.Event()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with serving:
                    await server.serve_streams(answer, task_status=task_status)
            finally:
                stopped.set()

        await nursery.start(serve)
        assert await exchange(client, server.local_address, b"first") == b"FIRST"  # no wait after start
        serving.cancel()
        with trio.fail_after(ARRIVAL_TIMEOUT_S):
            await stopped.wait()
        await assert_exchange_fails_in_time(client, server.local_address)


# --- T: statistics ---


async def test_statistics_are_frozen_snapshots_and_count_the_streams_served(pair: Pair) -> None:
    before = pair.server.statistics()
    as_taken = dataclasses.asdict(before)
    assert isinstance(before, TransportStatistics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.streams_accepted = 99  # type: ignore[misc]
    for request in (b"one", b"two", b"empty"):
        await exchange(pair.client, pair.server.local_address, request)
    await assert_exchange_fails_in_time(pair.client, pair.server.local_address, b"quiet")  # handled, no reply
    assert pair.server.statistics().streams_accepted == before.streams_accepted + 4
    assert dataclasses.asdict(before) == as_taken  # the traffic shows in the next snapshot only
    assert pair.client.statistics().streams_accepted == 0  # the calling side served nothing
