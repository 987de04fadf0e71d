"""Planted bugs: switches that break the design on purpose, to prove the invariants catch real violations.

They live here, in the simulator, and change only how the world wires real nodes, never node code:
- "queue-per-node": the nodes are not clustered, so each believes it owns every key and runs its own queue for
  it; clients still spread a key's jobs over every node, so the provider sees one pacer per node. The
  upstream-limit invariant must trip (tests/simulations/test_planted_bugs.py).
- "ack-before-commit": the node's store answers `insert_job` at once and commits the job COMMIT_LAG_S later
  (`LaggingCommitStore`), as a write-back cache without a flush would; the API then acknowledges jobs that are
  not durable, and a crash loses them. The no-acknowledged-job-lost invariant must trip under a crash.
- "losers-not-cancelled": a race waits for every leg instead of cancelling the losers once one wins:
  `losers_run_to_the_end` rewires each node's `QueueManager` as the node starts, so that it runs a race's legs as
  it runs a fanout's, each to its end. The provider answers the losers in full, well after the win, and the
  losers-cancelled invariant must trip, and only it: the job still ends after its last leg, so no call is sent
  after it is terminal.
- "quota-by-count": a node admits an account's job while the account's cluster-wide usage, as far as its
  counters know, is below the plan's allowance, instead of spending a right of its own (`quota_by_count` replaces
  each node's `UsageMeter._spare`): the G-counter-only ceiling cluster/escrow.py explains is not enough. Every
  side of a partition, and every node between two gossip rounds, admits up to the whole remainder, so the
  quota-never-exceeded invariant must trip.
- "ack-before-replicated": the key's owner acknowledges a new job once it is durable on its own disk, and sends it
  to the successors REPLICATION_LAG_S later (`replicate_late` wraps each node's Replicator as the node starts), as
  an owner that replicated asynchronously would. A disk loss of that owner under backlog then loses the jobs it
  acknowledged in the last REPLICATION_LAG_S, and the no-acknowledged-job-lost invariant must trip.
- "minority-runs-keys": a node dispatches every key it owns in its own view of the membership, with no majority
  lease and no wait before a takeover (`runs_keys_by_view` replaces the queue manager's gate, cluster/lease.py).
  Split longer than failure detection, each side declares the other dead and runs the other's keys while the
  other still does: the provider sees two pacers for one key, and the upstream-limit invariant must trip.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol, final

import trio

from edge.config import PlanConfig
from edge.engine.records import JobRecord
from edge.node import Node
from edge.placement.usage import usage_name
from edge.store import Store
from edge.store.base import EncodedJob

PLANTED_BUGS: Mapping[str, str] = {
    "queue-per-node": "nodes are not clustered: every node runs its own queue for every key",
    "ack-before-commit": "the store acknowledges a new job before it is durable and commits it later",
    "losers-not-cancelled": "a race waits for every leg to answer instead of cancelling the losers",
    "quota-by-count": "a node admits while the cluster-wide usage it knows is under the allowance, spending no right",
    "ack-before-replicated": "the owner acknowledges a new job before its successors have it and sends it later",
    "minority-runs-keys": "a node runs the keys it owns in its own view, without a majority lease or a takeover wait",
}
COMMIT_LAG_S = 2.0
REPLICATION_LAG_S = 2.0


@final
class LaggingCommitStore:
    """A `Store` whose `insert_job` returns before the write is durable (see the module docstring).

    It claims every insert is new (a duplicate is only found when the late commit runs); every other call goes
    straight to the wrapped store."""

    def __init__(self, durable: Store, commits: trio.Nursery) -> None:
        self._durable = durable
        self._commits = commits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._durable, name)

    async def insert_job(
        self, record: JobRecord, spawned: Sequence[JobRecord] = (), *, shared_state: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[JobRecord, bool]:
        await trio.lowlevel.checkpoint()
        frozen = EncodedJob.of(record)
        self._commits.start_soon(self._commit_later, frozen.decode(), list(spawned), list(shared_state))
        return frozen.decode(), True

    async def _commit_later(
        self, record: JobRecord, spawned: list[JobRecord], shared_state: list[tuple[str, bytes]]
    ) -> None:
        await trio.sleep(COMMIT_LAG_S)
        await self._durable.insert_job(record, spawned, shared_state=shared_state)


@contextlib.asynccontextmanager
async def lagging_commits(durable: Store) -> AsyncIterator[Store]:
    """The node's store under "ack-before-commit": pending commits die with the node (its scope is cancelled)."""
    async with trio.open_nursery() as commits:
        yield LaggingCommitStore(durable, commits)
        commits.cancel_scope.cancel()


def losers_run_to_the_end(node: Node) -> None:
    """Plant "losers-not-cancelled" in a node that just started: its queue manager runs every race's legs as a
    fanout's, each to its end (the judgement afterwards is still a race's: the first success in plan order wins)."""
    manager = node.manager
    run_legs = getattr(manager, "_run_legs", None)
    if run_legs is None or not callable(run_legs):
        raise RuntimeError("the node's QueueManager has no _run_legs to plant losers-not-cancelled in")

    async def every_leg_to_its_end(*args: Any, race: bool, **kwargs: Any) -> None:
        await run_legs(*args, race=False, **kwargs)

    setattr(manager, "_run_legs", every_leg_to_its_end)  # noqa: B010  (an instance attribute shadows the method)


def quota_by_count(node: Node) -> None:
    """Plant "quota-by-count" in a node that just started: its usage meter lets a submission in while the usage
    counter's total it knows, plus the submissions it is saving, is below the allowance; it never spends, borrows
    or mints rights for it (a borrow still happens at the allowance, and is useless)."""
    meter = getattr(node.manager, "_admission", None)
    counters = node.counters
    pending = getattr(meter, "_pending", None)
    if meter is None or counters is None or pending is None or not callable(getattr(meter, "_spare", None)):
        raise RuntimeError("the node has no usage meter with _spare and _pending to plant quota-by-count in")

    def spare_by_count(account_id: str, month: str, plan: PlanConfig) -> int:
        return plan.allowance - counters.counter_total(usage_name(account_id, month)) - pending[(account_id, month)]

    setattr(meter, "_spare", spare_by_count)  # noqa: B010  (an instance attribute shadows the method)


def runs_keys_by_view(node: Node) -> None:
    """Plant "minority-runs-keys" in a node that just started: its queues dispatch every key its membership says it
    owns, whatever the partition rule (cluster/lease.py) says."""
    membership = node.membership
    if membership is None or not callable(getattr(node.manager, "_owns", None)):
        raise RuntimeError("minority-runs-keys needs a clustered node whose queue manager has a dispatch gate")

    def owns_by_view(key: str) -> bool:
        owner = membership.owner_of(key)
        return owner is None or owner.node == membership.local.node

    setattr(node.manager, "_owns", owns_by_view)  # noqa: B010  (the manager's gate, given at construction)


class SavesReplication(Protocol):
    """The part of the node's replication that "ack-before-replicated" still uses: saves nobody waits on."""

    async def replicate_soon(self, records: Sequence[JobRecord], *, moved_from: Sequence[str] = ()) -> None: ...


@final
class LateReplication:
    """The queue manager's replication under "ack-before-replicated": `replicated` answers at once, as if every
    successor had the records, and sends them REPLICATION_LAG_S later; saves nobody waits on are unchanged."""

    def __init__(self, replication: SavesReplication, later: trio.Nursery) -> None:
        self._replication = replication
        self._later = later

    async def replicated(self, records: Sequence[JobRecord]) -> list[JobRecord | None]:
        await trio.lowlevel.checkpoint()
        self._later.start_soon(self._send_later, list(records))
        return [None] * len(records)

    async def replicate_soon(self, records: Sequence[JobRecord], *, moved_from: Sequence[str] = ()) -> None:
        await self._replication.replicate_soon(records, moved_from=moved_from)

    async def _send_later(self, records: list[JobRecord]) -> None:
        await trio.sleep(REPLICATION_LAG_S)
        await self._replication.replicate_soon(records)


def replicate_late(node: Node) -> None:
    """Plant "ack-before-replicated" in a node that just started: its queue manager's replication acknowledges
    new jobs before sending them; the sends run in the manager's nursery, so they die with the node."""
    manager = node.manager
    replication, nursery = manager._replication, manager._nursery
    if replication is None or nursery is None:
        raise RuntimeError("ack-before-replicated needs a running node that replicates (cluster.replicas >= 2)")
    manager._replication = LateReplication(replication, nursery)
