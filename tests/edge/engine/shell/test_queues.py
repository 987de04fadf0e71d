"""The queue shell (edge/engine/shell/queues.py) on real parts: `QueueManager` over the memory store, virtual time,
and the real executor sending through the simulated network to a scripted upstream (tests/.../shell/support.py).

Every test runs under `autojump_clock` and bounds itself with `trio.fail_after`: waits (a 429's Retry-After,
STORE_RETRY_S, a `retry_at`) are virtual seconds, and a test that waits for something that never comes fails rather
than hangs. Store faults are injected around the real store by `FaultyStore`; what a failed save must leave behind
is checked on both sides of the shell: the record in the store, and the live record the manager holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from edge.engine.queue import STORE_RETRY_S, BacklogFull, Queues
from edge.engine.records import JobRecord
from edge.engine.signing import verify_webhook
from edge.store import MemoryStoreData, StoreError, open_memory_store
from tests.edge.engine.shell.support import (
    ACCOUNT,
    OTHER_ACCOUNT,
    TEST_TIMEOUT_S,
    UPSTREAM,
    WALL_START_S,
    WEBHOOK_SECRET,
    Reply,
    Upstream,
    World,
    running,
    until,
    write_config,
)

QUEUE_DEPTH = "ezthrottle_queue_depth"
IN_FLIGHT = "ezthrottle_in_flight"
FINISHED = "ezthrottle_jobs_finished_total"
ATTEMPTS = "ezthrottle_attempts_total"
# Slack for the simulated network: a request's two legs take 2 to 8 ms in all (support.LATENCY).
NETWORK_S = 0.01


def terminal_fields(record: JobRecord) -> dict[str, object]:
    """What a finished job carries and a queued one must not."""
    return {
        "finished_at_ms": record.finished_at_ms,
        "response": record.response,
        "error": record.error,
        "deliveries": record.deliveries,
        "webhook_outcome": record.webhook_outcome,
    }


NO_TERMINAL_FIELDS = {
    "finished_at_ms": None,
    "response": None,
    "error": None,
    "deliveries": [],
    "webhook_outcome": "none",
}


# -- a job's life ----------------------------------------------------------------------------------------------------


async def test_submitted_job_runs_once_and_its_webhook_is_delivered(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    body = b'{"charged": 4200}'
    upstream = Upstream(default=Reply(201, (("x-request-id", "r-1"),), body))
    world = World(write_config(tmp_path), upstream=upstream)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record(metadata={"order": "42"})
            stored, created = await node.manager.submit(record)
            assert created and stored.job_id == record.job_id and stored.status == "queued"
            assert node.store.calls["insert_job"] == 1

            await until(lambda: world.receiver.hooks)
            await trio.sleep(60)  # time for a second attempt or a second webhook, if there were going to be any

            assert [(a.method, a.path, a.body) for a in upstream.arrivals] == [("POST", "/v1/charges", b'{"n": 1}')]
            done = await node.job(record.job_id)
            assert done.status == "success"
            assert done.response == {
                "status_code": 201,
                "headers": {
                    "content-type": "application/json",
                    "x-request-id": "r-1",
                    "content-length": str(len(body)),
                },
                "body": body.decode(),
            }
            assert done.attempts_total == 1 and [a.status_code for a in done.attempts] == [201]
            assert done.finished_at_ms is not None and done.error is None
            assert done.webhook_outcome == "delivered"
            assert [(d.state, d.tries, d.last_status) for d in done.deliveries] == [("delivered", 1, 200)]

            [hook] = world.receiver.hooks
            assert hook.body is not None
            assert json.loads(hook.body) == {
                "job_id": record.job_id,
                "idempotent_key": record.idempotent_key,
                "status": "success",
                "response": done.response,
                "metadata": {"order": "42"},
            }
            signature = hook.headers["x-ezthrottle-signature"]
            assert verify_webhook(hook.body, signature, [WEBHOOK_SECRET], now=WALL_START_S + hook.at)
            # After the insert, the record was saved once (its outcome, with the webhook attached); the webhook's
            # try saved only its delivery.
            assert (node.store.calls["save_job"], node.store.calls["save_delivery"]) == (1, 1)
            assert node.manager.live_job(record.job_id) is None
            assert node.manager.backlog(ACCOUNT) == 0
            assert node.manager.statistics() == {"queues": 1, "active_queues": 0, "jobs": 0}
            assert world.sample(FINISHED, status="success") == 1
            assert world.sample(ATTEMPTS, outcome="success") == 1
            assert (world.sample(QUEUE_DEPTH), world.sample(IN_FLIGHT)) == (0, 0)


async def test_a_429_with_retry_after_blocks_the_queue_until_the_wait_is_over(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    upstream = Upstream(Reply(429, (("Retry-After", "5"),)))
    world = World(write_config(tmp_path), upstream=upstream)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            first, second = world.record("/a"), world.record("/b")
            await node.manager.submit(first)
            await until(lambda: upstream.arrivals)
            refused_at = upstream.arrivals[0].at
            await node.manager.submit(second)  # same key: the block holds it too

            await until(lambda: world.sample(ATTEMPTS, outcome="rate_limited") == 1)
            await until(lambda: node.live_status(first.job_id) == "queued")  # the 429's outcome is saved
            [queue] = node.manager.queues_with_prefix(f"{ACCOUNT}|")
            assert queue["blocked_reason"] == "retry-after"
            assert queue["blocked_until_ms"] is not None
            assert queue["blocked_until_ms"] >= world.wall_ms(4.9)
            assert queue["depth"] == 2 and queue["in_flight"] == 0

            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            assert [a.path for a in upstream.arrivals] == ["/a", "/a", "/b"]
            assert all(a.at >= refused_at + 5 for a in upstream.arrivals[1:])
            assert upstream.arrivals[1].at < refused_at + 5 + 2 * NETWORK_S  # and no later: the wait was the block's

            done = await node.job(first.job_id)
            assert done.status == "success" and done.retries_used == 0  # a 429 does not count as a retry
            assert [a.status_code for a in done.attempts] == [429, 200]
            assert (await node.job(second.job_id)).status == "success"
            assert world.sample("ezthrottle_upstream_429_total") == 1


async def test_a_503_is_retried_and_the_job_fails_after_max_retries(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    upstream = Upstream(default=Reply(503, body=b'{"error": "down"}'))
    world = World(write_config(tmp_path), upstream=upstream)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record(retry_policy={"max_retries": 2, "retry_codes": [503]})
            await node.manager.submit(record)
            await until(lambda: world.receiver.hooks)
            await trio.sleep(120)

            assert len(upstream.arrivals) == 3  # the first attempt and two retries
            times = [a.at for a in upstream.arrivals]
            assert times == sorted(times) and len(set(times)) == 3
            done = await node.job(record.job_id)
            assert (done.status, done.retries_used, done.attempts_total) == ("failed", 2, 3)
            assert done.response is not None and done.response["status_code"] == 503
            assert [hook.status for hook in world.receiver.hooks] == ["failed"]
            assert world.sample(ATTEMPTS, outcome="retry") == 2
            assert world.sample(ATTEMPTS, outcome="failed") == 1
            assert world.sample(FINISHED, status="failed") == 1
            assert node.manager.backlog(ACCOUNT) == 0


async def test_run_resumes_the_jobs_a_crash_left_running_or_queued(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    upstream = Upstream()
    world = World(write_config(tmp_path), upstream=upstream)
    data = MemoryStoreData()
    with trio.fail_after(TEST_TIMEOUT_S):
        was_running = world.record("/running").evolve(status="running")
        later = world.record("/later").evolve(next_attempt_at_ms=world.wall_ms(30))  # a retry the crash interrupted
        async with open_memory_store(data) as before_the_crash:
            for record in (was_running, later):
                await before_the_crash.insert_job(record)

        async with open_memory_store(data) as memory, running(world, memory) as node:
            assert node.manager.backlog(ACCOUNT) == 2
            assert node.manager.statistics()["jobs"] == 2
            await until(lambda: node.manager.backlog(ACCOUNT) == 0)

            assert [a.path for a in upstream.arrivals] == ["/running", "/later"]
            assert upstream.arrivals[0].at < 1
            assert upstream.arrivals[1].at >= 30
            for record in (was_running, later):
                done = await node.job(record.job_id)
                assert (done.status, done.attempts_total) == ("success", 1)
            assert node.store.calls["unfinished_jobs"] == 1


# -- store errors --------------------------------------------------------------------------------------------------


async def test_a_failed_insert_raises_and_queues_nothing(autojump_clock: trio.testing.MockClock, tmp_path: Path):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record()
            node.store.fail("insert_job")
            with pytest.raises(StoreError):
                await node.manager.submit(record)
            assert node.manager.backlog(ACCOUNT) == 0
            assert node.manager.live_job(record.job_id) is None
            assert node.manager.statistics()["jobs"] == 0
            assert world.sample(QUEUE_DEPTH) == 0
            assert await memory.get_job(record.job_id) is None
            await trio.sleep(10)
            assert world.upstream.arrivals == []

            # The client's retry (same job) is accepted and runs.
            _stored, created = await node.manager.submit(record)
            assert created
            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            assert (await node.job(record.job_id)).status == "success"
            assert len(world.upstream.arrivals) == 1


async def test_a_failed_save_of_a_success_leaves_the_job_queued_and_it_runs_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record()
            node.store.fail("save_job")
            await node.manager.submit(record)
            await until(lambda: node.store.failed["save_job"] == 1)
            [failed_at] = node.store.failed_at["save_job"]

            stored = await node.job(record.job_id)
            assert stored.status == "queued" and stored.attempts == []
            assert terminal_fields(stored) == NO_TERMINAL_FIELDS
            live = node.manager.live_job(record.job_id)
            assert live is not None and live.status == "queued" and not live.is_terminal
            assert terminal_fields(live) == NO_TERMINAL_FIELDS
            assert node.manager.backlog(ACCOUNT) == 1
            assert (world.sample(QUEUE_DEPTH), world.sample(IN_FLIGHT)) == (1, 0)
            assert node.deliverer.pending() == 0

            await trio.sleep(STORE_RETRY_S / 2)
            assert world.receiver.hooks == []  # nothing is sent for the save that failed
            await until(lambda: world.receiver.hooks)
            await trio.sleep(60)
            assert len(world.upstream.arrivals) == 2
            assert world.upstream.arrivals[1].at >= failed_at + STORE_RETRY_S
            assert world.receiver.hooks[0].at > world.upstream.arrivals[1].at

            done = await node.job(record.job_id)
            assert done.status == "success" and done.attempts_total == 1  # the lost attempt was never recorded
            assert [hook.status for hook in world.receiver.hooks] == ["success"]
            assert world.sample(FINISHED, status="success") == 1
            assert node.manager.backlog(ACCOUNT) == 0
            assert world.sample(QUEUE_DEPTH) == 0


async def test_a_failed_save_of_a_retry_keeps_the_last_saved_state(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    upstream = Upstream(Reply(503))
    world = World(write_config(tmp_path), upstream=upstream)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record(retry_policy={"max_retries": 3})
            node.store.fail("save_job", when=lambda saved: not saved.is_terminal)
            await node.manager.submit(record)
            await until(lambda: node.store.failed["save_job"] == 1)
            [failed_at] = node.store.failed_at["save_job"]

            live = node.manager.live_job(record.job_id)
            assert live is not None and live.status == "queued"
            assert (live.retries_used, live.attempts, live.next_attempt_at_ms) == (0, [], None)
            assert (await node.job(record.job_id)).attempts == []

            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            assert len(upstream.arrivals) == 2
            # The backoff of one retry is at most 0.5 s here; the wait was the store's.
            assert upstream.arrivals[1].at >= failed_at + STORE_RETRY_S
            done = await node.job(record.job_id)
            assert (done.status, done.retries_used, [a.status_code for a in done.attempts]) == ("success", 0, [200])


async def test_a_failed_save_of_a_final_outcome_schedules_no_webhook_and_the_job_finishes_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    upstream = Upstream(default=Reply(400, body=b'{"error": "bad card"}'))
    world = World(write_config(tmp_path), upstream=upstream)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record()
            node.store.fail("save_job", times=3, when=lambda saved: saved.is_terminal)  # the store is down a while
            await node.manager.submit(record)
            await until(lambda: node.store.failed["save_job"] == 1)
            assert node.deliverer.pending() == 0
            live = node.manager.live_job(record.job_id)
            assert live is not None and live.status == "queued" and live.deliveries == []

            await until(lambda: node.store.failed["save_job"] == 3)
            assert world.receiver.hooks == [] and node.deliverer.pending() == 0
            assert (await node.job(record.job_id)).status == "queued"

            await until(lambda: world.receiver.hooks)
            await trio.sleep(120)
            assert len(upstream.arrivals) == 4  # every attempt whose outcome was lost runs again: at-least-once
            gaps = [b.at - a.at for a, b in zip(upstream.arrivals, upstream.arrivals[1:], strict=False)]
            assert all(gap >= STORE_RETRY_S for gap in gaps)
            done = await node.job(record.job_id)
            assert (done.status, done.attempts_total, done.webhook_outcome) == ("failed", 1, "delivered")
            assert [hook.status for hook in world.receiver.hooks] == ["failed"]
            assert world.sample(FINISHED, status="failed") == 1
            assert node.manager.backlog(ACCOUNT) == 0


@pytest.mark.parametrize("then", ["runs", "cancelled again"])
async def test_a_failed_cancel_raises_and_the_job_stays_queued(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, then: str
):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            job = world.record("/job", retry_at=world.wall_ms(30))
            bystander = world.record("/bystander", retry_at=world.wall_ms(3_000))  # same account, waits throughout
            for record in (job, bystander):
                await node.manager.submit(record)
            node.store.fail("save_job")
            with pytest.raises(StoreError):
                await node.manager.cancel(job.job_id)

            live = node.manager.live_job(job.job_id)
            assert live is not None and live.status == "queued"
            assert terminal_fields(live) == NO_TERMINAL_FIELDS
            assert (await node.job(job.job_id)).status == "queued"
            assert node.manager.backlog(ACCOUNT) == 2
            assert world.sample(QUEUE_DEPTH) == 2

            if then == "runs":
                await until(lambda: world.upstream.arrivals)
                assert world.upstream.arrivals[0].path == "/job"
                assert world.upstream.arrivals[0].at >= 30  # it kept its place and its retry_at
                await until(lambda: world.receiver.hooks)
                assert (await node.job(job.job_id)).status == "success"
                assert world.sample(FINISHED, status="success") == 1
            else:
                cancelled = await node.manager.cancel(job.job_id)
                assert cancelled is not None and cancelled.status == "cancelled"
                assert (await node.job(job.job_id)).status == "cancelled"
                assert node.manager.live_job(job.job_id) is None
                assert await node.manager.cancel(job.job_id) is None  # once finished, there is nothing to cancel
                await until(lambda: world.receiver.hooks)
                await trio.sleep(60)
                assert world.upstream.arrivals == []
                assert [hook.status for hook in world.receiver.hooks] == ["cancelled"]
                assert world.sample(FINISHED, status="cancelled") == 1

            # The job left the backlog exactly once: the bystander still counts.
            assert node.manager.backlog(ACCOUNT) == 1
            assert world.sample(QUEUE_DEPTH) == 1
            assert await node.manager.cancel(bystander.job_id) is not None
            assert node.manager.backlog(ACCOUNT) == 0
            assert world.sample(QUEUE_DEPTH) == 0


async def test_a_failed_save_of_an_expiry_is_retried_then_saved_failed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            # Eligible at 2 s, past its deadline at 1 s: it expires the moment it could run.
            record = world.record(retry_at=world.wall_ms(2)).evolve(deadline_at_ms=world.wall_ms(1))
            node.store.fail("save_job")
            await node.manager.submit(record)
            await until(lambda: node.store.failed["save_job"] == 1)
            [failed_at] = node.store.failed_at["save_job"]
            failed_at_ms = int((WALL_START_S + failed_at) * 1000)
            assert failed_at_ms >= record.deadline_at_ms
            assert (await node.job(record.job_id)).status == "queued"
            live = node.manager.live_job(record.job_id)
            assert live is not None and live.status == "queued" and live.finished_at_ms is None

            await until(lambda: world.receiver.hooks)
            done = await node.job(record.job_id)
            assert done.status == "failed"
            assert done.error == "deadline passed before the job could run"
            assert done.finished_at_ms is not None
            assert done.finished_at_ms >= failed_at_ms + STORE_RETRY_S * 1000 - 1  # (float rounding of wall ms)
            assert done.attempts == [] and world.upstream.arrivals == []
            assert [hook.status for hook in world.receiver.hooks] == ["failed"]
            assert node.store.failed["save_job"] == 1 and node.store.calls["save_job"] == 2
            assert world.sample(FINISHED, status="failed") == 1
            assert node.manager.backlog(ACCOUNT) == 0
            assert world.sample(QUEUE_DEPTH) == 0


@pytest.mark.parametrize("save_fails", [False, True])
async def test_rekey_moves_waiting_jobs_unless_their_save_fails(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, save_fails: bool
):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record(retry_at=world.wall_ms(30))
            old_key, new_key = record.queue_key, f"{ACCOUNT}|{UPSTREAM}|per-credential"
            await node.manager.submit(record)
            if save_fails:
                node.store.fail("save_job")

            node.manager.follow_keys(lambda r: new_key)
            moved = await node.manager.rekey(UPSTREAM)

            key = old_key if save_fails else new_key
            assert moved == (0 if save_fails else 1)
            live = node.manager.live_job(record.job_id)
            assert live is not None and live.queue_key == key and live.status == "queued"
            assert (await node.job(record.job_id)).queue_key == key
            depths = {q["queue_key"]: q["depth"] for q in node.manager.queues_with_prefix(f"{ACCOUNT}|")}
            assert depths[key] == 1 and depths.get(new_key if save_fails else old_key, 0) == 0
            assert node.manager.backlog(ACCOUNT) == 1
            assert world.sample(QUEUE_DEPTH) == 1

            await until(lambda: world.upstream.arrivals)
            assert world.upstream.arrivals[0].at >= 30
            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            done = await node.job(record.job_id)
            assert (done.status, done.queue_key) == ("success", key)
            assert len(world.upstream.arrivals) == 1


async def test_a_job_arriving_under_an_outdated_key_after_the_rekey_is_moved_too(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    """A job in transit while its origin was rekeyed (a hand-off, a failed transfer put back, a takeover) must not
    keep the old key: that would be a second queue, and a second pacer, for one provider limit."""
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            new_key = f"{ACCOUNT}|{UPSTREAM}|per-credential"
            node.manager.follow_keys(lambda r: new_key)
            assert await node.manager.rekey(UPSTREAM) == 0  # nothing waits yet
            late = world.record(retry_at=world.wall_ms(30))
            assert late.queue_key != new_key
            await node.store.insert_job(late)
            node.manager.adopt([late])
            await until(lambda: (job := node.manager.live_job(late.job_id)) is not None and job.queue_key == new_key)
            assert (await node.job(late.job_id)).queue_key == new_key
            depths = {q["queue_key"]: q["depth"] for q in node.manager.queues_with_prefix(f"{ACCOUNT}|")}
            assert depths.get(new_key) == 1 and depths.get(late.queue_key, 0) == 0


# -- backlog ---------------------------------------------------------------------------------------------------------


async def test_submit_refuses_past_the_backlog_counting_saves_in_progress(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path, server="account_backlog_max = 2"))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            saving = node.store.hold("insert_job")
            async with trio.open_nursery() as submits:
                for path in ("/1", "/2"):
                    submits.start_soon(node.manager.submit, world.record(path))
                await until(lambda: node.store.calls["insert_job"] == 2)
                assert node.manager.backlog(ACCOUNT) == 2  # neither is durable yet, and both count
                with pytest.raises(BacklogFull) as refused:
                    await node.manager.submit(world.record("/3"))
                assert (refused.value.account_id, refused.value.limit) == (ACCOUNT, 2)
                assert node.store.calls["insert_job"] == 2  # refused before the store was asked
                saving.set()
            assert node.manager.backlog(ACCOUNT) == 2
            with pytest.raises(BacklogFull):
                await node.manager.submit(world.record("/3"))
            _stored, created = await node.manager.submit(world.record("/other", account=OTHER_ACCOUNT))
            assert created  # the limit is per account

            # Jobs handed over by another node were acknowledged already: never refused.
            handed = [world.record(f"/handed-{i}") for i in range(3)]
            assert await node.manager.accept_handoff(handed) == 3
            assert node.manager.backlog(ACCOUNT) == 5

            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            _stored, created = await node.manager.submit(world.record("/after"))
            assert created
            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            assert len(world.upstream.arrivals) == 7


async def test_a_failed_insert_releases_its_place_in_the_backlog(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path, server="account_backlog_max = 1"))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            node.store.fail("insert_job")
            with pytest.raises(StoreError):
                await node.manager.submit(world.record(retry_at=world.wall_ms(60)))
            assert node.manager.backlog(ACCOUNT) == 0
            _stored, created = await node.manager.submit(world.record(retry_at=world.wall_ms(60)))
            assert created and node.manager.backlog(ACCOUNT) == 1


async def test_handed_over_jobs_still_being_saved_count_in_the_backlog(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path, server="account_backlog_max = 2"))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            saving = node.store.hold("insert_job")
            async with trio.open_nursery() as handoff:
                handed = [world.record(f"/handed-{i}", retry_at=world.wall_ms(60)) for i in range(2)]
                handoff.start_soon(node.manager.accept_handoff, handed)
                await until(lambda: node.store.calls["insert_job"] == 2)
                try:
                    assert node.manager.backlog(ACCOUNT) == 2
                    with pytest.raises(BacklogFull):
                        await node.manager.submit(world.record("/client", retry_at=world.wall_ms(60)))
                finally:
                    saving.set()
            assert node.manager.backlog(ACCOUNT) == 2


async def test_a_resubmission_at_a_full_backlog_returns_the_existing_job(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path, server="account_backlog_max = 1"))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record(retry_at=world.wall_ms(60))
            await node.manager.submit(record)
            again, created = await node.manager.submit(record)
            assert (again.job_id, created) == (record.job_id, False)


# -- cluster hand-off ------------------------------------------------------------------------------------------------

TARGET_ONE_AT_A_TIME = f"""
[targets."{UPSTREAM}"]
max_concurrent = 1
"""


async def test_detach_takes_waiting_jobs_of_foreign_keys_and_reattach_puts_them_back(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path, TARGET_ONE_AT_A_TIME))
    foreign: set[str] = set()
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory, owns=lambda key: key not in foreign) as node:
            in_flight_gate = world.upstream.hold("/theirs-1")
            theirs = [world.record(f"/theirs-{i}", credential="theirs") for i in (1, 2, 3)]
            mine = world.record("/mine", credential="mine", retry_at=world.wall_ms(60))
            for record in (*theirs, mine):
                await node.manager.submit(record)
            await until(lambda: world.upstream.arrivals)
            assert (world.sample(QUEUE_DEPTH), world.sample(IN_FLIGHT)) == (3, 1)

            their_key = theirs[0].queue_key
            foreign.add(their_key)
            detached = node.manager.detach(lambda key: key in foreign)

            assert sorted(r.job_id for r in detached) == [theirs[1].job_id, theirs[2].job_id]
            assert all(r.status == "queued" for r in detached)
            assert node.live_status(theirs[0].job_id) == "running"
            assert node.manager.live_job(theirs[1].job_id) is None
            assert node.manager.live_job(mine.job_id) is not None
            assert world.sample(QUEUE_DEPTH) == 1
            assert node.manager.backlog(ACCOUNT) == 2

            node.manager.reattach(detached)  # the transfer failed
            assert world.sample(QUEUE_DEPTH) == 3
            assert node.manager.backlog(ACCOUNT) == 4
            assert node.live_status(theirs[1].job_id) == "queued"

            in_flight_gate.set()  # the attempt in flight finishes here
            await until(lambda: world.receiver.for_job(theirs[0].job_id))
            assert (await node.job(theirs[0].job_id)).status == "success"
            await trio.sleep(10)
            assert [a.path for a in world.upstream.arrivals] == ["/theirs-1"]  # the key is owned elsewhere now
            assert world.sample(QUEUE_DEPTH) == 3

            foreign.clear()  # the key is ours again
            node.manager.ownership_changed()
            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            assert sorted(a.path for a in world.upstream.arrivals) == ["/mine", "/theirs-1", "/theirs-2", "/theirs-3"]
            assert (world.sample(QUEUE_DEPTH), world.sample(IN_FLIGHT)) == (0, 0)


async def test_detached_jobs_are_accepted_and_run_by_their_new_owner(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    old_world = World(write_config(tmp_path, TARGET_ONE_AT_A_TIME))
    new_world = World(write_config(tmp_path, TARGET_ONE_AT_A_TIME), seed=2)
    foreign: set[str] = set()
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_memory_store() as old_memory,
            open_memory_store() as new_memory,
            running(old_world, old_memory, owns=lambda key: key not in foreign) as old,
            running(new_world, new_memory) as new,
        ):
            gate = old_world.upstream.hold("/1")
            records = [old_world.record(f"/{i}") for i in (1, 2, 3)]
            for record in records:
                await old.manager.submit(record)
            await until(lambda: old_world.upstream.arrivals)
            foreign.add(records[0].queue_key)
            detached = old.manager.detach(lambda key: key in foreign)
            assert [r.job_id for r in detached] == [records[1].job_id, records[2].job_id]

            assert await new.manager.accept_handoff(detached) == 2
            assert await new.manager.accept_handoff(detached) == 0  # a repeated transfer adds nothing
            assert new.manager.backlog(ACCOUNT) == 2
            assert old.manager.backlog(ACCOUNT) == 1  # the attempt in flight stays with the old owner
            gate.set()
            await until(lambda: new.manager.backlog(ACCOUNT) == 0 and old.manager.backlog(ACCOUNT) == 0)

            assert [a.path for a in old_world.upstream.arrivals] == ["/1"]
            assert sorted(a.path for a in new_world.upstream.arrivals) == ["/2", "/3"]
            for record in detached:
                assert (await new.job(record.job_id)).status == "success"
            assert (await old.job(records[0].job_id)).status == "success"
            assert (old_world.sample(QUEUE_DEPTH), new_world.sample(QUEUE_DEPTH)) == (0, 0)


# -- bounded memory of queue keys ----------------------------------------------------------------------------------


async def test_forget_idle_drops_keys_idle_long_enough_and_the_limits_they_learned(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    upstream = Upstream(default=Reply(200, (("X-EZTHROTTLE-RPS", "7"),)))
    world = World(write_config(tmp_path), upstream=upstream)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            early = world.record(credential="early")
            await node.manager.submit(early)
            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            await trio.sleep(100)
            late = world.record(credential="late")
            await node.manager.submit(late)
            await until(lambda: node.manager.backlog(ACCOUNT) == 0)
            waiting = world.record(credential="waiting", retry_at=world.wall_ms(10_000))
            await node.manager.submit(waiting)
            await until(lambda: node.manager.statistics()["active_queues"] == 1)

            learned = {q["queue_key"]: q["rps_source"] for q in node.manager.queues_with_prefix(f"{ACCOUNT}|")}
            assert learned == {
                early.queue_key: "header:x-ezthrottle-rps",
                late.queue_key: "header:x-ezthrottle-rps",
                waiting.queue_key: "default",
            }
            assert node.manager.forget_idle(150) == 0
            assert node.manager.forget_idle(50) == 1  # only `early` has been idle for 50 s
            assert sorted(node.manager.queue_keys()) == sorted([late.queue_key, waiting.queue_key])
            await trio.sleep(1_000)
            assert node.manager.forget_idle(0) == 1  # `late`; a key with a waiting job is never forgotten
            assert node.manager.queue_keys() == [waiting.queue_key]
            assert node.manager.statistics() == {"queues": 1, "active_queues": 1, "jobs": 1}

            # A forgotten key starts again from the config's limits.
            again = world.record(credential="early", retry_at=world.wall_ms(10_000))
            await node.manager.submit(again)
            [fresh] = node.manager.queues_with_prefix(early.queue_key)
            assert (fresh["rps"], fresh["rps_source"]) == (100.0, "default")


async def test_past_the_key_bound_the_longest_idle_key_is_forgotten(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # `Queues` takes its bound as a keyword default (bound when the module loaded), so patching
    # edge.engine.queue.QUEUE_KEYS_MAX would change nothing: the manager's Queues gets the patched default instead.
    assert Queues.__init__.__kwdefaults__ is not None
    monkeypatch.setitem(Queues.__init__.__kwdefaults__, "keys_max", 4)
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            finished = []
            for i in range(4):  # four keys, idle from 0 s, 10 s, 20 s, 30 s on
                record = world.record(credential=f"idle-{i}")
                await node.manager.submit(record)
                await until(lambda: node.manager.backlog(ACCOUNT) == 0)
                finished.append(record.queue_key)
                await trio.sleep(10)
            assert sorted(node.manager.queue_keys()) == sorted(finished)

            busy = [world.record(credential=f"busy-{i}", retry_at=world.wall_ms(10_000)) for i in range(2)]
            await node.manager.submit(busy[0])  # a fifth key: the longest idle one goes
            assert sorted(node.manager.queue_keys()) == sorted([*finished[1:], busy[0].queue_key])
            await node.manager.submit(busy[1])
            assert sorted(node.manager.queue_keys()) == sorted([*finished[2:], busy[0].queue_key, busy[1].queue_key])
            assert node.manager.statistics()["queues"] == 4

            # Keys with jobs are never forgotten, even past the bound.
            more = [world.record(credential=f"more-{i}", retry_at=world.wall_ms(10_000)) for i in range(4)]
            for record in more:
                await node.manager.submit(record)
            assert set(node.manager.queue_keys()) == {r.queue_key for r in [*busy, *more]}
            assert node.manager.statistics()["queues"] == 6  # the bound gives way rather than drop a job's queue
            assert node.manager.statistics()["jobs"] == 6
            for record in [*busy, *more]:
                assert node.manager.live_job(record.job_id) is not None
