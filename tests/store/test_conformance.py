"""One suite, both stores: the memory store must behave exactly like SQLite on every method."""

from __future__ import annotations

import copy

import pytest
import trio
import trio.testing

from edge.records import Attempt, JobRecord
from edge.store import Store, StoreError
from tests.store.conftest import StoreOpener
from tests.store.helpers import CREATED_AT_MS, finish, make_record


def snapshot(record: JobRecord) -> JobRecord:
    return JobRecord.from_wire(copy.deepcopy(record.to_wire()))


async def test_insert_stores_a_new_job(store: Store) -> None:
    record = make_record("job-1")

    stored, created = await store.insert_job(record)

    assert created is True
    assert stored == record
    assert await store.get_job("job-1") == record
    assert await store.get_job("job-unknown") is None


async def test_insert_with_a_used_key_returns_the_existing_job(store: Store) -> None:
    first, _ = await store.insert_job(make_record("job-1", idempotent_key="order-42"))

    again, created = await store.insert_job(make_record("job-2", idempotent_key="order-42", body="other"))

    assert created is False
    assert again == first
    assert await store.get_job("job-2") is None


async def test_the_same_key_in_another_account_is_another_job(store: Store) -> None:
    await store.insert_job(make_record("job-1", account_id="acct-1", idempotent_key="order-42"))

    _, created = await store.insert_job(make_record("job-2", account_id="acct-2", idempotent_key="order-42"))

    assert created is True
    assert (await store.get_job("job-2")) is not None


async def test_a_finished_job_keeps_its_key_until_purged(store: Store) -> None:
    await store.insert_job(make_record("job-1", idempotent_key="order-42"))
    await store.save_job(finish(make_record("job-1", idempotent_key="order-42"), finished_at_ms=CREATED_AT_MS))

    existing, created = await store.insert_job(make_record("job-2", idempotent_key="order-42"))
    assert created is False
    assert existing.job_id == "job-1"
    assert existing.status == "success"

    assert await store.purge_finished(CREATED_AT_MS + 1) == 1
    _, created = await store.insert_job(make_record("job-2", idempotent_key="order-42"))
    assert created is True


async def test_concurrent_inserts_with_one_key_store_one_job(store: Store) -> None:
    outcomes: list[tuple[str, bool]] = []

    async def insert(n: int) -> None:
        stored, created = await store.insert_job(make_record(f"job-{n}", idempotent_key="order-42"))
        outcomes.append((stored.job_id, created))

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(insert, n)

    assert len(outcomes) == 50
    assert sum(created for _, created in outcomes) == 1
    winner = next(job_id for job_id, created in outcomes if created)
    assert {job_id for job_id, _ in outcomes} == {winner}
    assert await store.count_unfinished("acct-1") == 1


async def test_save_and_get_round_trip_a_record_with_history(store: Store) -> None:
    record = finish(make_record("job-1"), status="failed", finished_at_ms=CREATED_AT_MS + 5_000)
    record.error = "upstream returned 500"
    record.next_attempt_at_ms = None

    await store.save_job(record)  # a save is an upsert: no insert needed first

    fetched = await store.get_job("job-1")
    assert fetched == record
    assert fetched is not None
    assert fetched.attempts[0] == Attempt(
        at_ms=CREATED_AT_MS + 3_000, duration_ms=31.5, status_code=429, delay_s=1.5, delay_reason="429"
    )
    assert [d.state for d in fetched.deliveries] == ["delivered", "pending"]


async def test_save_replaces_the_whole_record(store: Store) -> None:
    await store.insert_job(make_record("job-1", idempotent_key="order-42"))
    replacement = finish(make_record("job-1", idempotent_key="order-43"), finished_at_ms=CREATED_AT_MS)

    await store.save_job(replacement)

    assert await store.get_job("job-1") == replacement
    # The job moved to another key, so the old one is free again.
    _, created = await store.insert_job(make_record("job-2", idempotent_key="order-42"))
    assert created is True


async def test_unfinished_jobs_are_queued_or_running_oldest_first(store: Store) -> None:
    for job_id, created_at_ms in [("job-d", 30), ("job-b", 10), ("job-c", 20), ("job-a", 10), ("job-e", 5)]:
        await store.insert_job(make_record(job_id, created_at_ms=created_at_ms))
    running = make_record("job-c", created_at_ms=20)
    running.status = "running"
    await store.save_job(running)
    await store.save_job(finish(make_record("job-e", created_at_ms=5), finished_at_ms=40))

    unfinished = await store.unfinished_jobs()

    assert [job.job_id for job in unfinished] == ["job-a", "job-b", "job-c", "job-d"]
    assert unfinished[2].status == "running"


async def test_jobs_with_pending_deliveries(store: Store) -> None:
    await store.save_job(finish(make_record("job-late", created_at_ms=5), finished_at_ms=50, webhook_outcome="pending"))
    await store.save_job(
        finish(
            make_record("job-early", created_at_ms=3),
            status="failed",
            finished_at_ms=60,
            webhook_outcome="pending",
        )
    )
    await store.save_job(finish(make_record("job-done", created_at_ms=1), finished_at_ms=70))
    await store.insert_job(make_record("job-queued", created_at_ms=2))

    pending = await store.jobs_with_pending_deliveries()

    assert [job.job_id for job in pending] == ["job-early", "job-late"]
    assert all(job.has_pending_deliveries for job in pending)


async def test_purge_deletes_terminal_jobs_finished_before_the_cutoff(store: Store) -> None:
    await store.insert_job(make_record("queued", created_at_ms=1))
    await store.save_job(finish(make_record("old-success"), finished_at_ms=100))
    await store.save_job(finish(make_record("old-failed"), status="failed", finished_at_ms=199))
    await store.save_job(finish(make_record("old-cancelled"), status="cancelled", finished_at_ms=150))
    await store.save_job(finish(make_record("at-cutoff"), finished_at_ms=200))
    await store.save_job(finish(make_record("owes-webhook"), finished_at_ms=50, webhook_outcome="pending"))
    await store.save_job(finish(make_record("webhook-gave-up"), finished_at_ms=10, webhook_outcome="failed"))

    assert await store.purge_finished(200) == 4
    assert await store.purge_finished(200) == 0

    for gone in ("old-success", "old-failed", "old-cancelled", "webhook-gave-up"):
        assert await store.get_job(gone) is None
    for kept in ("queued", "at-cutoff", "owes-webhook"):
        assert await store.get_job(kept) is not None


async def test_purge_of_many_jobs_deletes_them_all(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(1_200):  # more than one SQLite purge batch
            nursery.start_soon(store.save_job, finish(make_record(f"job-{n}"), finished_at_ms=100 + n))
    await store.insert_job(make_record("queued"))

    assert await store.purge_finished(100 + 1_100) == 1_100
    assert await store.purge_finished(10**15) == 100
    assert [job.job_id for job in await store.unfinished_jobs()] == ["queued"]


async def test_count_unfinished_counts_one_account(store: Store) -> None:
    await store.insert_job(make_record("a-queued", account_id="acct-a"))
    running = make_record("a-running", account_id="acct-a")
    running.status = "running"
    await store.save_job(running)
    await store.save_job(finish(make_record("a-done", account_id="acct-a"), finished_at_ms=10))
    await store.insert_job(make_record("b-queued", account_id="acct-b"))

    assert await store.count_unfinished("acct-a") == 2
    assert await store.count_unfinished("acct-b") == 1
    assert await store.count_unfinished("acct-c") == 0


async def test_delete_jobs_counts_what_existed(store: Store) -> None:
    for job_id in ("job-1", "job-2", "job-3"):
        await store.insert_job(make_record(job_id))

    assert await store.delete_jobs({"job-1", "job-3", "job-unknown"}) == 2
    assert await store.delete_jobs(["job-2", "job-2"]) == 1
    assert await store.delete_jobs([]) == 0

    assert await store.unfinished_jobs() == []
    _, created = await store.insert_job(make_record("job-4", idempotent_key="key-job-1"))
    assert created is True


async def test_records_are_copied_on_the_way_in_and_out(store: Store) -> None:
    record = make_record("job-1")
    original = snapshot(record)
    inserted, _ = await store.insert_job(record)

    record.status = "running"
    record.spec["headers"]["x-sneaky"] = "1"
    record.attempts.append(Attempt(at_ms=1, duration_ms=1.0))
    inserted.spec["url"] = "http://127.0.0.1:9/changed"
    fetched = await store.get_job("job-1")
    assert fetched is not None
    fetched.spec["metadata"]["order"] = 7

    assert inserted is not record
    assert await store.get_job("job-1") == original

    saved = finish(make_record("job-2"), finished_at_ms=10, webhook_outcome="pending")
    saved_original = snapshot(saved)
    await store.save_job(saved)
    saved.deliveries[1].state = "delivered"
    (pending,) = await store.jobs_with_pending_deliveries()
    pending.deliveries.clear()
    assert await store.jobs_with_pending_deliveries() == [saved_original]


async def test_a_conflicting_write_fails_only_itself(store: Store) -> None:
    await store.insert_job(make_record("job-1", idempotent_key="order-1"))

    with pytest.raises(StoreError):  # job ids are unique, whatever the key
        await store.insert_job(make_record("job-1", idempotent_key="order-2"))
    _, created = await store.insert_job(make_record("job-2", idempotent_key="order-2"))
    assert created is True

    with pytest.raises(StoreError):  # a save cannot take over another job's key
        await store.save_job(make_record("job-2", idempotent_key="order-1"))
    job_2 = await store.get_job("job-2")
    assert job_2 is not None
    assert job_2.idempotent_key == "order-2"
    assert await store.count_unfinished("acct-1") == 2


async def test_writes_survive_closing_and_reopening(open_store: StoreOpener) -> None:
    async with open_store() as store:
        await store.insert_job(make_record("job-1"))
        await store.save_job(finish(make_record("job-2"), finished_at_ms=10, webhook_outcome="pending"))

    async with open_store() as store:
        assert [job.job_id for job in await store.unfinished_jobs()] == ["job-1"]
        assert [job.job_id for job in await store.jobs_with_pending_deliveries()] == ["job-2"]
        _, created = await store.insert_job(make_record("job-3", idempotent_key="key-job-1"))
        assert created is False


async def test_calls_accepted_before_close_complete(open_store: StoreOpener) -> None:
    acknowledged: list[str] = []

    async def insert(store: Store, n: int) -> None:
        stored, created = await store.insert_job(make_record(f"job-{n:03}"))
        assert created
        acknowledged.append(stored.job_id)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_store() as store:
            for n in range(600):  # SQLite: one group commits while the rest wait in the queue
                nursery.start_soon(insert, store, n)
            await trio.testing.wait_all_tasks_blocked()

    assert len(acknowledged) == 600
    async with open_store() as store:
        assert sorted(job.job_id for job in await store.unfinished_jobs()) == sorted(acknowledged)


async def test_a_closed_store_fails_every_call(open_store: StoreOpener) -> None:
    async with open_store() as store:
        await store.insert_job(make_record("job-1"))

    calls = [
        store.insert_job(make_record("job-2")),
        store.save_job(make_record("job-1")),
        store.get_job("job-1"),
        store.unfinished_jobs(),
        store.jobs_with_pending_deliveries(),
        store.purge_finished(10**15),
        store.count_unfinished("acct-1"),
        store.delete_jobs(["job-1"]),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="store closed"):
            await call


async def test_statistics_count_operations_and_commits(store: Store) -> None:
    before = store.statistics()

    await store.insert_job(make_record("job-1"))
    await store.get_job("job-1")
    await store.count_unfinished("acct-1")

    after = store.statistics()
    assert after.operations - before.operations == 3
    assert 1 <= after.commits - before.commits <= 3
