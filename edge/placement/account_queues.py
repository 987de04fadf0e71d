"""Whether an origin's jobs queue per credential: one answer on every node, kept across restarts.

A provider says `X-EZTHROTTLE-ACCOUNT-QUEUE: false` when every key of an account shares one limit, so the account's
jobs for that origin must share one queue (and one pacer). The answer decides the queue key, the queue key decides
the owner, and so every node must compute the same key for the same job: a flag known to one node only would give
one credential two queues, two owners and two pacers against one provider limit.

So the learned value is cluster state, not node state: it travels in the cluster's gossip (a last-writer-wins entry
`account_queue:<origin>` of cluster/shared.py) and reaches every member, including ones that join or heal later
(push-pull carries the whole map). Each node saves the entries it knows in its store, so a restart, even of the
whole cluster, remembers them. Without a cluster the same object keeps the value locally and saves it the same way.

When the value for an origin changes (here, or in the gossip), `on_change(origin)` runs: the queue manager moves the
waiting jobs of that origin to their new queue keys, and the hand-off moves them on to the new owners.

Precedence: a value learned from the provider, else `[targets."<origin>"] account_queue`, else
`defaults.account_queue`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Protocol

from cluster import SharedEntry, SharedValue
from edge.config import Config

log = logging.getLogger("ezthrottle.account_queues")

SHARED_KEY_PREFIX: Final = "account_queue:"
# Origins whose flag is remembered; a provider sets it for a handful of origins, and a bound keeps a hostile upstream
# (which controls its response headers) from growing the cluster's shared state with invented origins.
ORIGINS_MAX: Final = 1024


class SharedState(Protocol):
    """The node's shared settings: the cluster member's map, or a lone node's (edge/placement/shared_state.py)."""

    @property
    def shared_version(self) -> int: ...

    def shared(self, key: str, default: SharedValue = None) -> SharedValue: ...

    def shared_items(self) -> list[tuple[str, SharedValue]]: ...

    def set_shared(self, key: str, value: SharedValue) -> SharedEntry: ...

    async def wait_shared_changed(self, after_version: int) -> int: ...


class AccountQueueFlags:
    """The per-origin flag, read at intake (`enabled`) and learned from responses (`learned`)."""

    def __init__(self, config: Config, shared: SharedState) -> None:
        self._config = config
        self._shared = shared
        self._known = self._snapshot()  # what `on_change` callbacks were last told, by origin
        self._configured: dict[str, bool] = {}  # the config's answer by origin, looked up once
        self._on_change: list[Callable[[str], None]] = []

    def subscribe(self, on_change: Callable[[str], None]) -> None:
        self._on_change.append(on_change)

    def enabled(self, origin: str) -> bool:
        learned = self._shared.shared(SHARED_KEY_PREFIX + origin)
        if isinstance(learned, bool):
            return learned
        configured = self._configured.get(origin)
        if configured is None:
            target = self._config.target_for(origin)
            configured = target.account_queue if target is not None and target.account_queue is not None else None
            configured = self._config.defaults.account_queue if configured is None else configured
            if len(self._configured) >= ORIGINS_MAX:
                self._configured.clear()  # a cache of the immutable config: forgetting it costs a lookup
            self._configured[origin] = configured
        return configured

    def learned(self, origin: str, value: bool) -> None:
        """A response for `origin` carried the header: a new value is shared (and so saved), and `on_change` runs."""
        if self._shared.shared(SHARED_KEY_PREFIX + origin) == value:
            return
        if origin not in self._known and len(self._known) >= ORIGINS_MAX:
            log.warning("not remembering X-EZTHROTTLE-ACCOUNT-QUEUE for %s: %d origins known", origin, ORIGINS_MAX)
            return
        try:
            self._shared.set_shared(SHARED_KEY_PREFIX + origin, value)
        except ValueError:  # an origin too long for a shared key: it keeps the configured behaviour
            log.warning("not remembering X-EZTHROTTLE-ACCOUNT-QUEUE for %s: the origin is too long", origin)
            return
        self._notice_changes()

    async def follow(self) -> None:
        """Apply values other members learned, as the gossip brings them (runs until cancelled)."""
        version = self._shared.shared_version
        while True:
            version = await self._shared.wait_shared_changed(version)
            self._notice_changes()

    def _snapshot(self) -> dict[str, bool]:
        return {
            key.removeprefix(SHARED_KEY_PREFIX): value
            for key, value in self._shared.shared_items()
            if key.startswith(SHARED_KEY_PREFIX) and isinstance(value, bool)
        }

    def _notice_changes(self) -> None:
        now_known = self._snapshot()
        changed = [origin for origin, value in now_known.items() if self._known.get(origin) != value]
        self._known = now_known
        for origin in changed:
            log.info("%s: per-credential queues %s", origin, "on" if now_known[origin] else "off")
            for callback in self._on_change:
                callback(origin)
