"""Webhook delivery: retries on the schedule, quorum, and resumption after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from edge.config import Config, load_config
from edge.node import Node, run_node
from edge.runtime import Runtime
from tests.e2e.support import RateLimitedUpstream, WebhookSink, auth, serve, start_node, write_config

FAST_WEBHOOKS = """
[webhooks]
schedule_s = [0, 0.2, 0.2]
repeat_every_s = 0.2
give_up_after_s = 2
"""
# How long a graceful stop may take (hypercorn drains, the queues and deliveries stop, the store closes): far more
# than it needs, so a loaded CI machine passes, and still finite, so a stop that hangs fails the test.
STOP_TIMEOUT_S = 30.0


async def start_stoppable(nursery: trio.Nursery, config: Config) -> tuple[Node, trio.Event]:
    """Start a node; the event is set once `run_node` has returned, i.e. the node has stopped completely."""
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await run_node(config, Runtime.real(), task_status=task_status)
        finally:
            stopped.set()

    return await nursery.start(run), stopped


async def job_doc(client: httpx.AsyncClient, job_id: str) -> dict:
    return (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).json()


async def wait_outcome(client: httpx.AsyncClient, job_id: str, timeout_s: float = 10) -> dict:
    with trio.fail_after(timeout_s):
        while True:
            doc = await job_doc(client, job_id)
            if doc["webhooks"]["outcome"] in ("delivered", "failed"):
                return doc
            await trio.sleep(0.05)


async def test_failed_deliveries_are_retried_and_quorum_decides(nursery: trio.Nursery, tmp_path: Path):
    up = await serve(nursery, RateLimitedUpstream(limit_rps=100))
    flaky, down, observer = WebhookSink(statuses=[500, 502]), WebhookSink(statuses=[503] * 100), WebhookSink()
    flaky_url, down_url, observer_url = (
        await serve(nursery, flaky),
        await serve(nursery, down),
        await serve(nursery, observer),
    )
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {
            "url": f"{up}/q",
            "webhooks": [
                {"url": f"{flaky_url}/h"},
                {"url": f"{down_url}/h"},
                {"url": f"{observer_url}/h", "has_quorum_vote": False},
            ],
            "webhook_quorum": 1,
        }
        created = await client.post("/api/v1/jobs", json=job, headers=auth())
        doc = await wait_outcome(client, created.json()["job_id"])
    deliveries = {d["url"].split("/h")[0]: d for d in doc["webhooks"]["deliveries"]}
    assert doc["webhooks"]["outcome"] == "delivered"  # one of the two voters accepted: quorum 1 reached
    assert deliveries[flaky_url]["state"] == "delivered" and deliveries[flaky_url]["tries"] == 3
    assert deliveries[down_url]["state"] == "failed" and deliveries[down_url]["last_status"] == 503
    assert len(down.received) >= 3  # retried until it gave up
    assert deliveries[observer_url]["state"] == "delivered" and len(observer.received) == 1
    # Every try carries the same payload.
    assert len({body for _headers, body in flaky.received}) == 1


async def test_quorum_not_reached_is_failed(nursery: trio.Nursery, tmp_path: Path):
    up = await serve(nursery, RateLimitedUpstream(limit_rps=100))
    good, bad = WebhookSink(), WebhookSink(statuses=[500] * 100)
    good_url, bad_url = await serve(nursery, good), await serve(nursery, bad)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {"url": f"{up}/q", "webhooks": [{"url": good_url}, {"url": bad_url}], "webhook_quorum": 2}
        created = await client.post("/api/v1/jobs", json=job, headers=auth())
        doc = await wait_outcome(client, created.json()["job_id"])
    assert doc["webhooks"]["outcome"] == "failed"
    assert len(good.received) == 1


async def test_pending_deliveries_resume_after_a_restart(tmp_path: Path):
    """Stop a node while a delivery waits for its next try; a new node on the same data dir delivers it."""
    sink = WebhookSink(statuses=[503])
    slow_schedule = "[webhooks]\nschedule_s = [0, 1.0]\nrepeat_every_s = 1.0\ngive_up_after_s = 30\n"
    config = load_config(write_config(tmp_path, slow_schedule), env={})
    async with trio.open_nursery() as nursery:
        up = await serve(nursery, RateLimitedUpstream(limit_rps=100))
        hook = await serve(nursery, sink)
        node, stopped = await start_stoppable(nursery, config)
        async with httpx.AsyncClient(base_url=node.base_url) as client:
            created = await client.post("/api/v1/jobs", json={"url": up, "webhooks": [{"url": hook}]}, headers=auth())
            job_id = created.json()["job_id"]
            with trio.fail_after(5):
                while not sink.received:
                    await trio.sleep(0.02)
        node.stop()
        with trio.fail_after(STOP_TIMEOUT_S):  # its HTTP server, deliveries and store are closed
            await stopped.wait()
        assert len(sink.received) == 1  # the first try failed; the second was not due before the stop
        node = await nursery.start(run_node, config, Runtime.real())
        async with httpx.AsyncClient(base_url=node.base_url) as client:
            doc = await wait_outcome(client, job_id)
        assert doc["webhooks"]["outcome"] == "delivered"
        assert len(sink.received) == 2
        assert json.loads(sink.received[1][1])["job_id"] == job_id
        node.stop()
        nursery.cancel_scope.cancel()
