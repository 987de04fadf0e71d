"""The simulated network as a cluster Transport: datagrams, streams, faults and partitions on virtual time."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import pytest
import trio

from cluster.shell import TransportError, TransportLimits
from simulations.determinism import Simulation, run_simulation
from simulations.network import INBOX_PACKETS_MAX, LinkFaults, SimulatedNetwork, open_simulated_network

LIMITS = TransportLimits(packet_bytes_max=600, stream_bytes_max=2000, stream_timeout_s=1.0, streams_max=4)
A = ("127.0.1.1", 7946)
B = ("127.0.1.2", 7946)


def on_network(
    scenario: Callable[[Simulation, SimulatedNetwork], Awaitable[None]], faults: LinkFaults | None = None
) -> Simulation:
    async def main(simulation: Simulation) -> Simulation:
        async with open_simulated_network(
            rng=simulation.rng_for("network"), trace=simulation.trace, faults=faults
        ) as network:
            await scenario(simulation, network)
        return simulation

    return run_simulation(main, seed=11).value


async def drain(transport: object, count_max: int, wait_s: float) -> list[tuple[tuple[str, int], bytes]]:
    """Whatever arrives within `wait_s` of virtual time, at most `count_max` datagrams."""
    received = []
    with trio.move_on_after(wait_s):
        for _ in range(count_max):
            received.append(await transport.receive_packet())  # type: ignore[attr-defined]
    return received


def test_datagrams_arrive_after_a_delay_and_oversize_ones_are_cut() -> None:
    async def scenario(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(A, LIMITS) as a, network.open_transport(B, LIMITS) as b:
            started = trio.current_time()
            await a.send_packet(B, b"hello")
            source, data = await b.receive_packet()
            assert (source, data) == (A, b"hello")
            assert 0.0002 <= trio.current_time() - started <= 0.002
            await a.send_packet(B, bytes(1000))
            assert len((await b.receive_packet())[1]) == LIMITS.packet_bytes_max + 1
        assert network.statistics().packets_delivered == 2

    on_network(scenario)


def test_binding_port_zero_picks_a_port_and_a_bound_address_is_refused() -> None:
    async def scenario(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(("127.0.1.1", 0), LIMITS) as first:
            assert first.local_address[1] >= 1024
            with pytest.raises(OSError) as refused:
                async with network.open_transport(first.local_address, LIMITS):
                    pass
            assert refused.value.errno == errno.EADDRINUSE

    on_network(scenario)


def test_loss_drops_and_duplication_doubles() -> None:
    async def lossy(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(A, LIMITS) as a, network.open_transport(B, LIMITS) as b:
            for index in range(100):
                await a.send_packet(B, bytes([index]))
            received = await drain(b, 100, wait_s=1.0)
        stats = network.statistics()
        assert 30 <= stats.packets_lost <= 70
        assert len(received) == stats.packets_delivered == 100 - stats.packets_lost

    async def doubled(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(A, LIMITS) as a, network.open_transport(B, LIMITS) as b:
            for index in range(10):
                await a.send_packet(B, bytes([index]))
            received = await drain(b, 30, wait_s=1.0)
        assert sorted(data for _source, data in received) == sorted([bytes([index]) for index in range(10)] * 2)
        assert network.statistics().packets_duplicated == 10

    on_network(lossy, LinkFaults(loss=0.5))
    on_network(doubled, LinkFaults(duplication=1.0))


def test_jitter_reorders_and_the_trace_records_every_delivery() -> None:
    async def scenario(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(A, LIMITS) as a, network.open_transport(B, LIMITS) as b:
            for index in range(50):
                await a.send_packet(B, bytes([index]))
            received = [data[0] for _source, data in await drain(b, 50, wait_s=1.0)]
        assert sorted(received) == list(range(50))
        assert received != list(range(50))  # all sent at one instant, delays drawn independently

    simulation = on_network(scenario, LinkFaults(delay_min_s=0.001, delay_max_s=0.010))
    assert sum(" net udp 127.0.1.1:7946>127.0.1.2:7946 1B " in line for line in simulation.trace.tail()) == 50


def test_partitions_block_both_ways_or_one_way_until_healed() -> None:
    async def scenario(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(A, LIMITS) as a, network.open_transport(B, LIMITS) as b:
            network.partition([A[0]], [B[0]], one_way=True)
            await a.send_packet(B, b"a to b")
            await b.send_packet(A, b"b to a")
            assert await drain(b, 1, wait_s=0.1) == []
            assert await drain(a, 1, wait_s=0.1) == [(B, b"b to a")]
            network.partition([A[0]], [B[0]])
            await b.send_packet(A, b"b to a")
            assert await drain(a, 1, wait_s=0.1) == []
            network.heal()
            await a.send_packet(B, b"healed")
            assert await drain(b, 1, wait_s=0.1) == [(A, b"healed")]
        assert network.statistics().packets_partitioned == 2

    on_network(scenario)


def test_datagrams_to_an_unbound_address_vanish() -> None:
    async def scenario(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(A, LIMITS) as a:
            await a.send_packet(B, b"nobody home")
            await trio.sleep(0.1)
        assert network.statistics().packets_unbound == 1

    on_network(scenario)


def test_streams_answer_refuse_and_time_out() -> None:
    async def scenario(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with (
            network.open_transport(A, LIMITS) as a,
            network.open_transport(B, LIMITS) as b,
            trio.open_nursery() as nursery,
        ):
            with pytest.raises(TransportError, match="refused"):
                await a.exchange(B, b"ping", timeout_s=1.0)  # bound, but not serving streams yet
            await nursery.start(b.serve_streams, lambda request: request.upper())
            started = trio.current_time()
            assert await a.exchange(B, b"ping", timeout_s=1.0) == b"PING"
            assert 0.0004 <= trio.current_time() - started <= 0.004
            with pytest.raises(TransportError, match="refused"):
                await a.exchange(B, bytes(LIMITS.stream_bytes_max + 1), timeout_s=1.0)
            network.partition([A[0]], [B[0]])
            started = trio.current_time()
            with pytest.raises(TransportError, match="timed out"):
                await a.exchange(B, b"ping", timeout_s=0.5)
            assert trio.current_time() - started == pytest.approx(0.5)
            nursery.cancel_scope.cancel()
        assert b.statistics().streams_accepted == 1
        assert b.statistics().stream_frames_refused == 1
        stats = network.statistics()
        assert (stats.streams_completed, stats.streams_refused, stats.streams_partitioned) == (1, 2, 1)

    on_network(scenario)


def test_a_full_inbox_drops_what_does_not_fit() -> None:
    async def scenario(_simulation: Simulation, network: SimulatedNetwork) -> None:
        async with network.open_transport(A, LIMITS) as a, network.open_transport(B, LIMITS) as b:
            for index in range(INBOX_PACKETS_MAX + 10):
                await a.send_packet(B, index.to_bytes(2, "big"))
            await trio.sleep(0.1)  # all delivered or dropped before anyone reads
            received = await drain(b, INBOX_PACKETS_MAX + 10, wait_s=0.1)
        assert len(received) == INBOX_PACKETS_MAX
        assert network.statistics().packets_inbox_full == 10

    on_network(scenario)
