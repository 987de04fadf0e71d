"""In-memory store: the same contract as SQLite, with no threads and no I/O, for the simulator and unit tests.

The data lives in a `MemoryStoreData`, separate from the store view that serves calls, so that a simulated
crash can drop a node (its view closes with it) and restart it over the same data:

    data = MemoryStoreData()
    async with open_memory_store(data) as store:    # the node before the crash
        ...
    async with open_memory_store(data) as store:    # the node after the restart sees every acknowledged write
        ...

A write is "durable" as soon as it is in `data`, which is the memory-store analogue of a committed SQLite
transaction. One open view at a time is the intended use; nothing enforces it. Every operation is its own
transaction, so `statistics().commits == statistics().operations`. Every call yields to the scheduler once; the
calls that write shared-state rows (`insert_job`, `save_shared_state`) write before they yield, the others after,
so those rows land in call order as base.py asks.

Like SQLite, `save_delivery` keeps a delivery's state beside the job's `EncodedJob` (whose blob it never
re-encodes) and every read overlays it on the decoded record; `save_job` and deletion drop it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import final

import trio

from edge.engine.records import TERMINAL_STATUSES, Delivery, JobRecord
from edge.store.base import (
    UNFINISHED_STATUSES,
    EncodedDelivery,
    EncodedJob,
    Store,
    StoreError,
    StoreStatistics,
    checked_webhook_outcome,
    delivery_index_error,
    overlay_deliveries,
    unknown_job_error,
)


@final
class MemoryStoreData:
    """Everything a memory store keeps; outlives the store views opened over it."""

    __slots__ = ("deliveries", "job_id_by_idempotency", "jobs", "shared_state")

    def __init__(self) -> None:
        # A job's `webhook_outcome` here is the latest one given (by save_job or save_delivery); its blob is the
        # record as save_job last encoded it.
        self.jobs: dict[str, EncodedJob] = {}
        self.job_id_by_idempotency: dict[tuple[str, str], str] = {}
        # Per job, the deliveries saved by save_delivery since its last save_job, by index.
        self.deliveries: dict[str, dict[int, EncodedDelivery]] = {}
        self.shared_state: dict[str, bytes] = {}

    def decode(self, job: EncodedJob) -> JobRecord:
        """A fresh record: the stored blob with the saved deliveries and the latest outcome on top."""
        return overlay_deliveries(job.decode(), job.webhook_outcome, self.deliveries.get(job.job_id, {}).values())

    def oldest_first(self, jobs: Iterable[EncodedJob]) -> list[JobRecord]:
        return [self.decode(job) for job in sorted(jobs, key=lambda job: (job.created_at_ms, job.job_id))]


def _is_purgeable(job: EncodedJob, finished_before_ms: int) -> bool:
    return (
        job.status in TERMINAL_STATUSES
        and job.finished_at_ms is not None
        and job.finished_at_ms < finished_before_ms
        and job.webhook_outcome != "pending"
    )


@final
class MemoryStore:
    """A view over `MemoryStoreData`; build it with `open_memory_store`."""

    __slots__ = ("_closed", "_commits", "_data")

    def __init__(self, data: MemoryStoreData) -> None:
        self._data = data
        self._closed = False
        self._commits = 0

    async def _begin(self) -> MemoryStoreData:
        """Fail if closed, yield to the scheduler like any store call, and count one transaction."""
        if self._closed:
            raise StoreError("store closed")
        await trio.lowlevel.checkpoint()
        self._commits += 1
        return self._data

    @asynccontextmanager
    async def _begin_in_call_order(self) -> AsyncIterator[MemoryStoreData]:
        """`_begin` for the calls that write shared-state rows, which land in call order (base.py): cancellation is
        checked first, but the call writes before it yields, so a later call cannot be scheduled ahead of it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            if self._closed:
                raise StoreError("store closed")
            self._commits += 1
            yield self._data
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def insert_job(
        self, record: JobRecord, spawned: Sequence[JobRecord] = (), *, shared_state: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[JobRecord, bool]:
        job, copy = EncodedJob.of(record), record.copy()  # what was stored, without decoding it back
        more = [EncodedJob.of(r) for r in spawned]
        rows = [(key, bytes(value)) for key, value in shared_state]
        async with self._begin_in_call_order() as data:
            existing_id = data.job_id_by_idempotency.get(job.idempotency)
            if existing_id is not None:
                return data.decode(data.jobs[existing_id]), False
            if job.job_id in data.jobs:
                raise StoreError(f"job_id {job.job_id!r} already exists under another idempotent_key")
            self._put(data, job)
            self._put_spawned(data, more)
            data.shared_state.update(rows)
            return copy, True

    async def save_job(self, record: JobRecord, spawned: Sequence[JobRecord] = ()) -> None:
        job = EncodedJob.of(record)
        more = [EncodedJob.of(r) for r in spawned]
        data = await self._begin()
        owner_id = data.job_id_by_idempotency.get(job.idempotency)
        if owner_id is not None and owner_id != job.job_id:
            raise StoreError(f"idempotent_key {job.idempotent_key!r} belongs to job {owner_id!r}")
        previous = data.jobs.get(job.job_id)
        if previous is not None:
            del data.job_id_by_idempotency[previous.idempotency]
        data.deliveries.pop(job.job_id, None)  # the record is the whole truth again
        self._put(data, job)
        self._put_spawned(data, more)

    def _put_spawned(self, data: MemoryStoreData, spawned: list[EncodedJob]) -> None:
        for job in spawned:
            if job.job_id not in data.jobs and job.idempotency not in data.job_id_by_idempotency:
                self._put(data, job)

    async def save_delivery(
        self, job_id: str, index: int, delivery: Delivery, webhook_outcome: str, updated_at_ms: int
    ) -> None:
        saved = EncodedDelivery.of(index, delivery, updated_at_ms)
        data = await self._begin()
        outcome = checked_webhook_outcome(webhook_outcome)
        job = data.jobs.get(job_id)
        if job is None:
            raise unknown_job_error(job_id)
        if not 0 <= index < job.delivery_count:
            raise delivery_index_error(job_id, index, job.delivery_count)
        data.deliveries.setdefault(job_id, {})[index] = saved
        if job.webhook_outcome != outcome:  # the blob is shared, not copied
            data.jobs[job_id] = dataclasses.replace(job, webhook_outcome=outcome)

    @staticmethod
    def _put(data: MemoryStoreData, job: EncodedJob) -> None:
        data.jobs[job.job_id] = job
        data.job_id_by_idempotency[job.idempotency] = job.job_id

    async def merge_jobs(self, records: Sequence[JobRecord]) -> list[JobRecord | None]:
        jobs = [EncodedJob.of(r) for r in records]
        data = await self._begin()
        results: list[JobRecord | None] = []
        for job in jobs:
            holder_id = data.job_id_by_idempotency.get(job.idempotency)
            if holder_id is not None and holder_id != job.job_id:
                results.append(data.decode(data.jobs[holder_id]))
                continue
            stored = data.jobs.get(job.job_id)
            if stored is not None and stored.idempotency != job.idempotency:
                results.append(data.decode(stored))  # the id under another key: never in practice
                continue
            if stored is None or stored.revision < job.revision:
                data.deliveries.pop(job.job_id, None)
                self._put(data, job)
            results.append(None)
        return results

    async def jobs_of_keys(self, queue_keys: Collection[str]) -> list[JobRecord]:
        wanted = set(queue_keys)
        data = await self._begin()
        return data.oldest_first(job for job in data.jobs.values() if job.queue_key in wanted)

    async def queue_keys(self) -> list[str]:
        data = await self._begin()
        return sorted({job.queue_key for job in data.jobs.values()})

    async def get_job(self, job_id: str) -> JobRecord | None:
        data = await self._begin()
        job = data.jobs.get(job_id)
        return None if job is None else data.decode(job)

    async def unfinished_jobs(self) -> list[JobRecord]:
        data = await self._begin()
        return data.oldest_first(job for job in data.jobs.values() if job.status in UNFINISHED_STATUSES)

    async def jobs_with_pending_deliveries(self) -> list[JobRecord]:
        data = await self._begin()
        return data.oldest_first(job for job in data.jobs.values() if job.webhook_outcome == "pending")

    async def purge_finished(self, finished_before_ms: int) -> int:
        data = await self._begin()
        doomed = [job.job_id for job in data.jobs.values() if _is_purgeable(job, finished_before_ms)]
        return self._delete(data, doomed)

    async def count_unfinished(self, account_id: str) -> int:
        data = await self._begin()
        return sum(
            1 for job in data.jobs.values() if job.account_id == account_id and job.status in UNFINISHED_STATUSES
        )

    async def delete_jobs(self, job_ids: Collection[str]) -> int:
        doomed = list(job_ids)
        data = await self._begin()
        return self._delete(data, doomed)

    @staticmethod
    def _delete(data: MemoryStoreData, job_ids: Iterable[str]) -> int:
        deleted = 0
        for job_id in job_ids:
            job = data.jobs.pop(job_id, None)
            if job is not None:
                del data.job_id_by_idempotency[job.idempotency]
                data.deliveries.pop(job_id, None)
                deleted += 1
        return deleted

    async def shared_state(self) -> dict[str, bytes]:
        data = await self._begin()
        return dict(data.shared_state)

    async def save_shared_state(self, key: str, value: bytes) -> None:
        value = bytes(value)
        async with self._begin_in_call_order() as data:
            data.shared_state[key] = value

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(commits=self._commits, operations=self._commits)

    def _close(self) -> None:
        self._closed = True


@asynccontextmanager
async def open_memory_store(data: MemoryStoreData | None = None) -> AsyncIterator[Store]:
    """Open a store view over `data` (fresh data when None); pass the same data again to "restart"."""
    store = MemoryStore(MemoryStoreData() if data is None else data)
    try:
        yield store
    finally:
        store._close()
