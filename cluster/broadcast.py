"""The retransmit queue: membership updates waiting to ride on outgoing datagrams.

How dissemination works. A membership change (`Alive`, `Suspect`, `Dead`) is encoded once and queued here.
Every datagram this node sends (pings, acks, gossip rounds) asks the queue to fill its free bytes. The queue
hands out the updates sent the *fewest* times first, so fresh news spreads before old news is repeated; among
equals the *largest* first, because small ones still fit the leftover space; then the *newest*. Each hand-out
counts as one transmit, and after retransmit_mult * ceil(log10(N + 1)) transmits an update is dropped: by
then, with each member forwarding it, it has reached everyone with high probability (the epidemic bound of
SWIM's dissemination).

An update about a node replaces any queued update about the same node: only the newest word on a member
matters, and without this a flapping member would fill the queue with stale states. The shared map's writes
(shared.py) use the same rule per key: their subject is ("shared", key), a tuple, so no node id can collide
with a key. Counter entries (counters.py) likewise, per (name, node): their subject is ("counter", name, node),
so the newest value of a busy counter replaces the queued one instead of queueing every add.
"""

from __future__ import annotations

import math
from typing import final

from sortedcontainers import SortedList

# What a queued update is about: a member's node id, ("shared", key) for the shared map's registers, or
# ("counter", name, node) for a counter's entry.
Subject = str | tuple[str, str] | tuple[str, str, str]


def retransmit_limit(retransmit_mult: int, member_count: int) -> int:
    """Times an update is sent before it is dropped: mult * ceil(log10(N + 1))."""
    return retransmit_mult * math.ceil(math.log10(member_count + 1))


@final
class BroadcastQueue:
    """One queued update per subject, ordered by (transmits, -size, -age)."""

    __slots__ = ("_entries", "_next_id", "_order", "_retransmit_mult", "_sizes")

    def __init__(self, retransmit_mult: int) -> None:
        self._retransmit_mult = retransmit_mult
        # (transmits, -len(payload), -id) ascending = fewest transmits, then largest, then newest.
        self._order: SortedList[tuple[int, int, int, Subject]] = SortedList()
        # about -> (order key, payload); the order key is unique (by id), so subjects are never compared.
        self._entries: dict[Subject, tuple[tuple[int, int, int], bytes]] = {}
        # Every queued payload's length: once a datagram's free space is below the smallest, stop looking.
        self._sizes: SortedList[int] = SortedList()
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<BroadcastQueue: {len(self._entries)} queued>"

    def enqueue(self, about: Subject, payload: bytes) -> None:
        """Queue an encoded update about `about`, replacing any older one about it."""
        self._discard(about)
        self._next_id += 1
        key = (0, -len(payload), -self._next_id)
        self._entries[about] = (key, payload)
        self._order.add((*key, about))
        self._sizes.add(len(payload))

    def pending_about(self, about: Subject) -> bool:
        return about in self._entries

    def take(self, bytes_available: int, member_count: int) -> list[bytes]:
        """Updates that fit in `bytes_available`, each counted as one more transmit."""
        if not self._entries or bytes_available < self._sizes[0]:
            return []
        limit = retransmit_limit(self._retransmit_mult, member_count)
        smallest = self._sizes[0]
        chosen: list[tuple[int, int, int, Subject]] = []
        for transmits, negative_size, negative_id, about in self._order:
            if bytes_available < smallest:
                break
            if -negative_size <= bytes_available:
                bytes_available += negative_size
                chosen.append((transmits, negative_size, negative_id, about))
        payloads = []
        for transmits, negative_size, negative_id, about in chosen:
            payload = self._entries[about][1]
            payloads.append(payload)
            self._order.remove((transmits, negative_size, negative_id, about))
            if transmits + 1 >= limit:
                del self._entries[about]
                self._sizes.remove(len(payload))
            else:
                key = (transmits + 1, negative_size, negative_id)
                self._entries[about] = (key, payload)
                self._order.add((*key, about))
        return payloads

    def _discard(self, about: Subject) -> None:
        entry = self._entries.pop(about, None)
        if entry is not None:
            self._order.remove((*entry[0], about))
            self._sizes.remove(len(entry[1]))
