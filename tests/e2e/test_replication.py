"""Replication on three real processes: a key's owner lost for good (kill -9, data dir deleted) loses nothing.

The jobs of one key wait in its owner's queue behind a slow upstream when the owner is killed and its disk is
wiped; its successor holds copies of all of them, takes the key over and runs every acknowledged job, each webhook
arrives, and an idempotent resubmission gets the same job. The wiped node then comes back with an empty disk: it
takes its keys back only after syncing them, so no finished job runs again, and idempotency still holds.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.support import RateLimitedUpstream, WebhookSink, auth, free_port, serve
from tests.e2e.test_cluster_three_nodes import ClusterNode, seeds_except, wait_done, wait_for_members

JOBS = 30
CREDENTIAL = "Bearer shared-provider-key"


def job(upstream: str, webhook: str, i: int) -> dict:
    return {
        "url": f"{upstream}/r/{i}",
        "method": "POST",
        "body": f"job-{i}",
        "headers": {"Authorization": CREDENTIAL},
        "idempotent_key": f"order-{i}",
        "webhooks": [{"url": webhook}],
    }


async def submit(client: httpx.AsyncClient, node: ClusterNode, doc: dict) -> httpx.Response:
    return await client.post(f"{node.base_url}/api/v1/jobs", json=doc, headers=auth())


async def owner_of_key(client: httpx.AsyncClient, nodes: list[ClusterNode]) -> ClusterNode:
    queues = (await client.get(f"{nodes[0].base_url}/api/v1/queues", headers=auth())).json()["queues"]
    names = {queue["node"] for queue in queues}
    assert len(names) == 1, queues
    return next(node for node in nodes if node.name in names)


@pytest.mark.slow
async def test_an_owner_lost_for_good_loses_no_acknowledged_job(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RateLimitedUpstream(limit_rps=1000)
    upstream_url = await serve(nursery, upstream)
    sink = WebhookSink()
    webhook_url = await serve(nursery, sink) + "/hook"
    gossip = {f"n{i}": free_port() for i in (1, 2, 3)}
    nodes = [
        ClusterNode(tmp_path, name, upstream_url, port, seeds_except(gossip, name)) for name, port in gossip.items()
    ]
    try:
        for node in nodes:
            await node.start()
        async with httpx.AsyncClient(timeout=20) as client:
            await wait_for_members(client, nodes, {"n1", "n2", "n3"}, timeout_s=30)
            # The key's pace (10/s) keeps most of the 30 jobs queued on the owner when it dies.
            accepted = []
            for i in range(JOBS):
                response = await submit(client, nodes[i % 3], job(upstream_url, webhook_url, i))
                assert response.status_code == 201, response.text
                accepted.append(response.json()["job_id"])
            owner = await owner_of_key(client, nodes)
            survivors = [node for node in nodes if node is not owner]

            await owner.kill()
            shutil.rmtree(owner.dir / "data")
            ran_before_kill = len(upstream.accepted)
            assert ran_before_kill < JOBS, "the test needs jobs still queued at the kill"

            await wait_done(client, survivors, accepted, timeout_s=60)
            with trio.fail_after(20):
                while {p["job_id"] for p in sink.payloads()} != set(accepted):
                    await trio.sleep(0.1)
            again = await submit(client, survivors[0], job(upstream_url, webhook_url, 7))
            assert again.status_code == 200, again.text
            assert again.json()["job_id"] == accepted[7]

            # Back with an empty disk: it syncs before it runs the keys it owns again.
            arrivals_before_return = len(upstream.arrivals)
            await owner.start()
            await wait_for_members(client, nodes, {"n1", "n2", "n3"}, timeout_s=30)
            await trio.sleep(2)  # time for a wrongly resumed job to reach the upstream
            assert len(upstream.arrivals) == arrivals_before_return, "a finished job ran again"
            for i in (3, 7, 29):
                answer = await submit(client, owner, job(upstream_url, webhook_url, i))
                assert answer.status_code == 200, answer.text
                assert answer.json()["job_id"] == accepted[i]
    finally:
        for node in nodes:
            await node.stop()
    runs = Counter(arrival.body.decode() for arrival in upstream.accepted)
    assert set(runs) == {f"job-{i}" for i in range(JOBS)}
    # At-least-once only for what was in flight at the kill (the key's concurrency is 2).
    assert sum(count - 1 for count in runs.values()) <= 2, runs
