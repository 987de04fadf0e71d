"""SQLite store: one file, WAL, one worker thread, group commit.

Durability: `journal_mode=WAL` with `synchronous=FULL`. In WAL mode FULL fsyncs the WAL at every commit, so
a transaction that COMMIT returned for survives `kill -9` *and* power loss. NORMAL would also survive
`kill -9` (the WAL pages are in the OS cache) but may lose the last commits on power loss or a kernel crash
unless we added our own checkpoint policy; with group commit the fsync is paid once per group, not per job,
so FULL costs little and needs no policy. Checkpoints stay automatic (SQLite's default, every ~1000 pages)
and the WAL file is truncated back to `WAL_FILE_BYTES_MAX` after them.

Group commit: every call becomes an `_Operation` on an unbounded channel and its caller waits. A single
worker task takes everything queued (up to `OPERATIONS_PER_GROUP_MAX`), runs it in one transaction in a
worker thread (`trio.to_thread.run_sync`, our own limiter of 1 so DNS lookups cannot starve commits),
commits (one fsync), and only then wakes the callers. While group N commits, group N+1 gathers in the
channel. The event loop never touches SQLite; it only encodes records (msgpack, microseconds) so that what
is stored is the record as it was when the call was made.

Reads go through the same worker and the same connection. That is the simplest consistent choice: operations
run in call order, so a read sees every write issued before it, and since nobody is answered before the
group commits, a reader never observes a write that could still be lost. The price is that a read waits for
the current group; reads are rare (status queries, startup recovery), and a second read-only connection
would give up the call-order guarantee for a gain we have not measured a need for.

Delivery saves: a webhook delivery try must not rewrite the record (its response may be 1 MiB, and tries go on
for up to 24 hours), and an UPDATE of a jobs row rewrites the whole row, blob included (every overflow page of
it once the row changes size, as it does when the outcome changes). So `save_delivery` writes one small row of
the `deliveries` table (msgpack of `Delivery.to_wire()`, and the `updated_at_ms` it was given: see base.py), and
touches the jobs row only when the job's `webhook_outcome` changes (typically once, when its last pending
delivery ends), because the outcome column is what the pending and purge queries filter on. A delivery's first
save since the record's also reads the record once, to check the index; later ones find their row. Reads
overlay the delivery rows and the outcome column on the decoded record. `save_job` deletes the job's delivery
rows (its record is the whole truth again); a trigger deletes them with their job (`delete_jobs`,
`purge_finished`), so they never outlive it.

Errors: a constraint violation (a job_id reused with another idempotent key, a save moving a record onto a
key owned by another job) fails only that call: SQLite rolls back just the statement. Any other SQLite error
(disk full, I/O error, corrupt file) fails every call of the group, which is rolled back; later groups try
again. Every failure reaches its caller as `StoreError`; nothing hangs and nothing succeeds silently.

Closing (leaving `open_sqlite_store`): later calls fail with `StoreError("store closed")`; everything
already accepted is still committed (the worker is shielded from cancellation), then the connection is
closed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar, final

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
    decode_record,
    delivery_index_error,
    overlay_deliveries,
    stored_delivery_count,
    unknown_job_error,
)

# A big group delays every caller in it; 512 small inserts commit in a few milliseconds.
OPERATIONS_PER_GROUP_MAX = 512
# Purging deletes in batches so that a large purge never holds one long transaction ahead of new jobs.
PURGE_BATCH_ROWS = 500
# How long a transaction waits for a lock held by another connection (e.g. an operator's sqlite3 shell).
LOCK_WAIT_S = 5.0
# After a checkpoint, SQLite truncates the WAL file back to this size.
WAL_FILE_BYTES_MAX = 64 * 1024 * 1024

T = TypeVar("T")


def _sql_list(values: Iterable[str]) -> str:
    """An SQL literal list; queries and partial indexes share it so that the planner sees identical terms."""
    return "(" + ", ".join(f"'{value}'" for value in sorted(values)) + ")"


_IS_UNFINISHED = f"status IN {_sql_list(UNFINISHED_STATUSES)}"
_IS_TERMINAL = f"status IN {_sql_list(TERMINAL_STATUSES)}"
_IS_WEBHOOK_PENDING = "webhook_outcome = 'pending'"

# Each migration takes the schema from version i to i + 1 (PRAGMA user_version). Only append.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            job_id TEXT NOT NULL PRIMARY KEY,
            account_id TEXT NOT NULL,
            idempotent_key TEXT NOT NULL,
            status TEXT NOT NULL,
            queue_key TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL,
            finished_at_ms INTEGER,
            webhook_outcome TEXT NOT NULL,
            record BLOB NOT NULL,
            UNIQUE (account_id, idempotent_key)
        ) STRICT""",
        f"CREATE INDEX jobs_unfinished ON jobs (created_at_ms, job_id) WHERE {_IS_UNFINISHED}",
        f"CREATE INDEX jobs_unfinished_by_account ON jobs (account_id) WHERE {_IS_UNFINISHED}",
        f"CREATE INDEX jobs_webhook_pending ON jobs (created_at_ms, job_id) WHERE {_IS_WEBHOOK_PENDING}",
        "CREATE INDEX jobs_finished ON jobs (finished_at_ms) WHERE finished_at_ms IS NOT NULL",
    ),
    (
        # Version 2: deliveries saved by `save_delivery` since the job's record was last saved.
        """CREATE TABLE deliveries (
            job_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            delivery BLOB NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            PRIMARY KEY (job_id, idx)
        ) WITHOUT ROWID, STRICT""",
        """CREATE TRIGGER jobs_delete_deliveries AFTER DELETE ON jobs BEGIN
            DELETE FROM deliveries WHERE job_id = old.job_id;
        END""",
    ),
    (
        # Version 3: the node's shared settings (edge/placement/shared_state.py), one opaque value per key.
        "CREATE TABLE shared_state (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID, STRICT",
    ),
    (
        # Version 4: replication (edge/placement/replication.py) compares revisions and reads jobs by queue key.
        "ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_by_queue_key ON jobs (queue_key)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = (
    "job_id, account_id, idempotent_key, status, queue_key, created_at_ms, finished_at_ms, webhook_outcome, revision,"
    " record"
)
_INSERT_SQL = f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_SQL = (
    _INSERT_SQL
    + " ON CONFLICT (job_id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS.split(", ")[1:])
)
# A new job costs one statement, a duplicate two. Only the idempotency constraint is the conflict target, so a
# job_id reused under another key still fails with IntegrityError.
_INSERT_UNLESS_DUPLICATE_SQL = _INSERT_SQL + " ON CONFLICT (account_id, idempotent_key) DO NOTHING"
_INSERT_UNLESS_EXISTS_SQL = _INSERT_SQL.replace("INSERT", "INSERT OR IGNORE", 1)
# Reads select (job_id, webhook_outcome, record) and overlay the job's delivery rows.
_JOB_COLUMNS = "job_id, webhook_outcome, record"
_SELECT_BY_IDEMPOTENCY_SQL = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE account_id = ? AND idempotent_key = ?"
_SELECT_BY_ID_SQL = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?"
_SELECT_HOLDER_SQL = "SELECT job_id, revision FROM jobs WHERE (account_id = ? AND idempotent_key = ?) OR job_id = ?"
_OF_KEY_SQL = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE queue_key = ? ORDER BY created_at_ms, job_id"
_UNFINISHED_SQL = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {_IS_UNFINISHED} ORDER BY created_at_ms, job_id"
_WEBHOOK_PENDING_SQL = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {_IS_WEBHOOK_PENDING} ORDER BY created_at_ms, job_id"
_DELIVERY_COLUMNS = "d.job_id, d.idx, d.delivery, d.updated_at_ms"
_DELIVERIES_OF_JOB_SQL = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries AS d WHERE d.job_id = ?"
_DELIVERIES_OF_UNFINISHED_SQL = (
    f"SELECT {_DELIVERY_COLUMNS} FROM jobs JOIN deliveries AS d ON d.job_id = jobs.job_id WHERE {_IS_UNFINISHED}"
)
_DELIVERIES_OF_WEBHOOK_PENDING_SQL = (
    f"SELECT {_DELIVERY_COLUMNS} FROM jobs JOIN deliveries AS d ON d.job_id = jobs.job_id WHERE {_IS_WEBHOOK_PENDING}"
)
_SELECT_OUTCOME_SQL = "SELECT webhook_outcome FROM jobs WHERE job_id = ?"
_SELECT_RECORD_SQL = "SELECT record FROM jobs WHERE job_id = ?"
_UPDATE_DELIVERY_SQL = "UPDATE deliveries SET delivery = ?, updated_at_ms = ? WHERE job_id = ? AND idx = ?"
_INSERT_DELIVERY_SQL = "INSERT INTO deliveries (job_id, idx, delivery, updated_at_ms) VALUES (?, ?, ?, ?)"
_UPDATE_OUTCOME_SQL = "UPDATE jobs SET webhook_outcome = ? WHERE job_id = ?"
_DELETE_DELIVERIES_SQL = "DELETE FROM deliveries WHERE job_id = ?"
_COUNT_UNFINISHED_SQL = f"SELECT count(*) FROM jobs WHERE account_id = ? AND {_IS_UNFINISHED}"
_PURGE_BATCH_SQL = (
    "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs WHERE finished_at_ms < ? "
    f"AND {_IS_TERMINAL} AND NOT {_IS_WEBHOOK_PENDING} LIMIT ?)"
)
_DELETE_BY_ID_SQL = "DELETE FROM jobs WHERE job_id = ?"
_SELECT_SHARED_STATE_SQL = "SELECT key, value FROM shared_state"
_UPSERT_SHARED_STATE_SQL = (
    "INSERT INTO shared_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _row(job: EncodedJob) -> tuple[Any, ...]:
    return (
        job.job_id,
        job.account_id,
        job.idempotent_key,
        job.status,
        job.queue_key,
        job.created_at_ms,
        job.finished_at_ms,
        job.webhook_outcome,
        job.revision,
        job.blob,
    )


# The operations below run in the worker thread, inside the group's transaction.


def _saved_deliveries(
    sql: str, parameters: tuple[Any, ...], connection: sqlite3.Connection
) -> dict[str, list[EncodedDelivery]]:
    """The delivery rows `sql` selects, by job_id."""
    by_job: dict[str, list[EncodedDelivery]] = {}
    for job_id, index, blob, updated_at_ms in connection.execute(sql, parameters):
        by_job.setdefault(job_id, []).append(EncodedDelivery(index=index, blob=blob, updated_at_ms=updated_at_ms))
    return by_job


def _decode_one(row: tuple[str, str, bytes], connection: sqlite3.Connection) -> JobRecord:
    job_id, webhook_outcome, blob = row
    saved = _saved_deliveries(_DELIVERIES_OF_JOB_SQL, (job_id,), connection).get(job_id, ())
    return overlay_deliveries(decode_record(blob), webhook_outcome, saved)


def _insert_job(
    job: EncodedJob,
    copy: JobRecord,
    spawned: list[EncodedJob],
    shared_state: list[tuple[str, bytes]],
    connection: sqlite3.Connection,
) -> tuple[JobRecord, bool]:
    if connection.execute(_INSERT_UNLESS_DUPLICATE_SQL, _row(job)).rowcount:
        # Delivery rows never outlive their job (the trigger), so a new job has none. `copy` was taken with the
        # encoding, so it is what was stored, without decoding it back.
        _insert_spawned(spawned, connection)
        connection.executemany(_UPSERT_SHARED_STATE_SQL, shared_state)
        return copy, True
    row = connection.execute(_SELECT_BY_IDEMPOTENCY_SQL, job.idempotency).fetchone()
    return _decode_one(row, connection), False


def _save_job(job: EncodedJob, spawned: list[EncodedJob], connection: sqlite3.Connection) -> None:
    connection.execute(_UPSERT_SQL, _row(job))
    connection.execute(_DELETE_DELIVERIES_SQL, (job.job_id,))
    _insert_spawned(spawned, connection)


def _merge_jobs(jobs: list[EncodedJob], connection: sqlite3.Connection) -> list[JobRecord | None]:
    results: list[JobRecord | None] = []
    for job in jobs:
        holders = dict(connection.execute(_SELECT_HOLDER_SQL, (*job.idempotency, job.job_id)).fetchall())
        other = next((job_id for job_id in holders if job_id != job.job_id), None)
        if other is not None:  # the key names another job (or, never in practice, the id another key)
            results.append(_decode_one(connection.execute(_SELECT_BY_ID_SQL, (other,)).fetchone(), connection))
        else:
            if holders.get(job.job_id, -1) < job.revision:
                _save_job(job, [], connection)
            results.append(None)
    return results


def _jobs_of_keys(queue_keys: list[str], connection: sqlite3.Connection) -> list[JobRecord]:
    rows = [row for key in queue_keys for row in connection.execute(_OF_KEY_SQL, (key,))]
    return [_decode_one(row, connection) for row in rows]


def _queue_keys(connection: sqlite3.Connection) -> list[str]:
    return [key for (key,) in connection.execute("SELECT DISTINCT queue_key FROM jobs ORDER BY queue_key")]


def _insert_spawned(spawned: list[EncodedJob], connection: sqlite3.Connection) -> None:
    for job in spawned:
        connection.execute(_INSERT_UNLESS_EXISTS_SQL, _row(job))


def _save_delivery(job_id: str, saved: EncodedDelivery, webhook_outcome: str, connection: sqlite3.Connection) -> None:
    """Write the delivery's row, and the jobs row only if the outcome changes. Checks come before any write."""
    outcome = checked_webhook_outcome(webhook_outcome)
    row = connection.execute(_SELECT_OUTCOME_SQL, (job_id,)).fetchone()
    if row is None:
        raise unknown_job_error(job_id)
    updated = connection.execute(_UPDATE_DELIVERY_SQL, (saved.blob, saved.updated_at_ms, job_id, saved.index))
    if not updated.rowcount:
        # The delivery's first save since the record's: a row that exists was checked when it was inserted.
        (blob,) = connection.execute(_SELECT_RECORD_SQL, (job_id,)).fetchone()
        count = stored_delivery_count(blob)
        if not 0 <= saved.index < count:
            raise delivery_index_error(job_id, saved.index, count)
        connection.execute(_INSERT_DELIVERY_SQL, (job_id, saved.index, saved.blob, saved.updated_at_ms))
    if row[0] != outcome:
        connection.execute(_UPDATE_OUTCOME_SQL, (outcome, job_id))


def _get_job(job_id: str, connection: sqlite3.Connection) -> JobRecord | None:
    row = connection.execute(_SELECT_BY_ID_SQL, (job_id,)).fetchone()
    return None if row is None else _decode_one(row, connection)


def _select_records(sql: str, deliveries_sql: str, connection: sqlite3.Connection) -> list[JobRecord]:
    """The records `sql` selects, each with the delivery rows `deliveries_sql` (the same jobs) selects."""
    rows = connection.execute(sql).fetchall()
    saved = _saved_deliveries(deliveries_sql, (), connection) if rows else {}
    return [
        overlay_deliveries(decode_record(blob), webhook_outcome, saved.get(job_id, ()))
        for job_id, webhook_outcome, blob in rows
    ]


def _count_unfinished(account_id: str, connection: sqlite3.Connection) -> int:
    (count,) = connection.execute(_COUNT_UNFINISHED_SQL, (account_id,)).fetchone()
    return int(count)


def _purge_batch(finished_before_ms: int, connection: sqlite3.Connection) -> int:
    return connection.execute(_PURGE_BATCH_SQL, (finished_before_ms, PURGE_BATCH_ROWS)).rowcount


def _delete_jobs(job_ids: list[str], connection: sqlite3.Connection) -> int:
    return sum(connection.execute(_DELETE_BY_ID_SQL, (job_id,)).rowcount for job_id in job_ids)


def _shared_state(connection: sqlite3.Connection) -> dict[str, bytes]:
    return {key: bytes(value) for key, value in connection.execute(_SELECT_SHARED_STATE_SQL)}


def _save_shared_state(key: str, value: bytes, connection: sqlite3.Connection) -> None:
    connection.execute(_UPSERT_SHARED_STATE_SQL, (key, value))


@final
class _Operation(Generic[T]):
    """One store call waiting for its group: what to run in the worker thread, and its result or error."""

    __slots__ = ("done", "error", "name", "result", "run")

    result: T

    def __init__(self, name: str, run: Callable[[sqlite3.Connection], T]) -> None:
        self.name = name
        self.run = run
        self.error: StoreError | None = None
        self.done = trio.Event()

    def fail(self, message: str, cause: BaseException) -> None:
        error = StoreError(f"{self.name}: {message}: {cause}")
        error.__cause__ = cause
        self.error = error

    def execute(self, connection: sqlite3.Connection) -> None:
        """Run inside the group's transaction; an error that leaves the transaction intact fails only this."""
        try:
            self.result = self.run(connection)
        except StoreError as exc:  # refused before it wrote anything (e.g. an unknown job)
            self.error = exc
        except sqlite3.IntegrityError as exc:  # SQLite rolled back just this statement
            self.fail("conflict", exc)
        except sqlite3.Error:
            raise  # the transaction may be gone: the whole group fails
        except Exception as exc:  # e.g. a stored record this build cannot decode
            self.fail("unreadable record", exc)

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result


@final
class SqliteStore:
    """The SQLite implementation of `Store`; build it with `open_sqlite_store`."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._send, self._receive = trio.open_memory_channel[_Operation[Any]](math.inf)
        self._thread_limiter = trio.CapacityLimiter(1)
        self._commits = 0
        self._operations = 0

    async def _call(self, name: str, run: Callable[[sqlite3.Connection], T]) -> T:
        operation = _Operation(name, run)
        try:
            self._send.send_nowait(operation)
        except trio.ClosedResourceError:
            raise StoreError("store closed") from None
        await operation.done.wait()
        return operation.outcome()

    async def insert_job(
        self, record: JobRecord, spawned: Sequence[JobRecord] = (), *, shared_state: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[JobRecord, bool]:
        job, copy = EncodedJob.of(record), record.copy()
        more = [EncodedJob.of(r) for r in spawned]
        rows = [(key, bytes(value)) for key, value in shared_state]
        return await self._call("insert_job", functools.partial(_insert_job, job, copy, more, rows))

    async def save_job(self, record: JobRecord, spawned: Sequence[JobRecord] = ()) -> None:
        more = [EncodedJob.of(r) for r in spawned]
        await self._call("save_job", functools.partial(_save_job, EncodedJob.of(record), more))

    async def save_delivery(
        self, job_id: str, index: int, delivery: Delivery, webhook_outcome: str, updated_at_ms: int
    ) -> None:
        saved = EncodedDelivery.of(index, delivery, updated_at_ms)
        await self._call("save_delivery", functools.partial(_save_delivery, job_id, saved, webhook_outcome))

    async def merge_jobs(self, records: Sequence[JobRecord]) -> list[JobRecord | None]:
        jobs = [EncodedJob.of(r) for r in records]
        return await self._call("merge_jobs", functools.partial(_merge_jobs, jobs))

    async def jobs_of_keys(self, queue_keys: Collection[str]) -> list[JobRecord]:
        records = await self._call("jobs_of_keys", functools.partial(_jobs_of_keys, sorted(queue_keys)))
        return sorted(records, key=lambda r: (r.created_at_ms, r.job_id))

    async def queue_keys(self) -> list[str]:
        return await self._call("queue_keys", _queue_keys)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._call("get_job", functools.partial(_get_job, job_id))

    async def unfinished_jobs(self) -> list[JobRecord]:
        return await self._call(
            "unfinished_jobs", functools.partial(_select_records, _UNFINISHED_SQL, _DELIVERIES_OF_UNFINISHED_SQL)
        )

    async def jobs_with_pending_deliveries(self) -> list[JobRecord]:
        return await self._call(
            "jobs_with_pending_deliveries",
            functools.partial(_select_records, _WEBHOOK_PENDING_SQL, _DELIVERIES_OF_WEBHOOK_PENDING_SQL),
        )

    async def purge_finished(self, finished_before_ms: int) -> int:
        purged = 0
        while True:
            batch = await self._call("purge_finished", functools.partial(_purge_batch, finished_before_ms))
            purged += batch
            if batch < PURGE_BATCH_ROWS:
                return purged

    async def count_unfinished(self, account_id: str) -> int:
        return await self._call("count_unfinished", functools.partial(_count_unfinished, account_id))

    async def delete_jobs(self, job_ids: Collection[str]) -> int:
        return await self._call("delete_jobs", functools.partial(_delete_jobs, list(job_ids)))

    async def shared_state(self) -> dict[str, bytes]:
        return await self._call("shared_state", _shared_state)

    async def save_shared_state(self, key: str, value: bytes) -> None:
        await self._call("save_shared_state", functools.partial(_save_shared_state, key, bytes(value)))

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(commits=self._commits, operations=self._operations)

    def _close(self) -> None:
        """Refuse new calls; the worker drains what is queued, then closes the connection."""
        self._send.close()

    async def _serve(self) -> None:
        # Shielded: an accepted call is finished even while the store's owner is being cancelled. The loop
        # ends when `_close` has closed the channel and the backlog is committed.
        with trio.CancelScope(shield=True):
            async for first in self._receive:
                group = [first]
                while len(group) < OPERATIONS_PER_GROUP_MAX:
                    try:
                        group.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                committed = await trio.to_thread.run_sync(self._run_group, group, limiter=self._thread_limiter)
                self._operations += len(group)
                self._commits += committed
                for operation in group:
                    operation.done.set()
            await trio.to_thread.run_sync(self._connection.close, limiter=self._thread_limiter)

    def _run_group(self, group: list[_Operation[Any]]) -> bool:
        """In the worker thread: one transaction, one fsync. Never raises: failures go to the operations."""
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            for operation in group:
                operation.execute(connection)
            connection.execute("COMMIT")
        except Exception as exc:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            for operation in group:
                operation.fail("transaction failed", exc)
            return False
        return True


def _migrate(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(f"store schema version {version} is newer than this build's ({SCHEMA_VERSION})")
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # some errors (disk full) have rolled it back already
            connection.execute("ROLLBACK")
        raise


def _connect(path: Path, size_bytes_max: int | None) -> sqlite3.Connection:
    """In a worker thread: open (or create) the file, set durability pragmas, bring the schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None, check_same_thread=False)
    try:
        (journal_mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if journal_mode != "wal":
            raise StoreError(f"the store at {path} cannot use WAL (journal_mode is {journal_mode!r})")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute(f"PRAGMA journal_size_limit = {WAL_FILE_BYTES_MAX}")
        if size_bytes_max is not None:
            (page_size,) = connection.execute("PRAGMA page_size").fetchone()
            connection.execute(f"PRAGMA max_page_count = {max(1, size_bytes_max // page_size)}")
        _migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


@asynccontextmanager
async def open_sqlite_store(path: Path, *, size_bytes_max: int | None = None) -> AsyncIterator[Store]:
    """Open the store file at `path` (creating it and its parent directories) for the duration of the block.

    `size_bytes_max` caps the database file (SQLite's max_page_count; it cannot shrink an existing file):
    writes past it fail with StoreError as on a full disk, instead of filling the disk the node runs on.
    """
    try:
        connection = await trio.to_thread.run_sync(_connect, path, size_bytes_max)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open the store at {path}: {exc}") from exc
    store = SqliteStore(connection)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._serve)
        try:
            yield store
        finally:
            store._close()
