"""The versioned, authenticated, replay-checked envelope around every datagram and stream.

Layout (`+` is concatenation):

    version byte + msgpack([channel, sender, epoch, counter, [message, ...]]) + HMAC-SHA256 tag (32 bytes)

The tag covers everything before it, the version byte included, under the keyring's primary key; a receiver
accepts a tag from any key in its ring. Insecure dev mode (no keyring) sends no tag and accepts only untagged
data. `channel` says packet or stream, so an authentic push-pull stream cannot be replayed as a datagram.

Replay protection. Each sender stamps what it sends with `(epoch, counter)`: `epoch` is fixed for the life of
the process and must grow across restarts of one node id (the shell passes its boot wall-clock time in
milliseconds); `counter` grows by one per envelope. Per sender, a receiver keeps the newest epoch and the last
REPLAY_WINDOW counters it accepted (a sliding window, as in IPsec and DTLS, but over values rather than a
bitmap, because one sender's counter is shared by all its peers and a single receiver sees it jump). It drops
an envelope that is
- from an older epoch than one it has accepted (a capture from an earlier life of that node),
- a counter it has already accepted, or one older than everything in a full window,
- claiming to come from this node itself (a reflected copy of our own traffic).
What this does not guard: the first contact after a receiver forgot a sender (restart, or eviction from the
REPLAY_SENDERS_MAX table) accepts one old epoch until the live one is seen. The damage is bounded by the
membership rules: stale `Alive`/`Suspect`/`Dead` carry old incarnations and are ignored, and an old `Ack`
names a probe sequence number that is no longer pending. Nothing here hides content: authentication, not
encryption.

Nothing that arrives raises: malformed, unauthenticated, oversize, replayed and wrong-version input is dropped
and counted (`statistics()`); a message tag from a newer protocol is skipped and counted.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, final

import msgpack

from .codec import UINT_MAX, MalformedMessage, decode_message
from .keyring import TAG_BYTES, InsecureClusterError, Keyring
from .messages import NODE_ID_BYTES_MAX, Message

# Envelope versions. A node speaks ENVELOPE_VERSION and accepts exactly the versions listed here; widen the
# range before a version bump ships, so mixed clusters keep talking during a rolling upgrade.
ENVELOPE_VERSION = 1
ENVELOPE_VERSIONS_ACCEPTED = frozenset({1})

# Counters kept per sender. 64 is the IPsec/DTLS default; a receiver sees a small share of one sender's
# counters, so 64 of them cover seconds of reordering, far more than any datagram path delays a packet.
REPLAY_WINDOW = 64
# Senders remembered at once, least recently heard evicted first: several times any cluster we expect.
REPLAY_SENDERS_MAX = 4096

# Bytes around the messages, at most: version byte, array header, channel, sender (str8/16 header + id), epoch
# and counter (uint64 each), the messages' array16 header, and the tag.
_HEADER_BYTES_MAX = 1 + 1 + 1 + (3 + NODE_ID_BYTES_MAX) + 9 + 9 + 3


class Channel(IntEnum):
    """How the envelope travels. ONLY APPEND TO THIS LIST."""

    PACKET = 1
    STREAM = 2


@final
@dataclass(frozen=True, slots=True)
class Opened:
    """An envelope that passed every check: who sent it and what it says."""

    sender: str
    messages: list[Message]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DropCounts:
    """Input dropped so far, by reason (a frozen snapshot)."""

    malformed: int = 0
    unauthenticated: int = 0
    oversize: int = 0
    replayed: int = 0
    unsupported_version: int = 0
    unknown_messages: int = 0  # skipped inside an accepted envelope; the rest of it was used


@final
class _ReplayWindow:
    """One sender's newest epoch and the last REPLAY_WINDOW counters accepted in it, ascending."""

    __slots__ = ("counters", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.counters: list[int] = []

    def accept(self, epoch: int, counter: int) -> bool:
        if epoch != self.epoch:
            if epoch < self.epoch:
                return False
            self.epoch, self.counters = epoch, []
        counters = self.counters
        position = bisect_left(counters, counter)
        if position < len(counters) and counters[position] == counter:
            return False
        if position == 0 and len(counters) >= REPLAY_WINDOW:
            return False  # older than everything we still remember
        counters.insert(position, counter)
        if len(counters) > REPLAY_WINDOW:
            del counters[0]
        return True


@final
class Envelope:
    """Seals what this node sends, opens what it receives; keeps per-sender replay state and drop counts."""

    __slots__ = (
        "_counter",
        "_drops",
        "_epoch",
        "_insecure",
        "_keyring",
        "_limits",
        "_sender",
        "_windows",
    )

    def __init__(
        self,
        *,
        sender: str,
        epoch: int,
        keyring: Keyring | None,
        insecure: bool,
        packet_bytes_max: int,
        stream_bytes_max: int,
    ) -> None:
        if not 0 <= epoch <= UINT_MAX:
            raise ValueError("epoch must be an unsigned 64-bit int")
        self._sender = sender
        self._epoch = epoch
        self._counter = 0
        self._keyring = keyring
        self._insecure = insecure
        self._limits = {Channel.PACKET: packet_bytes_max, Channel.STREAM: stream_bytes_max}
        self._windows: dict[str, _ReplayWindow] = {}
        self._drops: dict[str, int] = {field.name: 0 for field in fields(DropCounts)}

    @property
    def keyring(self) -> Keyring | None:
        return self._keyring

    @keyring.setter
    def keyring(self, keyring: Keyring) -> None:
        self._keyring = keyring

    @property
    def may_talk(self) -> bool:
        """False for a node with no keyring that was not started insecure: it refuses to form a cluster."""
        return self._keyring is not None or self._insecure

    @property
    def overhead_bytes(self) -> int:
        """The most bytes the envelope adds around its messages."""
        return _HEADER_BYTES_MAX + (TAG_BYTES if self._keyring is not None else 0)

    def statistics(self) -> DropCounts:
        return DropCounts(**self._drops)

    def seal(self, channel: Channel, encoded_messages: Sequence[bytes]) -> bytes:
        """Wrap already-encoded messages (codec.encode_message) for sending on `channel`."""
        if not self.may_talk:
            raise InsecureClusterError("no cluster keyring: start with a key, or with the insecure dev flag")
        self._counter += 1
        packer = msgpack.Packer()
        parts = [
            bytes([ENVELOPE_VERSION]),
            packer.pack_array_header(5),
            packer.pack(int(channel)),
            packer.pack(self._sender),
            packer.pack(self._epoch),
            packer.pack(self._counter),
            packer.pack_array_header(len(encoded_messages)),
            *encoded_messages,
        ]
        data = b"".join(parts)
        if self._keyring is not None:
            data += self._keyring.sign(data)
        if len(data) > self._limits[channel]:
            raise ValueError(f"{channel.name.lower()} of {len(data)} bytes exceeds {self._limits[channel]}")
        return data

    def open(self, channel: Channel, data: bytes) -> Opened | None:
        """The checked contents of `data`, or None (counted) if it must be dropped. Never raises."""
        if len(data) > self._limits[channel]:
            self._drop("oversize")
            return None
        if not data:
            self._drop("malformed")
            return None
        if data[0] not in ENVELOPE_VERSIONS_ACCEPTED:
            self._drop("unsupported_version")
            return None
        if self._keyring is not None:
            signed, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
            if len(data) <= TAG_BYTES or not self._keyring.verify(signed, tag):
                self._drop("unauthenticated")
                return None
        elif self._insecure:
            signed = data
        else:
            self._drop("unauthenticated")
            return None
        try:
            unpacked = msgpack.unpackb(signed[1:], raw=False, use_list=True, strict_map_key=True)
            sender, epoch, counter, items = self._parse_header(channel, unpacked)
            messages: list[Message] = []
            for item in items:
                message = decode_message(item)
                if message is None:
                    self._drops["unknown_messages"] += 1
                else:
                    messages.append(message)
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException):
            # msgpack raises ValueError subclasses on garbage (ExtraData, FormatError, StackError, bad UTF-8);
            # MalformedMessage is one too.
            self._drop("malformed")
            return None
        if sender == self._sender or not self._window(sender, epoch).accept(epoch, counter):
            self._drop("replayed")
            return None
        return Opened(sender, messages)

    def _parse_header(self, channel: Channel, unpacked: Any) -> tuple[str, int, int, list[Any]]:
        if type(unpacked) is not list or len(unpacked) != 5:
            raise MalformedMessage("an envelope is [channel, sender, epoch, counter, messages]")
        channel_tag, sender, epoch, counter, items = unpacked
        if channel_tag != int(channel) or type(channel_tag) is not int:
            raise MalformedMessage("envelope sent on another channel")
        if type(sender) is not str or not sender or len(sender.encode()) > NODE_ID_BYTES_MAX:
            raise MalformedMessage("bad sender")
        for value in (epoch, counter):
            if type(value) is not int or not 0 <= value <= UINT_MAX:
                raise MalformedMessage("bad epoch or counter")
        if type(items) is not list:
            raise MalformedMessage("messages must be a list")
        return sender, epoch, counter, items

    def _window(self, sender: str, epoch: int) -> _ReplayWindow:
        """The sender's replay window, most recently heard last (the eviction order)."""
        window = self._windows.pop(sender, None)
        if window is None:
            window = _ReplayWindow(epoch)
            if len(self._windows) >= REPLAY_SENDERS_MAX:
                del self._windows[next(iter(self._windows))]
        self._windows[sender] = window
        return window

    def _drop(self, reason: str) -> None:
        self._drops[reason] += 1
