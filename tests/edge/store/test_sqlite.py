"""What only the SQLite store has: the file format, group commit, a free event loop, and failing loudly."""

from __future__ import annotations

import gc
import itertools
import sqlite3
from collections.abc import Awaitable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import msgpack
import pytest
import trio

from edge.engine.records import Delivery
from edge.store import Store, StoreError, open_sqlite_store
from edge.store import sqlite as sqlite_store
from tests.edge.store.helpers import finish, make_record

# The largest pause the event loop may take while the store works; generous because the machine is shared.
LOOP_GAP_S_MAX = 0.1
INDEX_USES = ("USING INDEX", "USING COVERING INDEX", "USING PRIMARY KEY")
# A record's response may be up to 1 MiB; a delivery try must not write anything of that order.
RESPONSE_BODY_CHARS = 1024 * 1024
DELIVERY_TRY_WAL_BYTES_MAX = 64 * 1024
AUDIT_URL = "http://127.0.0.1:9/audit"


async def test_file_schema_and_record_format(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there" / "jobs.db"
    record = finish(make_record("job-1"), finished_at_ms=1_000, webhook_outcome="pending")
    async with open_sqlite_store(path) as store:
        await store.save_job(record)

    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (sqlite_store.SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
        assert columns == [
            "job_id",
            "account_id",
            "idempotent_key",
            "status",
            "queue_key",
            "created_at_ms",
            "finished_at_ms",
            "webhook_outcome",
            "record",
            "revision",
        ]
        delivery_columns = [row[1] for row in db.execute("PRAGMA table_info(deliveries)")]
        assert delivery_columns == ["job_id", "idx", "delivery", "updated_at_ms"]
        row = db.execute("SELECT * FROM jobs").fetchone()
    assert row[:8] == (
        "job-1",
        "acct-1",
        "key-job-1",
        "success",
        record.queue_key,
        record.created_at_ms,
        1_000,
        "pending",
    )
    assert msgpack.unpackb(row[8]) == record.to_wire()
    assert row[9] == record.revision


@pytest.mark.parametrize(
    ("sql", "parameters"),
    [
        (sqlite_store._SELECT_BY_IDEMPOTENCY_SQL, ("acct-1", "key")),
        (sqlite_store._SELECT_BY_ID_SQL, ("job-1",)),
        (sqlite_store._UNFINISHED_SQL, ()),
        (sqlite_store._WEBHOOK_PENDING_SQL, ()),
        (sqlite_store._COUNT_UNFINISHED_SQL, ("acct-1",)),
        (sqlite_store._PURGE_BATCH_SQL, (1_000, 10)),
        (sqlite_store._DELETE_BY_ID_SQL, ("job-1",)),
        (sqlite_store._DELIVERIES_OF_JOB_SQL, ("job-1",)),
        (sqlite_store._DELIVERIES_OF_UNFINISHED_SQL, ()),
        (sqlite_store._DELIVERIES_OF_WEBHOOK_PENDING_SQL, ()),
        (sqlite_store._SELECT_OUTCOME_SQL, ("job-1",)),
        (sqlite_store._SELECT_RECORD_SQL, ("job-1",)),
        (sqlite_store._UPDATE_DELIVERY_SQL, (b"", 1, "job-1", 0)),
        (sqlite_store._UPDATE_OUTCOME_SQL, ("pending", "job-1")),
        (sqlite_store._DELETE_DELIVERIES_SQL, ("job-1",)),
    ],
)
async def test_every_query_uses_an_index(tmp_path: Path, sql: str, parameters: tuple[object, ...]) -> None:
    path = tmp_path / "jobs.db"
    async with open_sqlite_store(path):
        pass

    with closing(sqlite3.connect(path)) as db:
        plan = [detail for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}", parameters)]
    scans = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
    assert scans
    # A WITHOUT ROWID table's primary key is its index.
    assert all(any(index in step for index in INDEX_USES) for step in scans), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan  # ordered by the index, not sorted afterwards


async def test_concurrent_inserts_share_commits(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "jobs.db") as store:
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for n in range(1_000):
                nursery.start_soon(store.insert_job, make_record(f"job-{n}"))
        after = store.statistics()

        assert after.operations - before.operations == 1_000
        assert after.commits - before.commits < 100
        assert await store.count_unfinished("acct-1") == 1_000


async def test_one_group_dedupes_inserts_with_the_same_key(tmp_path: Path) -> None:
    outcomes: list[bool] = []

    async def insert(store: Store, n: int) -> None:
        _, created = await store.insert_job(make_record(f"job-{n}", idempotent_key="order-42"))
        outcomes.append(created)

    async with open_sqlite_store(tmp_path / "jobs.db") as store:
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(insert, store, n)
        commits = store.statistics().commits - before.commits

    # Fewer commits than inserts: some group held several inserts of the same key, and still only one won.
    assert commits < 10
    assert sorted(outcomes) == [False] * 49 + [True]


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Keep the test process's existing heap out of the garbage collector while the loop is timed.

    A full collection walks every object pytest holds; under load it took 45-100 ms here, a pause the store
    did not cause and that would make the timing flaky.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def loop_gap_max_while(work: trio.Event, gaps_s: list[float]) -> None:
    """Sleep 1 ms at a time until `work` is set, recording how late each wake-up was."""
    last = trio.current_time()
    for _ in range(100_000):
        if work.is_set():
            return
        await trio.sleep(0.001)
        now = trio.current_time()
        gaps_s.append(now - last)
        last = now


async def test_event_loop_keeps_running_during_2000_inserts(tmp_path: Path) -> None:
    gaps_s: list[float] = []
    done = trio.Event()

    async def insert_many(store: Store, inserter: int) -> None:
        for n in range(40):
            await store.insert_job(make_record(f"job-{inserter}-{n}", body="x" * 1_000))

    with heap_frozen(), trio.fail_after(20):
        async with open_sqlite_store(tmp_path / "jobs.db") as store, trio.open_nursery() as outer:
            outer.start_soon(loop_gap_max_while, done, gaps_s)
            async with trio.open_nursery() as nursery:
                for inserter in range(50):
                    nursery.start_soon(insert_many, store, inserter)
            done.set()
            assert await store.count_unfinished("acct-1") == 2_000

    assert len(gaps_s) > 10
    assert max(gaps_s) < LOOP_GAP_S_MAX


async def test_event_loop_keeps_running_while_sqlite_waits_for_a_lock(tmp_path: Path) -> None:
    """Another connection holds the write lock: the insert must wait in the worker thread, not on the loop."""
    path = tmp_path / "jobs.db"
    gaps_s: list[float] = []
    inserted = trio.Event()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        with heap_frozen(), trio.fail_after(10):
            async with open_sqlite_store(path) as store, trio.open_nursery() as nursery:
                blocker.execute("BEGIN IMMEDIATE")

                async def insert() -> None:
                    await store.insert_job(make_record("job-1"))
                    inserted.set()

                nursery.start_soon(insert)
                with trio.move_on_after(0.3):
                    await loop_gap_max_while(inserted, gaps_s)
                assert not inserted.is_set()  # it really is stuck behind the lock

                blocker.execute("ROLLBACK")
                await inserted.wait()
                assert await store.get_job("job-1") is not None
    finally:
        blocker.close()

    assert len(gaps_s) > 50
    assert max(gaps_s) < LOOP_GAP_S_MAX


async def test_a_full_disk_fails_the_callers_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    acknowledged: list[str] = []
    with trio.fail_after(10):
        async with open_sqlite_store(path, size_bytes_max=96 * 1024) as store:
            with pytest.raises(StoreError, match="full"):
                for n in range(200):
                    await store.insert_job(make_record(f"job-{n}", body="x" * 2_000))
                    acknowledged.append(f"job-{n}")

            failures: list[BaseException] = []

            async def insert(n: int) -> None:
                try:
                    await store.insert_job(make_record(f"late-{n}", body="x" * 2_000))
                except StoreError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                for n in range(5):
                    nursery.start_soon(insert, n)
            assert len(failures) == 5

            assert len(acknowledged) >= 5
            assert [job.job_id for job in await store.unfinished_jobs()] == sorted(acknowledged)

    async with open_sqlite_store(path) as store:  # without the cap: the store is intact and writable again
        assert sorted(job.job_id for job in await store.unfinished_jobs()) == sorted(acknowledged)
        _, created = await store.insert_job(make_record("after"))
        assert created is True


async def test_a_corrupt_file_fails_to_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"these are not the pages you are looking for\n" * 200)

    with pytest.raises(StoreError, match="cannot open"):
        async with open_sqlite_store(path):
            pass


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {sqlite_store.SCHEMA_VERSION + 1}")

    with pytest.raises(StoreError, match="newer"):
        async with open_sqlite_store(path):
            pass


async def test_a_delivery_try_does_not_rewrite_the_record(tmp_path: Path) -> None:
    """Count what each write adds to the WAL (truncated before it): a rewritten record would add over 1 MiB."""
    path = tmp_path / "jobs.db"
    wal = tmp_path / "jobs.db-wal"
    record = finish(make_record("job-1"), finished_at_ms=1_000, webhook_outcome="pending")
    record.response = {"status_code": 200, "headers": {}, "body": "x" * RESPONSE_BODY_CHARS}
    tries = itertools.count(3)

    def retried(state: str = "pending") -> Delivery:
        # Each try differs from the last (SQLite writes no page for an UPDATE that changes nothing).
        return Delivery.from_wire({"url": AUDIT_URL, "has_quorum_vote": False, "state": state, "tries": next(tries)})

    async with open_sqlite_store(path) as store:
        with closing(sqlite3.connect(path, isolation_level=None)) as db:

            async def wal_bytes_written_by(write: Awaitable[None]) -> int:
                (busy, _, _) = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                assert busy == 0
                assert wal.stat().st_size == 0
                await write
                return wal.stat().st_size

            def stored_record() -> bytes:
                (blob,) = db.execute("SELECT record FROM jobs WHERE job_id = 'job-1'").fetchone()
                return bytes(blob)

            # The measure sees a whole-record write.
            assert await wal_bytes_written_by(store.save_job(record)) > RESPONSE_BODY_CHARS
            blob = stored_record()

            # A delivery's first try (a row inserted) and the next ones (the row updated): a page or so each.
            for updated_at_ms in (2_000, 3_000, 4_000):
                written = await wal_bytes_written_by(
                    store.save_delivery("job-1", 1, retried(), "pending", updated_at_ms)
                )
                assert 0 < written < DELIVERY_TRY_WAL_BYTES_MAX
            assert stored_record() == blob

            # A try that changes the outcome rewrites the jobs row (the column the queries filter on)...
            outcome_change = store.save_delivery("job-1", 1, retried("delivered"), "delivered", 5_000)
            assert await wal_bytes_written_by(outcome_change) > RESPONSE_BODY_CHARS
            # ...once: later tries with the same outcome write their row only.
            written = await wal_bytes_written_by(store.save_delivery("job-1", 0, retried("failed"), "delivered", 6_000))
            assert 0 < written < DELIVERY_TRY_WAL_BYTES_MAX
            assert stored_record() == blob

        fetched = await store.get_job("job-1")
        assert fetched is not None
        assert fetched.response == record.response
        assert [(d.state, d.tries) for d in fetched.deliveries] == [("failed", 7), ("delivered", 6)]
        assert (fetched.webhook_outcome, fetched.updated_at_ms) == ("delivered", 6_000)


async def test_delivery_rows_last_until_the_record_is_saved_or_deleted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    record = finish(make_record("job-1"), finished_at_ms=1_000, webhook_outcome="pending")
    delivered = Delivery(url=AUDIT_URL, has_quorum_vote=False, state="delivered", tries=3, last_status=200)

    def stored(db: sqlite3.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        jobs = db.execute("SELECT job_id, webhook_outcome, record FROM jobs ORDER BY job_id").fetchall()
        deliveries = db.execute("SELECT job_id, idx, delivery, updated_at_ms FROM deliveries").fetchall()
        return (
            [(job_id, outcome, msgpack.unpackb(blob)) for job_id, outcome, blob in jobs],
            [(job_id, idx, msgpack.unpackb(blob), at_ms) for job_id, idx, blob, at_ms in deliveries],
        )

    async with open_sqlite_store(path) as store:
        await store.save_job(record)
        await store.save_delivery("job-1", 1, delivered, "delivered", 5_000)
        with closing(sqlite3.connect(path)) as db:
            # The record is as saved (its blob still says "pending"); the column and the row have the news.
            assert stored(db) == (
                [("job-1", "delivered", record.to_wire())],
                [("job-1", 1, delivered.to_wire(), 5_000)],
            )

            await store.save_job(record)
            assert stored(db) == ([("job-1", "pending", record.to_wire())], [])

            await store.save_delivery("job-1", 1, delivered, "delivered", 5_000)
            assert await store.delete_jobs(["job-1"]) == 1
            assert stored(db) == ([], [])

            await store.save_job(record)
            await store.save_delivery("job-1", 1, delivered, "delivered", 5_000)
            assert await store.purge_finished(10**15) == 1
            assert stored(db) == ([], [])


async def test_concurrent_delivery_tries_share_commits(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "jobs.db") as store:
        for n in range(200):
            await store.save_job(finish(make_record(f"job-{n}"), finished_at_ms=1_000, webhook_outcome="pending"))
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for n in range(200):
                delivery = Delivery(url=AUDIT_URL, has_quorum_vote=False, tries=3)
                nursery.start_soon(store.save_delivery, f"job-{n}", 1, delivery, "pending", 2_000)
        after = store.statistics()

        assert after.operations - before.operations == 200
        assert after.commits - before.commits < 20
        assert all(job.deliveries[1].tries == 3 for job in await store.jobs_with_pending_deliveries())


# Schema version 1 as it shipped, frozen here: the migration test must not follow later edits of `_MIGRATIONS`.
SCHEMA_V1 = (
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
    "CREATE INDEX jobs_unfinished ON jobs (created_at_ms, job_id) WHERE status IN ('queued', 'running')",
    "CREATE INDEX jobs_unfinished_by_account ON jobs (account_id) WHERE status IN ('queued', 'running')",
    "CREATE INDEX jobs_webhook_pending ON jobs (created_at_ms, job_id) WHERE webhook_outcome = 'pending'",
    "CREATE INDEX jobs_finished ON jobs (finished_at_ms) WHERE finished_at_ms IS NOT NULL",
    "PRAGMA user_version = 1",
)


async def test_a_version_1_file_migrates(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    finished = finish(make_record("job-1"), finished_at_ms=1_000, webhook_outcome="pending")
    queued = make_record("job-2")
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for statement in SCHEMA_V1:
            db.execute(statement)
        for record in (finished, queued):
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.account_id,
                    record.idempotent_key,
                    record.status,
                    record.queue_key,
                    record.created_at_ms,
                    record.finished_at_ms,
                    record.webhook_outcome,
                    msgpack.packb(record.to_wire(), use_bin_type=True),
                ),
            )

    async with open_sqlite_store(path) as store:
        assert await store.get_job("job-1") == finished
        assert await store.unfinished_jobs() == [queued]
        assert await store.jobs_with_pending_deliveries() == [finished]
        delivered = Delivery(url=AUDIT_URL, has_quorum_vote=False, state="delivered", tries=3, last_status=200)
        await store.save_delivery("job-1", 1, delivered, "delivered", 5_000)

    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (sqlite_store.SCHEMA_VERSION,)
        assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (1,)
    async with open_sqlite_store(path) as store:  # opening a migrated file again changes nothing
        fetched = await store.get_job("job-1")
        assert fetched is not None
        assert fetched.deliveries[1] == delivered
        assert fetched.webhook_outcome == "delivered"
        assert await store.jobs_with_pending_deliveries() == []
