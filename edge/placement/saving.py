"""Saving gossiped state in the node's store: the latest of each entry, written from a task of its own.

Changes are noted synchronously (the cluster member calls back from its event handling) and a task writes them
(`Store.save_shared_state`). What that task writes is acknowledged to no one, so a crash between a change and its
save loses only what the cluster still knows: a peer tells it again. A caller that must answer only once an entry
is durable (a quota's rights given away, edge/placement/usage.py) awaits `save_now` instead, or writes the row in
its own commit and says so (`saved`); either way the saver then knows the store holds the entry and does not
write it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final, Generic, TypeVar

import trio

from edge.store import Store, StoreError

log = logging.getLogger("ezthrottle.saving")

E = TypeVar("E")

SAVE_ON_STOP_S: Final = 5.0  # how long a stopping node may spend saving what is still pending

# Changes waiting to be saved; entries are coalesced by key, so this bounds distinct keys, not writes.
PENDING_SAVES_MAX: Final = 4096


class StoreSaver(Generic[E]):
    """Saves changed entries to the store's shared-state table, latest per store key, from a task of its own (`run`).

    Subclasses say how an entry is keyed and encoded, and which of two entries for one key to keep. The saver
    remembers, per key, the entry it knows the store holds (`saved` at start, then each one written or reported),
    and never writes one that would not replace it. Its writes go one at a time (`run`'s and `save_now`'s alike),
    so an entry written later is never overtaken by an older one still being written."""

    what = "entry"  # for the log

    def __init__(self, store: Store, *, saved: Iterable[E] = ()) -> None:
        """`saved`: the entries read back from the store at start."""
        self._store = store
        self._pending: dict[str, E] = {}
        self._changed = trio.Event()
        self._stored: dict[str, E] = {}
        self._writing = trio.Lock()
        for entry in saved:
            self.saved(entry)

    def _key(self, entry: E) -> str:
        raise NotImplementedError

    def _encode(self, entry: E) -> bytes:
        raise NotImplementedError

    def _keeps(self, new: E, old: E) -> bool:
        """Whether `new` replaces `old` as the one to save (the later note, unless a subclass knows better)."""
        return True

    def note(self, entry: E) -> None:
        if self.is_saved(entry):
            return
        key = self._key(entry)
        current = self._pending.get(key)
        if current is None and len(self._pending) >= PENDING_SAVES_MAX:
            log.warning("not saving %s %r: %d wait to be saved", self.what, key, PENDING_SAVES_MAX)
            return
        if current is None or self._keeps(entry, current):
            self._pending[key] = entry
        self._changed.set()

    def saved(self, entry: E) -> None:
        """The store holds `entry` already (written with a job's commit, or read at start)."""
        key = self._key(entry)
        stored = self._stored.get(key)
        if stored is None or self._keeps(entry, stored):
            self._stored[key] = entry

    def is_saved(self, entry: E) -> bool:
        """Whether the store holds `entry`, or one `entry` would not replace."""
        stored = self._stored.get(self._key(entry))
        return stored is not None and not self._keeps(entry, stored)

    async def save_now(self, entries: Iterable[E]) -> None:
        """Write the entries the store does not hold yet, together, and return once they are durable. StoreError
        if one could not be written (the others may have been); an entry also noted is still saved by `run`."""
        unsaved = [entry for entry in entries if not self.is_saved(entry)]
        failures: list[StoreError] = []

        async def write(entry: E) -> None:
            try:
                await self._write(entry)
            except StoreError as exc:
                failures.append(exc)

        async with self._writing, trio.open_nursery() as nursery:  # concurrent calls: one group commit in SQLite
            for entry in unsaved:
                nursery.start_soon(write, entry)
        if failures:
            raise failures[0]

    async def _write(self, entry: E) -> None:
        if self.is_saved(entry):  # saved meanwhile
            return
        await self._store.save_shared_state(self._key(entry), self._encode(entry))
        self.saved(entry)

    async def run(self) -> None:
        """Save changes as they come; when cancelled (the node stops), save what is still pending first."""
        try:
            while True:
                await self._changed.wait()
                self._changed = trio.Event()
                await self._save_pending()
        finally:
            with trio.move_on_after(SAVE_ON_STOP_S) as last:
                last.shield = True
                await self._save_pending()

    async def _save_pending(self) -> None:
        batch, self._pending = self._pending, {}
        for key, entry in batch.items():
            try:
                async with self._writing:
                    await self._write(entry)
            except StoreError:
                log.exception("could not save %s %r; it is saved again at its next change", self.what, key)
