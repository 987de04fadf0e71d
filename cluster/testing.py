"""A deterministic many-node harness: real SwimNode cores on a simulated network and virtual time.

Shipped beside the core (not only in tests/) because the benchmark drives the same harness. Everything derives
from one seed: the network's loss and delay draws and every node's `random.Random`, so a seed replays the same
run event for event (`trace`).

Fault model, i.e. what the protocol must survive here:
- datagrams are lost independently with probability `loss` and delayed uniformly in [delay_min, delay_max]
  (so they also arrive out of order);
- streams (push-pull) are reliable but delayed; a partition or a down peer refuses them;
- partitions split nodes into groups that cannot reach each other in either direction, until `heal()`;
- nodes crash (stop dead, lose all state) and may restart on the same address with a new epoch, empty or with
  the shared-map and counter entries they had saved (`saved_shared`, `saved_counters`, kept as the edge's store
  would keep them).
Not modelled: duplicated or corrupted datagrams (the codec tests feed garbage), asymmetric links, clock drift.

The event loop is a priority queue keyed by (time, insertion order): packet deliveries, stream requests and
replies, and one timer per node at its `next_deadline()`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from random import Random
from typing import final

from .actions import CounterChanged, MemberEvent, OpenStream, SendPacket, SharedChanged
from .config import SwimConfig
from .keyring import Keyring
from .messages import Address, CounterEntry, MemberState, SharedEntry, SharedValue
from .swim import SwimNode

# A fixed key for simulated clusters: authentication runs on every simulated datagram, as in production.
SIMULATION_KEY = bytes(range(32))
# Virtual time 0 on the simulated wall clock (2023-11-14), so shared-map versions look like real ones.
SIMULATION_WALL_MS_AT_START = 1_700_000_000_000


class _Event(IntEnum):
    TIMER = 0
    PACKET = 1
    STREAM_REQUEST = 2
    STREAM_REPLY = 3


@final
@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One MemberEvent as `observer` reported it."""

    at: float
    observer: str
    kind: str
    node: str
    incarnation: int


@final
class SimCluster:
    """Nodes named n000, n001, ... on 127.0.0.1, ports from 20000; the first node is every joiner's seed."""

    def __init__(
        self,
        *,
        seed: int,
        config: SwimConfig | None = None,
        loss: float = 0.0,
        delay_min: float = 0.0005,
        delay_max: float = 0.002,
        keyring: Keyring | None = None,
    ) -> None:
        if not 0 <= loss < 1 or not 0 <= delay_min <= delay_max:
            raise ValueError("need 0 <= loss < 1 and 0 <= delay_min <= delay_max")
        master = Random(seed)
        self._network_rng = Random(master.getrandbits(64))
        self._node_seeds = Random(master.getrandbits(64))
        self.config = config or SwimConfig.lan()
        self.loss = loss
        self.delay_min = delay_min
        self.delay_max = delay_max
        self.keyring = keyring or Keyring(SIMULATION_KEY)
        self.now = 0.0
        self.trace: list[TraceEntry] = []
        self.packet_bytes_sent: dict[str, int] = {}
        self.stream_bytes_sent: dict[str, int] = {}
        # Per node, what its caller would have persisted: the entries it was started with, then the last entry
        # each SharedChanged reported, by key. It outlives crashes, so a restart can be given it back.
        self.saved_shared: dict[str, dict[str, SharedEntry]] = {}
        # The same for the counters: the last entry each CounterChanged reported, by (counter name, node).
        self.saved_counters: dict[str, dict[tuple[str, str], CounterEntry]] = {}
        # (time, sequence, event, node it happens at, the peer's address (the node's own for a timer), bytes)
        self._queue: list[tuple[float, int, _Event, str, Address, bytes]] = []
        self._sequence = 0
        self._nodes: dict[str, SwimNode] = {}  # running nodes only
        self._addresses: dict[str, Address] = {}  # every node ever added
        self._names: dict[Address, str] = {}
        self._boots: dict[str, int] = {}
        self._timers: dict[str, tuple[float, int]] = {}  # the one live timer per running node: (time, sequence)
        self._groups: dict[str, int] = {}

    def __repr__(self) -> str:
        running, known = len(self._nodes), len(self._addresses)
        return f"<SimCluster t={self.now:.3f}: {running} running of {known} | {len(self._queue)} events pending>"

    # --- topology and faults ---

    @property
    def running(self) -> list[str]:
        return list(self._nodes)

    def node(self, name: str) -> SwimNode:
        return self._nodes[name]

    def add_node(
        self, *, shared_entries: Iterable[SharedEntry] = (), counter_entries: Iterable[CounterEntry] = ()
    ) -> str:
        """Start a new node; it joins through the first node."""
        name = f"n{len(self._addresses):03d}"
        address = ("127.0.0.1", 20000 + len(self._addresses))
        self._addresses[name] = address
        self._names[address] = name
        self._boot(name, shared_entries, counter_entries)
        return name

    def crash(self, name: str) -> None:
        """Stop `name` dead: no goodbye, in-flight traffic to it is lost."""
        del self._nodes[name]
        self._timers.pop(name, None)

    def restart(
        self,
        name: str,
        *,
        shared_entries: Iterable[SharedEntry] = (),
        counter_entries: Iterable[CounterEntry] = (),
    ) -> None:
        """Start a crashed node again on its address: fresh state, a higher epoch, incarnation 1, a join; its
        shared map holds `shared_entries` (e.g. `saved_shared[name].values()`) or starts empty, and its counters
        `counter_entries` (e.g. `saved_counters[name].values()`)."""
        if name in self._nodes:
            raise ValueError(f"{name} is running")
        self._boot(name, shared_entries, counter_entries)

    def leave(self, name: str) -> None:
        self._nodes[name].leave(self.now)
        self._after(name)

    def set_shared(self, name: str, key: str, value: SharedValue, *, wall_ms: int | None = None) -> SharedEntry:
        """Write to the shared map at `name`, stamped with the simulated wall clock unless `wall_ms` is given
        (to model a clock that is skewed or stepped back)."""
        if wall_ms is None:
            wall_ms = SIMULATION_WALL_MS_AT_START + round(self.now * 1000)
        written = self._nodes[name].set_shared(key, value, wall_ms=wall_ms)
        self._after(name)
        return written

    def add_counter(self, name: str, counter: str, amount: int = 1) -> CounterEntry:
        """Add `amount` to `name`'s own entry of `counter`; returns that entry."""
        entry = self._nodes[name].add_counter(counter, amount)
        self._after(name)
        return entry

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the listed groups off from each other and from every node not listed."""
        self._groups = {name: index for index, group in enumerate(groups, start=1) for name in group}

    def heal(self) -> None:
        self._groups = {}

    # --- running ---

    def run_until(self, until: float, *, events_max: int = 50_000_000) -> None:
        """Process every event up to virtual time `until` (bounded, so a runaway protocol fails loudly)."""
        queue = self._queue
        for _ in range(events_max):
            if not queue or queue[0][0] > until:
                break
            at, sequence, event, name, peer, data = heapq.heappop(queue)
            self.now = at
            if event is _Event.TIMER:
                if name in self._timers and self._timers[name][1] == sequence:
                    del self._timers[name]
                    self._nodes[name].tick(at)
                    self._after(name)
            elif name not in self._nodes or self._blocked(name, self._names[peer]):
                continue
            elif event is _Event.PACKET:
                self._nodes[name].handle_packet(peer, data, at)
                self._after(name)
            elif event is _Event.STREAM_REQUEST:
                reply = self._nodes[name].handle_stream(data, at)
                self._after(name)
                if reply is not None:
                    self.stream_bytes_sent[name] += len(reply)
                    self._push(
                        at + self._delay(),
                        _Event.STREAM_REPLY,
                        self._names[peer],
                        self._addresses[name],
                        reply,
                    )
            else:
                self._nodes[name].handle_stream(data, at)
                self._after(name)
        else:
            raise RuntimeError(f"more than {events_max} events before t={until}")
        self.now = max(self.now, until)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until_true(self, condition: Callable[[], bool], *, timeout: float, step: float = 0.1) -> float | None:
        """Run in `step`s until `condition()` holds: the virtual time it first held, None after `timeout`."""
        deadline = self.now + timeout
        while not condition():
            if self.now >= deadline:
                return None
            self.run_until(min(self.now + step, deadline))
        return self.now

    # --- what the nodes think ---

    def view(self, observer: str) -> dict[str, MemberState]:
        return {member.node: member.state for member in self._nodes[observer].members()}

    def live_view(self, observer: str) -> set[str]:
        return {node for node, state in self.view(observer).items() if state.is_live}

    def shared_view(self, observer: str) -> dict[str, SharedValue]:
        return dict(self._nodes[observer].shared().items())

    def shared_agreed(self, key: str, value: SharedValue, nodes: Iterable[str] | None = None) -> bool:
        """Every one of `nodes` (default: the running nodes) holds `value` under `key`."""
        names = self._nodes if nodes is None else nodes
        return all(key in self._nodes[n].shared() and self._nodes[n].shared().get(key) == value for n in names)

    def counter_totals(self, observer: str, prefix: str = "") -> dict[str, int]:
        """{counter name: total} at `observer`, for the counters whose name starts with `prefix`."""
        return self._nodes[observer].counters().totals(prefix)

    def counters_agreed(self, counter: str, total: int, nodes: Iterable[str] | None = None) -> bool:
        """Every one of `nodes` (default: the running nodes) counts `total` for `counter`."""
        names = self._nodes if nodes is None else nodes
        return all(self._nodes[n].counters().total(counter) == total for n in names)

    def converged(self, expected_live: Iterable[str] | None = None) -> bool:
        """Every running node sees exactly `expected_live` (default: the running nodes) as live."""
        expected = set(self._nodes if expected_live is None else expected_live)
        return all(self.live_view(name) == expected for name in self._nodes)

    # --- plumbing ---

    def _boot(self, name: str, shared_entries: Iterable[SharedEntry], counter_entries: Iterable[CounterEntry]) -> None:
        restored = list(shared_entries)
        restored_counters = list(counter_entries)
        boots = self._boots.get(name, 0) + 1
        self._boots[name] = boots
        node = SwimNode(
            node_id=name,
            address=self._addresses[name],
            region="sim",
            api_address=f"http://127.0.0.1:{30000 + int(name[1:])}",
            config=self.config,
            rng=Random(self._node_seeds.getrandbits(64)),
            keyring=self.keyring,
            epoch=boots,
            now=self.now,
            shared_entries=restored,
            counter_entries=restored_counters,
        )
        self._nodes[name] = node
        self._timers.pop(name, None)
        self.packet_bytes_sent.setdefault(name, 0)
        self.stream_bytes_sent.setdefault(name, 0)
        self.saved_shared[name] = {entry.key: entry for entry in restored}
        self.saved_counters[name] = {(entry.name, entry.node): entry for entry in restored_counters}
        seed = next(iter(self._addresses))
        if seed != name:
            node.join([self._addresses[seed]])
        self._after(name)

    def _after(self, name: str) -> None:
        """Route what `name` asked for, then make sure its timer is queued."""
        node = self._nodes[name]
        for action in node.drain_actions():
            if type(action) is SendPacket:
                self.packet_bytes_sent[name] += len(action.data)
                destination = self._names.get(action.address)
                if (
                    destination is not None
                    and self._network_rng.random() >= self.loss
                    and not self._blocked(name, destination)
                ):
                    self._push(
                        self.now + self._delay(),
                        _Event.PACKET,
                        destination,
                        self._addresses[name],
                        action.data,
                    )
            elif type(action) is OpenStream:
                self.stream_bytes_sent[name] += len(action.data)
                destination = self._names.get(action.address)
                if destination in self._nodes and not self._blocked(name, destination):
                    self._push(
                        self.now + self._delay(),
                        _Event.STREAM_REQUEST,
                        destination,
                        self._addresses[name],
                        action.data,
                    )
            elif type(action) is MemberEvent:
                member = action.member
                self.trace.append(TraceEntry(self.now, name, action.kind.value, member.node, member.incarnation))
            elif type(action) is SharedChanged:
                self.saved_shared[name][action.entry.key] = action.entry
            elif type(action) is CounterChanged:
                self.saved_counters[name][(action.entry.name, action.entry.node)] = action.entry
        at = max(node.next_deadline(), self.now)
        current = self._timers.get(name)
        if current is None or at < current[0]:
            self._timers[name] = (at, self._push(at, _Event.TIMER, name, self._addresses[name], b""))

    def _blocked(self, source: str, destination: str) -> bool:
        return self._groups.get(source, 0) != self._groups.get(destination, 0)

    def _delay(self) -> float:
        return self._network_rng.uniform(self.delay_min, self.delay_max)

    def _push(self, at: float, event: _Event, name: str, peer: Address, data: bytes) -> int:
        self._sequence += 1
        heapq.heappush(self._queue, (at, self._sequence, event, name, peer, data))
        return self._sequence
