"""Inserting a job that is already stored, as a repeated hand-off does, finds it instead of failing."""

from __future__ import annotations

from edge.store import Store
from tests.edge.store.helpers import make_record


async def test_the_same_job_inserted_twice_is_one_job(store: Store) -> None:
    first, created_first = await store.insert_job(make_record("job-1", idempotent_key="order-42"))

    again, created_again = await store.insert_job(make_record("job-1", idempotent_key="order-42"))

    assert (created_first, created_again) == (True, False)
    assert again == first
    assert await store.count_unfinished("acct-1") == 1
