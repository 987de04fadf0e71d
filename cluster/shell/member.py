"""ClusterMember: the Trio shell that runs one `SwimNode` on a transport and tells the node who owns what.

The core decides, the shell does the I/O (style.md §17): every input is one synchronous call into the core with
`now = trio.current_time()` (a datagram, a stream request, a stream reply, a timer, a join), followed by
`_dispatch`, which drains the core's actions without awaiting anything:
- `SendPacket` goes on a bounded outbound queue that one sender task empties (full queue: the datagram is
  dropped and counted, as the network would);
- `OpenStream` starts a push-pull exchange in the run nursery, at most `exchanges_max` at once (more are refused
  and counted: push-pull is periodic and the core retries);
- `MemberEvent` bumps `version`, wakes `wait_changed`, and is logged;
- `SharedChanged` calls `on_shared_change` with the entry (synchronously, so the caller can persist it before
  anything else happens; an exception from it is logged and counted, never let into the member's tasks) and
  wakes `wait_shared_changed`;
- `CounterChanged` does the same with `on_counter_change` and `wait_counters_changed`;
- and the timer task's cancel scope is pulled in to the core's `next_deadline()`, which an input may have moved
  earlier (a new probe, a suspicion armed).
Because nothing awaits between the core call and the drain, the core is only ever touched by one task at a time
without a lock, and its actions leave in the order it produced them.

Every destination is checked with `discovery.usable_peer_address` first (see there for the rule): addresses come
from gossip, so the shell never trusts them to be sendable.

Joining: with seeds, a join task resolves them (discovery.py) and asks the core for a push-pull with each,
retrying with jittered exponential backoff until some other member is live; it keeps watching, and starts over
whenever this member finds itself alone again (everyone else dead or left, e.g. after a long partition), since
DNS may by then name new machines. While joined, it resolves the seeds that are names again every
`rediscover_interval_s` and joins the addresses no live member has: machines started together may each have
found only their own group in DNS, and two groups that never heard of each other would otherwise never merge.
A member without seeds is a first member: it waits to be joined.

The shared map (cluster/shared.py) lives in the core; the shell only stamps local writes with the wall clock
(`Runtime.wall_ms`) and hands the core, at start, the entries the caller saved (`shared_entries`). The shell
never touches a disk: persisting is the caller's, through `on_shared_change`. The grow-only counters
(cluster/counters.py) likewise: `add_counter` adds to this member's own entry, `counter_entries` restores the saved
entries at start, and `on_counter_change` is told about every changed entry to save it.

Replay protection needs an epoch that grows across restarts of one node id: the boot time in wall-clock
milliseconds from the injected runtime (`Runtime.wall_ms`). That holds unless the wall clock steps back by more
than the time a restart takes; no state is kept on disk for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol, final

import trio

from cluster.actions import CounterChanged, MemberEvent, OpenStream, SendPacket, SharedChanged
from cluster.config import SwimConfig
from cluster.keyring import InsecureClusterError, Keyring
from cluster.messages import Address, CounterEntry, MemberInfo, SharedEntry, SharedValue
from cluster.ownership import Rendezvous, spread_over_machines
from cluster.swim import SwimNode, SwimStatistics

from .discovery import (
    GOSSIP_PORT_MIN,
    Resolver,
    Seed,
    backoff_delay,
    ip_literal,
    parse_seed,
    resolve_seeds,
    split_host_port,
    usable_peer_address,
    usable_peer_host,
)
from .transport import (
    Transport,
    TransportError,
    TransportFactory,
    TransportLimits,
    TransportStatistics,
    open_socket_transport,
)

if TYPE_CHECKING:
    import random

log = logging.getLogger("ezthrottle.cluster")


class ShellRuntime(Protocol):
    """What the shell takes from the node's injected world; `edge.runtime.Runtime` is one."""

    @property
    def rng(self) -> random.Random: ...

    @property
    def resolver(self) -> Resolver: ...

    def wall_ms(self) -> int: ...


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ShellSettings:
    """The shell's own limits and timings (the protocol's are in SwimConfig)."""

    # A whole push-pull exchange, either direction. memberlist's TCPTimeout: 10 s LAN, 1 s local.
    stream_timeout_s: float = 10.0
    # Push-pulls this member runs at once, and inbound streams it serves at once.
    exchanges_max: int = 8
    streams_max: int = 64
    # Datagrams waiting for the sender task. A member sends a few per probe and gossip interval; a backlog this
    # long means the socket is stuck, and older gossip is worth less than the next round's.
    outbound_packets_max: int = 256
    # Join retries: the pause doubles from initial to max (jittered); each attempt's DNS by resolve_timeout_s.
    join_backoff_initial_s: float = 1.0
    join_backoff_max_s: float = 30.0
    resolve_timeout_s: float = 5.0
    # While joined, seeds that are DNS names are resolved again this often, and addresses no live member has are
    # joined: machines that came up apart (each found only its own group in DNS) merge into one cluster.
    rediscover_interval_s: float = 60.0


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatistics:
    """A snapshot for /api/v1/cluster and metrics: the core's counters (drops by reason in `swim.drops`), the
    transport's, and the shell's own."""

    swim: SwimStatistics
    transport: TransportStatistics
    version: int
    packets_received: int = 0
    packets_sent: int = 0  # handed to the transport (its send errors are in transport.packet_send_errors)
    packets_dropped_backlog: int = 0  # the outbound queue was full
    packets_refused_address: int = 0  # to an address usable_peer_address refused
    streams_served: int = 0
    exchanges_completed: int = 0
    exchanges_failed: int = 0
    exchanges_refused: int = 0  # over exchanges_max, or to a refused address
    join_attempts: int = 0
    shared_callback_errors: int = 0  # on_shared_change raised (logged; the member carried on)
    counter_callback_errors: int = 0  # on_counter_change raised (logged; the member carried on)


DEFAULT_SETTINGS = ShellSettings()
_SNAPSHOTS = ("swim", "transport", "version")
_COUNTERS = tuple(field.name for field in fields(ClusterStatistics) if field.name not in _SNAPSHOTS)


def _parse_own_address(text: str, what: str) -> Address:
    """`bind` / `advertise`: an IP literal and a port that is 0 (any) or unprivileged."""
    host, port = split_host_port(text)
    literal = ip_literal(host)
    if literal is None:
        raise ValueError(f"cluster {what} {text!r} must be an IP address and port, not a name")
    if port is None or (port != 0 and port < GOSSIP_PORT_MIN):
        raise ValueError(f"cluster {what} {text!r} needs a port: 0 (any free one) or {GOSSIP_PORT_MIN}..65535")
    return literal, port


@final
class ClusterMember:
    """One member of the cluster, run by `run()`; see the module docstring for how it drives the core."""

    def __init__(
        self,
        *,
        node_id: str,
        bind: str,
        advertise: str | None = None,
        region: str = "",
        api_address: str = "",
        machine: str = "",
        config: SwimConfig,
        keyring: Keyring | None,
        insecure: bool = False,
        seeds: Sequence[str] = (),
        runtime: ShellRuntime,
        transport_factory: TransportFactory = open_socket_transport,
        settings: ShellSettings = DEFAULT_SETTINGS,
        shared_entries: Iterable[SharedEntry] = (),
        on_shared_change: Callable[[SharedEntry], None] | None = None,
        counter_entries: Iterable[CounterEntry] = (),
        on_counter_change: Callable[[CounterEntry], None] | None = None,
    ) -> None:
        """Checks the addresses now; `run()` refuses a member that could talk to nobody (no keyring, not insecure).

        `shared_entries`: the shared map as the caller saved it, entry by entry, from `on_shared_change`; the
        member starts with them (the join's push-pull then brings them up to date). `on_shared_change` is called
        with every entry that changes afterwards, local writes included; it must not block. `counter_entries` and
        `on_counter_change` are the same for the counters' entries."""
        self._bind = _parse_own_address(bind, "bind")
        self._advertise = None if advertise is None else _parse_own_address(advertise, "advertise")
        own_host, own_text = (self._bind[0], "bind") if self._advertise is None else (self._advertise[0], "advertise")
        if not usable_peer_host(own_host):
            raise ValueError(
                f"cluster {own_text} host {own_host!r} is not one other members may send to (a wildcard bind needs "
                "an advertise address)"
            )
        self._seeds = [parse_seed(seed) for seed in seeds]
        self._node_id = node_id
        self._region = region
        self._machine = machine
        self._api_address = api_address
        self._config = config
        self._keyring = keyring
        self._insecure = insecure
        self._runtime = runtime
        self._transport_factory = transport_factory
        self._settings = settings
        self._shared_entries = tuple(shared_entries)
        self._on_shared_change = on_shared_change
        self._shared_moved = trio.lowlevel.ParkingLot()
        self._counter_entries = tuple(counter_entries)
        self._on_counter_change = on_counter_change
        self._counters_moved = trio.lowlevel.ParkingLot()
        self._node: SwimNode | None = None
        self._transport: Transport | None = None
        self._nursery: trio.Nursery | None = None
        self._timer: trio.CancelScope | None = None
        self._join_scope = trio.CancelScope()
        outbound_send, outbound_receive = trio.open_memory_channel[tuple[Address, bytes]](settings.outbound_packets_max)
        self._outbound_send = outbound_send
        self._outbound_receive = outbound_receive
        self._packets_pending = 0  # queued or being sent
        self._progress = trio.lowlevel.ParkingLot()  # woken after each dispatch and each datagram sent
        self._exchanges_in_flight = 0
        self._version = 0
        self._version_moved = trio.lowlevel.ParkingLot()
        self._owners: tuple[int, Rendezvous, dict[str, MemberInfo]] | None = None
        # The ring over the live members and the fallen ones whose keys wait (may_run), by (version, fallen).
        self._waiting_ring: tuple[tuple[int, frozenset[str]], Rendezvous] | None = None
        self._counts = dict.fromkeys(_COUNTERS, 0)

    def __repr__(self) -> str:
        if self._node is None:
            return f"<ClusterMember {self._node_id}: not started>"
        members = self._node.members()
        live = sum(member.state.is_live for member in members)
        return f"<ClusterMember {self._node_id}: {live} live of {len(members)} known | version {self._version}>"

    # --- the API the node uses ---

    @property
    def local(self) -> MemberInfo:
        return self._running_node.local_member

    @property
    def version(self) -> int:
        """Bumped on every membership change this member sees (join, update, suspect, dead, left)."""
        return self._version

    def members(self) -> list[MemberInfo]:
        """Every member known, this one included, dead and left ones until the core forgets them; by node id."""
        return self._running_node.members()

    def live_members(self) -> list[MemberInfo]:
        """Alive and suspect members (a suspicion may be refuted), this one included unless it left."""
        return [member for member in self.members() if member.state.is_live]

    def owner_of(self, key: str) -> MemberInfo | None:
        """The live member that owns queue key `key` (rendezvous hashing); every member with the same view
        agrees. The hash ring is rebuilt only after a membership change."""
        _version, rendezvous, live = self._rendezvous()
        owner = rendezvous.owner(key)
        return None if owner is None else live[owner]

    def replica_set(self, key: str, count: int) -> list[MemberInfo]:
        """The live members that hold queue key `key`'s jobs: its owner, then `count - 1` more in rendezvous order,
        those on other machines first (`spread_over_machines`); all live members when fewer are live. A member
        without a machine (from a peer that predates it) is a machine of its own."""
        _version, rendezvous, live = self._rendezvous()
        ranked = rendezvous.ranked(key, len(live))
        chosen = spread_over_machines(ranked, lambda node: live[node].machine or node, count)
        return [live[node] for node in chosen]

    def may_run(self, key: str) -> bool:
        """Whether this node may dispatch queue key `key` now (cluster/lease.py): it owns the key, holds the
        majority lease, and the key's owner before it did not fall too recently."""
        node = self._running_node
        now = trio.current_time()
        owner = self.owner_of(key)
        if owner is None or owner.node != self._node_id or not node.may_run_keys(now):
            return False
        waiting = node.keys_waiting(now)
        if not waiting:
            return True
        ring = self._waiting_ring
        if ring is None or ring[0] != (self._version, waiting):
            live = {member.node for member in self.live_members()}
            ring = self._waiting_ring = ((self._version, waiting), Rendezvous(live | waiting))
        return ring[1].owner(key) not in waiting

    def runs_keys(self) -> bool:
        """Whether this node holds the majority lease now (it may run the keys it owns)."""
        return self._running_node.may_run_keys(trio.current_time())

    def takeover_wait_s(self) -> float:
        return self._running_node.takeover_wait_s()

    @property
    def times_declared_dead(self) -> int:
        """Grows each time this node hears it was declared dead: others may have run its keys meanwhile."""
        return self._running_node.times_declared_dead

    async def wait_gate_changed(self) -> None:
        """Return when `may_run` may answer differently: membership changed, a lease lapsed or a wait ended (and
        at least every second while this node holds no lease, since a round trip can restore it)."""
        node = self._running_node
        now = trio.current_time()
        until = node.gate_changes_at(now)
        if not node.may_run_keys(now):
            until = min(until, now + 1.0)
        with trio.move_on_at(until):
            await self.wait_changed(self._version)

    def _rendezvous(self) -> tuple[int, Rendezvous, dict[str, MemberInfo]]:
        """The hash ring of the live members, rebuilt only after a membership change."""
        owners = self._owners
        if owners is None or owners[0] != self._version:
            live = {member.node: member for member in self.live_members()}
            owners = self._owners = (self._version, Rendezvous(live), live)
        return owners

    async def wait_changed(self, after_version: int) -> int:
        """Wait until `version` is past `after_version`, and return it."""
        while self._version <= after_version:
            await self._version_moved.park()
        return self._version

    # --- the shared map ---

    @property
    def shared_version(self) -> int:
        """Grows on every change to the shared map this member sees; 0 for an empty map that never changed."""
        return self._running_node.shared().version

    def shared(self, key: str, default: SharedValue = None) -> SharedValue:
        """The value under `key` in the shared map, or `default` if it was never set."""
        return self._running_node.shared().get(key, default)

    def shared_items(self) -> list[tuple[str, SharedValue]]:
        """Every (key, value) of the shared map, by key."""
        return self._running_node.shared().items()

    def set_shared(self, key: str, value: SharedValue) -> SharedEntry:
        """Write `value` under `key` for the whole cluster, stamped with the runtime's wall clock, and return
        the entry (already passed to `on_shared_change`). Raises ValueError over a bound (cluster/shared.py)."""
        entry = self._running_node.set_shared(key, value, wall_ms=self._runtime.wall_ms())
        self._dispatch()
        return entry

    async def wait_shared_changed(self, after_version: int) -> int:
        """Wait until `shared_version` is past `after_version`, and return it."""
        while self.shared_version <= after_version:
            await self._shared_moved.park()
        return self.shared_version

    # --- the counters ---

    @property
    def counter_version(self) -> int:
        """Grows on every change to the counters this member sees; 0 for none that ever changed."""
        return self._running_node.counters().version

    def counter_total(self, name: str) -> int:
        """Counter `name` cluster-wide as this member knows it: every member's entry summed (0 if unknown)."""
        return self._running_node.counters().total(name)

    def counter_own(self, name: str) -> int:
        """This member's own entry of counter `name`: what it added itself, across restarts."""
        return self._running_node.counters().own(name, self._node_id)

    def counter_totals(self, prefix: str = "") -> dict[str, int]:
        """{name: total} for the counters whose name starts with `prefix`, by name."""
        return self._running_node.counters().totals(prefix)

    def add_counter(self, name: str, amount: int = 1) -> CounterEntry:
        """Add `amount` (>= 0) to this member's entry of counter `name` and gossip it; returns the entry (already
        passed to `on_counter_change` unless `amount` is 0). Raises ValueError over a bound (cluster/counters.py)."""
        entry = self._running_node.add_counter(name, amount)
        self._dispatch()
        return entry

    def counter_entries(self, prefix: str) -> tuple[CounterEntry, ...]:
        """Every node's entry of the counters whose name starts with `prefix`."""
        return self._running_node.counters().entries_named(prefix)

    def merge_counters(self, entries: Iterable[CounterEntry]) -> None:
        """Merge entries a peer sent directly (they are gossiped on like any merged entry)."""
        self._running_node.merge_counters(entries)
        self._dispatch()

    async def wait_counters_changed(self, after_version: int) -> int:
        """Wait until `counter_version` is past `after_version`, and return it."""
        while self.counter_version <= after_version:
            await self._counters_moved.park()
        return self.counter_version

    async def leave(self, timeout_s: float) -> bool:
        """Announce a graceful leave and wait until it has been gossiped its full count and sent, or `timeout_s`.

        True if it completed in time. Stops re-joining; the caller cancels `run()` afterwards."""
        node = self._running_node
        self._join_scope.cancel()
        node.leave(trio.current_time())
        self._dispatch()
        with trio.move_on_after(timeout_s):
            while not (node.leave_complete and self._packets_pending == 0):
                await self._progress.park()
            return True
        log.warning("cluster leave not fully gossiped after %.1f s", timeout_s)
        return False

    def statistics(self) -> ClusterStatistics:
        transport = self._transport.statistics() if self._transport is not None else TransportStatistics()
        return ClusterStatistics(
            swim=self._running_node.statistics(), transport=transport, version=self._version, **self._counts
        )

    async def run(self, *, task_status: trio.TaskStatus[ClusterMember] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, start the core, report started (with `self`), join the seeds and serve until cancelled."""
        if self._keyring is None and not self._insecure:
            raise InsecureClusterError(
                "cluster has no keyring: set cluster keys (every member the same), or start with the insecure dev "
                "flag to run a cluster anyone on the network can join"
            )
        if self._node is not None:
            raise RuntimeError("a ClusterMember runs once; build a new one to restart")
        limits = TransportLimits(
            packet_bytes_max=self._config.packet_bytes_max,
            stream_bytes_max=self._config.stream_bytes_max,
            stream_timeout_s=self._settings.stream_timeout_s,
            streams_max=self._settings.streams_max,
        )
        async with self._transport_factory(self._bind, limits) as transport:
            bound = transport.local_address
            address = bound if self._advertise is None else (self._advertise[0], self._advertise[1] or bound[1])
            self._transport = transport
            self._node = SwimNode(
                node_id=self._node_id,
                address=address,
                region=self._region,
                api_address=self._api_address,
                machine=self._machine,
                config=self._config,
                rng=self._runtime.rng,
                keyring=self._keyring,
                epoch=self._runtime.wall_ms(),
                now=trio.current_time(),
                insecure=self._insecure,
                shared_entries=self._shared_entries,
                counter_entries=self._counter_entries,
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_packets, transport)
                nursery.start_soon(self._send_packets, transport)
                await nursery.start(transport.serve_streams, self._answer_stream)
                nursery.start_soon(self._tick_forever)
                if self._seeds:
                    nursery.start_soon(self._keep_joined, {address, bound})
                log.info("cluster member %s gossiping on %s:%d", self._node_id, *address)
                task_status.started(self)

    # --- driving the core ---

    @property
    def _running_node(self) -> SwimNode:
        if self._node is None:
            raise RuntimeError("the cluster member has not started: await nursery.start(member.run) first")
        return self._node

    def _dispatch(self) -> None:
        """Hand out what the core asked for (see the module docstring); never awaits."""
        node = self._running_node
        for action in node.drain_actions():
            match action:
                case SendPacket(address=address, data=data):
                    self._queue_packet(address, data)
                case OpenStream():
                    self._start_exchange(action)
                case MemberEvent(kind=kind, member=member):
                    log.info(
                        "cluster member %s sees %s %s (incarnation %d)",
                        self._node_id,
                        member.node,
                        kind.value,
                        member.incarnation,
                    )
                    self._version += 1
                    self._version_moved.unpark_all()
                case SharedChanged(entry=entry):
                    self._shared_changed(entry)
                case CounterChanged(entry=counter_entry):
                    self._counter_changed(counter_entry)
        if self._timer is not None:
            self._timer.deadline = min(self._timer.deadline, node.next_deadline())
        self._progress.unpark_all()

    def _shared_changed(self, entry: SharedEntry) -> None:
        log.debug("cluster member %s: shared %r = %r (from %s)", self._node_id, entry.key, entry.value, entry.node)
        if self._on_shared_change is not None:
            try:
                self._on_shared_change(entry)
            except Exception:
                # The caller's code, run inside whichever task fed the core: letting it escape would take the
                # member down. The entry stays in the map; its next change is offered again.
                self._counts["shared_callback_errors"] += 1
                log.exception("cluster on_shared_change failed for %r", entry.key)
        self._shared_moved.unpark_all()

    def _counter_changed(self, entry: CounterEntry) -> None:
        if self._on_counter_change is not None:
            try:
                self._on_counter_change(entry)
            except Exception:
                # As for shared entries: the entry stays counted; its next change is offered again.
                self._counts["counter_callback_errors"] += 1
                log.exception("cluster on_counter_change failed for %r of %s", entry.name, entry.node)
        if self._counters_moved:  # a clustered node's intake adds on every job; waking an empty lot is not free
            self._counters_moved.unpark_all()

    def _queue_packet(self, address: Address, data: bytes) -> None:
        if not usable_peer_address(address):
            self._counts["packets_refused_address"] += 1
            return
        try:
            self._outbound_send.send_nowait((address, data))
        except trio.WouldBlock:
            self._counts["packets_dropped_backlog"] += 1
            return
        self._packets_pending += 1

    def _start_exchange(self, action: OpenStream) -> None:
        if self._exchanges_in_flight >= self._settings.exchanges_max or not usable_peer_address(action.address):
            self._counts["exchanges_refused"] += 1
            return
        assert self._nursery is not None
        self._exchanges_in_flight += 1
        self._nursery.start_soon(self._exchange, action)

    async def _exchange(self, action: OpenStream) -> None:
        assert self._transport is not None
        try:
            reply = await self._transport.exchange(action.address, action.data, self._settings.stream_timeout_s)
        except TransportError as exc:
            self._counts["exchanges_failed"] += 1
            log.debug("cluster push-pull failed: %s", exc)
            return
        finally:
            self._exchanges_in_flight -= 1
        self._counts["exchanges_completed"] += 1
        self._running_node.handle_stream(reply, trio.current_time())
        self._dispatch()

    def _answer_stream(self, request: bytes) -> bytes | None:
        self._counts["streams_served"] += 1
        reply = self._running_node.handle_stream(request, trio.current_time())
        self._dispatch()
        return reply

    async def _receive_packets(self, transport: Transport) -> None:
        node = self._running_node
        while True:
            source, data = await transport.receive_packet()
            self._counts["packets_received"] += 1
            node.handle_packet(source, data, trio.current_time())
            self._dispatch()

    async def _send_packets(self, transport: Transport) -> None:
        async for address, data in self._outbound_receive:
            await transport.send_packet(address, data)
            self._packets_pending -= 1
            self._counts["packets_sent"] += 1
            self._progress.unpark_all()

    async def _tick_forever(self) -> None:
        """Sleep until the core's next deadline (which `_dispatch` may pull in), then tick."""
        node = self._running_node
        while True:
            with trio.CancelScope(deadline=node.next_deadline()) as self._timer:
                await trio.sleep_forever()
            node.tick(trio.current_time())
            self._dispatch()

    # --- joining ---

    async def _keep_joined(self, own: set[Address]) -> None:
        node = self._running_node
        settings = self._settings
        attempt = 0
        names = [seed for seed in self._seeds if ip_literal(seed[0]) is None]
        with self._join_scope:
            while True:
                if self._has_live_peer():
                    attempt = 0
                    with trio.move_on_after(settings.rediscover_interval_s if names else math.inf) as joined:
                        while self._has_live_peer():
                            await self._version_moved.park()
                    if joined.cancelled_caught:
                        await self._join_unknown(names, own)
                        continue
                    log.warning("cluster member %s is alone; joining the seeds again", self._node_id)
                addresses = await self._resolve(self._seeds, own)
                self._counts["join_attempts"] += 1
                if addresses:
                    node.join(addresses)
                    self._dispatch()
                else:
                    log.warning("cluster seeds named no reachable member yet (attempt %d)", attempt + 1)
                delay = backoff_delay(
                    attempt,
                    initial_s=settings.join_backoff_initial_s,
                    maximum_s=settings.join_backoff_max_s,
                    rng=self._runtime.rng,
                )
                attempt += 1
                with trio.move_on_after(delay):
                    while not self._has_live_peer():
                        await self._version_moved.park()

    async def _resolve(self, seeds: Sequence[Seed], own: set[Address]) -> list[Address]:
        return await resolve_seeds(
            seeds,
            resolver=self._runtime.resolver,
            default_port=self._running_node.local_member.address[1],
            own=own,
            timeout_s=self._settings.resolve_timeout_s,
        )

    async def _join_unknown(self, names: Sequence[Seed], own: set[Address]) -> None:
        """Join the addresses the seed names resolve to that no live member has (see the module docstring)."""
        known = {member.address for member in self.live_members()}
        unknown = [address for address in await self._resolve(names, own) if address not in known]
        if unknown:
            log.info("cluster seeds name %d addresses no live member has; joining them", len(unknown))
            self._counts["join_attempts"] += 1
            self._running_node.join(unknown)
            self._dispatch()

    def _has_live_peer(self) -> bool:
        local = self._running_node.local_member.node
        return any(member.state.is_live and member.node != local for member in self.members())
