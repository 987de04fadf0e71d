"""The store contract: what "durable" means for an accepted job, shared by every implementation.

Principle: nothing accepted is lost. A job is acknowledged only after `insert_job` returned, and a store
returns only once the write is durable (SQLite: committed and fsynced; memory: in the process-wide data,
which a simulated crash keeps). Every implementation must pass the same conformance suite
(tests/edge/store/test_conformance.py): the same dedupe, ordering, purge and copy semantics.

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
- Shared-state rows land in call order: of two calls that write one key (`save_shared_state`, `insert_job`'s
  `shared_state`) and both take effect, the one called later leaves its value, however their tasks are scheduled.
  A value computed just before its call is therefore never overwritten by one computed earlier (the usage meter
  relies on it: edge/placement/usage.py).

Delivery saves (`save_delivery`): a webhook delivery try records one delivery's new state without rewriting the
record, whose response may be up to 1 MiB, on every try for up to 24 hours.
- `save_delivery(job_id, index, delivery, webhook_outcome, updated_at_ms)` makes the stored delivery `index` of
  `job_id` be `delivery`, and the job's `webhook_outcome` be the given value. Every read (`get_job`,
  `unfinished_jobs`, `jobs_with_pending_deliveries`, `insert_job`'s duplicate answer) returns records whose
  deliveries and outcome reflect every `save_delivery` since the job's last `save_job`. A later `save_job` of
  the whole record replaces everything: its deliveries, outcome and `updated_at_ms` win.
- `updated_at_ms`: each delivery's saved state keeps the `updated_at_ms` it was saved with, and reads report the
  greatest of them (since the last `save_job`) as the record's `updated_at_ms`. That is the value given by the
  latest `save_delivery` unless the caller's wall clock stepped back between two of them.
- `jobs_with_pending_deliveries` and `purge_finished` follow the outcome given by the latest `save_delivery`: a
  job it made "pending" is never purged, one it made "delivered" or "failed" is no longer pending.
- A job_id with no stored job, or an index outside the stored record's deliveries (negative indexes included),
  fails with `StoreError` naming which, as does an outcome that is not a `WebhookOutcome`; nothing is changed.
- The delivery is encoded when the call is made, like a record, and is durable on return like every write (SQLite:
  it commits in the group like any other operation). `delete_jobs` and `purge_finished` remove a job's saved
  deliveries with it, so a job_id inserted again later starts from its own record.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, cast, get_args

import msgpack

from edge.engine.records import Delivery, JobRecord

UNFINISHED_STATUSES: frozenset[str] = frozenset({"queued", "running"})

# The values of `JobRecord.webhook_outcome` (a test checks that the two stay the same).
WebhookOutcome = Literal["none", "pending", "delivered", "failed"]
WEBHOOK_OUTCOMES: frozenset[str] = frozenset(get_args(WebhookOutcome))


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

    `delivery_count` (how many deliveries the record lists) bounds `save_delivery`'s index.

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
    delivery_count: int
    revision: int
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
            delivery_count=len(record.deliveries),
            revision=record.revision,
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


def stored_delivery_count(blob: bytes) -> int:
    """How many deliveries an encoded record lists, read without building the record.

    The other values (the response among them) are skipped, not decoded, so this costs little even for a 1 MiB
    record.
    """
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(blob)
    for _ in range(unpacker.read_map_header()):
        if unpacker.unpack() == "deliveries":
            return int(unpacker.read_array_header())
        unpacker.skip()
    return 0


@dataclass(frozen=True, slots=True)
class EncodedDelivery:
    """One delivery's state as `save_delivery` was handed it: its index, msgpack of `to_wire()`, and when."""

    index: int
    blob: bytes
    updated_at_ms: int

    @classmethod
    def of(cls, index: int, delivery: Delivery, updated_at_ms: int) -> EncodedDelivery:
        return cls(index=index, blob=encode_delivery(delivery), updated_at_ms=updated_at_ms)

    def decode(self) -> Delivery:
        return decode_delivery(self.blob)


def encode_delivery(delivery: Delivery) -> bytes:
    return msgpack.packb(delivery.to_wire(), use_bin_type=True)


def decode_delivery(blob: bytes) -> Delivery:
    return Delivery.from_wire(msgpack.unpackb(blob, raw=False))


def checked_webhook_outcome(outcome: str) -> WebhookOutcome:
    """`outcome` if it is a webhook outcome a record can hold; StoreError otherwise."""
    if outcome not in WEBHOOK_OUTCOMES:
        raise StoreError(f"{outcome!r} is not a webhook outcome (one of {', '.join(sorted(WEBHOOK_OUTCOMES))})")
    return cast(WebhookOutcome, outcome)


def unknown_job_error(job_id: str) -> StoreError:
    return StoreError(f"save_delivery: unknown job_id {job_id!r}, nothing saved")


def delivery_index_error(job_id: str, index: int, delivery_count: int) -> StoreError:
    return StoreError(
        f"save_delivery: delivery index {index} is out of range for job {job_id!r}, which has {delivery_count}"
        " deliveries; nothing saved"
    )


def overlay_deliveries(record: JobRecord, webhook_outcome: str, deliveries: Iterable[EncodedDelivery]) -> JobRecord:
    """`record` (freshly decoded) with the deliveries and outcome saved since it was: what every read returns."""
    record.webhook_outcome = checked_webhook_outcome(webhook_outcome)
    updated_at_ms: int | None = None
    for saved in deliveries:
        record.deliveries[saved.index] = saved.decode()
        updated_at_ms = saved.updated_at_ms if updated_at_ms is None else max(updated_at_ms, saved.updated_at_ms)
    if updated_at_ms is not None:
        record.updated_at_ms = updated_at_ms
    return record


class Store(Protocol):
    """Durable job storage for one node. Every method is a Trio checkpoint; writes are durable on return."""

    async def insert_job(
        self, record: JobRecord, spawned: Sequence[JobRecord] = (), *, shared_state: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[JobRecord, bool]:
        """Store a new job: (stored copy, True); or (existing job, False) if the account used the key.

        `spawned` (a new workflow's first step) are inserted in the same transaction, only with a new job; so are
        the `shared_state` rows (key, value), each as `save_shared_state` writes one (copied when the call is
        made). A duplicate writes neither, nor does a call that fails: the job and its rows are durable together
        or not at all."""
        ...

    async def save_job(self, record: JobRecord, spawned: Sequence[JobRecord] = ()) -> None:
        """Insert or replace the whole record by job_id (deliveries saved by `save_delivery` included).

        `spawned` (a workflow's next step, a follow-up job) are inserted in the same transaction; one that exists
        already (by id or idempotency key: a decision replayed after a crash) is left as it is."""
        ...

    async def save_delivery(
        self, job_id: str, index: int, delivery: Delivery, webhook_outcome: str, updated_at_ms: int
    ) -> None:
        """Record one delivery's new state (and the job's webhook outcome) without rewriting the record."""
        ...

    async def merge_jobs(self, records: Sequence[JobRecord]) -> list[JobRecord | None]:
        """Keep copies sent by another node (replication): each record replaces the stored job of its id unless
        that one's `revision` is as high (deliveries saved since are dropped with it, as by `save_job`).

        Per record, None when it is stored or a newer one was; the job stored under the record's (account_id,
        idempotent_key) when that is another job: the record is then not stored, and the sender answers its
        client with that job. All in one transaction."""
        ...

    async def jobs_of_keys(self, queue_keys: Collection[str]) -> list[JobRecord]:
        """Every stored job (finished or not) of the given queue keys, oldest first: what a replica sends on."""
        ...

    async def queue_keys(self) -> list[str]:
        """The distinct queue keys of the stored jobs."""
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

    async def shared_state(self) -> dict[str, bytes]:
        """The node's saved shared settings (edge/placement/shared_state.py), by key."""
        ...

    async def save_shared_state(self, key: str, value: bytes) -> None:
        """Insert or replace one shared setting; the value is opaque to the store."""
        ...

    async def delete_jobs(self, job_ids: Collection[str]) -> int:
        """Delete jobs by id whatever their state (after a cluster hand-off); returns how many existed."""
        ...

    def statistics(self) -> StoreStatistics: ...
