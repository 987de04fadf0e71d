"""What the core asks of its shell: the whole transport contract, plus membership, shared-map and counter news.

The shell owns one UDP socket and one TCP listener on the member's gossip address. It performs `SendPacket`
best-effort (a lost datagram is normal), and for `OpenStream` connects, writes `data`, reads one reply and
hands it to `SwimNode.handle_stream` (a failed connection is simply dropped: the core retries on its own
schedule). Bytes that arrive go to `handle_packet` / `handle_stream`, with the current `trio.current_time()`.
`MemberEvent`, `SharedChanged` and `CounterChanged` are news to publish; the shell performs nothing for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import final

from .messages import Address, CounterEntry, MemberInfo, SharedEntry


class Action:
    """Base of everything `SwimNode.drain_actions()` returns. Don't subclass."""

    __slots__ = ()


@final
@dataclass(frozen=True, slots=True)
class SendPacket(Action):
    address: Address
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class OpenStream(Action):
    """A push-pull: send `data` over a reliable stream to `address` and feed the reply to `handle_stream`."""

    address: Address
    data: bytes


class MemberEventKind(Enum):
    JOINED = "joined"  # a new member, or one that was dead or left and is alive again
    UPDATED = "updated"  # a live member's address or metadata changed, or it refuted a suspicion
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@final
@dataclass(frozen=True, slots=True)
class MemberEvent(Action):
    """A member changed state in this node's view; `member` is the record after the change."""

    kind: MemberEventKind
    member: MemberInfo


@final
@dataclass(frozen=True, slots=True)
class SharedChanged(Action):
    """An entry of the shared map changed in this node's view (a local set, or a newer one from a peer);
    `entry` is the entry now held, for the shell to publish and the caller to persist."""

    entry: SharedEntry


@final
@dataclass(frozen=True, slots=True)
class CounterChanged(Action):
    """An entry of the counters changed in this node's view (a local add, or a greater one from a peer);
    `entry` is the entry now held, for the shell to publish and the caller to persist."""

    entry: CounterEntry
