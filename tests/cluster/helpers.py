"""Helpers that wire SwimNode cores together by hand, for step-by-step transition tests.

`Wire` delivers datagrams and streams between real nodes instantly and lets a test drop any of them; `Peer`
forges authenticated packets from a member that is not a SwimNode at all, to feed one node exact messages.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

from cluster import Keyring, MemberEvent, MemberState, OpenStream, SendPacket, SwimConfig, SwimNode
from cluster.codec import encode_message
from cluster.envelope import Channel, Envelope
from cluster.messages import Address, Alive, Message
from cluster.testing import SimCluster

KEY = bytes(range(32, 64))
KEYRING = Keyring(KEY)


def address_of(name: str) -> Address:
    """A stable loopback address per name: 127.0.0.1 and a port derived from the name."""
    return ("127.0.0.1", 20000 + zlib.crc32(name.encode()) % 40000)


def alive(name: str, incarnation: int = 1, *, region: str = "r", api_address: str = "") -> Alive:
    return Alive(
        node=name,
        incarnation=incarnation,
        address=address_of(name),
        region=region,
        api_address=api_address or f"http://{name}",
    )


def inspect(data: bytes, *, keyring: Keyring = KEYRING, channel: Channel = Channel.PACKET) -> list[Message]:
    """The messages inside a sealed envelope, opened by a throwaway receiver."""
    opened = Envelope(
        sender="inspector", epoch=1, keyring=keyring, insecure=False, packet_bytes_max=1400, stream_bytes_max=1 << 23
    ).open(channel, data)
    assert opened is not None, "the envelope did not open"
    return opened.messages


@dataclass
class Peer:
    """A member that exists only as a signing envelope: it forges packets for one test."""

    name: str
    keyring: Keyring = KEYRING
    epoch: int = 1
    envelope: Envelope = field(init=False)

    def __post_init__(self) -> None:
        self.envelope = Envelope(
            sender=self.name,
            epoch=self.epoch,
            keyring=self.keyring,
            insecure=False,
            packet_bytes_max=1400,
            stream_bytes_max=1 << 23,
        )

    def packet(self, *messages: Message) -> bytes:
        return self.envelope.seal(Channel.PACKET, [encode_message(message) for message in messages])

    def stream(self, *messages: Message) -> bytes:
        return self.envelope.seal(Channel.STREAM, [encode_message(message) for message in messages])

    def send(self, node: SwimNode, *messages: Message, now: float) -> None:
        node.handle_packet(address_of(self.name), self.packet(*messages), now)


@dataclass(frozen=True)
class Delivery:
    source: str
    destination: str
    messages: list[Message]


Dropper = Callable[[str, str, list[Message]], bool]


def never(_source: str, _destination: str, _messages: list[Message]) -> bool:
    return False


class Wire:
    """Real nodes connected in memory: every datagram and stream is delivered at once, unless `drop` says no."""

    def __init__(self, config: SwimConfig | None = None, *, seed: int = 7) -> None:
        self.config = config or SwimConfig.lan()
        self.nodes: dict[str, SwimNode] = {}
        self.events: dict[str, list[MemberEvent]] = {}
        self.delivered: list[Delivery] = []
        self.undelivered: list[Delivery] = []  # to addresses with no node behind them (crashed, or a Peer)
        self.inspect_keyring = KEYRING  # opens what the nodes send, for the delivery log
        self._names: dict[Address, str] = {}
        self._rng = Random(seed)

    def add(self, name: str, *, now: float = 0.0, keyring: Keyring | None = KEYRING) -> SwimNode:
        node = SwimNode(
            node_id=name,
            address=address_of(name),
            region="r",
            api_address=f"http://{name}",
            config=self.config,
            rng=Random(self._rng.getrandbits(32)),
            keyring=keyring,
            epoch=1,
            now=now,
        )
        self.nodes[name] = node
        self.events[name] = []
        self._names[address_of(name)] = name
        return node

    def connect(self, *names: str, now: float = 0.0) -> None:
        """Every later name joins through the first, and the queued gossip is flushed."""
        for name in names[1:]:
            self.nodes[name].join([address_of(names[0])])
            self.flush(now)

    def state(self, observer: str, node: str) -> MemberState | None:
        return {member.node: member.state for member in self.nodes[observer].members()}.get(node)

    def flush(self, now: float, drop: Dropper = never, *, rounds_max: int = 50) -> list[Delivery]:
        """Deliver until no node has anything to send (bounded); returns what was delivered this call."""
        start = len(self.delivered)
        for _ in range(rounds_max):
            moved = False
            for name, node in list(self.nodes.items()):
                for action in node.drain_actions():
                    moved = True
                    self._perform(name, action, now, drop)
            if not moved:
                return self.delivered[start:]
        raise AssertionError(f"still chattering after {rounds_max} rounds")

    def tick(self, name: str, now: float, drop: Dropper = never) -> list[Delivery]:
        self.nodes[name].tick(now)
        return self.flush(now, drop)

    def run_until(
        self,
        until: float,
        drop: Dropper = never,
        *,
        stop: Callable[[], bool] | None = None,
        ticks_max: int = 10_000,
    ) -> float:
        """Tick nodes in deadline order up to `until`, delivering instantly; returns the last time ticked.

        With `stop`, returns as soon as it holds after a tick, before that tick's output is delivered.
        """
        now = 0.0
        for _ in range(ticks_max):
            name, deadline = min(((n, node.next_deadline()) for n, node in self.nodes.items()), key=lambda x: x[1])
            if deadline > until:
                return now
            now = deadline
            self.nodes[name].tick(now)
            if stop is not None and stop():
                return now
            self.flush(now, drop)
        raise AssertionError(f"more than {ticks_max} ticks before {until}")

    def _perform(self, source: str, action: object, now: float, drop: Dropper) -> None:
        if isinstance(action, MemberEvent):
            self.events[source].append(action)
        elif isinstance(action, SendPacket):
            destination = self._names.get(action.address)
            messages = inspect(action.data, keyring=self.inspect_keyring)
            if destination is None or destination not in self.nodes:
                self.undelivered.append(Delivery(source, destination or str(action.address), messages))
                return
            if drop(source, destination, messages):
                return
            self.delivered.append(Delivery(source, destination, messages))
            self.nodes[destination].handle_packet(address_of(source), action.data, now)
        elif isinstance(action, OpenStream):
            destination = self._names.get(action.address)
            if destination is None or destination not in self.nodes:
                return
            reply = self.nodes[destination].handle_stream(action.data, now)
            if reply is not None:
                assert self.nodes[source].handle_stream(reply, now) is None


def wired(*names: str, config: SwimConfig | None = None) -> Wire:
    """A Wire with `names` added and connected to each other."""
    wire = Wire(config)
    for name in names:
        wire.add(name)
    wire.connect(*names)
    return wire


def started(count: int, *, seed: int, config: SwimConfig | None = None, loss: float = 0.0) -> SimCluster:
    """A SimCluster of `count` nodes that have converged and whose join gossip has died down."""
    sim = SimCluster(seed=seed, config=config or SwimConfig.lan(), loss=loss)
    for _ in range(count):
        sim.add_node()
        sim.run_for(0.05)
    assert sim.run_until_true(sim.converged, timeout=30.0) is not None, "the cluster never converged"
    sim.run_for(5.0)
    return sim
