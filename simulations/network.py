"""A simulated network for the cluster shell: the real `ClusterMember` gossips through it on virtual time.

`SimulatedNetwork.open_transport` is a `TransportFactory` (cluster/shell/transport.py), so
`ClusterMember(..., transport_factory=network.open_transport)` runs the unmodified shell with no sockets.

What the model does, and what the shell must survive on it:
- Datagrams go through one packet scheduler: a priority queue keyed by delivery time (then send order, so ties
  are deterministic), emptied by one task. Each datagram independently may be lost, duplicated (the copy takes its
  own delay), and is delayed uniformly between `delay_min_s` and `delay_max_s`, so jitter reorders them. Datagrams
  to an address nobody is bound to, or to an inbox that is full, vanish, as on UDP.
- Streams (push-pull) are reliable: loss only costs time, modelled as the same per-leg delay. A destination
  nobody is bound to refuses at once (a TCP RST); a partitioned one never answers, so the caller's timeout ends
  the exchange, as a SYN lost in a real partition does.
- Partitions block whole hosts from each other, both ways or one way; they apply to a datagram when it is sent
  and to each leg of a stream as it starts.
- A crash is the member's own cancellation: its transport context exits and unbinds the address, so traffic to
  it is dropped until a new member binds the same address (a restart; late datagrams then reach the new one).

CPU (simulations/cpu.py): `SimulatedNetwork.cpu` gives a host's `GossipCpu`, or None while its CPU is free. A
datagram costs its sender before it leaves (`send_packet` waits until the host's CPU has done the work) and its
receiver once it is taken from the inbox, before the member sees it; datagrams waiting in the inbox meanwhile
still count against INBOX_PACKETS_MAX, as on a saturated host. Streams (push-pull, rare) are not charged.

Every delivery and drop is recorded in the simulation's trace (with a CRC of the payload), so two runs that
differ in any byte or any moment of network traffic have different digests.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import math
import random
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, fields
from typing import Protocol, final

import trio

from cluster.messages import Address
from cluster.shell.transport import (
    StreamHandler,
    TransportError,
    TransportLimits,
    TransportStatistics,
)

from .determinism import Trace

# Datagrams waiting in one endpoint's inbox before more are dropped: a Linux UDP receive buffer of ~200 KB holds
# about this many 1400-byte gossip datagrams.
INBOX_PACKETS_MAX = 256
# Port handed out for bind port 0, counting up: any unprivileged port will do, these are never real sockets.
EPHEMERAL_PORT_FIRST = 40000


class GossipCpu(Protocol):
    """What one host's CPU is charged for a gossip datagram (see the module docstring)."""

    async def gossip(self) -> None: ...


def _free_cpu(_host: str) -> GossipCpu | None:
    return None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFaults:
    """How every path behaves; replace `SimulatedNetwork.faults` at any moment to start or stop a fault."""

    loss: float = 0.0  # probability that a datagram is dropped
    duplication: float = 0.0  # probability that a delivered datagram is delivered twice
    delay_min_s: float = 0.0002  # one way, datagrams and each leg of a stream
    delay_max_s: float = 0.002

    def __post_init__(self) -> None:
        if not (0.0 <= self.loss <= 1.0 and 0.0 <= self.duplication <= 1.0):
            raise ValueError("loss and duplication are probabilities, 0..1")
        if not 0.0 <= self.delay_min_s <= self.delay_max_s:
            raise ValueError("need 0 <= delay_min_s <= delay_max_s")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkStatistics:
    """What happened to datagrams and streams, network-wide (a frozen snapshot)."""

    packets_sent: int = 0
    packets_delivered: int = 0
    packets_duplicated: int = 0
    packets_lost: int = 0  # drawn by `loss`
    packets_partitioned: int = 0
    packets_unbound: int = 0  # nobody bound to the destination when it arrived
    packets_inbox_full: int = 0
    streams_completed: int = 0
    streams_refused: int = 0  # nobody serving streams at the destination
    streams_partitioned: int = 0  # hung until the caller's timeout


@dataclass(frozen=True, slots=True, order=True)
class _InFlight:
    deliver_at: float
    sequence: int  # send order: equal delivery times stay deterministic
    source: Address
    destination: Address
    data: bytes


@final
class SimulatedTransport:
    """One member's `Transport` on a `SimulatedNetwork`; built by `SimulatedNetwork.open_transport`."""

    __slots__ = ("_counts", "_handler", "_inbox_receive", "_inbox_send", "_limits", "_local_address", "_network")

    def __init__(self, *, network: SimulatedNetwork, local_address: Address, limits: TransportLimits) -> None:
        self._network = network
        self._local_address = local_address
        self._limits = limits
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[tuple[Address, bytes]](INBOX_PACKETS_MAX)
        self._handler: StreamHandler | None = None
        self._counts = {field.name: 0 for field in fields(TransportStatistics)}

    def __repr__(self) -> str:
        host, port = self._local_address
        serving = "serving" if self._handler is not None else "not serving"
        return f"<SimulatedTransport {host}:{port}: {serving} streams>"

    @property
    def local_address(self) -> Address:
        return self._local_address

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(**self._counts)

    async def send_packet(self, address: Address, data: bytes) -> None:
        if (cpu := self._network.cpu(self._local_address[0])) is not None:
            await cpu.gossip()
        else:
            await trio.lowlevel.checkpoint()  # a real send is a checkpoint too
        self._network._send(self._local_address, address, data)

    async def receive_packet(self) -> tuple[Address, bytes]:
        source, data = await self._inbox_receive.receive()
        if (cpu := self._network.cpu(self._local_address[0])) is not None:
            await cpu.gossip()
        return source, data[: self._limits.packet_bytes_max + 1]  # as a recvfrom one byte over the limit cuts it

    async def exchange(self, address: Address, request: bytes, timeout_s: float) -> bytes:
        host, port = address
        try:
            with trio.fail_after(timeout_s):
                reply = await self._network._exchange(self._local_address, address, request)
        except trio.TooSlowError as exc:
            raise TransportError(f"stream to {host}:{port} timed out after {timeout_s} s") from exc
        if len(reply) > self._limits.stream_bytes_max:
            raise TransportError(f"stream to {host}:{port} answered {len(reply)} bytes, over the limit")
        return reply

    async def serve_streams(
        self, handler: StreamHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._handler = handler
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._handler = None

    def _deliver(self, source: Address, data: bytes) -> bool:
        try:
            self._inbox_send.send_nowait((source, data))
        except trio.WouldBlock:
            return False
        return True

    def _answer(self, request: bytes) -> bytes | None:
        """Serve one inbound stream synchronously, as the shell's handler does; None when not serving."""
        if self._handler is None:
            return None
        if len(request) > self._limits.stream_bytes_max:
            self._counts["stream_frames_refused"] += 1
            return None
        self._counts["streams_accepted"] += 1
        return self._handler(request)


@final
class SimulatedNetwork:
    """Endpoints by address, the packet scheduler, partitions and faults. Open it with `open_simulated_network`."""

    __slots__ = (
        "_counts",
        "_endpoints",
        "_in_flight",
        "_next_port",
        "_next_sequence",
        "_rng",
        "_sleeper",
        "_trace",
        "blocked",
        "cpu",
        "faults",
    )

    def __init__(self, *, rng: random.Random, trace: Trace, faults: LinkFaults) -> None:
        self._rng = rng
        self._trace = trace
        self.faults = faults
        # (source host, destination host) pairs that cannot reach each other; see `partition`.
        self.blocked: set[tuple[str, str]] = set()
        self.cpu: Callable[[str], GossipCpu | None] = _free_cpu  # see the module docstring
        self._endpoints: dict[Address, SimulatedTransport] = {}
        self._in_flight: list[_InFlight] = []
        self._next_sequence = 0
        self._next_port = EPHEMERAL_PORT_FIRST
        self._sleeper: trio.CancelScope | None = None
        self._counts = {field.name: 0 for field in fields(NetworkStatistics)}

    def __repr__(self) -> str:
        return (
            f"<SimulatedNetwork {len(self._endpoints)} bound | {len(self._in_flight)} datagrams in flight | "
            f"{len(self.blocked)} blocked paths>"
        )

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(**self._counts)

    def partition(self, side_a: Iterable[str], side_b: Iterable[str], *, one_way: bool = False) -> None:
        """Block hosts in `side_a` from reaching hosts in `side_b` (and back, unless `one_way`)."""
        self.blocked.update(_paths_between(side_a, side_b, one_way=one_way))
        self._trace.record(f"net partition {sorted(self.blocked)}")

    def heal(self, side_a: Iterable[str] | None = None, side_b: Iterable[str] = (), *, one_way: bool = False) -> None:
        """Lift every partition, or (with sides) only the one `partition` made with the same arguments."""
        if side_a is None:
            self.blocked.clear()
        else:
            self.blocked.difference_update(_paths_between(side_a, side_b, one_way=one_way))
        self._trace.record(f"net heal {sorted(self.blocked)}")

    @contextlib.asynccontextmanager
    async def open_transport(self, bind: Address, limits: TransportLimits) -> AsyncIterator[SimulatedTransport]:
        """The `TransportFactory`: bind `bind` (an IP literal; port 0 picks one) until the context exits."""
        host, port = bind
        if port == 0:
            port = self._next_port
            self._next_port += 1
        address = (host, port)
        if address in self._endpoints:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} is already bound on the simulated network")
        transport = SimulatedTransport(network=self, local_address=address, limits=limits)
        self._endpoints[address] = transport
        self._trace.record(f"net bind {host}:{port}")
        try:
            yield transport
        finally:
            del self._endpoints[address]
            self._trace.record(f"net unbind {host}:{port}")

    async def deliver_forever(self) -> None:
        """The packet scheduler: sleep until the earliest datagram is due, hand out everything due, repeat."""
        while True:
            deadline = self._in_flight[0].deliver_at if self._in_flight else math.inf
            with trio.CancelScope(deadline=deadline) as self._sleeper:
                await trio.sleep_forever()
            self._sleeper = None
            now = trio.current_time()
            while self._in_flight and self._in_flight[0].deliver_at <= now:
                self._arrive(heapq.heappop(self._in_flight))

    def _reachable(self, source: Address, destination: Address) -> bool:
        return (source[0], destination[0]) not in self.blocked

    def _delay(self) -> float:
        return self._rng.uniform(self.faults.delay_min_s, self.faults.delay_max_s)

    def _send(self, source: Address, destination: Address, data: bytes) -> None:
        self._counts["packets_sent"] += 1
        if not self._reachable(source, destination):
            self._drop("packets_partitioned", source, destination, data)
            return
        faults = self.faults
        if self._rng.random() < faults.loss:
            self._drop("packets_lost", source, destination, data)
            return
        copies = 2 if self._rng.random() < faults.duplication else 1
        self._counts["packets_duplicated"] += copies - 1
        now = trio.current_time()
        for _copy in range(copies):
            packet = _InFlight(now + self._delay(), self._next_sequence, source, destination, data)
            self._next_sequence += 1
            heapq.heappush(self._in_flight, packet)
            if self._sleeper is not None:
                self._sleeper.deadline = min(self._sleeper.deadline, packet.deliver_at)

    def _arrive(self, packet: _InFlight) -> None:
        endpoint = self._endpoints.get(packet.destination)
        if endpoint is None:
            self._drop("packets_unbound", packet.source, packet.destination, packet.data)
        elif not endpoint._deliver(packet.source, packet.data):
            self._drop("packets_inbox_full", packet.source, packet.destination, packet.data)
        else:
            self._counts["packets_delivered"] += 1
            self._record("udp", packet.source, packet.destination, packet.data)

    def _drop(self, reason: str, source: Address, destination: Address, data: bytes) -> None:
        self._counts[reason] += 1
        self._record(f"drop {reason}", source, destination, data)

    def _record(self, what: str, source: Address, destination: Address, data: bytes) -> None:
        self._trace.record(
            f"net {what} {source[0]}:{source[1]}>{destination[0]}:{destination[1]} {len(data)}B {zlib.crc32(data):08x}"
        )

    async def _exchange(self, source: Address, destination: Address, request: bytes) -> bytes:
        """One push-pull: the request leg, the synchronous answer, the reply leg. The caller bounds the time."""
        await self._stream_leg(source, destination)
        server = self._endpoints.get(destination)
        reply = None if server is None else server._answer(request)
        if reply is None:
            self._counts["streams_refused"] += 1
            self._record("stream refused", source, destination, request)
            raise TransportError(f"stream to {destination[0]}:{destination[1]} refused or closed without a reply")
        await self._stream_leg(destination, source)
        self._counts["streams_completed"] += 1
        self._record("stream", source, destination, request + reply)
        return reply

    async def _stream_leg(self, source: Address, destination: Address) -> None:
        if not self._reachable(source, destination):
            self._counts["streams_partitioned"] += 1
            await trio.sleep_forever()
        await trio.sleep(self._delay())


def _paths_between(side_a: Iterable[str], side_b: Iterable[str], *, one_way: bool) -> set[tuple[str, str]]:
    hosts_b = list(side_b)
    paths = {(host_a, host_b) for host_a in side_a for host_b in hosts_b}
    return paths if one_way else paths | {(host_b, host_a) for host_a, host_b in paths}


@contextlib.asynccontextmanager
async def open_simulated_network(
    *, rng: random.Random, trace: Trace, faults: LinkFaults | None = None
) -> AsyncIterator[SimulatedNetwork]:
    """A network whose packet scheduler runs until the context exits."""
    network = SimulatedNetwork(rng=rng, trace=trace, faults=faults or LinkFaults())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(network.deliver_forever)
        yield network
        nursery.cancel_scope.cancel()
