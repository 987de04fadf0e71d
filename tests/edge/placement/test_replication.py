"""The Replicator's own decisions, on an in-memory store with a fixed membership and stand-ins for the queue manager
and the peers: which jobs a node queues when copies cross, found by the simulator's disk-loss runs."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import trio

from cluster import MemberInfo, MemberState
from edge.engine.records import JobRecord
from edge.placement.replication import Replicator
from edge.store import MemoryStoreData, Store, open_memory_store
from tests.edge.store.helpers import finish, make_record


def member(node: str) -> MemberInfo:
    return MemberInfo(
        node=node,
        address=f"{node}.test:7946",
        region="",
        api_address=f"{node}.test:8080",
        incarnation=1,
        state=MemberState.ALIVE,
    )


class FixedMembership:
    """`n1` (this node) first in every key's order, then the others; nothing ever changes."""

    def __init__(self, *others: str) -> None:
        self.members = [member("n1"), *(member(node) for node in others)]
        self.local = self.members[0]
        self.version = 1
        self.times_declared_dead = 0

    def live_members(self) -> list[MemberInfo]:
        return list(self.members)

    def replica_set(self, key: str, count: int) -> list[MemberInfo]:
        return self.members[:count]

    def may_run(self, key: str) -> bool:
        return True

    async def wait_changed(self, after_version: int) -> int:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class Manager:
    """The queue manager as the Replicator sees it: the jobs waiting in its queues, by id."""

    def __init__(self) -> None:
        self.waiting: dict[str, JobRecord] = {}

    def live_job(self, job_id: str) -> JobRecord | None:
        return self.waiting.get(job_id)

    def adopt(self, records: Collection[JobRecord]) -> None:
        self.waiting.update((record.job_id, record) for record in records)

    def detach(self, is_foreign: Callable[[str], bool]) -> list[JobRecord]:
        detached = [record for record in self.waiting.values() if is_foreign(record.queue_key)]
        for record in detached:
            del self.waiting[record.job_id]
        return detached

    def ownership_changed(self) -> None:
        pass


class Deliveries:
    def schedule(self, record: JobRecord) -> None:
        pass


class SilentPeer:
    """A successor that confirms copies only once `answer` is set, and holds nothing to pull."""

    def __init__(self) -> None:
        self.answer = trio.Event()

    async def replicate(self, address: str, records: list[JobRecord]) -> list[JobRecord | None]:
        await self.answer.wait()
        return [None] * len(records)

    async def replica_pull(self, address: str, keys: list[str], *, owned_by: str | None = None) -> list[JobRecord]:
        return []


def replicator(store: Store, membership: FixedMembership, peers: Any = None) -> tuple[Replicator, Manager]:
    manager = Manager()
    replicas = Replicator(membership=membership, peers=peers, store=store, replicas=2, deadline_s=60)
    replicas.connect(manager, Deliveries())
    return replicas, manager


async def test_a_newer_copy_replaces_the_job_waiting_here_and_a_finished_one_leaves_the_queue() -> None:
    # Both this node and another believed they owned the key while membership changed; the other ran the job.
    async with open_memory_store(MemoryStoreData()) as store:
        replicas, manager = replicator(store, FixedMembership())
        waiting, _created = await store.insert_job(make_record("job-1"))
        retried, _created = await store.insert_job(make_record("job-2"))
        manager.adopt([waiting.copy(), retried.copy()])

        retried.revision, retried.retries_used = 1, 1
        await replicas.receive([retried])
        assert manager.waiting["job-2"].retries_used == 1  # back in line as the copy has it

        ran_elsewhere = finish(waiting, finished_at_ms=waiting.created_at_ms + 1_000)
        ran_elsewhere.revision = 2
        await replicas.receive([ran_elsewhere])
        assert "job-1" not in manager.waiting and "job-2" in manager.waiting  # finished: it never runs here again


async def test_a_sweep_leaves_a_new_job_to_its_submission_while_the_successor_confirms_it() -> None:
    # A submission waits for its successor (which died, say); were the sweep to queue the job meanwhile, it could
    # run and finish before the submission queues its own, older record, which would then run the job again.
    async with open_memory_store(MemoryStoreData()) as store, trio.open_nursery() as nursery:
        peer = SilentPeer()
        replicas, manager = replicator(store, FixedMembership("n2"), peer)
        await nursery.start(replicas.run)
        record, _created = await store.insert_job(make_record("job-1"))
        confirmed: list[list[JobRecord | None]] = []

        async def submit() -> None:
            confirmed.append(await replicas.replicated([record]))

        nursery.start_soon(submit)
        await trio.testing.wait_all_tasks_blocked()
        await replicas.sweep()
        assert manager.waiting == {}  # left to the submission

        peer.answer.set()
        await trio.testing.wait_all_tasks_blocked()
        assert confirmed == [[None]]
        await replicas.sweep()
        assert "job-1" in manager.waiting  # no submission holds it any more: an unfinished copy is taken over
        nursery.cancel_scope.cancel()


async def test_a_restarted_node_dispatches_nothing_before_its_first_sweep_has_synced_its_keys() -> None:
    # The queue manager resumes the jobs on a restarted node's disk at once; the others may have finished some of
    # them while it was down, which only the first sweep's sync (here, with nobody to pull from) can tell.
    async with open_memory_store(MemoryStoreData()) as store:
        replicas, _manager = replicator(store, FixedMembership())
        record, _created = await store.insert_job(make_record("job-1"))
        assert not replicas.may_dispatch(record.queue_key)
        await replicas.sweep()
        assert replicas.may_dispatch(record.queue_key)
