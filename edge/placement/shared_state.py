"""The node's shared settings (cluster/shared.py), kept in its store across restarts, clustered or not.

In a cluster the map lives in the cluster member and travels in the gossip; alone, a node keeps the same map
itself (`LocalSharedState`), so code that reads and writes settings (edge/placement/account_queues.py) does not care
which. Either way every change is saved in the node's store (`SharedStateSaver`), and the next start hands the saved
entries back with their original versions: a restarted node neither forgets a setting nor overrides a newer one
the rest of the cluster decided meanwhile (last writer wins by version, not by who spoke last).

Saving is asynchronous: a change is noted synchronously (the member calls back from its event handling) and a task
writes it. A setting is not acknowledged to anyone, so a crash between the change and its save loses only what the
cluster still knows (a peer, or the provider's next response, tells it again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import msgpack
import trio

from cluster import SharedEntry, SharedMap, SharedValue
from edge.placement.counters import is_counter_key
from edge.placement.saving import StoreSaver

log = logging.getLogger("ezthrottle.shared_state")


def encode_entry(entry: SharedEntry) -> bytes:
    return msgpack.packb([entry.value, entry.wall_ms, entry.node], use_bin_type=True)


def decode_entries(saved: dict[str, bytes]) -> list[SharedEntry]:
    """Entries as the store keeps them; an unreadable one is skipped (and logged), never fatal at start-up. The
    table also holds the counters' entries (edge/placement/counters.py), which are not settings: skipped here."""
    entries = []
    for key, blob in saved.items():
        if is_counter_key(key):
            continue
        try:
            value, wall_ms, node = msgpack.unpackb(blob, raw=False)
            entries.append(SharedEntry(key=key, value=value, wall_ms=int(wall_ms), node=str(node)))
        except (ValueError, TypeError, msgpack.ExtraData):
            log.warning("skipping an unreadable saved setting %r", key)
    return entries


class SharedStateSaver(StoreSaver[SharedEntry]):
    """Saves the shared settings (latest per key)."""

    what = "setting"

    def _key(self, entry: SharedEntry) -> str:
        return entry.key

    def _encode(self, entry: SharedEntry) -> bytes:
        return encode_entry(entry)


class LocalSharedState:
    """The shared map of a node that is not in a cluster: the same interface as the cluster member's."""

    def __init__(
        self, *, node: str, wall_ms: Callable[[], int], entries: Iterable[SharedEntry] = (), saver: SharedStateSaver
    ) -> None:
        self._node = node
        self._wall_ms = wall_ms
        self._map = SharedMap()
        for entry in entries:
            self._map.merge(entry)
        self._saver = saver
        self._moved = trio.lowlevel.ParkingLot()

    @property
    def shared_version(self) -> int:
        return self._map.version

    def shared(self, key: str, default: SharedValue = None) -> SharedValue:
        return self._map.get(key, default)

    def shared_items(self) -> list[tuple[str, SharedValue]]:
        return self._map.items()

    def set_shared(self, key: str, value: SharedValue) -> SharedEntry:
        entry = self._map.set(key, value, self._wall_ms(), self._node)
        self._saver.note(entry)
        self._moved.unpark_all()
        return entry

    async def wait_shared_changed(self, after_version: int) -> int:
        while self._map.version <= after_version:
            await self._moved.park()
        return self._map.version
