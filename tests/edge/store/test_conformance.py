"""One suite, both stores: the memory store must behave exactly like SQLite on every method."""

from __future__ import annotations

import copy
import typing

import pytest
import trio
import trio.testing

from edge.engine.records import Attempt, Delivery, JobRecord
from edge.store import Store, StoreError
from edge.store.base import WebhookOutcome
from tests.edge.store.conftest import StoreOpener
from tests.edge.store.helpers import CREATED_AT_MS, finish, make_record

AUDIT_URL = "http://127.0.0.1:9/audit"  # the second delivery of a `finish`ed record, still pending


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

    # The spec is frozen; everything else in a record can be changed in place.
    record.status = "running"
    record.attempts.append(Attempt(at_ms=1, duration_ms=1.0))
    record.deliveries.append(Delivery(url="http://127.0.0.1:9/sneaky"))
    inserted.error = "changed"
    inserted.attempts.append(Attempt(at_ms=2, duration_ms=2.0))
    fetched = await store.get_job("job-1")
    assert fetched is not None
    fetched.deliveries.append(Delivery(url="http://127.0.0.1:9/changed"))
    fetched.response = {"status_code": 200}

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
        store.save_delivery("job-1", 0, Delivery(url="http://127.0.0.1:9/hook"), "pending", 1),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="store closed"):
            await call


async def test_statistics_count_operations_and_commits(store: Store) -> None:
    before = store.statistics()

    await store.insert_job(finish(make_record("job-1"), finished_at_ms=10, webhook_outcome="pending"))
    await store.get_job("job-1")
    await store.count_unfinished("acct-1")
    await store.save_delivery("job-1", 1, Delivery(url=AUDIT_URL, state="delivered"), "delivered", 20)

    after = store.statistics()
    assert after.operations - before.operations == 4
    assert 1 <= after.commits - before.commits <= 4


# save_delivery: one delivery try changes one delivery (and maybe the outcome), never the rest of the record.


def owing_webhooks(job_id: str, *, created_at_ms: int = CREATED_AT_MS, finished_at_ms: int = 1_000) -> JobRecord:
    """A finished job whose first delivery is done and whose second (to AUDIT_URL) is still pending."""
    return finish(
        make_record(job_id, created_at_ms=created_at_ms), finished_at_ms=finished_at_ms, webhook_outcome="pending"
    )


def audit_delivery(**changes: object) -> Delivery:
    """The second delivery of `owing_webhooks` after another try (a retry unless `changes` say otherwise)."""
    fields: dict[str, object] = {
        "url": AUDIT_URL,
        "has_quorum_vote": False,
        "state": "pending",
        "tries": 3,
        "next_at_ms": 90_000,
        "last_status": 503,
    }
    fields.update(changes)
    return Delivery.from_wire(fields)


def with_delivery(record: JobRecord, index: int, delivery: Delivery, **changes: object) -> JobRecord:
    """What a read must return once `delivery` was saved at `index` (and `changes` applied): a copy."""
    expected = record.evolve(**changes)
    expected.deliveries[index] = Delivery.from_wire(delivery.to_wire())
    return expected


async def test_save_delivery_changes_one_delivery_and_the_outcome(store: Store) -> None:
    record = owing_webhooks("job-1")
    await store.save_job(record)
    delivered = audit_delivery(state="delivered", next_at_ms=None, last_status=204)

    await store.save_delivery("job-1", 1, delivered, "delivered", 5_000)

    expected = with_delivery(record, 1, delivered, webhook_outcome="delivered", updated_at_ms=5_000)
    assert await store.get_job("job-1") == expected


async def test_every_read_reflects_saved_deliveries(store: Store) -> None:
    # A running job's deliveries can be saved too (the store does not judge when a delivery happens).
    running = owing_webhooks("job-running", created_at_ms=1)
    running.status, running.finished_at_ms = "running", None
    finished = owing_webhooks("job-finished", created_at_ms=2)
    untouched = owing_webhooks("job-untouched", created_at_ms=3)
    for record in (running, finished, untouched):
        await store.save_job(record)
    await store.insert_job(make_record("job-queued", created_at_ms=4))
    running_try = audit_delivery(tries=4, last_error="connect timeout", last_status=None)
    finished_try = audit_delivery(tries=5)
    await store.save_delivery("job-running", 1, running_try, "pending", 7_000)
    await store.save_delivery("job-finished", 1, finished_try, "pending", 8_000)
    expected_running = with_delivery(running, 1, running_try, updated_at_ms=7_000)
    expected_finished = with_delivery(finished, 1, finished_try, updated_at_ms=8_000)

    assert await store.get_job("job-running") == expected_running
    assert await store.get_job("job-finished") == expected_finished
    assert await store.get_job("job-untouched") == untouched
    unfinished = await store.unfinished_jobs()
    assert unfinished[0] == expected_running
    assert [job.job_id for job in unfinished] == ["job-running", "job-queued"]
    assert await store.jobs_with_pending_deliveries() == [expected_running, expected_finished, untouched]
    duplicate, created = await store.insert_job(make_record("job-other", idempotent_key="key-job-finished"))
    assert created is False
    assert duplicate == expected_finished


async def test_saved_deliveries_accumulate_until_the_next_save_job(store: Store) -> None:
    record = owing_webhooks("job-1")
    await store.save_job(record)
    first = Delivery(url="http://127.0.0.1:9/hook", state="failed", tries=9, last_status=410)
    audit_retry = audit_delivery(tries=3)
    audit_done = audit_delivery(tries=4, state="delivered", next_at_ms=None, last_status=200)

    await store.save_delivery("job-1", 1, audit_retry, "pending", 2_000)
    await store.save_delivery("job-1", 0, first, "pending", 3_000)
    await store.save_delivery("job-1", 1, audit_done, "failed", 4_000)

    expected = with_delivery(record, 0, first, webhook_outcome="failed", updated_at_ms=4_000)
    expected.deliveries[1] = audit_done
    assert await store.get_job("job-1") == expected


async def test_reads_report_the_latest_updated_at_ms_saved(store: Store) -> None:
    record = owing_webhooks("job-1")
    record.updated_at_ms = 9_000
    await store.save_job(record)

    # The first save_delivery after a save_job gives the record its time, even an earlier one...
    await store.save_delivery("job-1", 1, audit_delivery(tries=3), "pending", 5_000)
    fetched = await store.get_job("job-1")
    assert fetched is not None
    assert fetched.updated_at_ms == 5_000
    # ...then the greatest given wins: a clock that stepped back does not move the record back in time.
    await store.save_delivery("job-1", 0, Delivery(url="http://127.0.0.1:9/hook", state="delivered"), "pending", 4_000)
    fetched = await store.get_job("job-1")
    assert fetched is not None
    assert fetched.updated_at_ms == 5_000
    await store.save_delivery("job-1", 1, audit_delivery(tries=4), "pending", 6_000)
    fetched = await store.get_job("job-1")
    assert fetched is not None
    assert fetched.updated_at_ms == 6_000


async def test_a_later_save_job_replaces_the_saved_deliveries(store: Store) -> None:
    await store.save_job(owing_webhooks("job-1"))
    await store.save_delivery("job-1", 1, audit_delivery(state="delivered"), "delivered", 5_000)
    replacement = owing_webhooks("job-1")
    replacement.deliveries = [replacement.deliveries[1]]  # one delivery only, still pending
    replacement.updated_at_ms = 6_000

    await store.save_job(replacement)

    assert await store.get_job("job-1") == replacement
    assert await store.jobs_with_pending_deliveries() == [replacement]
    # Indexes are checked against the new record.
    with pytest.raises(StoreError, match="out of range"):
        await store.save_delivery("job-1", 1, audit_delivery(), "pending", 7_000)
    retry = audit_delivery(tries=7)
    await store.save_delivery("job-1", 0, retry, "pending", 7_000)
    assert await store.get_job("job-1") == with_delivery(replacement, 0, retry, updated_at_ms=7_000)


async def test_pending_deliveries_and_purge_follow_the_saved_outcome(store: Store) -> None:
    await store.save_job(finish(make_record("job-reopened"), finished_at_ms=100, webhook_outcome="delivered"))
    await store.save_job(owing_webhooks("job-gave-up", finished_at_ms=100))
    assert [job.job_id for job in await store.jobs_with_pending_deliveries()] == ["job-gave-up"]

    await store.save_delivery("job-reopened", 1, audit_delivery(), "pending", 200)
    await store.save_delivery("job-gave-up", 1, audit_delivery(state="failed", next_at_ms=None), "failed", 200)

    assert [job.job_id for job in await store.jobs_with_pending_deliveries()] == ["job-reopened"]
    assert await store.purge_finished(1_000) == 1  # job-reopened owes a webhook now: kept
    assert await store.get_job("job-gave-up") is None
    assert await store.get_job("job-reopened") is not None

    await store.save_delivery("job-reopened", 1, audit_delivery(state="delivered", next_at_ms=None), "delivered", 300)

    assert await store.jobs_with_pending_deliveries() == []
    assert await store.purge_finished(1_000) == 1
    assert await store.get_job("job-reopened") is None


async def test_save_delivery_refuses_an_unknown_job_or_index(store: Store) -> None:
    record = owing_webhooks("job-1")
    await store.save_job(record)
    queued = make_record("job-queued")  # no deliveries at all
    await store.insert_job(queued)

    with pytest.raises(StoreError, match="unknown job_id 'job-unknown'"):
        await store.save_delivery("job-unknown", 0, audit_delivery(), "pending", 2_000)
    for index in (2, -1):
        with pytest.raises(StoreError, match=rf"index {index} is out of range for job 'job-1', which has 2"):
            await store.save_delivery("job-1", index, audit_delivery(), "delivered", 2_000)
    with pytest.raises(StoreError, match="index 0 is out of range for job 'job-queued', which has 0"):
        await store.save_delivery("job-queued", 0, audit_delivery(), "pending", 2_000)
    with pytest.raises(StoreError, match="'maybe' is not a webhook outcome"):
        await store.save_delivery("job-1", 1, audit_delivery(), "maybe", 2_000)

    assert await store.get_job("job-1") == record
    assert await store.get_job("job-queued") == queued
    assert await store.jobs_with_pending_deliveries() == [record]


async def test_a_refused_delivery_fails_only_itself(store: Store) -> None:
    records = [owing_webhooks(f"job-{n}") for n in range(3)]
    for record in records:
        await store.save_job(record)
    outcomes: dict[str, str] = {}

    async def save(name: str, job_id: str, index: int, outcome: str) -> None:
        try:
            await store.save_delivery(job_id, index, audit_delivery(tries=8), outcome, 3_000)
        except StoreError:
            outcomes[name] = "refused"
        else:
            outcomes[name] = "saved"

    async with trio.open_nursery() as nursery:  # SQLite: one group
        nursery.start_soon(save, "good-0", "job-0", 1, "delivered")
        nursery.start_soon(save, "unknown", "job-unknown", 1, "delivered")
        nursery.start_soon(save, "good-1", "job-1", 1, "pending")
        nursery.start_soon(save, "out-of-range", "job-2", 5, "delivered")
        nursery.start_soon(save, "bad-outcome", "job-2", 1, "maybe")

    assert outcomes == {
        "good-0": "saved",
        "unknown": "refused",
        "good-1": "saved",
        "out-of-range": "refused",
        "bad-outcome": "refused",
    }
    delivery = audit_delivery(tries=8)
    assert await store.get_job("job-0") == with_delivery(
        records[0], 1, delivery, webhook_outcome="delivered", updated_at_ms=3_000
    )
    assert await store.get_job("job-1") == with_delivery(records[1], 1, delivery, updated_at_ms=3_000)
    assert await store.get_job("job-2") == records[2]


async def test_concurrent_saves_of_one_jobs_deliveries_all_take_effect(store: Store) -> None:
    record = owing_webhooks("job-1")
    record.deliveries = [Delivery(url=f"http://127.0.0.1:9/hook-{n}") for n in range(16)]
    await store.save_job(record)
    tried = [Delivery(url=f"http://127.0.0.1:9/hook-{n}", tries=1, next_at_ms=60_000 + n) for n in range(16)]

    async with trio.open_nursery() as nursery:
        for index, delivery in enumerate(tried):
            nursery.start_soon(store.save_delivery, "job-1", index, delivery, "pending", 2_000 + index)

    fetched = await store.get_job("job-1")
    assert fetched is not None
    assert fetched.deliveries == tried
    assert fetched.updated_at_ms == 2_015


async def test_deliveries_are_copied_on_the_way_in_and_out(store: Store) -> None:
    await store.save_job(owing_webhooks("job-1"))
    delivery = audit_delivery(tries=3)
    await store.save_delivery("job-1", 1, delivery, "pending", 2_000)

    delivery.tries = 99
    delivery.state = "failed"
    fetched = await store.get_job("job-1")
    assert fetched is not None
    fetched.deliveries[1].tries = 77
    fetched.deliveries.clear()

    fetched = await store.get_job("job-1")
    assert fetched is not None
    assert fetched.deliveries[1] == audit_delivery(tries=3)


async def test_deleting_or_purging_a_job_drops_its_saved_deliveries(store: Store) -> None:
    for job_id in ("job-deleted", "job-purged"):
        await store.save_job(owing_webhooks(job_id))
        await store.save_delivery(job_id, 1, audit_delivery(state="delivered"), "delivered", 2_000)

    assert await store.delete_jobs(["job-deleted"]) == 1
    assert await store.purge_finished(10**15) == 1

    # The same ids accepted again start from their own records, with nothing left over.
    for job_id in ("job-deleted", "job-purged"):
        again = owing_webhooks(job_id, finished_at_ms=3_000)
        stored, created = await store.insert_job(again)
        assert created is True
        assert stored == again
        assert await store.get_job(job_id) == again
    assert len(await store.jobs_with_pending_deliveries()) == 2


async def test_saved_deliveries_survive_closing_and_reopening(open_store: StoreOpener) -> None:
    record = owing_webhooks("job-1")
    delivered = audit_delivery(state="delivered", next_at_ms=None, last_status=200)
    async with open_store() as store:
        await store.save_job(record)
        await store.save_delivery("job-1", 1, delivered, "delivered", 5_000)

    async with open_store() as store:
        expected = with_delivery(record, 1, delivered, webhook_outcome="delivered", updated_at_ms=5_000)
        assert await store.get_job("job-1") == expected
        assert await store.jobs_with_pending_deliveries() == []


def test_the_stores_know_every_webhook_outcome_a_record_can_hold() -> None:
    assert typing.get_type_hints(JobRecord)["webhook_outcome"] == WebhookOutcome


async def test_shared_state_is_replaced_per_key_and_survives_a_reopen(open_store: StoreOpener) -> None:
    async with open_store() as store:
        assert await store.shared_state() == {}
        await store.save_shared_state("account_queue:https://a.example", b"\x93\xc2\x01\xa1n")
        await store.save_shared_state("account_queue:https://b.example", b"first")
        await store.save_shared_state("account_queue:https://b.example", b"second")
        # What a caller holds is a copy: changing it changes nothing stored.
        seen = await store.shared_state()
        seen.clear()
    async with open_store() as store:
        assert await store.shared_state() == {
            "account_queue:https://a.example": b"\x93\xc2\x01\xa1n",
            "account_queue:https://b.example": b"second",
        }


async def test_shared_state_calls_fail_on_a_closed_store(open_store: StoreOpener) -> None:
    async with open_store() as store:
        pass
    with pytest.raises(StoreError):
        await store.shared_state()
    with pytest.raises(StoreError):
        await store.save_shared_state("k", b"v")


# insert_job's shared-state rows: written with a new job, in its transaction, and in call order with every other.


async def test_a_new_job_writes_its_shared_state_rows_and_a_duplicate_none(open_store: StoreOpener) -> None:
    async with open_store() as store:
        await store.save_shared_state("counter:usage\0n1", b"before")
        _, created = await store.insert_job(
            make_record("job-1"), shared_state=[("counter:usage\0n1", b"one"), ("counter:other\0n1", b"x")]
        )
        assert created
        _, created = await store.insert_job(
            make_record("job-2", idempotent_key="key-job-1"), shared_state=[("counter:usage\0n1", b"two")]
        )
        assert not created
    async with open_store() as store:
        assert await store.shared_state() == {"counter:usage\0n1": b"one", "counter:other\0n1": b"x"}


async def test_a_failed_insert_writes_none_of_its_rows(open_store: StoreOpener) -> None:
    async with open_store() as store:
        await store.insert_job(make_record("job-1"))
        with pytest.raises(StoreError):  # job-1 again, under another key
            await store.insert_job(
                make_record("job-1", idempotent_key="another"), shared_state=[("counter:usage\0n1", b"one")]
            )
    with pytest.raises(StoreError, match="store closed"):
        await store.insert_job(make_record("job-2"), shared_state=[("counter:usage\0n1", b"two")])
    async with open_store() as store:
        assert await store.shared_state() == {}
        assert await store.get_job("job-2") is None


async def test_shared_state_rows_land_in_call_order(store: Store) -> None:
    """Concurrent calls writing one key, a job's commit or a lone save: the value of the one called last stays."""
    called: dict[str, list[bytes]] = {}

    async def write(key: str, value: bytes, job: JobRecord | None) -> None:
        called.setdefault(key, []).append(value)  # the call is made right after, with no await between
        if job is None:
            await store.save_shared_state(key, value)
        else:
            await store.insert_job(job, shared_state=[(key, value)])

    for n in range(10):  # rounds apart: Trio orders each scheduling batch afresh
        async with trio.open_nursery() as nursery:
            key = f"counter:usage\0n{n}"
            nursery.start_soon(write, key, b"commit", make_record(f"job-{n}"))
            nursery.start_soon(write, key, b"save", None)
    assert await store.shared_state() == {key: values[-1] for key, values in called.items()}
