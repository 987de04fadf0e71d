"""The job API end to end: a real node, a real upstream and a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from ezthrottle.webhook_utils import verify_webhook_signature

from edge.config import load_config
from edge.engine.shell.executor import RESPONSE_BYTES_MAX
from edge.node import run_node
from edge.runtime import Runtime
from edge.store import open_memory_store
from simulations.actors import header, read_body, respond
from tests.e2e.support import (
    ACCOUNT_KEY,
    OTHER_KEY,
    WEBHOOK_SECRET,
    RateLimitedUpstream,
    WebhookSink,
    auth,
    serve,
    start_node,
    write_config,
)

FAST_WEBHOOKS = """
[webhooks]
schedule_s = [0, 0.2, 0.2]
repeat_every_s = 0.2
give_up_after_s = 5
"""


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, *, statuses: set[str], timeout_s: float = 10, key: str = ACCOUNT_KEY
):
    with trio.fail_after(timeout_s):
        while True:
            doc = (await client.get(f"/api/v1/jobs/{job_id}", headers=auth(key))).json()
            if doc["status"] in statuses:
                return doc
            await trio.sleep(0.05)


async def test_job_runs_and_signed_webhook_verifies_with_the_public_sdk(nursery: trio.Nursery, tmp_path: Path):
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {
            "url": f"{up}/v1/charges",
            "method": "post",
            "headers": {"Authorization": "Bearer sk_live_provider", "Content-Type": "application/json"},
            "body": json.dumps({"amount": 42}),
            "metadata": {"order": "42"},
            "webhooks": [{"url": f"{hook}/hook"}],
            "idempotent_key": "order-42",
            "send_idempotency_key": True,
        }
        created = await client.post("/api/v1/jobs", json=job, headers=auth())
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["status"] == "queued" and body["idempotent_key"] == "order-42"
        assert created.headers["location"] == f"/api/v1/jobs/{body['job_id']}"

        doc = await wait_for_status(client, body["job_id"], statuses={"success", "failed"})
        assert doc["status"] == "success"
        assert doc["response"]["status_code"] == 200
        assert len(doc["attempts"]) == 1 and doc["attempts"][0]["status_code"] == 200
        assert doc["request"]["header_names"] == ["Authorization", "Content-Type"]  # names only, never values
        arrival = upstream.arrivals[0]
        assert arrival.method == "POST" and json.loads(arrival.body) == {"amount": 42}
        assert arrival.headers["idempotency-key"] == "order-42"

        with trio.fail_after(5):
            await sink.arrived.wait()
        headers, raw = sink.received[0]
        verified, reason = verify_webhook_signature(raw, headers["x-ezthrottle-signature"], WEBHOOK_SECRET)
        assert verified, reason
        assert not verify_webhook_signature(raw + b" ", headers["x-ezthrottle-signature"], WEBHOOK_SECRET)[0]
        payload = json.loads(raw)
        assert payload["job_id"] == body["job_id"] and payload["status"] == "success"
        assert payload["metadata"] == {"order": "42"} and payload["response"]["status_code"] == 200

        doc = await wait_for_status(client, body["job_id"], statuses={"success"})
        with trio.fail_after(5):
            while doc["webhooks"]["outcome"] != "delivered":
                await trio.sleep(0.05)
                doc = (await client.get(f"/api/v1/jobs/{body['job_id']}", headers=auth())).json()
        assert doc["webhooks"]["deliveries"][0]["state"] == "delivered"


async def test_idempotent_resubmission_returns_the_same_job(nursery: trio.Nursery, tmp_path: Path):
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {"url": "http://127.0.0.1:9/x", "retry_at": 4_000_000_000_000, "idempotent_key": "k-1"}
        first = await client.post("/api/v1/jobs", json=job, headers=auth())
        again = await client.post("/api/v1/jobs", json=job, headers=auth())
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["job_id"] == again.json()["job_id"]

        # Without a key, identical (url, method, body) is the same job; a different body is a new one.
        plain = {"url": "http://127.0.0.1:9/y", "method": "POST", "body": "a", "retry_at": 4_000_000_000_000}
        one = await client.post("/api/v1/jobs", json=plain, headers=auth())
        two = await client.post("/api/v1/jobs", json=plain, headers=auth())
        three = await client.post("/api/v1/jobs", json={**plain, "body": "b"}, headers=auth())
        assert (one.status_code, two.status_code, three.status_code) == (201, 200, 201)
        assert one.json()["job_id"] == two.json()["job_id"] != three.json()["job_id"]

        # The same key under another account is another account's job.
        other = await client.post("/api/v1/jobs", json=job, headers=auth(OTHER_KEY))
        assert other.status_code == 201 and other.json()["job_id"] != first.json()["job_id"]


async def test_error_paths_are_problem_json(nursery: trio.Nursery, tmp_path: Path):
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {"url": "http://127.0.0.1:9/x", "retry_at": 4_000_000_000_000}

        async def expect(response: httpx.Response, status: int, field: str | None = None) -> dict:
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/problem+json"
            doc = response.json()
            assert doc["status"] == status and doc["title"]
            if field:
                assert doc["field"] == field
            return doc

        await expect(await client.post("/api/v1/jobs", json=job), 401)
        unauthorized = await client.post("/api/v1/jobs", json=job, headers=auth("ck_wrong_key_0000000000"))
        await expect(unauthorized, 401)
        assert ACCOUNT_KEY not in unauthorized.text
        await expect(await client.post("/api/v1/jobs", content=b"url=x", headers=auth()), 415)
        await expect(
            await client.post("/api/v1/jobs", content=b"{", headers={**auth(), "content-type": "application/json"}),
            400,
        )
        big = {**job, "body": "x" * (1024 * 1024 + 10)}
        await expect(await client.post("/api/v1/jobs", json=big, headers=auth()), 413)
        await expect(await client.post("/api/v1/jobs", json={"method": "GET"}, headers=auth()), 422, "url")
        await expect(await client.post("/api/v1/jobs", json={**job, "method": "BREW"}, headers=auth()), 422, "method")
        bad_hook = {**job, "webhooks": [{"url": "ftp://x"}]}
        await expect(await client.post("/api/v1/jobs", json=bad_hook, headers=auth()), 422, "webhooks[0].url")
        bad_fallback = {**job, "fallback_job": {"url": "https://a.example", "trigger": {"type": "on_sunday"}}}
        await expect(
            await client.post("/api/v1/jobs", json=bad_fallback, headers=auth()), 422, "fallback_job.trigger.type"
        )
        bad_nested = {**job, "on_success": {"url": "https://a.example", "retry_policy": {"max_retries": -1}}}
        await expect(
            await client.post("/api/v1/jobs", json=bad_nested, headers=auth()),
            422,
            "on_success.retry_policy.max_retries",
        )
        lone_surrogate = '{"url": "https://a.example", "body": "\\ud800"}'  # was a 500: the store cannot save it
        json_type = {**auth(), "content-type": "application/json"}
        await expect(await client.post("/api/v1/jobs", content=lone_surrogate, headers=json_type), 422, "body")
        framing = {**job, "headers": {"Content-Length": "5"}}
        await expect(await client.post("/api/v1/jobs", json=framing, headers=auth()), 422, "headers.Content-Length")

        created = await client.post("/api/v1/jobs", json=job, headers=auth())
        job_id = created.json()["job_id"]
        await expect(await client.get(f"/api/v1/jobs/{job_id}", headers=auth(OTHER_KEY)), 404)
        await expect(await client.delete(f"/api/v1/jobs/{job_id}", headers=auth(OTHER_KEY)), 404)
        await expect(await client.get("/api/v1/jobs/job_nope", headers=auth()), 404)
        await expect(await client.put("/api/v1/jobs", headers=auth()), 405)
        for public in ("/healthz", "/readyz", "/metrics", "/openapi.json"):  # once a 404 (found by schemathesis)
            refused = await client.post(public)
            await expect(refused, 405)
            assert refused.headers["allow"] == "GET"


async def test_nested_jobs_are_stored_and_camel_case_is_accepted(nursery: trio.Nursery, tmp_path: Path):
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {
            "url": "https://api.example.com/a",
            "retryAt": 4_000_000_000_000,
            "retryPolicy": {"maxRetries": 5, "retryCodes": [503, 429]},
            "webhooks": [{"url": "https://hooks.example.com/h", "hasQuorumVote": False}],
            "fallback_job": {
                "url": "https://api.example.com/b",
                "trigger": {"type": "on_timeout", "timeout_ms": 500},
                "fallback_job": {"url": "https://api.example.com/c", "trigger": {"type": "on_error", "codes": [500]}},
            },
            "on_success": {"url": "https://api.example.com/done"},
            "on_failure": {"url": "https://api.example.com/failed"},
        }
        created = await client.post("/api/v1/jobs", json=job, headers=auth())
        assert created.status_code == 201, created.text
        record = await node.store.get_job(created.json()["job_id"])
        assert record is not None
        spec = record.spec.to_wire()
        assert spec["retry_policy"]["max_retries"] == 5
        assert spec["retry_policy"]["retry_codes"] == [429, 503]
        assert spec["webhooks"][0]["has_quorum_vote"] is False
        assert spec["fallback_job"]["trigger"] == {"type": "on_timeout", "timeout_ms": 500}
        assert spec["fallback_job"]["fallback_job"]["url"] == "https://api.example.com/c"
        assert spec["on_success"]["url"] == "https://api.example.com/done"


async def test_cancel_a_queued_job(nursery: trio.Nursery, tmp_path: Path):
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        created = await client.post(
            "/api/v1/jobs", json={"url": "http://127.0.0.1:9/x", "retry_at": 4_000_000_000_000}, headers=auth()
        )
        job_id = created.json()["job_id"]
        cancelled = await client.delete(f"/api/v1/jobs/{job_id}", headers=auth())
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        again = await client.delete(f"/api/v1/jobs/{job_id}", headers=auth())
        assert again.status_code == 409
        stored = await node.store.get_job(job_id)
        assert stored is not None and stored.status == "cancelled"


@pytest.mark.parametrize("allow_private", [False, True])
async def test_ssrf_guard_refuses_loopback_unless_allowed(nursery: trio.Nursery, tmp_path: Path, allow_private: bool):
    upstream = RateLimitedUpstream(limit_rps=100)
    up = await serve(nursery, upstream)
    node = await start_node(nursery, tmp_path, allow_private=allow_private)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        response = await client.post("/api/v1/jobs", json={"url": f"{up}/x"}, headers=auth())
        if not allow_private:
            assert response.status_code == 422
            assert response.json()["field"] == "url" and "loopback" in response.json()["detail"]
            for target in (
                "http://[::1]/",
                "http://169.254.169.254/latest",
                "http://[::ffff:127.0.0.1]/",
                "http://10.0.0.1/",
                "http://localhost:8080/",
            ):
                refused = await client.post("/api/v1/jobs", json={"url": target}, headers=auth())
                assert refused.status_code == 422, target
            assert upstream.arrivals == []
            return
        assert response.status_code == 201
        doc = await wait_for_status(client, response.json()["job_id"], statuses={"success", "failed"})
        assert doc["status"] == "success" and len(upstream.arrivals) == 1


async def test_health_readiness_and_metrics(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=100)
    up = await serve(nursery, upstream)
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        created = await client.post("/api/v1/jobs", json={"url": f"{up}/m"}, headers=auth())
        await wait_for_status(client, created.json()["job_id"], statuses={"success"})
        metrics = (await client.get("/metrics")).text
        assert "ezthrottle_jobs_accepted_total 1.0" in metrics
        assert 'ezthrottle_jobs_finished_total{status="success"} 1.0' in metrics
        assert "ezthrottle_upstream_latency_seconds_count 1.0" in metrics
        assert ACCOUNT_KEY not in metrics


async def test_jobs_over_h2c_and_idle_queues_release_their_tasks(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000)
    up = await serve(nursery, upstream)
    node = await start_node(nursery, tmp_path, f'[targets."{up}"]\nrps = 100\nmax_concurrent = 4\n')
    async with httpx.AsyncClient(base_url=node.base_url, http1=False, http2=True) as client:
        responses = []
        async with trio.open_nursery() as submitters:
            for i in range(20):

                async def submit(i: int = i) -> None:
                    job = {"url": f"{up}/h2/{i}", "headers": {"X-Api-Key": f"k{i % 4}"}}
                    responses.append(await client.post("/api/v1/jobs", json=job, headers=auth()))

                submitters.start_soon(submit)
        assert {r.http_version for r in responses} == {"HTTP/2"}
        assert [r.status_code for r in responses] == [201] * 20
        with trio.fail_after(10):
            while len(upstream.accepted) < 20 or node.manager.statistics()["active_queues"]:
                await trio.sleep(0.05)
    stats = node.manager.statistics()
    assert stats == {"queues": 4, "active_queues": 0, "jobs": 0}  # four keys stay registered, with no task


async def test_finished_jobs_are_purged_after_retention(nursery: trio.Nursery, tmp_path: Path):
    up = await serve(nursery, RateLimitedUpstream(limit_rps=1000))
    node = await start_node(nursery, tmp_path, "[jobs]\nretention_s = 0.3\npurge_interval_s = 0.1\n")
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        created = await client.post("/api/v1/jobs", json={"url": up, "headers": {"X-Api-Key": "k"}}, headers=auth())
        job_id = created.json()["job_id"]
        queued = await client.post(
            "/api/v1/jobs", json={"url": f"{up}/later", "retry_at": 4_000_000_000_000}, headers=auth()
        )
        await wait_for_status(client, job_id, statuses={"success"})
        with trio.fail_after(5):
            while (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).status_code != 404:
                await trio.sleep(0.05)
        still = await client.get(f"/api/v1/jobs/{queued.json()['job_id']}", headers=auth())
        assert still.status_code == 200 and still.json()["status"] == "queued"  # unfinished jobs are never purged
        with trio.fail_after(5):
            while len(node.manager.queues_with_prefix("acme|")) != 1:  # the idle key is forgotten too
                await trio.sleep(0.05)
        assert node.manager.queues_with_prefix("acme|")[0]["depth"] == 1


async def test_account_backlog_limit_refuses_with_retry_after(nursery: trio.Nursery, tmp_path: Path):
    node = await start_node(nursery, tmp_path, server_extra="account_backlog_max = 3\nbacklog_retry_after_s = 7\n")
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        later = 4_000_000_000_000
        for i in range(3):
            ok = await client.post(
                "/api/v1/jobs", json={"url": f"http://127.0.0.1:9/{i}", "retry_at": later}, headers=auth()
            )
            assert ok.status_code == 201
        refused = await client.post(
            "/api/v1/jobs", json={"url": "http://127.0.0.1:9/x", "retry_at": later}, headers=auth()
        )
        assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
        assert refused.json()["status"] == 429
        # Other accounts are not affected, and a duplicate of an accepted job is not new work.
        other = await client.post(
            "/api/v1/jobs", json={"url": "http://127.0.0.1:9/x", "retry_at": later}, headers=auth(OTHER_KEY)
        )
        assert other.status_code == 201


async def test_a_node_runs_on_the_in_memory_store(nursery: trio.Nursery, tmp_path: Path):
    """The simulator's seam: the same node code with the store swapped for the in-memory one."""
    up = await serve(nursery, RateLimitedUpstream(limit_rps=1000))
    config = load_config(write_config(tmp_path), env={})
    async with open_memory_store() as store:
        node = await nursery.start(partial(run_node, config, Runtime.real(), store=store))
        async with httpx.AsyncClient(base_url=node.base_url) as client:
            created = await client.post("/api/v1/jobs", json={"url": up}, headers=auth())
            await wait_for_status(client, created.json()["job_id"], statuses={"success"})
        assert not (tmp_path / "data" / "jobs.sqlite3").exists()
        node.stop()


async def test_cookies_an_upstream_sets_never_reach_another_request(nursery: trio.Nursery, tmp_path: Path):
    """The node's outbound client is shared by every account: a cookie kept from one job's response would ride
    on the next account's request to the same host (a cross-tenant leak), so the node keeps none."""
    cookies_seen: list[str] = []

    async def sets_a_session_cookie(scope, receive, send):
        if scope["type"] != "http":
            return
        await read_body(receive)
        cookies_seen.append(header(scope, "cookie"))
        await respond(send, 200, b"{}", [("set-cookie", "session=acme-secret; Path=/")])

    up = await serve(nursery, sets_a_session_cookie)
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        for n, key in enumerate((ACCOUNT_KEY, OTHER_KEY, OTHER_KEY)):
            created = await client.post("/api/v1/jobs", json={"url": f"{up}/v1/me?n={n}"}, headers=auth(key))
            assert created.status_code == 201, created.text
            await wait_for_status(client, created.json()["job_id"], statuses={"success"}, key=key)
    assert cookies_seen == ["", "", ""]


async def test_upstreams_see_the_jobs_headers_over_the_nodes_defaults(nursery: trio.Nursery, tmp_path: Path):
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        plain = {"url": f"{up}/v1/plain", "webhooks": [{"url": f"{hook}/hook"}]}
        own = {"url": f"{up}/v1/own", "headers": {"USER-AGENT": "acme-billing/2.1", "Accept": "application/json"}}
        for job in (plain, own):
            created = await client.post("/api/v1/jobs", json=job, headers=auth())
            await wait_for_status(client, created.json()["job_id"], statuses={"success"})
        with trio.fail_after(5):
            await sink.arrived.wait()
    by_path = {arrival.path: arrival.headers for arrival in upstream.arrivals}
    assert by_path["/v1/plain"]["user-agent"] == "ezthrottle-edge" and by_path["/v1/plain"]["accept"] == "*/*"
    assert by_path["/v1/own"]["user-agent"] == "acme-billing/2.1"  # the job's spelling of a name wins
    assert by_path["/v1/own"]["accept"] == "application/json"
    assert "cookie" not in by_path["/v1/plain"] and "python-httpx" not in str(by_path)
    assert sink.received[0][0]["user-agent"] == "ezthrottle-edge"


async def test_large_bodies_are_cut_not_held(nursery: trio.Nursery, tmp_path: Path):
    """A job's response is kept up to RESPONSE_BYTES_MAX and flagged; a receiver's large answer still counts as
    delivered (only its status matters)."""
    oversized = b"x" * (RESPONSE_BYTES_MAX + 100_000)

    async def large_answer(scope, receive, send):
        if scope["type"] == "http":
            await read_body(receive)
            await respond(send, 200, oversized, [("content-type", "text/plain")])

    big = await serve(nursery, large_answer)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {"url": f"{big}/v1/export", "webhooks": [{"url": f"{big}/hook"}]}
        created = await client.post("/api/v1/jobs", json=job, headers=auth())
        doc = await wait_for_status(client, created.json()["job_id"], statuses={"success", "failed"})
        assert doc["status"] == "success"
        assert doc["response"]["body_truncated"] is True
        assert len(doc["response"]["body"]) == RESPONSE_BYTES_MAX
        with trio.fail_after(5):
            while doc["webhooks"]["outcome"] == "pending":
                await trio.sleep(0.05)
                doc = (await client.get(f"/api/v1/jobs/{doc['job_id']}", headers=auth())).json()
        assert doc["webhooks"]["outcome"] == "delivered"
