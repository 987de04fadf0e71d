"""Workflows end to end on a real node: fallback chains (the SDKs' integration test 3), on_success / on_failure
follow-ups, on_failure_timeout_ms; a real upstream and a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.e2e.regions import RegionUpstream
from tests.e2e.support import WebhookSink, auth, serve, start_node

FAST_WEBHOOKS = """
[webhooks]
schedule_s = [0, 0.2, 0.2]
repeat_every_s = 0.2
give_up_after_s = 5
"""
TERMINAL = {"success", "failed", "cancelled"}


async def job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/jobs/{job_id}", headers=auth())
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_finished(client: httpx.AsyncClient, job_id: str, timeout_s: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout_s):
        while (doc := await job(client, job_id))["status"] not in TERMINAL:
            await trio.sleep(0.05)
    return doc


async def wait_webhooks(sink: WebhookSink, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
    with trio.fail_after(timeout_s):
        while len(sink.received) < count:
            await trio.sleep(0.05)
    return sink.payloads()


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/api/v1/jobs", json=body, headers=auth())
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_the_sdks_fallback_chain_gives_one_success_webhook_for_the_root(nursery: trio.Nursery, tmp_path: Path):
    """Integration test 3 of the public SDKs: primary /status/500, fallback 1 /delay/2 on_error [500, 502, 503],
    fallback 2 /status/200 on_timeout 500 ms. Fallback 2 wins while fallback 1 still waits; fallback 1 is cancelled
    (the upstream sees it hang up) and the root's webhooks get one result."""
    upstream, sink = RegionUpstream({}), WebhookSink()
    up, hook = await upstream.serve(nursery), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        answer = await submit(
            client,
            {
                "url": f"{up}/status/500",
                "idempotent_key": "chain-1",
                "webhooks": [{"url": f"{hook}/hook"}],
                "metadata": {"test": "fallback"},
                "fallback_job": {
                    "url": f"{up}/delay/2",
                    "trigger": {"type": "on_error", "codes": [500, 502, 503]},
                    "fallback_job": {"url": f"{up}/status/200", "trigger": {"type": "on_timeout", "timeout_ms": 500}},
                },
            },
        )
        assert answer["status"] == "queued" and answer["idempotent_key"] == "chain-1"
        root_id = answer["job_id"]
        doc = await wait_finished(client, root_id)
        assert doc["status"] == "success", doc
        assert doc["won_step"] == 2 and doc["response"]["status_code"] == 200
        assert [step["state"] for step in doc["steps"]] == ["failed", "cancelled", "succeeded"]
        assert doc["steps"][0]["status_code"] == 500

        [payload] = await wait_webhooks(sink, 1)
        assert payload["job_id"] == root_id and payload["idempotent_key"] == "chain-1"
        assert payload["status"] == "success" and payload["response"]["status_code"] == 200
        assert payload["step"] == 2 and payload["metadata"] == {"test": "fallback"}

        paths = [visit.path for visit in upstream.visits]
        assert paths == ["/status/500", "/delay/2", "/status/200"], paths
        _primary, slow, fast = upstream.visits
        # Fallback 2 started about 500 ms after fallback 1, and fallback 1 was cut off once fallback 2 won.
        assert 0.45 <= fast.started - slow.started <= 1.5, (slow.started, fast.started)
        await upstream.wait_for(lambda visits: visits[1].finished, timeout_s=5)
        assert slow.disconnected and fast.answered
        step1 = await job(client, doc["steps"][1]["job_id"])
        assert step1["status"] == "cancelled" and step1["parent_id"] == root_id and step1["step"] == 1
        await trio.sleep(0.5)
        assert len(sink.received) == 1  # the steps have no webhooks of their own


async def test_an_on_error_fallback_does_not_run_for_a_code_it_does_not_name(nursery: trio.Nursery, tmp_path: Path):
    upstream = RegionUpstream({})
    up = await upstream.serve(nursery)
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        answer = await submit(
            client,
            {
                "url": f"{up}/status/404",
                "fallback_job": {"url": f"{up}/status/200", "trigger": {"type": "on_error", "codes": [500]}},
            },
        )
        doc = await wait_finished(client, answer["job_id"])
        assert doc["status"] == "failed" and doc["won_step"] is None
        assert doc["response"]["status_code"] == 404
        assert [step["state"] for step in doc["steps"]] == ["failed"]
        assert [visit.path for visit in upstream.visits] == ["/status/404"]


async def test_on_success_spawns_one_child_with_its_own_id_key_and_webhook(nursery: trio.Nursery, tmp_path: Path):
    """Integration test 4: the parent's webhook, then the child's (its own job id and key)."""
    upstream, sink = RegionUpstream({}), WebhookSink()
    up, hook = await upstream.serve(nursery), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        answer = await submit(
            client,
            {
                "url": f"{up}/parent",
                "idempotent_key": "parent-1",
                "webhooks": [{"url": f"{hook}/parent"}],
                "on_success": {"url": f"{up}/child", "webhooks": [{"url": f"{hook}/child"}]},
                "on_failure": {"url": f"{up}/never"},
            },
        )
        parent_id = answer["job_id"]
        parent, child_payload = await wait_webhooks(sink, 2)
        assert parent["job_id"] == parent_id and parent["idempotent_key"] == "parent-1"
        child_id = child_payload["job_id"]
        assert child_id != parent_id and child_payload["idempotent_key"] not in ("parent-1", None)
        assert child_payload["status"] == "success"
        doc = await job(client, parent_id)
        assert doc["children"] == {"on_success": child_id}
        child = await job(client, child_id)
        assert child["parent_id"] == parent_id and child["status"] == "success"
        await trio.sleep(0.5)
        assert [visit.path for visit in upstream.visits] == ["/parent", "/child"]
        assert len(sink.received) == 2


async def test_on_failure_runs_once_after_every_path_failed(nursery: trio.Nursery, tmp_path: Path):
    upstream = RegionUpstream({})
    up = await upstream.serve(nursery)
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        answer = await submit(
            client,
            {
                "url": f"{up}/status/500",
                "fallback_job": {"url": f"{up}/status/502", "trigger": {"type": "on_error", "codes": [500]}},
                "on_success": {"url": f"{up}/never"},
                "on_failure": {"url": f"{up}/alert", "method": "POST", "body": "failed"},
            },
        )
        doc = await wait_finished(client, answer["job_id"])
        assert doc["status"] == "failed" and doc["response"]["status_code"] == 502
        assert list(doc["children"]) == ["on_failure"]
        child = await wait_finished(client, doc["children"]["on_failure"])
        assert child["status"] == "success" and child["parent_id"] == answer["job_id"]
        await trio.sleep(0.3)
        assert [visit.path for visit in upstream.visits] == ["/status/500", "/status/502", "/alert"]
        assert upstream.visits[2].body == b"failed"


async def test_on_failure_timeout_cancels_the_running_attempt_and_spawns_on_failure(
    nursery: trio.Nursery, tmp_path: Path
):
    upstream = RegionUpstream({})
    up = await upstream.serve(nursery)
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        started = trio.current_time()
        answer = await submit(
            client,
            {"url": f"{up}/delay/8", "on_failure_timeout_ms": 1500, "on_failure": {"url": f"{up}/alert"}},
        )
        doc = await wait_finished(client, answer["job_id"])
        assert doc["status"] == "failed" and "on_failure_timeout_ms" in doc["error"]
        assert doc["attempts"][-1]["outcome"] == "cancelled", doc
        await upstream.wait_for(lambda visits: len(visits) == 2 and visits[0].finished, timeout_s=5)
        slow, alert = upstream.visits
        assert slow.disconnected and slow.ended is not None and 1.4 <= slow.ended - started < 5
        assert alert.path == "/alert"
        child = await wait_finished(client, doc["children"]["on_failure"])
        assert child["status"] == "success"
