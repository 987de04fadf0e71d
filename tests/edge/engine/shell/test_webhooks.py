"""The webhook shell (edge/engine/shell/webhooks.py) on real parts: `WebhookDeliverer` over the memory store, virtual
time, and real httpx requests through the simulated network to a scripted receiver (tests/.../shell/support.py).

Most tests hand the deliverer a finished job the way the queue shell does (`attach`, save the record, `schedule`);
the memory test runs the whole way from `QueueManager.submit`. A "restart" stops the deliverer's task, losing
everything it held in memory, and starts a new deliverer on the same store.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing

from edge.engine.records import JobRecord
from edge.engine.signing import verify_webhook
from edge.store import open_memory_store
from tests.edge.engine.shell.support import (
    TEST_TIMEOUT_S,
    WALL_START_S,
    WEBHOOK_SECRET,
    Node,
    Receiver,
    Reply,
    Upstream,
    World,
    finished,
    live_bodies,
    live_records,
    reachable_bytes,
    running,
    until,
    write_config,
)

DELIVERIES = "ezthrottle_webhook_deliveries_total"
# Each leg of a simulated request takes at most 4 ms (support.LATENCY).
NETWORK_S = 0.01


async def finish(node: Node, record: JobRecord, body: str = '{"ok": true}') -> JobRecord:
    """What the queue shell does when a job finishes: attach its deliveries, save the record, schedule them."""
    final = node.deliverer.attach(finished(record, node.world.wall_ms(), body=body))
    await node.store.save_job(final)
    node.deliverer.schedule(final)
    return final


def delivery_states(record: JobRecord) -> list[tuple[str, int, int | None]]:
    return [(d.state, d.tries, d.last_status) for d in record.deliveries]


async def test_a_try_posts_the_signed_payload_and_saves_only_its_delivery(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record(hook_count=2, metadata={"order": "42"})
            final = await finish(node, record, body='{"charged": true}')
            assert [d.state for d in final.deliveries] == ["pending", "pending"]
            assert node.deliverer.pending() == 2

            await until(lambda: node.store.calls["save_delivery"] == 2)
            await trio.sleep(600)

            assert len(world.receiver.hooks) == 2
            for hook in world.receiver.hooks:
                assert hook.body is not None and hook.headers["content-type"] == "application/json"
                assert json.loads(hook.body) == {
                    "job_id": record.job_id,
                    "idempotent_key": record.idempotent_key,
                    "status": "success",
                    "response": final.response,
                    "metadata": {"order": "42"},
                }
                signature = hook.headers["x-ezthrottle-signature"]
                assert verify_webhook(hook.body, signature, [WEBHOOK_SECRET], now=WALL_START_S + hook.at)
            stored = await node.job(record.job_id)
            assert stored.webhook_outcome == "delivered"
            assert delivery_states(stored) == [("delivered", 1, 200), ("delivered", 1, 200)]
            assert stored.response == final.response
            # Our own save, and one delivery save per try; the deliverer never rewrote the record.
            assert (node.store.calls["save_job"], node.store.calls["save_delivery"]) == (1, 2)
            assert world.sample(DELIVERIES, outcome="delivered") == 2


async def test_a_job_of_an_account_without_a_secret_is_not_signed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            await finish(node, world.record(account="other"))
            await until(lambda: world.receiver.hooks)
            assert "x-ezthrottle-signature" not in world.receiver.hooks[0].headers


async def test_a_refused_delivery_is_tried_again_on_the_schedule(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path), receiver=Receiver(500, 503))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record()
            final = await finish(node, record)
            finished_at = trio.current_time()
            await until(lambda: node.store.calls["save_delivery"] == 3)
            await trio.sleep(600)
            assert node.deliverer.pending() == 0

            # The default schedule: at once, then 60 s after the first try, then 300 s after the second.
            times = [hook.at - finished_at for hook in world.receiver.hooks]
            expected = [0, 60, 360]
            assert all(e <= t < e + 3 * NETWORK_S for t, e in zip(times, expected, strict=True)), times
            assert [hook.answered for hook in world.receiver.hooks] == [500, 503, 200]
            stored = await node.job(record.job_id)
            assert stored.webhook_outcome == "delivered"
            assert delivery_states(stored) == [("delivered", 3, 200)]
            assert stored.response == final.response
            assert (node.store.calls["save_job"], node.store.calls["save_delivery"]) == (1, 3)
            assert world.sample(DELIVERIES, outcome="retry") == 2
            assert world.sample(DELIVERIES, outcome="delivered") == 1


async def test_a_delivery_gives_up_and_the_quorum_decides_the_outcome(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    webhooks = """
[webhooks]
schedule_s = [0, 60]
repeat_every_s = 60
give_up_after_s = 100
"""
    world = World(write_config(tmp_path, webhooks))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            hooks = [{"url": "http://hooks.test/ok"}, {"url": "http://nowhere.test/hook"}]  # nothing listens there
            record = world.record(webhooks=hooks, webhook_quorum=1)
            await finish(node, record)
            await until(lambda: node.store.calls["save_delivery"] == 3)
            await trio.sleep(600)
            assert node.deliverer.pending() == 0

            stored = await node.job(record.job_id)
            # Tried at 0 s and 60 s; the next try (120 s) would be past give_up_after_s, so it is given up.
            assert [(d.state, d.tries) for d in stored.deliveries] == [("delivered", 1), ("failed", 2)]
            assert stored.deliveries[1].last_error is not None and "ConnectError" in stored.deliveries[1].last_error
            assert stored.webhook_outcome == "delivered"  # one of one needed vote
            assert [hook.path for hook in world.receiver.hooks] == ["/ok"]
            assert world.sample(DELIVERIES, outcome="gave_up") == 1
            assert node.store.calls["save_delivery"] == 3
            assert await memory.jobs_with_pending_deliveries() == []


async def test_scheduling_a_job_twice_delivers_it_once(autojump_clock: trio.testing.MockClock, tmp_path: Path):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            final = await finish(node, world.record())
            node.deliverer.schedule(final)
            assert node.deliverer.pending() == 1
            await until(lambda: node.store.calls["save_delivery"] == 1)
            await trio.sleep(600)
            assert len(world.receiver.hooks) == 1 and node.store.calls["save_delivery"] == 1


async def test_deliveries_run_with_bounded_concurrency(autojump_clock: trio.testing.MockClock, tmp_path: Path):
    world = World(write_config(tmp_path, "[webhooks]\nconcurrency = 2\n"))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            gate = world.receiver.hold()
            for _ in range(5):
                await finish(node, world.record())
            await until(lambda: world.receiver.in_progress == 2)
            await trio.sleep(5)  # under the webhook timeout (10 s)
            assert (world.receiver.in_progress, len(world.receiver.hooks)) == (2, 2)
            gate.set()
            await until(lambda: node.store.calls["save_delivery"] == 5)
            assert len(world.receiver.hooks) == 5 and node.deliverer.pending() == 0
            assert world.receiver.most_in_progress == 2


# -- store errors --------------------------------------------------------------------------------------------------


async def test_a_failed_read_of_the_record_is_retried_later(autojump_clock: trio.testing.MockClock, tmp_path: Path):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            node.store.fail("get_job")
            record = world.record()
            await finish(node, record)
            await until(lambda: node.store.failed["get_job"] == 1)
            [failed_at] = node.store.failed_at["get_job"]
            assert node.deliverer.pending() == 1  # still owed

            await until(lambda: world.receiver.hooks)
            # After the schedule's first retry step (60 s): the read failed, not the receiver.
            assert failed_at + 60 <= world.receiver.hooks[0].at < failed_at + 60 + NETWORK_S
            await until(lambda: node.store.calls["save_delivery"] == 1)
            stored = await node.job(record.job_id)
            assert stored.webhook_outcome == "delivered"
            assert delivery_states(stored) == [("delivered", 1, 200)]  # a failed read is not a try
            assert node.store.calls["get_job"] == 2 and node.store.calls["save_delivery"] == 1


async def test_a_lost_delivery_save_is_redelivered_after_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            node.store.fail("save_delivery")
            record = world.record()
            await finish(node, record)
            await until(lambda: node.store.failed["save_delivery"] == 1)

            # In memory the delivery moved on (delivered, nothing pending); the store still owes it.
            assert len(world.receiver.hooks) == 1 and node.deliverer.pending() == 0
            stored = await node.job(record.job_id)
            assert stored.webhook_outcome == "pending"
            assert delivery_states(stored) == [("pending", 0, None)]
            await trio.sleep(600)
            assert len(world.receiver.hooks) == 1  # this deliverer will not send it again

            deliverer = await node.restart_deliverer()
            await until(lambda: node.store.calls["save_delivery"] == 2)
            assert deliverer.pending() == 0
            first, second = world.receiver.hooks
            assert second.at - first.at >= 600  # at the restart, not before
            assert first.body == second.body  # the same payload: at-least-once
            stored = await node.job(record.job_id)
            assert stored.webhook_outcome == "delivered"
            assert delivery_states(stored) == [("delivered", 1, 200)]
            assert await memory.jobs_with_pending_deliveries() == []


async def test_a_restart_resumes_pending_deliveries_at_their_saved_time(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    world = World(write_config(tmp_path), receiver=Receiver(500))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:
            record = world.record()
            await finish(node, record)
            await until(lambda: node.store.calls["save_delivery"] == 1)
            first_try = world.receiver.hooks[0].at
            stored = await node.job(record.job_id)
            assert delivery_states(stored) == [("pending", 1, 500)]

            await trio.sleep(10)
            deliverer = await node.restart_deliverer()
            assert deliverer.pending() == 1
            await until(lambda: len(world.receiver.hooks) == 2)
            assert first_try + 60 <= world.receiver.hooks[1].at < first_try + 60 + NETWORK_S
            await until(lambda: node.store.calls["save_delivery"] == 2)
            assert deliverer.pending() == 0
            assert delivery_states(await node.job(record.job_id)) == [("delivered", 2, 200)]


# -- memory ---------------------------------------------------------------------------------------------------------

RESPONSE_BYTES = 512 * 1024


async def test_a_pending_delivery_holds_no_record_and_no_response(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
):
    upstream = Upstream(default=Reply(200, body=b"x" * RESPONSE_BYTES))
    world = World(write_config(tmp_path), upstream=upstream, receiver=Receiver(default=500, keep_bodies=False))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_memory_store() as memory, running(world, memory) as node:

            async def submit() -> str:  # keeps no reference to the record in this frame
                stored, created = await node.manager.submit(world.record())
                assert created
                return stored.job_id

            job_id = await submit()
            await until(lambda: node.store.calls["save_delivery"] == 1)
            stored = await node.job(job_id)
            assert stored.response is not None and len(stored.response["body"]) == RESPONSE_BYTES
            assert delivery_states(stored) == [("pending", 1, 500)]
            del stored

            for tries in (1, 2):
                assert node.deliverer.pending() == 1
                assert node.manager.statistics()["jobs"] == 0
                assert live_records(job_id) == 0
                assert live_bodies(RESPONSE_BYTES) == 0
                held = reachable_bytes(node.deliverer._jobs, node.deliverer._due)
                assert 0 < held < 8 * 1024, held
                # Each try read the record and wrote only its delivery: the record was saved once, when it finished.
                assert (node.store.calls["save_job"], node.store.calls["save_delivery"]) == (1, tries)
                assert node.store.calls["get_job"] == tries
                if tries == 1:
                    await until(lambda: node.store.calls["save_delivery"] == 2)
            assert len(world.receiver.hooks) == 2
