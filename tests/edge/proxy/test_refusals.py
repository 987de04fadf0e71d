"""Refusals and upstream failures: status, problem+json, Retry-After and RateLimit fields, and freed slots."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from tests.edge.proxy.support import Upstream, harness, protect_keys

KEY_A, KEY_B, KEY_C = "cust_a_0123456789ab", "cust_b_0123456789ab", "cust_c_0123456789ab"
KEYS = protect_keys(
    {"key": key, "id": name, "tier": "paid", **extra}
    for key, name, extra in ((KEY_A, "a", {"rate_per_s": 1.0, "burst": 1}), (KEY_B, "b", {}), (KEY_C, "c", {}))
)


def assert_problem(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + kind)
    assert response.json()["status"] == status


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_ratelimit_fields() -> None:
    async with harness(keys=KEYS) as h:
        allowed = await h.client.get("/work", headers={"x-api-key": KEY_A})
        refused = await h.client.get("/work", headers={"x-api-key": KEY_A})
        other = await h.client.get("/work", headers={"x-api-key": KEY_B})
    assert allowed.status_code == 200 and other.status_code == 200
    assert_problem(refused, 429, "rate-limited")
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"per-key";q=1;w=1'
    assert refused.headers["ratelimit"] == '"per-key";r=0;t=1'
    refusals = h.proxy.metric(
        "ezthrottle_proxy_refused_total", listener="test", tier="paid", key="a", reason="rate-limited"
    )
    assert refusals == 1


async def test_full_key_queue_is_429_and_full_global_queue_is_503() -> None:
    settings: dict[str, Any] = {"keys": KEYS, "max_concurrency": 1, "key_queue_length_max": 2, "queue_length_max": 3}
    answers: list[httpx.Response] = []
    async with harness(**settings) as h:

        async def call(path: str, key: str) -> None:
            answers.append(await h.client.get(path, headers={"x-api-key": key}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "/sleep?s=0.6", KEY_B)  # holds the only slot
            await wait_until(lambda: h.stats().inflight == 1)
            for _ in range(2):
                nursery.start_soon(call, "/work", KEY_B)
            await wait_until(lambda: h.stats().queued == 2)
            key_full = await h.client.get("/work", headers={"x-api-key": KEY_B})
            nursery.start_soon(call, "/work", KEY_C)
            await wait_until(lambda: h.stats().queued == 3)
            all_full = await h.client.get("/work", headers={"x-api-key": KEY_C})
        await wait_until(lambda: h.stats().inflight == 0)  # slots come back just after their responses
    assert_problem(key_full, 429, "key-queue-full")
    assert_problem(all_full, 503, "queue-full")
    assert int(key_full.headers["retry-after"]) >= 1 and int(all_full.headers["retry-after"]) >= 1
    assert [a.status_code for a in answers] == [200] * 4  # whoever was queued kept their place
    assert h.stats().queued == 0


async def test_a_request_queued_past_the_wait_limit_gets_503() -> None:
    async with harness(max_concurrency=1, queue_wait_s_max=0.3) as h, trio.open_nursery() as nursery:
        nursery.start_soon(h.client.get, "/sleep?s=1")
        await wait_until(lambda: h.stats().inflight == 1)
        started = trio.current_time()
        expired = await h.client.get("/work")
        waited_s = trio.current_time() - started
    assert_problem(expired, 503, "queue-timeout")
    assert expired.headers["retry-after"] == "1"
    assert 0.25 <= waited_s < 0.9
    expiries = h.proxy.metric(
        "ezthrottle_proxy_refused_total", listener="test", tier="free", key="anonymous", reason="queue-timeout"
    )
    assert expiries == 1


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_an_unreachable_upstream_is_502() -> None:
    async with harness(upstream_url=f"http://127.0.0.1:{closed_port()}") as h:
        response = await h.client.get("/work")
    assert_problem(response, 502, "upstream-failed")
    assert h.proxy.metric("ezthrottle_proxy_upstream_failures_total", listener="test", kind="connect") == 1
    assert h.stats().inflight == 0


@pytest.mark.parametrize(
    "settings", [{"upstream_read_timeout_s": 0.2}, {"upstream_total_timeout_s": 0.2}], ids=["read", "total"]
)
async def test_a_slow_upstream_is_504_and_its_slot_is_freed(settings: dict[str, float]) -> None:
    async with harness(**settings) as h:
        started = trio.current_time()
        response = await h.client.get("/sleep?s=3")
        elapsed_s = trio.current_time() - started
    assert_problem(response, 504, "upstream-timeout")
    assert elapsed_s < 1.5
    assert h.proxy.metric("ezthrottle_proxy_upstream_failures_total", listener="test", kind="timeout") == 1
    assert h.stats().inflight == 0


async def test_adaptive_concurrency_shrinks_on_upstream_503s() -> None:
    async with harness(max_concurrency=8, adaptive_concurrency=True) as h:
        assert h.proxy.app.gate.scheduler.capacity == 4  # AIMD's starting limit
        for _ in range(2):
            assert (await h.client.get("/status/503")).status_code == 503  # the upstream's, passed through
            await wait_until(lambda: h.stats().inflight == 0)  # its slot is back (just after its response)
    assert h.proxy.app.gate.scheduler.capacity == 1  # halved by each, as each was admitted after the last cut
    assert h.proxy.metric("ezthrottle_proxy_capacity", listener="test") == 1


async def test_a_refused_request_with_a_large_body_still_reads_its_answer() -> None:
    keys = protect_keys([{"key": KEY_A, "rate_per_s": 0.1}])
    async with harness(Upstream(), keys=keys, body_buffer_bytes=1024) as h:
        await h.client.get("/work", headers={"x-api-key": KEY_A})
        refused = await h.client.post("/upload", content=b"x" * 2_000_000, headers={"x-api-key": KEY_A})
    assert_problem(refused, 429, "rate-limited")
    assert h.upstream.started == 1
