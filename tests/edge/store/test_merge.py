"""Replica copies (`merge_jobs`, `jobs_of_keys`), on both stores: the latest revision wins, idempotency holds."""

from __future__ import annotations

from edge.store import Store
from tests.edge.store.helpers import CREATED_AT_MS, finish, make_record


async def test_a_copy_is_stored_and_a_later_revision_replaces_it(store: Store) -> None:
    first = make_record("job-1")
    first.revision = 1

    assert await store.merge_jobs([first]) == [None]
    assert await store.get_job("job-1") == first

    finished = finish(first.copy(), finished_at_ms=CREATED_AT_MS + 5)
    finished.revision = 2
    assert await store.merge_jobs([finished]) == [None]
    assert (await store.get_job("job-1")) == finished


async def test_an_older_or_equal_revision_changes_nothing(store: Store) -> None:
    latest = finish(make_record("job-1"), finished_at_ms=CREATED_AT_MS + 5)
    latest.revision = 5
    await store.merge_jobs([latest])
    stale = make_record("job-1")
    stale.revision = 4
    same = make_record("job-1")
    same.revision = 5

    assert await store.merge_jobs([stale, same]) == [None, None]

    stored = await store.get_job("job-1")
    assert stored is not None and stored.status == latest.status and stored.revision == 5


async def test_a_copy_whose_key_names_another_job_returns_that_job_and_is_not_stored(store: Store) -> None:
    existing, _created = await store.insert_job(make_record("job-old", idempotent_key="order-42"))
    newcomer = make_record("job-new", idempotent_key="order-42")
    newcomer.revision = 1

    results = await store.merge_jobs([newcomer, make_record("job-other")])

    assert results == [existing, None]
    assert await store.get_job("job-new") is None
    assert await store.get_job("job-other") is not None


async def test_jobs_of_keys_lists_finished_and_unfinished_jobs_of_those_keys_oldest_first(store: Store) -> None:
    records = [make_record(f"job-{i}", created_at_ms=CREATED_AT_MS + (3 - i)) for i in range(3)]
    records[0].queue_key = records[1].queue_key = "key-a"
    records[2].queue_key = "key-b"
    records[1] = finish(records[1], finished_at_ms=CREATED_AT_MS + 5)
    await store.merge_jobs(records)

    of_a = await store.jobs_of_keys(["key-a"])

    assert [r.job_id for r in of_a] == ["job-1", "job-0"]
    assert [r.job_id for r in await store.jobs_of_keys(["key-a", "key-b"])] == ["job-2", "job-1", "job-0"]
    assert await store.jobs_of_keys(["key-c"]) == []


async def test_queue_keys_are_the_distinct_keys_of_stored_jobs(store: Store) -> None:
    records = [make_record(f"job-{i}") for i in range(3)]
    records[0].queue_key, records[1].queue_key, records[2].queue_key = "key-b", "key-a", "key-b"
    for record in records:
        await store.insert_job(record)

    assert await store.queue_keys() == ["key-a", "key-b"]
