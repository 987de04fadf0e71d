"""Pacing and 429 handling against a real rate-limited upstream on 127.0.0.1.

Tolerance: arrivals are timestamped by the upstream on arrival, so network and scheduling jitter on this shared
2-core machine can bring two sends closer than their spacing. Every span check allows 40 ms of jitter and one extra
request (the GCRA's burst of one).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.support import RateLimitedUpstream, auth, serve, start_node

JITTER_S = 0.04


def assert_paced(times: list[float], rps: float) -> None:
    """The GCRA's promise, checked at the receiver: any n + 1 consecutive arrivals span at least (n - 1) / rps.

    (n sends need n - 1 full intervals after the first, which may use the burst of one.) Each span gets JITTER_S
    of slack, since one delayed arrival shortens the next gap without the node having sent early.
    """
    assert len(times) >= 2
    for i, j in itertools.combinations(range(len(times)), 2):
        span = times[j] - times[i]
        assert j - i - 1 <= (span + JITTER_S) * rps, f"{j - i + 1} arrivals in {span:.3f}s exceed {rps}/s: {times}"


async def submit_all(client: httpx.AsyncClient, jobs: list[dict]) -> list[str]:
    ids = []
    for job in jobs:
        response = await client.post("/api/v1/jobs", json=job, headers=auth())
        assert response.status_code == 201, response.text
        ids.append(response.json()["job_id"])
    return ids


async def wait_all_finished(client: httpx.AsyncClient, ids: list[str], timeout_s: float) -> list[dict]:
    with trio.fail_after(timeout_s):
        while True:
            docs = [(await client.get(f"/api/v1/jobs/{i}", headers=auth())).json() for i in ids]
            if all(d["status"] in ("success", "failed") for d in docs):
                return docs
            await trio.sleep(0.1)


async def test_configured_rate_is_never_exceeded_per_credential(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000)
    up = await serve(nursery, upstream)
    target = f'[targets."{up}"]\nrps = 8\nmax_concurrent = 4\n'
    node = await start_node(nursery, tmp_path, target)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        jobs = [{"url": f"{up}/p/{i}", "headers": {"Authorization": f"Bearer key-{i % 2}"}} for i in range(16)]
        ids = await submit_all(client, jobs)
        docs = await wait_all_finished(client, ids, timeout_s=15)
        assert all(d["status"] == "success" for d in docs)
        # Two credentials are two queues, each paced on its own.
        for credential in ("Bearer key-0", "Bearer key-1"):
            assert_paced(upstream.accepted_times(credential), rps=8)
        queues = (await client.get("/api/v1/queues", headers=auth())).json()["queues"]
        assert len(queues) == 2
        assert {(q["rps"], q["rps_source"], q["max_concurrent"]) for q in queues} == {(8, "config", 4)}
        assert all(q["credential_fingerprint"] and "key-" not in q["queue_key"] for q in queues)


@pytest.mark.parametrize("style", ["retry-after", "plain", "github", "openai"])
async def test_a_429_storm_never_fails_a_job(nursery: trio.Nursery, tmp_path: Path, style: str):
    # The node is told to go at 50/s; the provider allows 4/s and says so only by refusing.
    upstream = RateLimitedUpstream(limit_rps=4, style=style)
    up = await serve(nursery, upstream)
    target = f'[targets."{up}"]\nrps = 50\nmax_concurrent = 4\n'
    node = await start_node(nursery, tmp_path, target + "[defaults]\nbackoff_base_s = 0.1\n")
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        retry_codes = [429, 403, 503] if style == "github" else [429, 503]
        jobs = [
            {"url": f"{up}/s/{i}", "retry_policy": {"max_retries": 1, "retry_codes": retry_codes}} for i in range(12)
        ]
        ids = await submit_all(client, jobs)
        docs = await wait_all_finished(client, ids, timeout_s=40)
    assert [d["status"] for d in docs] == ["success"] * 12
    refused = [a for a in upstream.arrivals if a.status >= 400]
    assert refused, "the storm should have produced refusals"
    rate_limited = [att for d in docs for att in d["attempts"] if att["status_code"] == 429]
    assert all(att["delay_reason"] for att in rate_limited)
    if style == "retry-after":
        assert any("retry-after" in att["delay_reason"].lower() for att in rate_limited)


async def test_provider_steers_the_rate_with_x_ezthrottle_rps(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000, steer_rps=5)
    up = await serve(nursery, upstream)
    node = await start_node(nursery, tmp_path, f'[targets."{up}"]\nrps = 100\nmax_concurrent = 1\n')
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        ids = await submit_all(client, [{"url": f"{up}/steer/{i}"} for i in range(8)])
        await wait_all_finished(client, ids, timeout_s=15)
        queue = (await client.get("/api/v1/queues", headers=auth())).json()["queues"][0]
    assert queue["rps"] == 5 and queue["rps_source"] == "header:x-ezthrottle-rps"
    # After the first response taught the node the rate, the rest arrive at most 5/s.
    assert_paced(upstream.accepted_times()[1:], rps=5)


async def test_retry_codes_are_retried_then_fail(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000, fail_first=100, fail_status=503)
    up = await serve(nursery, upstream)
    node = await start_node(nursery, tmp_path, "[defaults]\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.2\n")
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        ids = await submit_all(client, [{"url": f"{up}/f", "retry_policy": {"max_retries": 2}}])
        (doc,) = await wait_all_finished(client, ids, timeout_s=15)
    assert doc["status"] == "failed"
    assert [a["status_code"] for a in doc["attempts"]] == [503, 503, 503]
    assert doc["retries_used"] == 2 and doc["response"]["status_code"] == 503


async def test_other_4xx_is_final_and_connection_errors_retry(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000, fail_first=1, fail_status=404)
    up = await serve(nursery, upstream)
    node = await start_node(nursery, tmp_path, "[defaults]\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.1\n")
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        ids = await submit_all(
            client,
            [
                {"url": f"{up}/gone"},
                {"url": "http://127.0.0.1:9/closed-port", "retry_policy": {"max_retries": 1}},
            ],
        )
        not_found, unreachable = await wait_all_finished(client, ids, timeout_s=15)
    assert not_found["status"] == "failed" and len(not_found["attempts"]) == 1
    assert unreachable["status"] == "failed" and len(unreachable["attempts"]) == 2
    assert unreachable["attempts"][0]["error"] and unreachable["response"] is None


async def test_attempt_timeouts_are_per_target_and_retried(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000, delay_s=2.0)
    up = await serve(nursery, upstream)
    target = f'[targets."{up}"]\ntotal_timeout_s = 0.3\n[defaults]\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.1\n'
    node = await start_node(nursery, tmp_path, target)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        ids = await submit_all(client, [{"url": f"{up}/slow", "retry_policy": {"max_retries": 1}}])
        (doc,) = await wait_all_finished(client, ids, timeout_s=10)
    assert doc["status"] == "failed" and len(doc["attempts"]) == 2
    assert all("timeout" in attempt["error"] for attempt in doc["attempts"])
    assert all(attempt["duration_ms"] < 1500 for attempt in doc["attempts"])
