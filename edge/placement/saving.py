"""Saving gossiped state in the node's store: the latest of each entry, written from a task of its own.

Changes are noted synchronously (the cluster member calls back from its event handling) and a task writes them
(`Store.save_shared_state`). Nothing here is acknowledged to anyone, so a crash between a change and its save
loses only what the cluster still knows: a peer tells it again.
"""

from __future__ import annotations

import logging
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

    Subclasses say how an entry is keyed and encoded, and which of two entries for one key to keep."""

    what = "entry"  # for the log

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, E] = {}
        self._changed = trio.Event()

    def _key(self, entry: E) -> str:
        raise NotImplementedError

    def _encode(self, entry: E) -> bytes:
        raise NotImplementedError

    def _keeps(self, new: E, old: E) -> bool:
        """Whether `new` replaces `old` as the one to save (the later note, unless a subclass knows better)."""
        return True

    def note(self, entry: E) -> None:
        key = self._key(entry)
        current = self._pending.get(key)
        if current is None and len(self._pending) >= PENDING_SAVES_MAX:
            log.warning("not saving %s %r: %d wait to be saved", self.what, key, PENDING_SAVES_MAX)
            return
        if current is None or self._keeps(entry, current):
            self._pending[key] = entry
        self._changed.set()

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
                await self._store.save_shared_state(key, self._encode(entry))
            except StoreError:
                log.exception("could not save %s %r; it is saved again at its next change", self.what, key)
