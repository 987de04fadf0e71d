"""The node's counters (cluster/counters.py), kept in its store across restarts, clustered or not.

In a cluster the grow-only counters live in the cluster member and travel in the gossip; alone, a node keeps the
same counters itself (`LocalCounters`), so code that counts (edge/placement/usage.py) takes either through the
`Counters` protocol and does not care which. Either way every changed entry is saved in the node's store
(`CounterSaver`), and the next start hands the saved entries back: the node's own entries go on from what they were,
never from 0 (a merge keeps the greater of what the disk and the peers know, so neither can take a count back).

Where they are kept. In the store's table for shared settings (`Store.save_shared_state`), so the store needs no
new table: each entry under "counter:" + name + NUL + node, its value msgpack [name, node, value] (the key only
makes rows unique; the value says what they are, so a name or node holding a NUL cannot confuse a reader). The
"counter:" prefix is reserved in that table: `decode_entries` of shared_state.py skips those rows
(`is_counter_key`), and `decode_counter_entries` reads only them.

Saving is asynchronous, as for settings: a change is noted synchronously and a task writes it, latest per entry. A
crash between an add and its save loses at most the adds the cluster does not know either (its gossip carries each
change to the peers, and the restarted node learns its own entries back from them at its join). Where an add must
not be lost even so, the quota's own entries (edge/placement/usage.py), it is durable before anyone relies on it:
a usage entry is written in the accepted job's own commit (`counter_row`), mints and gifts are awaited
(`CounterSaver.save_now`), and the saver, told so, does not write them again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final, Protocol

import msgpack
import trio

from cluster import CounterEntry, CounterMap
from edge.placement.saving import StoreSaver

log = logging.getLogger("ezthrottle.counters")

COUNTER_KEY_PREFIX: Final = "counter:"
# Entries waiting to be saved are bounded like settings (saving.PENDING_SAVES_MAX), coalesced by (name, node):
# the cluster's own bound (COUNTER_ENTRIES_MAX) is larger, but only a full resync after a long partition changes
# that many at once, and an entry not saved now is saved at its next change (or learned back from the peers).


class Counters(Protocol):
    """The node's grow-only counters: the cluster member's, or a lone node's (`LocalCounters`)."""

    def add_counter(self, name: str, amount: int = 1) -> CounterEntry:
        """Add `amount` (>= 0) to this node's own entry of counter `name`; returns the entry. Raises ValueError
        over a bound (cluster/counters.py: a name of 1 to 128 UTF-8 bytes, 64-bit values, a bounded map)."""
        ...

    def counter_total(self, name: str) -> int:
        """The counter cluster-wide as this node knows it (every node's entry summed; 0 if never added to)."""
        ...

    def counter_own(self, name: str) -> int:
        """This node's own entry of the counter."""
        ...

    @property
    def counter_version(self) -> int:
        """Grows on every change to any counter this node sees."""
        ...

    def counter_entries(self, prefix: str) -> tuple[CounterEntry, ...]:
        """Every node's entry of the counters whose name starts with `prefix`, as this node knows them."""
        ...

    def merge_counters(self, entries: Iterable[CounterEntry]) -> None:
        """Merge entries learned directly from a peer (element-wise max)."""
        ...


def counter_key(name: str, node: str) -> str:
    """The store key of one entry: "counter:" + name + NUL + node."""
    return f"{COUNTER_KEY_PREFIX}{name}\0{node}"


def is_counter_key(key: str) -> bool:
    """Whether a row of the shared-state table holds a counter entry (not a shared setting)."""
    return key.startswith(COUNTER_KEY_PREFIX)


def encode_counter_entry(entry: CounterEntry) -> bytes:
    return msgpack.packb([entry.name, entry.node, entry.value], use_bin_type=True)


def counter_row(entry: CounterEntry) -> tuple[str, bytes]:
    """The store row (key, value) of one entry, as the saver writes it."""
    return counter_key(entry.name, entry.node), encode_counter_entry(entry)


def decode_counter_entries(saved: dict[str, bytes]) -> list[CounterEntry]:
    """The counter entries among the store's shared-state rows; an unreadable one is skipped (and logged), never
    fatal at start-up. Bounds are the map's: it drops and counts an entry over one when it is restored."""
    entries = []
    for key, blob in saved.items():
        if not is_counter_key(key):
            continue
        try:
            name, node, value = msgpack.unpackb(blob, raw=False)
            if type(name) is not str or type(node) is not str or type(value) is not int:
                raise TypeError("not [str, str, int]")
            entries.append(CounterEntry(name=name, node=node, value=value))
        except (ValueError, TypeError, msgpack.ExtraData):
            log.warning("skipping an unreadable saved counter %r", key)
    return entries


class CounterSaver(StoreSaver[CounterEntry]):
    """Saves counter entries, the greatest value per (name, node)."""

    what = "counter"

    def _key(self, entry: CounterEntry) -> str:
        return counter_key(entry.name, entry.node)

    def _encode(self, entry: CounterEntry) -> bytes:
        return encode_counter_entry(entry)

    def _keeps(self, new: CounterEntry, old: CounterEntry) -> bool:
        return new.value > old.value


class LocalCounters:
    """The counters of a node that is not in a cluster: the same interface as the cluster member's."""

    def __init__(self, *, node: str, entries: Iterable[CounterEntry] = (), saver: CounterSaver) -> None:
        self._node = node
        self._map = CounterMap()
        self._map.merge_all(entries)
        self._saver = saver
        self._moved = trio.lowlevel.ParkingLot()

    @property
    def counter_version(self) -> int:
        return self._map.version

    def counter_total(self, name: str) -> int:
        return self._map.total(name)

    def counter_own(self, name: str) -> int:
        return self._map.own(name, self._node)

    def counter_totals(self, prefix: str = "") -> dict[str, int]:
        return self._map.totals(prefix)

    def add_counter(self, name: str, amount: int = 1) -> CounterEntry:
        before = self._map.version
        entry = self._map.add(name, self._node, amount)
        if self._map.version != before:
            self._saver.note(entry)
            if self._moved:  # intake adds on every job; waking an empty lot is not free
                self._moved.unpark_all()
        return entry

    def counter_entries(self, prefix: str) -> tuple[CounterEntry, ...]:
        return self._map.entries_named(prefix)

    def merge_counters(self, entries: Iterable[CounterEntry]) -> None:
        for entry in self._map.merge_all(entries):
            self._saver.note(entry)
        self._moved.unpark_all()

    async def wait_counters_changed(self, after_version: int) -> int:
        while self._map.version <= after_version:
            await self._moved.park()
        return self._map.version
