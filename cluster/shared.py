"""The shared map: cluster-wide settings, the same on every member, as last-writer-wins registers.

What it is for. A handful of settings every node must agree on and keep across restarts, learned at run time:
the first is a flag per upstream origin ("account_queue:https://api.stripe.com" -> True). Each key is a
register that holds one scalar (`SharedValue`: nil, bool, int, float, str); writing `None` is how a setting is
cleared (it stays in the map as a tombstone, so the clear wins over older writes everywhere).

Why last-writer-wins. A setting is a whole value that someone decided, not an amount to add up: the latest
decision should stand, and a merge that keeps the entry with the greater version is a join-semilattice
(idempotent, commutative, associative), so members converge whatever order and however often entries reach
them. Concurrent writes to one key do not fail or fork: one of them wins on every member alike.

What orders versions. An entry's version is (wall_ms of the write, writer's node id), compared
lexicographically, so two writers never tie (node ids are unique in a cluster). Wall time, not a logical
counter, because a member that restarts with nothing on disk must not be able to override a newer decision with
a counter that started over; the cost is that between writers the clock decides, so a writer whose clock runs
ahead wins over a later write by one whose clock runs behind, by up to the skew. A writer never loses to its
own earlier write: `set` takes max(wall_ms, current wall_ms + 1), so a clock that steps back still yields a
strictly greater version. For entries that are exactly equal in version but not in value (only a buggy or
hostile peer reusing a node id makes them), the greater packed value wins, which keeps the merge commutative.

Bounds (a limit on everything). A key is at most SHARED_KEY_BYTES_MAX UTF-8 bytes, a value at most
SHARED_VALUE_BYTES_MAX bytes packed, the map at most SHARED_ENTRIES_MAX entries. A local `set` over a bound
raises ValueError (the caller's mistake); a remote entry over a bound is dropped and counted (`refused`), never
raised. When the map is full, new keys are refused but known keys still take newer versions. That can leave two
members holding different sets of keys if both filled up from different writes; it is a capacity alarm, not a
normal state (a map of flags per origin holds tens of entries).

How it travels. A changed entry (a local set, or a newer one learned from a peer) goes into the retransmit
queue like a membership update (broadcast.py; a newer write about a key replaces the queued one) and rides
on pings and gossip rounds to everyone in O(log N) rounds. Push-pull, the periodic full-state exchange, carries
the whole map beside the members, so a member that missed broadcasts, joins late, restarts empty or comes back
from a partition converges at its next exchange (a join is one).

Other merge kinds. CRDT counters (usage, quotas) will come as their own entry class with their own merge rule
and their own wire tag and push-pull field, both appended (old members skip unknown tags and ignore trailing
fields, so a mixed cluster keeps working). XX: whether counters share this key space (one map, `merge`
dispatching on the entry class) or live in a map of their own is left to that change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import final

import msgpack

from .messages import NODE_ID_BYTES_MAX, SharedEntry, SharedValue

# A key names a setting and the thing it is about, e.g. "account_queue:" + an origin URL. 256 bytes holds any
# sensible origin (DNS names are at most 253 bytes) and keeps a whole entry well inside one datagram.
SHARED_KEY_BYTES_MAX = 256
# Values are flags, counts and short names. 256 bytes packed keeps an entry at most 656 bytes on the wire (see
# SHARED_ENTRY_WIRE_BYTES_MAX), so a `Shared` fits a 1400-byte datagram beside a ping and the envelope.
SHARED_VALUE_BYTES_MAX = 256
# Entries in the map. A flag per upstream origin is tens of entries; 4096 leaves room for many settings, and
# bounds the map's share of every push-pull at 4096 * 656 B = 2.7 MB, a third of the 8 MiB stream limit.
SHARED_ENTRIES_MAX = 4096
# One entry encoded, at most: array header (1), key (str16 header 3 + 256), value (256 packed), wall_ms (uint64
# 9), node id (str8 header 2 + 128; counted as 3 + 128, as if str16). A `Shared` message adds 2 bytes.
SHARED_ENTRY_WIRE_BYTES_MAX = 1 + (3 + SHARED_KEY_BYTES_MAX) + SHARED_VALUE_BYTES_MAX + 9 + (3 + NODE_ID_BYTES_MAX)

_WALL_MS_MAX = 2**64 - 1  # the wire's uint64
_VALUE_TYPES = (bool, int, float, str, type(None))


def _packed_value(value: SharedValue) -> bytes:
    """The value as msgpack: what its size bound counts and what breaks exact version ties."""
    packed: bytes = msgpack.packb(value)
    return packed


def _utf8_bytes(text: str) -> int | None:
    """Length in UTF-8, or None for text that has none (lone surrogates, which msgpack cannot send either)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return None


def refusal(entry: SharedEntry) -> str | None:
    """Why `entry` is over a bound or not a register at all, or None if the map may hold it. Never raises."""
    key, value, node = entry.key, entry.value, entry.node
    key_bytes = _utf8_bytes(key) if type(key) is str else None
    if key_bytes is None or not 0 < key_bytes <= SHARED_KEY_BYTES_MAX:
        return f"the key must be text of 1 to {SHARED_KEY_BYTES_MAX} UTF-8 bytes"
    if type(value) not in _VALUE_TYPES:
        return "the value must be None, a bool, an int, a float or a str"
    try:
        packed_bytes = len(_packed_value(value))
    except (OverflowError, ValueError):  # an int outside msgpack's 64 bits, a str with lone surrogates
        return "the value cannot be packed"
    if packed_bytes > SHARED_VALUE_BYTES_MAX:
        return f"the value is over {SHARED_VALUE_BYTES_MAX} bytes packed"
    if type(entry.wall_ms) is not int or not 0 <= entry.wall_ms <= _WALL_MS_MAX:
        return "wall_ms must be an unsigned 64-bit int"
    node_bytes = _utf8_bytes(node) if type(node) is str else None
    if node_bytes is None or not 0 < node_bytes <= NODE_ID_BYTES_MAX:
        return f"the writer must be a node id of 1 to {NODE_ID_BYTES_MAX} UTF-8 bytes"
    return None


def supersedes(incoming: SharedEntry, current: SharedEntry) -> bool:
    """The merge rule: does `incoming` replace `current` (same key)? A strict total order on entries."""
    if incoming.version != current.version:
        return incoming.version > current.version
    return _packed_value(incoming.value) > _packed_value(current.value)


@final
class SharedView:
    """A read-only face of a SharedMap (what `SwimNode.shared()` returns): it follows the map, no copy."""

    __slots__ = ("_map",)

    def __init__(self, shared_map: SharedMap) -> None:
        self._map = shared_map

    def __repr__(self) -> str:
        return f"<SharedView of {self._map!r}>"

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    @property
    def version(self) -> int:
        return self._map.version

    def get(self, key: str, default: SharedValue = None) -> SharedValue:
        return self._map.get(key, default)

    def entry(self, key: str) -> SharedEntry | None:
        return self._map.entry(key)

    def items(self) -> list[tuple[str, SharedValue]]:
        return self._map.items()

    def entries(self) -> tuple[SharedEntry, ...]:
        return self._map.entries()


@final
class SharedMap:
    """Last-writer-wins registers by key; see the module docstring for the order, the bounds and the wire."""

    __slots__ = ("_entries", "_refused", "_version")

    def __init__(self) -> None:
        self._entries: dict[str, SharedEntry] = {}
        self._version = 0
        self._refused = 0

    def __repr__(self) -> str:
        return f"<SharedMap: {len(self._entries)} entries | version {self._version} | {self._refused} refused>"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    @property
    def version(self) -> int:
        """Grows by one on every change to any entry; starts at 0 for an empty map."""
        return self._version

    @property
    def refused(self) -> int:
        """Remote entries dropped so far for being over a bound (or the map being full)."""
        return self._refused

    def get(self, key: str, default: SharedValue = None) -> SharedValue:
        entry = self._entries.get(key)
        return default if entry is None else entry.value

    def entry(self, key: str) -> SharedEntry | None:
        return self._entries.get(key)

    def items(self) -> list[tuple[str, SharedValue]]:
        """(key, value) pairs by key."""
        return [(key, self._entries[key].value) for key in sorted(self._entries)]

    def entries(self) -> tuple[SharedEntry, ...]:
        """Every entry by key: what push-pull sends and what a caller persists."""
        return tuple(self._entries[key] for key in sorted(self._entries))

    def view(self) -> SharedView:
        return SharedView(self)

    def set(self, key: str, value: SharedValue, wall_ms: int, node: str) -> SharedEntry:
        """Write `value` as `node` at wall time `wall_ms`, and return the entry written.

        The version is strictly greater than the key's current one even if the clock went back (see the module
        docstring). Raises ValueError for an entry over a bound, or a new key when the map is full."""
        current = self._entries.get(key) if type(key) is str else None
        if current is not None and type(wall_ms) is int:
            wall_ms = max(wall_ms, current.wall_ms + 1)
        entry = SharedEntry(key=key, value=value, wall_ms=wall_ms, node=node)
        reason = refusal(entry)
        if reason is None and current is None and len(self._entries) >= SHARED_ENTRIES_MAX:
            reason = f"the map is full ({SHARED_ENTRIES_MAX} entries)"
        if reason is not None:
            raise ValueError(f"shared entry {key!r:.60} refused: {reason}")
        self._store(entry)
        return entry

    def merge(self, entry: SharedEntry) -> bool:
        """Fold in an entry from a peer (or from disk): keep the greater version. True if the map changed.

        Never raises: an entry over a bound, or a new key when the map is full, is dropped and counted."""
        if refusal(entry) is not None:
            self._refused += 1
            return False
        current = self._entries.get(entry.key)
        if current is None and len(self._entries) >= SHARED_ENTRIES_MAX:
            self._refused += 1
            return False
        if current is not None and not supersedes(entry, current):
            return False
        self._store(entry)
        return True

    def merge_all(self, entries: Iterable[SharedEntry]) -> list[SharedEntry]:
        """Merge each entry in turn; the ones that changed the map, in order."""
        return [entry for entry in entries if self.merge(entry)]

    def _store(self, entry: SharedEntry) -> None:
        self._entries[entry.key] = entry
        self._version += 1
