"""Counters: cluster-wide amounts (usage, quotas) as grow-only counters, a CRDT of their own beside shared.py.

What it is for. Amounts that many nodes add to at once and that every node must be able to read as one figure:
the first is each account's accepted jobs this month (edge/placement/usage.py). A counter has a name
("usage:acme:2025-01") and one entry per node that ever added to it; its total is the sum of the entries.

Why a G-counter, not a register. An amount is the sum of what everyone added, not a decision someone made: two
nodes counting at once must both be counted, which no last-writer-wins register (shared.py) can do (one of the two
writes would win and the other be lost). A grow-only counter (Shapiro et al., "A comprehensive study of CRDTs")
gives each node an entry that only that node raises (`add(name, node, amount)` with amount >= 0), and merges by
taking the element-wise max. Max is idempotent, commutative and associative, so the counters are a join-semilattice:
members converge to the same entries, and the same totals, whatever order and however often entries reach them,
and nothing is counted twice (an entry learned again, or back from a peer, changes nothing). Only growth is
possible: a counter never goes down and cannot be reset; a new period is a new name.

Who owns an entry. A node raises only its own entry; entries of other nodes change only by merge. An absent entry
is 0, so an entry of 0 is never stored and merging one changes nothing.

A restarted member. Its own entry must never count from 0 again, or its adds would be swallowed by the max until
they passed what the cluster already knows of it. Two things prevent it, and merge makes them agree: the caller
saves every changed entry (the `CounterChanged` action) and restores them at boot, and the member's first
push-pull (its join) brings back the cluster's copy of its entries. Whichever is greater wins, always: a disk that
lost the last saves is overtaken by the peers, peers that missed the last broadcasts by the disk, and neither can
take an entry back. What remains is bounded: adds made before either arrives (a member whose disk was lost, between
its boot and its join's reply) are absorbed when the cluster's value for its entry is larger, and adds that were
neither saved nor gossiped before a crash are lost; both undercount, never overcount.

Bounds (a limit on everything). A name is at most COUNTER_NAME_BYTES_MAX UTF-8 bytes, a node id at most
NODE_ID_BYTES_MAX, a value an unsigned 64-bit int; the map holds at most COUNTER_ENTRIES_MAX entries (one per
(name, node) pair). A local `add` over a bound (or one that would overflow 64 bits, or a new entry when the map is
full) raises ValueError, the caller's mistake; a remote entry over a bound is dropped and counted (`refused`),
never raised. When the map is full, new entries are refused but known ones still grow; as in shared.py that is a
capacity alarm, not a normal state. XX: counters are never removed (a G-counter has no delete that converges
without coordination), so names per period accumulate; retiring old periods by a rule every member applies alike
is left to a later change.

How it travels. Like the shared map's registers: a changed entry (a local add, or a greater one learned from a
peer) goes into the retransmit queue under its (name, node) (broadcast.py), so the newest value replaces a queued
older one and a busy counter costs one queued update, not one per add; it rides on pings and gossip rounds in a
`Counters` message. Push-pull carries every entry in its own field (`counters`) beside the members and the shared
map, so a member that missed broadcasts, joins late, restarts or comes back from a partition converges at its next
exchange. The `Counters` tag and the push-pull field are both appended: old members skip the tag and ignore the
trailing field, so a mixed cluster keeps working (the old members just do not count).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import final

from .messages import NODE_ID_BYTES_MAX, CounterEntry

# A name says what is counted and for which period, e.g. "usage:" + an account id (at most 64 characters) + ":" +
# "2025-01". 128 bytes holds that with room to spare, and keeps an entry at most 272 bytes on the wire.
COUNTER_NAME_BYTES_MAX = 128
# Entries in the map, one per (counter, node that added to it). A counter per account and month on each node that
# takes jobs: 100 accounts on 10 nodes are 1,000 entries a month. At the bound the counters' share of a push-pull
# is at most 16384 * 272 B = 4.5 MB, which beside the shared map's 2.7 MB still leaves the 8 MiB stream limit
# room for a thousand members at their largest (swim.py truncates fairly past that).
COUNTER_ENTRIES_MAX = 16384
# One entry encoded, at most: array header (1), name (str8 header 2 + 128; counted as 3 + 128, as if str16), node
# id (the same), value (uint64 9). A `Counters` message adds 3 bytes (its array, its tag, the entries' array).
COUNTER_ENTRY_WIRE_BYTES_MAX = 1 + (3 + COUNTER_NAME_BYTES_MAX) + (3 + NODE_ID_BYTES_MAX) + 9

COUNTER_VALUE_MAX = 2**64 - 1  # the wire's uint64


def _utf8_bytes(text: str) -> int | None:
    """Length in UTF-8, or None for text that has none (lone surrogates, which msgpack cannot send either)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return None


def _name_refusal(name: object) -> str | None:
    name_bytes = _utf8_bytes(name) if type(name) is str else None
    if name_bytes is None or not 0 < name_bytes <= COUNTER_NAME_BYTES_MAX:
        return f"the name must be text of 1 to {COUNTER_NAME_BYTES_MAX} UTF-8 bytes"
    return None


def _node_refusal(node: object) -> str | None:
    node_bytes = _utf8_bytes(node) if type(node) is str else None
    if node_bytes is None or not 0 < node_bytes <= NODE_ID_BYTES_MAX:
        return f"the node must be a node id of 1 to {NODE_ID_BYTES_MAX} UTF-8 bytes"
    return None


def refusal(entry: CounterEntry) -> str | None:
    """Why `entry` is over a bound or not a counter entry at all, or None if the map may hold it. Never raises."""
    reason = _name_refusal(entry.name) or _node_refusal(entry.node)
    if reason is None and (type(entry.value) is not int or not 0 <= entry.value <= COUNTER_VALUE_MAX):
        reason = "the value must be an unsigned 64-bit int"
    return reason


@final
class CounterView:
    """A read-only face of a CounterMap (what `SwimNode.counters()` returns): it follows the map, no copy."""

    __slots__ = ("_map",)

    def __init__(self, counter_map: CounterMap) -> None:
        self._map = counter_map

    def __repr__(self) -> str:
        return f"<CounterView of {self._map!r}>"

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, name: object) -> bool:
        return name in self._map

    @property
    def version(self) -> int:
        return self._map.version

    def total(self, name: str) -> int:
        return self._map.total(name)

    def own(self, name: str, node: str) -> int:
        return self._map.own(name, node)

    def entry(self, name: str, node: str) -> CounterEntry | None:
        return self._map.entry(name, node)

    def names(self, prefix: str = "") -> list[str]:
        return self._map.names(prefix)

    def totals(self, prefix: str = "") -> dict[str, int]:
        return self._map.totals(prefix)

    def entries(self) -> tuple[CounterEntry, ...]:
        return self._map.entries()

    def entries_named(self, prefix: str) -> tuple[CounterEntry, ...]:
        return self._map.entries_named(prefix)


@final
class CounterMap:
    """Grow-only counters by name, one entry per node; see the module docstring for the merge, bounds and wire."""

    __slots__ = ("_counters", "_entry_count", "_refused", "_totals", "_version")

    def __init__(self) -> None:
        self._counters: dict[str, dict[str, int]] = {}  # name -> node -> value (> 0)
        self._totals: dict[str, int] = {}  # name -> the sum of its entries, kept up to date
        self._entry_count = 0
        self._version = 0
        self._refused = 0

    def __repr__(self) -> str:
        return (
            f"<CounterMap: {len(self._counters)} counters | {self._entry_count} entries | version {self._version} | "
            f"{self._refused} refused>"
        )

    def __len__(self) -> int:
        """Entries held (what COUNTER_ENTRIES_MAX bounds), not counters."""
        return self._entry_count

    def __contains__(self, name: object) -> bool:
        return name in self._counters

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._counters))

    @property
    def version(self) -> int:
        """Grows by one on every change to any entry; starts at 0 for an empty map."""
        return self._version

    @property
    def refused(self) -> int:
        """Remote entries dropped so far for being over a bound (or the map being full)."""
        return self._refused

    def total(self, name: str) -> int:
        """The counter's value cluster-wide as this map knows it: the sum of every node's entry (0 if unknown)."""
        return self._totals.get(name, 0)

    def own(self, name: str, node: str) -> int:
        """`node`'s entry of the counter: what it added itself (0 if nothing)."""
        return self._counters.get(name, {}).get(node, 0)

    def entry(self, name: str, node: str) -> CounterEntry | None:
        value = self._counters.get(name, {}).get(node)
        return None if value is None else CounterEntry(name=name, node=node, value=value)

    def names(self, prefix: str = "") -> list[str]:
        """The counters' names that start with `prefix`, sorted."""
        return sorted(name for name in self._counters if name.startswith(prefix))

    def totals(self, prefix: str = "") -> dict[str, int]:
        """{name: total} for the counters whose name starts with `prefix`, by name."""
        return {name: self._totals[name] for name in self.names(prefix)}

    def entries(self) -> tuple[CounterEntry, ...]:
        """Every entry by (name, node): what push-pull sends and what a caller persists."""
        return self.entries_named("")

    def entries_named(self, prefix: str) -> tuple[CounterEntry, ...]:
        """The entries of the counters whose name starts with `prefix`, by (name, node)."""
        return tuple(
            CounterEntry(name=name, node=node, value=value)
            for name in self.names(prefix)
            for node, value in sorted(self._counters[name].items())
        )

    def view(self) -> CounterView:
        return CounterView(self)

    def add(self, name: str, node: str, amount: int) -> CounterEntry:
        """Raise `node`'s entry of counter `name` by `amount` (>= 0; 0 changes nothing) and return the entry.

        Only `node` itself may call this for its entry (the module docstring says why). Raises ValueError for an
        entry over a bound, an amount that is negative or would overflow 64 bits, or a new entry when the map is
        full."""
        reason = _name_refusal(name) or _node_refusal(node)
        if reason is None and (type(amount) is not int or amount < 0):
            reason = "the amount must be an int >= 0"
        current = self.own(name, node) if reason is None else 0
        if reason is None and current + amount > COUNTER_VALUE_MAX:
            reason = "the value would overflow 64 bits"
        if reason is None and amount and not current and self._entry_count >= COUNTER_ENTRIES_MAX:
            reason = f"the map is full ({COUNTER_ENTRIES_MAX} entries)"
        if reason is not None:
            raise ValueError(f"counter {name!r:.60} of {node!r:.60} refused: {reason}")
        if amount:
            self._store(name, node, current + amount)
        return CounterEntry(name=name, node=node, value=current + amount)

    def merge(self, entry: CounterEntry) -> bool:
        """Fold in an entry from a peer (or from disk): keep the greater value. True if the map changed.

        Never raises: an entry over a bound, or a new one when the map is full, is dropped and counted."""
        if refusal(entry) is not None:
            self._refused += 1
            return False
        current = self._counters.get(entry.name, {}).get(entry.node)
        if current is None and entry.value and self._entry_count >= COUNTER_ENTRIES_MAX:
            self._refused += 1
            return False
        if entry.value <= (current or 0):
            return False
        self._store(entry.name, entry.node, entry.value)
        return True

    def merge_all(self, entries: Iterable[CounterEntry]) -> list[CounterEntry]:
        """Merge each entry in turn; the ones that changed the map, in order."""
        return [entry for entry in entries if self.merge(entry)]

    def _store(self, name: str, node: str, value: int) -> None:
        counter = self._counters.setdefault(name, {})
        previous = counter.get(node)
        if previous is None:
            self._entry_count += 1
        counter[node] = value
        self._totals[name] = self._totals.get(name, 0) + value - (previous or 0)
        self._version += 1
