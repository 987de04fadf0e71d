"""The usage meter on real stores: an accepted job's usage is saved in the job's own commit (never below the jobs
committed, however many are saved at once), a duplicate writes nothing, and mints and gifts are saved before a job
or a borrower relies on them."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from edge.config import AccountConfig, Config, PlanConfig
from edge.engine.records import JobRecord
from edge.placement.counters import CounterSaver, LocalCounters, decode_counter_entries
from edge.placement.usage import UsageMeter, usage_name
from edge.store import Store, StoreError, open_memory_store, open_sqlite_store
from tests.edge.store.helpers import make_record

WALL_MS = int(datetime.datetime(2026, 1, 15, tzinfo=datetime.UTC).timestamp() * 1000)
MONTH = "2026-01"
CONFIG = Config(
    accounts=tuple(
        AccountConfig(id=account, key_sha256=hashlib.sha256(account.encode()).digest(), plan=plan)
        for account, plan in (("tiny", "tiny"), ("wide", "wide"), ("unlimited", "enterprise"))
    ),
    plans=(
        PlanConfig(name="tiny", monthly_requests=5, overage_requests_max=0),
        PlanConfig(name="wide", monthly_requests=1000, overage_requests_max=0),
    ),
)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_memory_store() if request.param == "memory" else open_sqlite_store(tmp_path / "jobs.db")
    async with opened as store:
        yield store


def meter_on(
    store: Store,
    *,
    node: str = "solo",
    members: Callable[[], list[str]] = list,
    genesis_owner: Callable[[str], str | None] = lambda account_id: None,
) -> UsageMeter:
    """A meter over a lone node's counters, saved to `store` by a saver that is not running (`saving`)."""
    saver = CounterSaver(store)
    counters = LocalCounters(node=node, saver=saver)
    return UsageMeter(
        CONFIG, counters, lambda: WALL_MS, node=node, saver=saver, members=members, genesis_owner=genesis_owner
    )


@asynccontextmanager
async def saving(meter: UsageMeter) -> AsyncIterator[None]:
    """The meter's saver runs for the block, and has saved what it was going to when the block ends."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(meter._saver.run)
        yield
        nursery.cancel_scope.cancel()


async def submit(store: Store, meter: UsageMeter, record: JobRecord) -> bool:
    """What `QueueManager.submit` does with the meter: reserve, commit the job with the reservation's rows at once,
    settle. Whether the job was new."""
    reservation = await meter.reserve(record.account_id)
    created = False
    try:
        _, created = await store.insert_job(record, shared_state=reservation.shared_state)
    finally:
        meter.settle(reservation, created=created)
    return created


async def saved(store: Store, name: str, node: str = "solo") -> int:
    """`node`'s entry of counter `name` in the store (0 when none is saved)."""
    entries = decode_counter_entries(await store.shared_state())
    return next((e.value for e in entries if e.name == name and e.node == node), 0)


def job(account: str, index: int, *, key: str | None = None) -> JobRecord:
    return make_record(f"{account}-{index}", account_id=account, idempotent_key=key)


@pytest.mark.parametrize("account", ["tiny", "unlimited"])
async def test_each_job_commit_saves_the_usage_entry_and_the_saver_writes_nothing_more(
    store: Store, account: str
) -> None:
    meter = meter_on(store)
    async with saving(meter):
        assert await submit(store, meter, job(account, 0))  # on a metered plan, the genesis first
        if account == "tiny":
            assert await saved(store, f"mint|tiny|{MONTH}") == 5
        before = store.statistics().operations
        for index in range(1, 4):
            assert await submit(store, meter, job(account, index))
            assert await saved(store, usage_name(account, MONTH)) == index + 1
    # The saver has stopped, having saved what it had: three commits and three reads, no write of its own.
    assert store.statistics().operations - before == 6
    assert meter.count(account) == 4


async def test_a_duplicate_writes_no_usage(store: Store) -> None:
    meter = meter_on(store)
    async with saving(meter):
        assert await submit(store, meter, job("tiny", 0))
        before = store.statistics().operations
        assert not await submit(store, meter, job("tiny", 1, key="key-tiny-0"))
    assert store.statistics().operations - before == 1  # the insert that found the job, nothing else
    assert await saved(store, usage_name("tiny", MONTH)) == meter.count("tiny") == 1


async def test_the_saved_usage_never_falls_below_the_jobs_committed_while_many_are_saved_at_once(
    store: Store,
) -> None:
    meter = meter_on(store)
    usage = usage_name("wide", MONTH)
    checked = 0

    async def submit_and_check(record: JobRecord) -> None:
        nonlocal checked
        reservation = await meter.reserve(record.account_id)
        _, created = await store.insert_job(record, shared_state=reservation.shared_state)
        # Committed, not settled yet, with the others in flight: what a crash now would leave on disk.
        committed = len(await store.unfinished_jobs())  # read first: the usage row read after can only grow
        assert await saved(store, usage) >= committed
        checked += 1
        meter.settle(reservation, created=created)

    async with saving(meter):
        await submit_and_check(job("wide", 0))  # the genesis: the burst below has rights at hand
        async with trio.open_nursery() as burst:
            for index in range(1, 61):  # 40 more jobs, each of the last 20 a duplicate of one of them
                burst.start_soon(submit_and_check, job("wide", index, key=f"key-{(index - 1) % 40}"))
    assert checked == 61
    assert meter.count("wide") == len(await store.unfinished_jobs()) == 41
    # Above the count only by the duplicates saved beside the jobs; a restart would under-admit by those.
    assert 41 <= await saved(store, usage) <= 61


async def test_a_gift_and_the_mint_made_for_it_are_saved_before_the_borrower_is_answered(store: Store) -> None:
    meter = meter_on(store, node="a", members=lambda: ["a", "b"], genesis_owner=lambda account_id: "a")
    entries = await meter.lend("tiny", MONTH, 1, "b")
    given = {(e.name, e.value) for e in entries if e.node == "a"}
    assert given == {(f"mint|tiny|{MONTH}", 5), (f"give|tiny|{MONTH}|b", 3)}  # a share of 2, then 1 lent
    for name, value in given:
        assert await saved(store, name, node="a") == value


async def test_nothing_is_answered_or_accepted_against_rights_the_store_did_not_take() -> None:
    async with open_memory_store() as store:
        pass
    lender = meter_on(store, node="a", members=lambda: ["a", "b"], genesis_owner=lambda account_id: "a")
    with pytest.raises(StoreError):
        await lender.lend("tiny", MONTH, 1, "b")
    # The mint and the gift stay the lender's own until saved: no peer could have learned them and spent them.
    assert lender._counters.counter_entries(f"mint|tiny|{MONTH}") == ()
    assert lender._counters.counter_entries(f"give|tiny|{MONTH}|") == ()
    alone = meter_on(store)
    with pytest.raises(StoreError):  # its own genesis could not be saved: the submission is not let in
        await alone.reserve("tiny")
    with pytest.raises(StoreError):  # nor is the next one, spending the same unsaved mint
        await alone.reserve("tiny")
    assert alone.usage("tiny")["count"] == 0
