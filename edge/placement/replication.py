"""Replication: every job is kept by its queue key's owner and the next `cluster.replicas - 1` members.

Who holds a key's jobs. The key's replica set is the first `replicas` live members in the key's rendezvous order
(`Rendezvous.ranked`): the owner, then its successors. The second is exactly the member that becomes the owner when
the first is gone, so a takeover finds the jobs already on its disk; when fewer members are alive, every live one
holds them.

Writes. The owner makes a new job durable in its own store, then sends it to the successors, and the client hears
201 only when every successor has it durable too (`replicated`, called by `QueueManager.submit`). Every later save
of the job (retry scheduled, terminal state, workflow progress) travels the same way (`QueueManager._save`), so a
takeover never re-runs a finished job; an attempt in flight when the owner died may run again (at-least-once, made
safe by `send_idempotency_key`). Records carry a `revision` that grows with each save, and a copy only ever replaces
an older one (`Store.merge_jobs`), so copies that cross in the network settle on the latest. Calls to one peer are
batched (`_PeerLink`): concurrent submissions share one internal request, as they share one group commit.

Idempotency cluster-wide. A successor that already holds another job under the same (account, idempotent_key)
answers with that job, and the owner returns it (200) instead of its own new one, which it deletes. That covers
every move: after a member joins, the previous owner is the new owner's successor; after one dies, the new owner
was its successor; the sweep below brings copies to members new in a key's set.

Membership changes (`run`, a sweep after every change and every `SWEEP_S`):
- takeover: unfinished jobs held here as copies whose key this node owns now go into its queues;
- sync before running: a key this node did not own before (or any key, after this node heard it was declared
  dead: the others may have run its keys) is not dispatched (`may_dispatch`) until this node has pulled the other
  members' copies (`pull`, internal route `replica-pull`) and merged them, so a node back with an old disk, or from
  the wrong side of a partition, does not re-run what the others finished meanwhile;
- re-replication: copies go to members new in a key's set (a new successor after a takeover, a member back after
  a restart, with its old disk or an empty one); a node no longer in a key's set sends its copies to the set and
  then deletes them.

What it costs: one internal round trip (batched) and a second fsync before each 201; each save of a job once more
on every successor.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from cluster import MemberInfo
from edge.engine.records import JobRecord
from edge.placement.peers import PeerClient, PeerError, PeerStoreError
from edge.problems import Problem, store_unavailable
from edge.store import Store, StoreError

log = logging.getLogger("ezthrottle.replication")

SWEEP_S: Final = 5.0  # how often holders re-check their keys besides membership changes
STALL_S: Final = 0.5  # a save of a key unconfirmed this long holds the key's dispatches back
RETRY_S: Final = 0.5  # the longest wait between two tries of a write while membership has not changed
BATCH_RECORDS_MAX: Final = 256  # records per internal request to one peer
LINK_QUEUE_MAX: Final = 4096  # batches waiting for one peer before senders wait their turn


class ReplicationUnavailable(Problem):
    """A job is durable here but its successors could not all confirm it within the deadline: 503, and the
    client's retry with the same idempotency key gets the job once they have."""

    def __init__(self, missing: int, total: int) -> None:
        super().__init__(
            503,
            "Replicas unavailable",
            f"{missing} of {total} records not confirmed by every replica in time; the job was not acknowledged",
            kind="replicas-unavailable",
            headers={"Retry-After": "2"},
        )


class Membership(Protocol):
    @property
    def local(self) -> MemberInfo: ...

    @property
    def version(self) -> int: ...

    def live_members(self) -> list[MemberInfo]: ...

    def replica_set(self, key: str, count: int) -> list[MemberInfo]: ...

    def may_run(self, key: str) -> bool: ...

    @property
    def times_declared_dead(self) -> int: ...

    async def wait_changed(self, after_version: int) -> int: ...


class Manager(Protocol):
    """What replication needs from the queue manager."""

    def live_job(self, job_id: str) -> JobRecord | None: ...

    def adopt(self, records: Collection[JobRecord]) -> None:
        """Queue jobs held here as copies, whose key this node now runs."""
        ...

    def detach(self, is_foreign: Callable[[str], bool]) -> list[JobRecord]:
        """Take the waiting jobs of the matching keys out of their queues."""
        ...

    def ownership_changed(self) -> None: ...


class Deliveries(Protocol):
    """What replication needs from the webhook deliverer."""

    def schedule(self, record: JobRecord) -> None:
        """Queue a finished job's pending webhooks (once per job)."""
        ...


@dataclass(slots=True)
class _Batch:
    records: list[JobRecord]
    done: trio.Event = field(default_factory=trio.Event)
    results: list[JobRecord | None] = field(default_factory=list)
    error: PeerError | None = None


class _PeerLink:
    """Batches the records sent to one peer: one request carries what concurrent writers gave it meanwhile."""

    def __init__(self, peers: PeerClient, member: MemberInfo) -> None:
        self._peers = peers
        self.member = member
        self._send, self._receive = trio.open_memory_channel[_Batch](LINK_QUEUE_MAX)

    async def send(self, records: list[JobRecord]) -> list[JobRecord | None]:
        batch = _Batch(records)
        await self._send.send(batch)
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.results

    async def run(self) -> None:
        while True:
            batches = [await self._receive.receive()]
            count = len(batches[0].records)
            while count < BATCH_RECORDS_MAX:
                try:
                    batches.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
                count += len(batches[-1].records)
            try:
                results = await self._peers.replicate(self.member.api_address, [r for b in batches for r in b.records])
            except PeerError as exc:
                for batch in batches:
                    batch.error = exc
            else:
                for batch in batches:
                    batch.results, results = results[: len(batch.records)], results[len(batch.records) :]
            for batch in batches:
                batch.done.set()


class Replicator:
    """Keeps each job on its key's replica set (see the module docstring)."""

    def __init__(
        self,
        *,
        membership: Membership,
        peers: PeerClient,
        store: Store,
        replicas: int,
        deadline_s: float,
    ) -> None:
        self._membership = membership
        self._peers = peers
        self._store = store
        self._replicas = replicas
        self._deadline_s = deadline_s
        self._manager: Manager | None = None
        self._deliveries: Deliveries | None = None
        self._links: dict[str, _PeerLink] = {}
        self._nursery: trio.Nursery | None = None
        self._sweep_wanted = trio.Event()
        # Keys this node owns but has not yet synced with the other holders: not dispatched until it has.
        self._syncing: set[str] = set()
        self._owned_before: set[str] | None = None  # None until the first sweep: every owned key is new then
        self._last_live: dict[str, int] = {}  # node -> incarnation at the last sweep
        self._unfinished = False  # the last sweep could not reach someone: sweep again in SWEEP_S
        self._replicating: Counter[str] = Counter()  # job ids in a `replicated` call: its caller queues them
        self._declared_dead_seen = 0
        self._pull_all_owned = False  # the next sync also asks for copies of every key this node owns
        # Saves not yet confirmed by every holder, per key: how many, and since when the oldest (replicate_soon).
        self._outstanding: dict[str, int] = {}
        self._oldest_outstanding: dict[str, float] = {}
        self._unconfirmed: set[str] = set()  # keys with a save no sweep has confirmed since it failed
        self._replication_failures = 0

    def connect(self, manager: Manager, deliveries: Deliveries) -> None:
        self._manager = manager
        self._deliveries = deliveries

    async def delivery_final(self, job_id: str) -> None:
        """A job's webhook outcome became final here: save it as a new revision and send it to the copies."""
        try:
            record = await self._store.get_job(job_id)
            if record is None:
                return
            record.revision += 1
            await self._store.save_job(record)
        except StoreError:
            log.exception("could not save the final webhook outcome of job %s for its copies", job_id)
            return
        await self.replicate_soon([record])

    @property
    def _local(self) -> str:
        return self._membership.local.node

    def holders(self, key: str) -> list[MemberInfo]:
        return self._membership.replica_set(key, self._replicas)

    def holds(self, key: str) -> bool:
        """Whether this node is in the key's replica set."""
        return any(member.node == self._local for member in self.holders(key))

    def holds_copy(self, key: str) -> bool:
        """Whether this node keeps the key's jobs as a replica only (in its set, not its owner)."""
        return self.holds(key) and not self._owns(key)

    def may_dispatch(self, key: str) -> bool:
        """The queue manager's gate: this node may run the key (it owns it, and the partition rule of
        cluster/lease.py allows it) and has synced it. Nothing runs before the first sweep has said which keys need
        a sync: the queue manager resumes a restarted node's jobs before that sweep."""
        if self._owned_before is None or key in self._syncing or key in self._unconfirmed:
            return False
        oldest = self._oldest_outstanding.get(key)
        if oldest is not None and trio.current_time() - oldest > STALL_S:
            return False
        return self._membership.may_run(key)

    # -- writes -------------------------------------------------------------------------------------------------

    async def replicated(
        self, records: Sequence[JobRecord], *, moved_from: Sequence[str] = ()
    ) -> list[JobRecord | None]:
        """`_replicated`, and meanwhile no sweep queues these jobs: a new job's submission queues it once the
        successors have it, so a copy queued before that could run and finish, then be queued again and re-run."""
        replicating = Counter(record.job_id for record in records)
        self._replicating += replicating
        try:
            return await self._replicated(records, moved_from)
        finally:
            self._replicating -= replicating

    async def _replicated(self, records: Sequence[JobRecord], moved_from: Sequence[str]) -> list[JobRecord | None]:
        """Send `records` (saved here) to every other member of their keys' replica sets and wait until each has
        them durable. Per record, None, or the job a successor holds under the record's idempotency key instead.

        While a successor does not answer, waits for membership to change (it may have died, and the next member
        takes its place) and tries again; ReplicationUnavailable after the deadline. A successor whose store failed
        will not recover by then: a 503 store-unavailable Problem at once. `moved_from[i]`: the key
        record i had before a rekey; its holders get the record too, and drop their copy once they hold no
        other."""
        results: list[JobRecord | None] = [None] * len(records)
        pending = list(range(len(records)))
        with trio.move_on_after(self._deadline_s):
            while pending:
                version = self._membership.version
                failed: list[int] = []
                store_failed_on: list[str] = []
                async with trio.open_nursery() as nursery:
                    for member, indexes in self._by_successor(records, pending, moved_from).items():
                        nursery.start_soon(self._send_to, member, indexes, records, results, failed, store_failed_on)
                if store_failed_on:
                    raise store_unavailable(
                        f"the store of {store_failed_on[0]}, which keeps copies of this queue, failed; "
                        "the job was not acknowledged"
                    )
                pending = sorted(set(failed))
                if pending:
                    with trio.move_on_after(RETRY_S):
                        await self._membership.wait_changed(version)
            return results
        raise ReplicationUnavailable(len(pending), len(records))

    async def replicate_soon(self, records: Sequence[JobRecord], *, moved_from: Sequence[str] = ()) -> None:
        """`replicated` for a save nobody waits on: a failure is logged, and the next sweep sends the copies.

        While a save of a key is not confirmed for longer than STALL_S, or failed, the key dispatches nothing
        (`may_dispatch`): a successor that has not heard of a finished job would run it again if it took the key
        over, so no more of the key's jobs run until the copies are safe (a split costs at most the attempts in
        flight when it began, and those that started within STALL_S after)."""
        keys = {record.queue_key for record in records}
        started = trio.current_time()
        for key in keys:
            self._outstanding[key] = self._outstanding.get(key, 0) + 1
            self._oldest_outstanding.setdefault(key, started)
        try:
            # Not `replicated`: these jobs are queued already (or finished), so a sweep that took them out of their
            # queue to sync their key must be free to queue them again; nobody else would.
            await self._replicated(records, moved_from)
        except Problem as exc:  # ReplicationUnavailable, or a successor's store failed
            log.warning("replication of %d saved jobs incomplete (%s); the next sweep retries", len(records), exc)
            self._unconfirmed |= keys
            self._replication_failures += 1
            self._sweep_wanted.set()
        finally:
            for key in keys:
                self._outstanding[key] -= 1
                if not self._outstanding[key]:
                    del self._outstanding[key], self._oldest_outstanding[key]
            if trio.current_time() - started > STALL_S and self._manager is not None:
                self._manager.ownership_changed()  # keys held back by this save may go again

    def _by_successor(
        self, records: Sequence[JobRecord], indexes: Sequence[int], moved_from: Sequence[str]
    ) -> dict[str, list[int]]:
        """The indexes of the records each other holder must get, by node."""
        by_member: dict[str, list[int]] = defaultdict(list)
        local = self._local
        for index in indexes:
            members = self.holders(records[index].queue_key)
            if index < len(moved_from):
                members += self.holders(moved_from[index])
            for member in {m.node: m for m in members}.values():
                if member.node != local:
                    by_member[member.node].append(index)
                    self._link(member)
        return by_member

    def _link(self, member: MemberInfo) -> _PeerLink:
        link = self._links.get(member.node)
        if link is None or link.member.api_address != member.api_address:
            assert self._nursery is not None, "Replicator.run() must be started first"
            link = self._links[member.node] = _PeerLink(self._peers, member)
            self._nursery.start_soon(link.run)
        return link

    async def _send_to(
        self,
        node: str,
        indexes: list[int],
        records: Sequence[JobRecord],
        results: list[JobRecord | None],
        failed: list[int],
        store_failed_on: list[str],
    ) -> None:
        try:
            answers = await self._links[node].send([records[i] for i in indexes])
        except PeerError as exc:
            log.info("replicating %d jobs to %s failed (%s)", len(indexes), node, exc)
            failed.extend(indexes)
            if isinstance(exc, PeerStoreError):
                store_failed_on.append(node)
            return
        for index, answer in zip(indexes, answers, strict=True):
            if answer is not None:
                results[index] = answer

    # -- the serving side ---------------------------------------------------------------------------------------

    async def receive(self, records: list[JobRecord]) -> list[JobRecord | None]:
        """Keep copies sent by a holder; a copy of a key this node owns wakes the sweep (which may queue it)."""
        results = await self._store.merge_jobs(records)
        await self._requeue_outdated(records)
        if any(
            (r.status in ("queued", "running") and self._owns(r.queue_key)) or not self.holds(r.queue_key)
            for r in records
        ):
            self._sweep_wanted.set()  # to queue a job of a key owned here, or pass on a copy of one not held here
        return results

    async def _requeue_outdated(self, records: Sequence[JobRecord]) -> None:
        """Put the waiting jobs of an owned key back in line as the store has them now, when a copy just merged is
        newer than one of them: another member ran that job while both thought they owned the key (membership
        changing), and the stale one here, finished elsewhere meanwhile, must not run again."""
        manager = self._manager
        if manager is None:
            return
        keys = {
            record.queue_key
            for record in records
            if (live := manager.live_job(record.job_id)) is not None
            and live.revision < record.revision
            and self._owns(record.queue_key)
        }
        if keys:
            manager.detach(keys.__contains__)
            await self._take_over()

    async def pull(self, keys: Collection[str], owned_by: str | None = None) -> list[JobRecord]:
        """Every copy held here of the given keys (finished ones too), and with `owned_by` of every key that member
        owns in this node's view: a new owner syncs from them, and a node back with an empty disk learns its keys."""
        wanted = set(keys)
        if owned_by is not None:
            for key in await self._store.queue_keys():
                holders = self.holders(key)
                if holders and holders[0].node == owned_by:
                    wanted.add(key)
        return await self._store.jobs_of_keys(wanted)

    # -- membership changes -------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep at start, after every membership change, on request, and SWEEP_S after a sweep left work."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.sweep()
            task_status.started()
            version = self._membership.version
            while True:
                with trio.move_on_after(SWEEP_S if self._unfinished else math.inf):
                    async with trio.open_nursery() as waiting:

                        async def membership_changed() -> None:
                            nonlocal version
                            version = await self._membership.wait_changed(version)
                            waiting.cancel_scope.cancel()

                        async def wanted() -> None:
                            await self._sweep_wanted.wait()
                            waiting.cancel_scope.cancel()

                        waiting.start_soon(membership_changed)
                        waiting.start_soon(wanted)
                self._sweep_wanted = trio.Event()
                await self.sweep()

    async def sweep(self) -> None:
        """One pass: sync keys new to this node, take over copies, send copies to members new in a key's set."""
        self._unfinished = False
        live = {member.node: member.incarnation for member in self._membership.live_members()}
        keys = set(await self._store.queue_keys())
        owned = {key for key in keys if self._owns(key)}
        gained = owned if self._owned_before is None else owned - self._owned_before
        declared_dead = self._membership.times_declared_dead
        if self._owned_before is None or declared_dead != self._declared_dead_seen:
            # Started (with an old disk, or an empty one), or the others held this node dead: they may hold
            # copies of keys it owns that it has never seen, or have run any of its keys meanwhile.
            gained = owned
            self._pull_all_owned = True
            self._declared_dead_seen = declared_dead
        self._syncing |= gained
        if self._syncing or self._pull_all_owned:
            await self._sync(set(self._syncing))
        await self._take_over()
        await self._spread(keys, live)
        self._owned_before, self._last_live = owned, live

    def _owns(self, key: str) -> bool:
        holders = self.holders(key)
        return not holders or holders[0].node == self._local

    async def _sync(self, keys: set[str]) -> None:
        """Pull the other live members' copies of `keys` and merge them; keys synced with all of them may run.

        The keys' waiting jobs leave their queues first (none is in flight: the keys were not dispatched), so
        that the takeover queues them again from the store at their latest revision, or not at all if another
        holder finished them."""
        if self._manager is not None:
            self._manager.detach(keys.__contains__)
        others = [m for m in self._membership.live_members() if m.node != self._local]
        complete = True
        owned_by = self._local if self._pull_all_owned else None
        for member in others:
            try:
                copies = await self._peers.replica_pull(member.api_address, sorted(keys), owned_by=owned_by)
            except PeerError as exc:
                log.info("could not sync %d keys from %s (%s); trying again", len(keys), member.node, exc)
                complete = False
                continue
            if copies:
                await self._store.merge_jobs(copies)
        if complete:
            self._syncing -= keys
            self._pull_all_owned = False
        else:
            self._unfinished = True

    async def _take_over(self) -> None:
        """Queue the unfinished copies of keys this node owns and may run."""
        if self._manager is None:
            return
        manager = self._manager
        adopted = [
            record
            for record in await self._store.unfinished_jobs()
            if manager.live_job(record.job_id) is None
            and record.job_id not in self._replicating
            and self._owns(record.queue_key)
            and record.queue_key not in self._syncing
        ]
        if adopted:
            manager.adopt(adopted)
            log.info("took over %d queued jobs held here as copies", len(adopted))
        if self._deliveries is not None:
            for record in await self._store.jobs_with_pending_deliveries():
                if self._owns(record.queue_key) and record.queue_key not in self._syncing:
                    self._deliveries.schedule(record)
        manager.ownership_changed()  # keys synced since the last sweep may run now

    async def _spread(self, keys: set[str], live: dict[str, int]) -> None:
        """Send each key's copies to the members new in its set; drop the copies of keys this node left."""
        before = self._last_live
        failures_before = self._replication_failures
        new_members: dict[str, set[str]] = defaultdict(set)  # node -> keys to send it
        left: set[str] = set()
        local = self._local
        self._unconfirmed &= keys  # a key no longer stored here has nothing left to confirm
        for key in sorted(keys):  # sorted, here and below: the simulator replays a run only if its order is fixed
            holders = [m.node for m in self.holders(key)]
            for node in holders:
                if node != local and (before.get(node) != live.get(node) or key in self._unconfirmed):
                    new_members[node].add(key)
            if local not in holders:
                left.add(key)
                new_members.update({node: new_members[node] | {key} for node in holders})
        addresses = {m.node: m.api_address for m in self._membership.live_members()}
        failed_keys: set[str] = set()
        for node, node_keys in sorted(new_members.items()):
            copies = await self._store.jobs_of_keys(node_keys)
            for start in range(0, len(copies), BATCH_RECORDS_MAX):
                try:
                    await self._peers.replicate(addresses[node], copies[start : start + BATCH_RECORDS_MAX])
                except PeerError as exc:
                    log.info("sending copies of %d keys to %s failed (%s)", len(node_keys), node, exc)
                    failed_keys |= node_keys
                    self._unfinished = True
                    self._last_live.pop(node, None)
                    live.pop(node, None)  # so that the next sweep sends them again
                    break
        if self._replication_failures == failures_before:  # no save failed meanwhile: what was sent is confirmed
            self._unconfirmed -= keys - failed_keys
        droppable = left - failed_keys
        if droppable and self._manager is not None:
            manager = self._manager
            doomed = [r.job_id for r in await self._store.jobs_of_keys(droppable) if manager.live_job(r.job_id) is None]
            if doomed:
                await self._store.delete_jobs(doomed)
