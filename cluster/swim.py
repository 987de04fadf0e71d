"""SwimNode: one cluster member as a sans-I/O state machine (the shell does the sockets and the clock).

The caller API has a few verbs, all taking `now` (seconds, monotonic):

    handle_packet(source, data, now)    a datagram arrived
    handle_stream(data, now) -> reply   a push-pull stream arrived; write the reply back if not None
    tick(now)                           call when now >= next_deadline()
    join(seeds) / leave(now)            start talking to seeds / announce a graceful leave
    set_shared(key, value, wall_ms=)    write a register of the shared map (shared.py); shared() reads it
    add_counter(name, amount)           add to this node's entry of a grow-only counter (counters.py); counters()
    drain_actions()                     SendPacket / OpenStream to perform; MemberEvent / SharedChanged /
                                        CounterChanged to publish

How a protocol period goes (SWIM with the Lifeguard refinements). Every probe interval, stretched by the local
health multiplier (awareness.py), the next member of a shuffled round-robin order (probe.py) gets a `Ping`. If
no `Ack` arrives within the probe timeout, `indirect_checks` random members get an `IndirectPing` and relay
the target's ack, or send a `Nack` when it stays silent, so a node with a bad inbound link learns that the
fault is probably its own. If the interval ends without any ack, the target becomes suspect (membership.py),
and a suspicion timer (suspicion.py) declares it dead unless it refutes first. Membership updates ride on
every datagram and on dedicated gossip rounds to `gossip_nodes` random members (broadcast.py); periodic
push-pull full state exchanges over a stream repair anything gossip missed, and a join is a push-pull with a
seed. The shared map's writes travel the same two ways: each change is queued for gossip under its key, and
every push-pull carries the whole map (as much of it as the stream bound leaves room for; see
`_seal_push_pull`). So do the counters' entries, queued under their (name, node) and carried in push-pull's
`counters` field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, final

import msgpack

from .actions import Action, CounterChanged, OpenStream, SendPacket, SharedChanged
from .awareness import Awareness
from .broadcast import BroadcastQueue
from .codec import counter_entry_bytes, decode_message, encode_message, shared_entry_bytes
from .config import SwimConfig
from .counters import CounterMap, CounterView
from .envelope import Channel, DropCounts, Envelope
from .keyring import InsecureClusterError, Keyring
from .lease import RunGate
from .membership import Member, Membership
from .messages import (
    Ack,
    Address,
    Alive,
    CounterEntry,
    Counters,
    Dead,
    IndirectPing,
    MemberInfo,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    Shared,
    SharedEntry,
    SharedValue,
    Suspect,
)
from .probe import Probe, ProbeRing, Relay
from .shared import SharedMap, SharedView

if TYPE_CHECKING:
    from random import Random

_Entry = TypeVar("_Entry", SharedEntry, CounterEntry)


def push_pull_interval(base_interval: float, member_count: int) -> float:
    """The push-pull period: the base up to 32 members, then base * (ceil(log2 N - log2 32) + 1)."""
    if member_count <= 32:
        return base_interval
    return base_interval * (math.ceil(math.log2(member_count) - math.log2(32)) + 1)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SwimStatistics:
    """A snapshot of one node's counters."""

    drops: DropCounts
    packets_sent: int
    packet_bytes_sent: int
    streams_opened: int
    stream_bytes_sent: int
    probes: int
    probes_failed: int
    relays_refused: int
    address_conflicts: int
    health_score: int
    live_members: int
    shared_entries: int
    shared_refused: int  # remote or restored entries over a bound, or new keys for a full map
    push_pulls_truncated: int  # push-pulls that carried only part of the shared map or counters (the stream bound)
    counter_entries: int = 0
    counter_refused: int = 0  # remote or restored counter entries over a bound, or new ones for a full map


@final
class SwimNode:
    """A member of the cluster. See the module docstring for the protocol and the caller API."""

    __slots__ = (
        "_awareness",
        "_broadcasts",
        "_config",
        "_counters",
        "_counters_cursor",
        "_envelope",
        "_gate",
        "_membership",
        "_next_gossip_at",
        "_next_probe_at",
        "_next_push_pull_at",
        "_next_reconnect_at",
        "_outbox",
        "_probe",
        "_probe_ring",
        "_relays",
        "_rng",
        "_seq",
        "_shared",
        "_shared_cursor",
        "_stats",
    )

    def __init__(
        self,
        *,
        node_id: str,
        address: Address,
        region: str = "",
        api_address: str = "",
        machine: str = "",
        config: SwimConfig,
        rng: Random,
        keyring: Keyring | None,
        epoch: int,
        now: float,
        insecure: bool = False,
        shared_entries: Iterable[SharedEntry] = (),
        counter_entries: Iterable[CounterEntry] = (),
    ) -> None:
        """`epoch` must grow across restarts of one node id (the boot wall-clock time in ms does); without a
        `keyring` the node talks to nobody unless `insecure` (a dev flag) is set. `shared_entries` restores
        the shared map as the caller saved it from `SharedChanged` (no events for them; entries over a bound
        are dropped and counted); the first push-pull, the join, brings it up to date with the cluster.
        `counter_entries` restores the counters the same way, from `CounterChanged` (counters.py says why this
        node's own entries must come back: its adds continue from them, never from 0)."""
        identity = Alive(
            node=node_id, incarnation=1, address=address, region=region, api_address=api_address, machine=machine
        )
        # The checks a peer applies to our Alive: an identity that the wire would drop fails here.
        decode_message(msgpack.unpackb(encode_message(identity)))
        self._config = config
        self._rng = rng
        self._outbox: list[Action] = []
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._broadcasts = BroadcastQueue(config.retransmit_mult)
        self._probe_ring = ProbeRing(rng)
        self._envelope = Envelope(
            sender=node_id,
            epoch=epoch,
            keyring=keyring,
            insecure=insecure,
            packet_bytes_max=config.packet_bytes_max,
            stream_bytes_max=config.stream_bytes_max,
        )
        local = Member(
            node=node_id,
            address=address,
            region=region,
            api_address=api_address,
            incarnation=1,
            state=MemberState.ALIVE,
            state_changed_at=now,
            machine=machine,
        )
        self._gate = RunGate(node=node_id, probe_interval=config.probe_interval, probe_timeout=config.probe_timeout)
        self._membership = Membership(
            local=local,
            config=config,
            outbox=self._outbox,
            broadcasts=self._broadcasts,
            awareness=self._awareness,
            probe_ring=self._probe_ring,
            gate=self._gate,
        )
        self._probe: Probe | None = None
        # Relays time out after the same relay_timeout and `now` never goes back, so insertion order is
        # deadline order: the first entry is always the next to expire.
        self._relays: dict[int, Relay] = {}
        self._seq = 0
        self._shared = SharedMap()
        self._shared.merge_all(shared_entries)
        self._shared_cursor = 0  # where the next push-pull that cannot carry the whole map starts in it
        self._counters = CounterMap()
        self._counters.merge_all(counter_entries)
        self._counters_cursor = 0  # the same, for the counters' entries
        self._stats = dict.fromkeys(
            (
                "packets_sent",
                "packet_bytes_sent",
                "streams_opened",
                "stream_bytes_sent",
                "probes",
                "probes_failed",
                "relays_refused",
                "push_pulls_truncated",
            ),
            0,
        )
        # Random phases, so members started together do not probe and gossip in lockstep.
        self._next_probe_at = now + rng.uniform(0, config.probe_interval)
        self._next_gossip_at = now + rng.uniform(0, config.gossip_interval)
        self._next_push_pull_at = now + rng.uniform(0, config.push_pull_interval)
        self._next_reconnect_at = now + rng.uniform(0, config.reconnect_interval)

    def __repr__(self) -> str:
        states = [member.state for member in self._membership.members.values()]
        return (
            f"<SwimNode {self._membership.local.node}: {self._membership.live_count} live, "
            f"{states.count(MemberState.DEAD)} dead, {states.count(MemberState.LEFT)} left | "
            f"health {self._awareness.score} | {len(self._broadcasts)} queued updates | "
            f"{len(self._shared)} shared | {len(self._counters)} counter entries>"
        )

    # --- the caller API ---

    @property
    def local_member(self) -> MemberInfo:
        return self._membership.local.info()

    def members(self) -> list[MemberInfo]:
        """Every member this node knows, itself included, dead and left ones until they are forgotten."""
        return sorted((member.info() for member in self._membership.members.values()), key=lambda m: m.node)

    def may_run_keys(self, now: float) -> bool:
        """Whether this node holds the majority lease (lease.py), so it may dispatch the keys it owns."""
        known = [node for node, member in self._membership.members.items() if member.state is not MemberState.LEFT]
        return self._gate.has_quorum(known, now)

    def keys_waiting(self, now: float) -> frozenset[str]:
        """Fallen members whose keys still wait before their new owners may run them (lease.py)."""
        return self._gate.waiting(now, self._membership.known_count)

    def gate_changes_at(self, now: float) -> float:
        """The next moment `may_run_keys` or `keys_waiting` may change without a new event."""
        known = [node for node, member in self._membership.members.items() if member.state is not MemberState.LEFT]
        return self._gate.next_change(known, now)

    def takeover_wait_s(self) -> float:
        return self._gate.takeover_wait_s(self._membership.known_count)

    @property
    def times_declared_dead(self) -> int:
        """How many messages declaring this node dead it has heard (lease.py)."""
        return self._gate.times_declared_dead

    def shared(self) -> SharedView:
        """The shared map as this node sees it (read-only, and live: it follows later changes)."""
        return self._shared.view()

    def set_shared(self, key: str, value: SharedValue, *, wall_ms: int) -> SharedEntry:
        """Write a register of the shared map at wall-clock time `wall_ms` (shared.py orders the writes) and
        gossip it; a `SharedChanged` follows in the actions. Raises ValueError over a bound (shared.py)."""
        entry = self._shared.set(key, value, wall_ms, self._membership.local.node)
        self._shared_changed(entry)
        return entry

    def counters(self) -> CounterView:
        """The grow-only counters as this node sees them (read-only, and live: it follows later changes)."""
        return self._counters.view()

    def add_counter(self, name: str, amount: int) -> CounterEntry:
        """Add `amount` (>= 0) to this node's entry of counter `name` and gossip the entry; a `CounterChanged`
        follows in the actions (none for 0, which changes nothing). Returns the entry. Raises ValueError over a
        bound (counters.py)."""
        before = self._counters.version
        entry = self._counters.add(name, self._membership.local.node, amount)
        if self._counters.version != before:
            self._counter_changed(entry)
        return entry

    def merge_counters(self, entries: Iterable[CounterEntry]) -> int:
        """Merge counter entries learned outside the gossip (a peer's direct answer): each greater one is kept and
        passed on like any merged entry. Returns how many changed something."""
        before = self._counters.version
        for entry in entries:
            self._merge_counter(entry)
        return self._counters.version - before

    def set_keyring(self, keyring: Keyring) -> None:
        """Swap in a rotated keyring (see keyring.py for the three-step rotation)."""
        self._envelope.keyring = keyring

    def join(self, seeds: Iterable[Address]) -> None:
        """Push-pull with every seed. The shell retries with backoff until `members()` shows someone else."""
        if not self._envelope.may_talk:
            raise InsecureClusterError("no cluster keyring: refusing to join unless started with the insecure flag")
        for seed in seeds:
            if seed != self._membership.local.address:
                self._open_push_pull(seed)

    def leave(self, now: float) -> None:
        """Announce a graceful leave; keep ticking until `leave_complete` (or a deadline), then stop."""
        membership = self._membership
        if membership.leaving:
            return
        membership.leaving = True
        self._probe = None
        membership.apply_dead(membership.dead_by_us(membership.local), now)

    @property
    def leave_complete(self) -> bool:
        """The leave has been gossiped its full retransmit count, or there is nobody left to tell."""
        membership = self._membership
        return membership.leaving and (
            not self._broadcasts.pending_about(membership.local.node) or not membership.live_peers
        )

    def handle_packet(self, source: Address, data: bytes, now: float) -> None:
        opened = self._envelope.open(Channel.PACKET, data)
        if opened is None:
            return
        self._gate.heard(opened.sender, now)
        for message in opened.messages:
            match message:
                case Ping():
                    if message.target == self._membership.local.node:  # else a stale address: stay quiet
                        self._answer_ping(source, message, opened.sender)
                case IndirectPing():
                    self._relay(source, message, now)
                case Ack():
                    self._on_ack(message)
                case Nack():
                    if self._probe is not None and self._probe.seq == message.seq:
                        self._probe.nacks += 1
                case Alive():
                    self._membership.apply_alive(message, now)
                case Suspect():
                    self._membership.apply_suspect(message, now)
                case Dead():
                    self._membership.apply_dead(message, now)
                case Shared():
                    self._merge_shared(message.entry)
                case Counters():
                    for counter_entry in message.entries:
                        self._merge_counter(counter_entry)
                # PushPull travels only on streams; in a datagram it is ignored.

    def handle_stream(self, data: bytes, now: float) -> bytes | None:
        """Merge a push-pull. Returns our state to write back for a request; None for a reply or garbage."""
        opened = self._envelope.open(Channel.STREAM, data)
        if opened is None:
            return None
        self._gate.heard(opened.sender, now)
        reply = None
        for message in opened.messages:
            if isinstance(message, PushPull):
                if not message.is_reply:
                    reply = self._seal_push_pull(is_reply=True)  # our view before the merge, as memberlist does
                self._membership.merge(message.members, opened.sender, now)
                for entry in message.shared:
                    self._merge_shared(entry)
                for counter_entry in message.counters:
                    self._merge_counter(counter_entry)
        return reply

    def tick(self, now: float) -> None:
        """Run every timer that is due. Harmless to call early or twice."""
        self._expire_relays(now)
        self._advance_probe(now)
        self._membership.expire_suspicions(now)
        leaving = self._membership.leaving
        if not leaving and now >= self._next_probe_at:
            self._start_probe(now)
        if now >= self._next_gossip_at:
            self._next_gossip_at = now + self._config.gossip_interval
            self._gossip_round(now)
        if not leaving and now >= self._next_push_pull_at:
            self._next_push_pull_at = now + push_pull_interval(
                self._config.push_pull_interval, self._membership.live_count
            )
            self._push_pull_with(self._membership.live_peers.sample(self._rng, 1))
        if not leaving and now >= self._next_reconnect_at:
            self._next_reconnect_at = now + self._config.reconnect_interval
            members = self._membership.members
            dead = [node for node in self._membership.fallen_peers if members[node].state is MemberState.DEAD]
            self._push_pull_with(self._rng.sample(dead, min(1, len(dead))))

    def next_deadline(self) -> float:
        """When `tick` next has work to do."""
        deadlines = [self._next_gossip_at]
        if not self._membership.leaving:
            deadlines += (self._next_probe_at, self._next_push_pull_at, self._next_reconnect_at)
        probe = self._probe
        if probe is not None:
            deadlines.append(probe.final_deadline if probe.indirect_sent else probe.ack_deadline)
        if self._relays:
            deadlines.append(next(iter(self._relays.values())).deadline)
        suspicion_deadline = self._membership.next_suspicion_deadline()
        if suspicion_deadline is not None:
            deadlines.append(suspicion_deadline)
        return min(deadlines)

    def drain_actions(self) -> list[Action]:
        actions = self._outbox[:]
        self._outbox.clear()
        return actions

    def statistics(self) -> SwimStatistics:
        return SwimStatistics(
            drops=self._envelope.statistics(),
            address_conflicts=self._membership.address_conflicts,
            health_score=self._awareness.score,
            live_members=self._membership.live_count,
            shared_entries=len(self._shared),
            shared_refused=self._shared.refused,
            counter_entries=len(self._counters),
            counter_refused=self._counters.refused,
            **self._stats,
        )

    # --- probing ---

    def _start_probe(self, now: float) -> None:
        membership = self._membership
        membership.reap(now)
        interval = self._awareness.scale(self._config.probe_interval)
        self._next_probe_at = now + interval
        target = self._probe_ring.next_target(membership.members)
        if target is None:
            return
        member = membership.members[target]
        seq = self._next_seq()
        messages: list[Message] = [Ping(seq=seq, target=target)]
        if member.state is MemberState.SUSPECT:
            # Tell a suspect directly, so it can refute even if gossip has not reached it yet.
            messages.append(membership.suspect_by_us(member))
        self._probe = Probe(
            seq=seq,
            target=target,
            address=member.address,
            ack_deadline=now + self._awareness.scale(self._config.probe_timeout),
            final_deadline=now + interval,
        )
        self._stats["probes"] += 1
        self._send(member.address, messages)

    def _advance_probe(self, now: float) -> None:
        probe = self._probe
        if probe is None:
            return
        if now >= probe.final_deadline:
            self._probe = None
            self._probe_failed(probe, now)
        elif not probe.indirect_sent and now >= probe.ack_deadline:
            probe.indirect_sent = True
            relays = self._membership.live_peers.sample(self._rng, self._config.indirect_checks, exclude=probe.target)
            probe.nacks_expected = len(relays)
            request = IndirectPing(seq=probe.seq, target=probe.target, target_address=probe.address, want_nack=True)
            for relay in relays:
                self._send(self._membership.members[relay].address, [request])

    def _probe_failed(self, probe: Probe, now: float) -> None:
        self._stats["probes_failed"] += 1
        # Lifeguard: relays that did not even nack point at our own links; with no relays, blame ourselves.
        missed = probe.nacks_expected - probe.nacks if probe.nacks_expected else 1
        self._awareness.apply_delta(max(missed, 0))
        member = self._membership.members.get(probe.target)
        if member is not None:
            self._membership.apply_suspect(self._membership.suspect_by_us(member), now)

    def _answer_ping(self, source: Address, ping: Ping, sender: str) -> None:
        """Ack; and if we hold the sender dead, tell it, so it refutes now rather than at its next push-pull
        (after a partition heals, this is how both sides learn quickly that the other is alive)."""
        reply: list[Message] = [Ack(seq=ping.seq)]
        member = self._membership.members.get(sender)
        if member is not None and member.state is MemberState.DEAD:
            reply.append(self._membership.dead_by_us(member))
        self._send(source, reply)

    def _on_ack(self, ack: Ack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == ack.seq:
            if not probe.indirect_sent:
                self._awareness.apply_delta(-1)  # a direct ack in time: we are probably healthy
            self._probe = None
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            self._send(relay.requester, [Ack(seq=relay.requester_seq)])

    def _relay(self, requester: Address, request: IndirectPing, now: float) -> None:
        if len(self._relays) >= self._config.relays_max:
            self._stats["relays_refused"] += 1
            return
        seq = self._next_seq()
        self._relays[seq] = Relay(
            requester=requester,
            requester_seq=request.seq,
            want_nack=request.want_nack,
            deadline=now + self._config.relay_timeout,
        )
        self._send(request.target_address, [Ping(seq=seq, target=request.target)])

    def _expire_relays(self, now: float) -> None:
        while self._relays:
            seq, relay = next(iter(self._relays.items()))
            if relay.deadline > now:
                return
            del self._relays[seq]
            if relay.want_nack:
                self._send(relay.requester, [Nack(seq=relay.requester_seq)])

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- dissemination ---

    def _gossip_round(self, now: float) -> None:
        """Queued updates to `gossip_nodes` random members, live ones and those dead or left only recently."""
        if not self._broadcasts:
            return
        membership = self._membership
        live = membership.live_peers
        fallen = membership.fallen_peers
        window = self._config.gossip_to_the_dead_time
        recently_fallen = [node for node in fallen if now - membership.members[node].state_changed_at <= window]
        pool = len(live) + len(recently_fallen)
        for index in self._rng.sample(range(pool), min(self._config.gossip_nodes, pool)):
            node = live[index] if index < len(live) else recently_fallen[index - len(live)]
            if not self._broadcasts:
                return
            self._send(membership.members[node].address, [])

    def _send(self, address: Address, messages: list[Message]) -> None:
        """Send `messages` with as many queued updates as fit; nothing at all if both are empty."""
        encoded = [encode_message(message) for message in messages]
        free = self._config.packet_bytes_max - self._envelope.overhead_bytes - sum(map(len, encoded))
        encoded += self._broadcasts.take(free, self._membership.live_count)
        if not encoded:
            return
        data = self._envelope.seal(Channel.PACKET, encoded)
        self._stats["packets_sent"] += 1
        self._stats["packet_bytes_sent"] += len(data)
        self._outbox.append(SendPacket(address, data))

    def _push_pull_with(self, nodes: list[str]) -> None:
        for node in nodes:
            self._open_push_pull(self._membership.members[node].address)

    def _open_push_pull(self, address: Address) -> None:
        self._stats["streams_opened"] += 1
        self._outbox.append(OpenStream(address, self._seal_push_pull(is_reply=False)))

    def _seal_push_pull(self, *, is_reply: bool) -> bytes:
        """Our members, shared map and counters, within stream_bytes_max.

        With the default 8 MiB everything always fits beside a thousand members at their largest: shared.py
        bounds the map at SHARED_ENTRIES_MAX * SHARED_ENTRY_WIRE_BYTES_MAX (2.7 MB), counters.py the counters at
        COUNTER_ENTRIES_MAX * COUNTER_ENTRY_WIRE_BYTES_MAX (4.5 MB). A smaller stream bound, or a huge cluster,
        may leave less room; then the room left after the members is split between the two (`_split_room`), and
        each carries as many entries as fit its share, starting where the last such push-pull stopped in it, so
        successive exchanges still cover everything (counted: push_pulls_truncated)."""
        members = self._membership.snapshot()
        shared = self._shared.entries()
        counters = self._counters.entries()
        encoded = encode_message(PushPull(members=members, is_reply=is_reply, shared=shared, counters=counters))
        budget = self._config.stream_bytes_max - self._envelope.overhead_bytes
        if len(encoded) > budget and (shared or counters):
            self._stats["push_pulls_truncated"] += 1
            bare = encode_message(PushPull(members=members, is_reply=is_reply))
            # Each empty list's 1-byte header grows to at most 5 (array32) once it holds entries.
            shared_sizes = [shared_entry_bytes(entry) for entry in shared]
            counter_sizes = [counter_entry_bytes(entry) for entry in counters]
            shared_room, counter_room = _split_room(budget - len(bare) - 8, sum(shared_sizes), sum(counter_sizes))
            shared, self._shared_cursor = _round_that_fits(shared, shared_sizes, shared_room, self._shared_cursor)
            counters, self._counters_cursor = _round_that_fits(
                counters, counter_sizes, counter_room, self._counters_cursor
            )
            encoded = encode_message(PushPull(members=members, is_reply=is_reply, shared=shared, counters=counters))
        data = self._envelope.seal(Channel.STREAM, [encoded])
        self._stats["stream_bytes_sent"] += len(data)
        return data

    # --- the shared map ---

    def _merge_shared(self, entry: SharedEntry) -> None:
        """A peer's entry: keep it if it is newer (shared.py), and then pass it on like our own write."""
        if self._shared.merge(entry):
            self._shared_changed(entry)

    def _shared_changed(self, entry: SharedEntry) -> None:
        """Gossip a changed entry under its key (replacing an older queued one) and report it to the shell.

        An entry too large for a datagram beside the envelope (possible only with a packet_bytes_max near its
        512-byte minimum) is not queued, since it would never be taken: push-pull alone carries it."""
        payload = encode_message(Shared(entry=entry))
        if len(payload) <= self._config.packet_bytes_max - self._envelope.overhead_bytes:
            self._broadcasts.enqueue(("shared", entry.key), payload)
        self._outbox.append(SharedChanged(entry))

    # --- the counters ---

    def _merge_counter(self, entry: CounterEntry) -> None:
        """A peer's entry: keep it if it is greater (counters.py), and then pass it on like our own add."""
        if self._counters.merge(entry):
            self._counter_changed(entry)

    def _counter_changed(self, entry: CounterEntry) -> None:
        """Gossip a changed entry under its (name, node), replacing an older queued value, and report it to the
        shell. An entry is at most COUNTER_ENTRY_WIRE_BYTES_MAX + 3 = 275 bytes as a message, so unlike a shared
        entry it always fits a datagram beside the envelope (packet_bytes_max is at least 512)."""
        payload = encode_message(Counters(entries=(entry,)))
        self._broadcasts.enqueue(("counter", entry.name, entry.node), payload)
        self._outbox.append(CounterChanged(entry))


def _split_room(room: int, shared_bytes: int, counter_bytes: int) -> tuple[int, int]:
    """Share `room` between the shared map and the counters when both do not fit: each gets half, and one that
    needs less than its half leaves the rest to the other."""
    half = max(room, 0) // 2
    if shared_bytes <= half:
        return shared_bytes, room - shared_bytes
    if counter_bytes <= half:
        return room - counter_bytes, counter_bytes
    return half, room - half


def _round_that_fits(
    entries: tuple[_Entry, ...], sizes: list[int], bytes_available: int, cursor: int
) -> tuple[tuple[_Entry, ...], int]:
    """Entries that fit in `bytes_available`, taken from `cursor` on round the list, and the cursor past the last
    one taken, so successive truncated push-pulls go round all of them."""
    if not entries:
        return entries, cursor
    start = cursor % len(entries)
    chosen: list[_Entry] = []
    last_taken = -1
    for offset in range(len(entries)):
        index = (start + offset) % len(entries)
        if sizes[index] <= bytes_available:
            bytes_available -= sizes[index]
            chosen.append(entries[index])
            last_taken = offset
    return tuple(chosen), start + last_taken + 1
