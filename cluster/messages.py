"""Wire messages of the SWIM core: small immutable values, one class per message type.

These are the only things members say to each other. codec.py turns them into msgpack and back, envelope.py
wraps a batch of them in an authenticated datagram or stream. Constructors do not validate: values built here
come from our own code, and values from the wire are checked field by field in codec.py before they are built.

Membership messages (`Alive`, `Suspect`, `Dead`) are ordered by incarnation: a member's incarnation only
grows, and only the member itself raises it (to refute a suspicion). A graceful leave is a `Dead` whose
accuser is the node itself, as in memberlist.

`Shared` carries one write to the cluster's shared map (shared.py explains its ordering and bounds); it rides
the same retransmit queue as the membership updates, and push-pull carries the whole map beside the members.
`Counters` carries entries of the cluster's grow-only counters (counters.py) the same two ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import final

# (host, port) of a member's gossip endpoint: UDP for packets and TCP for streams on the same port. The host
# is an IP literal (v4 or v6); the shell resolves names before it hands addresses to the core.
Address = tuple[str, int]

# Field limits, in UTF-8 bytes. memberlist caps node metadata at 512 B; node id + region + API address stay
# under that, so an `Alive` plus the envelope always fits one 1400-byte datagram.
NODE_ID_BYTES_MAX = 128
REGION_BYTES_MAX = 64
API_ADDRESS_BYTES_MAX = 256
HOST_BYTES_MAX = 255

# What a shared-map register may hold: scalars that msgpack carries natively and compares without surprises.
SharedValue = bool | int | float | str | None


class MessageType(IntEnum):
    """Wire tags. ONLY APPEND TO THIS LIST: nodes skip tags they do not know; a tag never changes meaning."""

    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    SUSPECT = 5
    ALIVE = 6
    DEAD = 7
    PUSH_PULL = 8
    SHARED = 9
    COUNTERS = 10


class MemberState(IntEnum):
    """A member's state as this node sees it. Wire values in push-pull: ONLY APPEND TO THIS LIST."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def is_live(self) -> bool:
        """Alive or suspect: still a member (a suspicion may yet be refuted), so it keeps its keys."""
        return self is MemberState.ALIVE or self is MemberState.SUSPECT


class Message:
    """Base of the wire messages. Don't subclass outside this module: codec.py has one schema per class."""

    __slots__ = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo:
    """What the cluster knows about one member: a push-pull entry and the public view of the table."""

    node: str
    address: Address
    region: str
    api_address: str
    incarnation: int
    state: MemberState
    # The machine the member runs on (a node of several worker processes is several members of one machine):
    # replicas go to other machines first. Empty from a peer that predates it: a machine of its own.
    machine: str = ""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SharedEntry:
    """One last-writer-wins register of the shared map (shared.py): what a `Shared` carries, a push-pull
    entry, and what the shell hands the caller to persist (and takes back at the next start).

    `version` orders writes to one key totally: the writer's wall clock, then the writer's node id."""

    key: str
    value: SharedValue
    wall_ms: int
    node: str

    @property
    def version(self) -> tuple[int, str]:
        return (self.wall_ms, self.node)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CounterEntry:
    """One node's entry of a grow-only counter (counters.py): what a `Counters` carries, a push-pull entry, and
    what the shell hands the caller to persist (and takes back at the next start). Only `node` raises it; a merge
    keeps the greater `value`."""

    name: str
    node: str
    value: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    """Are you alive? `target` names the node meant, so a reused address never acks for someone else."""

    seq: int
    target: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class IndirectPing(Message):
    """Ping `target` for me and relay its ack; with `want_nack`, say so if it stays silent (Lifeguard)."""

    seq: int
    target: str
    target_address: Address
    want_nack: bool


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    seq: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Message):
    """A relay got no ack from the target in time: the requester itself is probably fine."""

    seq: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Suspect(Message):
    """`accuser` suspects `node`; `accuser_incarnation` dates the accusation (see membership.py)."""

    node: str
    incarnation: int
    accuser: str
    accuser_incarnation: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Alive(Message):
    node: str
    incarnation: int
    address: Address
    region: str
    api_address: str
    machine: str = ""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Dead(Message):
    """`node` failed, or left gracefully when `accuser == node`."""

    node: str
    incarnation: int
    accuser: str
    accuser_incarnation: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PushPull(Message):
    """The sender's whole member table, shared map and counters. A request (`is_reply=False`) is answered with
    the receiver's. `shared`, then `counters`, came later than the other fields, so they are last on the wire
    and may be absent there (from a peer that predates them): they default to empty."""

    members: tuple[MemberInfo, ...]
    is_reply: bool
    shared: tuple[SharedEntry, ...] = ()
    counters: tuple[CounterEntry, ...] = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Shared(Message):
    """A write to the shared map, gossiped like a membership update (a newer one about the same key
    replaces it in the retransmit queue)."""

    entry: SharedEntry


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Counters(Message):
    """Entries of the grow-only counters, gossiped like membership updates. The core queues one entry per
    message under its (name, node), so a greater value replaces a queued older one; the tuple lets a message
    carry several (a decoder takes any number that fit the datagram)."""

    entries: tuple[CounterEntry, ...]
