"""The store contract: what "durable" means for an accepted job, shared by every implementation.

Principle: nothing accepted is lost. A job is acknowledged only after `insert_job` returned, and a store
returns only once the write is durable (SQLite: committed and fsynced; memory: in the process-wide data,
which a simulated crash keeps). Every implementation must pass the same conformance suite
(tests/store/test_conformance.py): the same dedupe, ordering, purge and copy semantics.

Semantics both implementations share, stated once:
- Idempotency: (account_id, idempotent_key) names at most one job, finished or not, until it is purged or
  deleted.
- `unfinished_jobs` and `jobs_with_pending_deliveries` are ordered by (created_at_ms, job_id): oldest first,
  and ties broken the same way everywhere so that recovery order is reproducible.
- `purge_finished` never deletes a job whose webhooks are still pending: that would lose a result we owe.
- Records are copied on the way in and out (they are frozen as an `EncodedJob` when a call is made), so a
  caller that mutates a record after saving it does not silently change what is stored.
- A call that is cancelled while it waits may or may not have taken effect (as with any lost
  acknowledgement); idempotent keys make a retry safe.
- Exceptions: a call fails with `StoreError` (never hangs, never succeeds silently). A closed store fails
  every call with `StoreError("store closed")`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import msgpack

from edge.records import JobRecord

UNFINISHED_STATUSES: frozenset[str] = frozenset({"queued", "running"})


class StoreError(Exception):
    """A store call did not take effect (or may not have): closed store, disk full, corrupt file, conflict."""


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of a store's work: how many operations ran in how many transactions.

    `commits` counts transactions committed; with group commit it grows far slower than `operations`.
    """

    commits: int
    operations: int


@dataclass(frozen=True, slots=True)
class EncodedJob:
    """A record frozen at the moment of a call: the columns queries filter on, and msgpack of `to_wire()`.

    Encoding happens in the calling task so that the stored value is the record as the caller handed it over,
    whatever the caller does to it afterwards. Decoding builds a fresh `JobRecord` every time.
    """

    job_id: str
    account_id: str
    idempotent_key: str
    status: str
    queue_key: str
    created_at_ms: int
    finished_at_ms: int | None
    webhook_outcome: str
    blob: bytes

    @classmethod
    def of(cls, record: JobRecord) -> EncodedJob:
        return cls(
            job_id=record.job_id,
            account_id=record.account_id,
            idempotent_key=record.idempotent_key,
            status=record.status,
            queue_key=record.queue_key,
            created_at_ms=record.created_at_ms,
            finished_at_ms=record.finished_at_ms,
            webhook_outcome=record.webhook_outcome,
            blob=encode_record(record),
        )

    @property
    def idempotency(self) -> tuple[str, str]:
        return (self.account_id, self.idempotent_key)

    def decode(self) -> JobRecord:
        return decode_record(self.blob)


def encode_record(record: JobRecord) -> bytes:
    """The stored form of a record: msgpack of its wire dict (TypeError for values msgpack cannot hold)."""
    return msgpack.packb(record.to_wire(), use_bin_type=True)


def decode_record(blob: bytes) -> JobRecord:
    return JobRecord.from_wire(msgpack.unpackb(blob, raw=False))


class Store(Protocol):
    """Durable job storage for one node. Every method is a Trio checkpoint; writes are durable on return."""

    async def insert_job(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new job: (stored copy, True); or (existing job, False) if the account used the key."""
        ...

    async def save_job(self, record: JobRecord) -> None:
        """Insert or replace the whole record by job_id."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs queued or running, oldest first: what a restarted node must resume."""
        ...

    async def jobs_with_pending_deliveries(self) -> list[JobRecord]:
        """Finished jobs whose webhook outcome is still pending, oldest first."""
        ...

    async def purge_finished(self, finished_before_ms: int) -> int:
        """Delete terminal jobs finished strictly before the cutoff that owe no webhook; return the count."""
        ...

    async def count_unfinished(self, account_id: str) -> int:
        """How many of the account's jobs are queued or running (the backlog limit, rebuilt at startup)."""
        ...

    async def delete_jobs(self, job_ids: Collection[str]) -> int:
        """Delete jobs by id whatever their state (after a cluster hand-off); returns how many existed."""
        ...

    def statistics(self) -> StoreStatistics: ...
