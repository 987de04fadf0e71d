"""The public SDKs against a real node: the official Python SDK (ezthrottle 1.3.0) unmodified, and the Node and
Go SDKs' envelopes replayed byte for byte as those SDKs build them, all through `POST /api/v1/proxy`; a real
upstream and a real webhook receiver on 127.0.0.1.

The Python SDK is synchronous (requests): each call runs in a worker thread while the node runs in this one.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import ezthrottle.client
import httpx
import pytest
import requests
import trio
from ezthrottle import (
    EZThrottle,
    EZThrottleError,
    ForwardToEZThrottle,
    IdempotentStrategy,
    Step,
    StepType,
    auto_forward,
)
from ezthrottle.webhook_utils import verify_webhook_signature

from edge.node import Node
from edge.placement.usage import QuotaExceeded, month_end_ms
from tests.e2e.regions import RegionUpstream
from tests.e2e.support import (
    ACCOUNT_KEY,
    OTHER_KEY,
    WEBHOOK_SECRET,
    RateLimitedUpstream,
    WebhookSink,
    auth,
    serve,
    start_node,
)

FAST_WEBHOOKS = """
[webhooks]
schedule_s = [0, 0.2, 0.2]
repeat_every_s = 0.2
give_up_after_s = 5
"""
LATER = 4_000_000_000_000  # retry_at far in the future: the job stays queued
SDK_SECRET = "sdk_primary_secret_0123456789"
SDK_SECRET_2 = "sdk_rotated_secret_9876543210"
GO_TARGET = "https://ezthrottle.fly.dev"  # the Go SDK's hard-coded target host

T = TypeVar("T")


def sdk(node: Node, key: str = ACCOUNT_KEY) -> EZThrottle:
    return EZThrottle(key, tracktags_url=node.base_url, ezthrottle_url=node.base_url)


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking SDK call in a worker thread."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def wait_webhooks(sink: WebhookSink, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
    with trio.fail_after(timeout_s):
        while len(sink.received) < count:
            await trio.sleep(0.05)
    return sink.payloads()


def signed_with(sink: WebhookSink, index: int, secret: str) -> bool:
    headers, raw = sink.received[index]
    verified, _reason = verify_webhook_signature(raw, headers.get("x-ezthrottle-signature", ""), secret)
    return verified


async def accepted_jobs(node: Node) -> float:
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        text = (await client.get("/metrics")).text
    match = re.search(r"^ezthrottle_jobs_accepted_total (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


# -- the Python SDK ----------------------------------------------------------------------------------------------


async def test_submit_job_runs_and_its_webhook_verifies_with_the_secret_set_through_the_sdk(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    client = sdk(node)
    saved = await call(client.create_webhook_secret, SDK_SECRET)
    assert saved["status"] == "ok"

    result = await call(
        client.submit_job,
        url=f"{up}/v1/charges",
        method="post",
        headers={"Authorization": "Bearer sk_live_provider", "Content-Type": "application/json"},
        body=json.dumps({"amount": 42}),
        metadata={"order": "42"},
        webhooks=[{"url": f"{hook}/hook", "has_quorum_vote": True}],
        idempotent_key="order-42",
    )
    assert result["status"] == "queued" and result["idempotent_key"] == "order-42"
    assert result["job_id"].startswith("job_")

    [payload] = await wait_webhooks(sink, 1)
    assert payload["job_id"] == result["job_id"] and payload["idempotent_key"] == "order-42"
    assert payload["status"] == "success" and payload["metadata"] == {"order": "42"}
    assert payload["response"]["status_code"] == 200
    assert all(isinstance(v, str) for v in payload["response"]["headers"].values())
    assert signed_with(sink, 0, SDK_SECRET)  # the API's secret wins over the config file's
    assert not signed_with(sink, 0, WEBHOOK_SECRET)
    [arrival] = upstream.arrivals
    assert arrival.method == "POST" and json.loads(arrival.body) == {"amount": 42}
    assert arrival.headers["authorization"] == "Bearer sk_live_provider"
    assert SDK_SECRET not in caplog.text


async def test_queue_request_the_legacy_call_delivers_to_its_webhook_url(nursery: trio.Nursery, tmp_path: Path):
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    result = await call(sdk(node).queue_request, url=f"{up}/legacy", webhook_url=f"{hook}/hook", metadata={"m": "1"})
    assert result["status"] == "queued"
    [payload] = await wait_webhooks(sink, 1)
    assert payload["job_id"] == result["job_id"] and payload["metadata"] == {"m": "1"}
    assert signed_with(sink, 0, WEBHOOK_SECRET)  # no API secret: the config's
    assert [a.path for a in upstream.arrivals] == ["/legacy"]


async def test_performance_steps_queue_and_race(nursery: trio.Nursery, tmp_path: Path):
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    client = sdk(node)
    key = f"performance_basic_{uuid.uuid4()}"
    step = (
        Step(client)
        .url(f"{up}/status/200?test=performance_basic")
        .method("GET")
        .type(StepType.PERFORMANCE)
        .webhooks([{"url": f"{hook}/hook", "has_quorum_vote": True}])
        .idempotent_key(key)
    )
    result = await call(step.execute)
    assert result["status"] == "queued" and result["idempotent_key"] == key
    [payload] = await wait_webhooks(sink, 1)
    assert (payload["job_id"], payload["idempotent_key"], payload["status"]) == (result["job_id"], key, "success")

    racing = (
        Step(client)
        .url(f"{up}/delay/1?test=performance_racing")
        .type(StepType.PERFORMANCE)
        .regions(["iad", "lax", "ord"])
        .execution_mode("race")
        .region_policy("fallback")
        .webhooks([{"url": f"{hook}/hook", "has_quorum_vote": True}])
        .idempotent_key(f"performance_racing_{uuid.uuid4()}")
    )
    raced = await call(racing.execute)
    assert raced["status"] == "racing"  # the SDKs' integration test 2 asserts it
    payloads = await wait_webhooks(sink, 2)
    assert payloads[1]["job_id"] == raced["job_id"] and payloads[1]["status"] == "success"


async def test_frugal_steps_run_locally_and_reach_the_node_only_on_a_fallback_code(
    nursery: trio.Nursery, tmp_path: Path
):
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    client = sdk(node)
    local = await call(Step(client).url(f"{up}/frugal").type(StepType.FRUGAL).execute)
    assert local["status"] == "success" and local["executed_locally"] is True and local["status_code"] == 200
    assert await accepted_jobs(node) == 0  # the node never heard of it
    assert len(upstream.arrivals) == 1

    upstream.fail_first, upstream.fail_status = 2, 500  # the next local try fails with a code that forwards
    forwarded = await call(
        Step(client)
        .url(f"{up}/frugal-forwarded")
        .type(StepType.FRUGAL)
        .fallback_on_error([500])
        .webhooks([{"url": f"{hook}/hook"}])
        .idempotent_key("frugal-1")
        .execute
    )
    assert forwarded["status"] == "queued" and forwarded["idempotent_key"] == "frugal-1"
    [payload] = await wait_webhooks(sink, 1)
    assert payload["job_id"] == forwarded["job_id"] and payload["status"] == "success"
    assert await accepted_jobs(node) == 1
    assert [a.status for a in upstream.arrivals] == [200, 500, 200]  # local ok, local 500, the node's attempt


async def test_hash_and_unique_idempotency(nursery: trio.Nursery, tmp_path: Path):
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    client = sdk(node)

    def hashed() -> Step:
        return (
            Step(client)
            .url(f"{up}/hash")
            .method("POST")
            .body('{"n":1}')
            .type(StepType.PERFORMANCE)
            .webhooks([{"url": f"{hook}/hook"}])
            .retry_at(int(time.time() * 1000) + 500)  # the same on both: the second arrives while it waits
        )

    first_step = hashed()
    first = await call(first_step.execute)
    second = await call(first_step.execute)
    assert first["job_id"] == second["job_id"]  # no key: the server derives one from (account, url, method, body)
    assert first["idempotent_key"] == second["idempotent_key"] and first["idempotent_key"]
    [payload] = await wait_webhooks(sink, 1)
    assert payload["idempotent_key"] == first["idempotent_key"]  # the generated key is echoed in the webhook

    unique = [
        await call(
            Step(client)
            .url(f"{up}/unique")
            .type(StepType.PERFORMANCE)
            .idempotent_strategy(IdempotentStrategy.UNIQUE)
            .execute
        )
        for _ in range(2)
    ]
    assert unique[0]["job_id"] != unique[1]["job_id"]
    assert {str(uuid.UUID(answer["idempotent_key"])) for answer in unique} == {a["idempotent_key"] for a in unique}


async def test_the_auto_forward_decorator_submits_what_the_function_raises(nursery: trio.Nursery, tmp_path: Path):
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    client = sdk(node)

    @auto_forward(client)
    def process_payment(order_id: str, *, keyed: bool) -> dict[str, Any]:
        raise ForwardToEZThrottle(
            url=f"{up}/v1/charges",
            method="POST",
            headers={"Authorization": "Bearer sk_live_x"},
            body='{"amount": 1000}',
            idempotent_key=f"order_{order_id}" if keyed else None,
            metadata={"order_id": order_id},
            webhooks=[{"url": f"{hook}/hook", "has_quorum_vote": True}],
        )

    keyed = await call(process_payment, "12345", keyed=True)
    assert keyed["status"] == "queued" and keyed["idempotent_key"] == "order_12345"
    unkeyed = await call(process_payment, "777", keyed=False)
    uuid.UUID(unkeyed["idempotent_key"])  # the decorator's UNIQUE key
    payloads = await wait_webhooks(sink, 2)
    assert {p["job_id"] for p in payloads} == {keyed["job_id"], unkeyed["job_id"]}
    assert {p["metadata"]["order_id"] for p in payloads} == {"12345", "777"}
    assert all(p["status"] == "success" for p in payloads)


async def test_forward_or_fallback_uses_the_node_while_it_is_up_and_the_fallback_once_it_is_down(
    nursery: trio.Nursery, tmp_path: Path
):
    node = await start_node(nursery, tmp_path)
    client = sdk(node)
    fallbacks: list[str] = []

    def fallback() -> str:
        fallbacks.append("called")
        return "direct call"

    up = await call(client.forward_or_fallback, fallback, url="http://127.0.0.1:9/x", retry_at=LATER)
    assert isinstance(up, dict) and up["status"] == "queued" and fallbacks == []

    node.stop()
    with trio.fail_after(10):
        while True:
            try:
                async with httpx.AsyncClient(base_url=node.base_url) as probe:
                    await probe.get("/healthz")
            except httpx.ConnectError:
                break
            await trio.sleep(0.05)
    down = await call(client.forward_or_fallback, fallback, url="http://127.0.0.1:9/x", retry_at=LATER)
    assert down == "direct call" and fallbacks == ["called"]


async def test_the_four_webhook_secret_calls_and_signatures_after_a_rotation(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    client = sdk(node, OTHER_KEY)  # an account without a webhook_secret in the config
    with pytest.raises(EZThrottleError, match="No webhook secrets configured"):
        await call(client.get_webhook_secret)

    created = await call(client.create_webhook_secret, SDK_SECRET, SDK_SECRET_2)
    assert created == {"status": "ok", "message": "Webhook secrets saved"}
    shown = await call(client.get_webhook_secret)
    assert shown == {
        "customer_id": "other",
        "primary_secret": "sdk_****6789",
        "secondary_secret": "sdk_****3210",
        "has_secondary": True,
        "source": "api",
    }

    # The SDK's rotation sees a masked primary and sets the new secret alone.
    await call(client.rotate_webhook_secret, "sdk_third_secret_abcdefghij")
    rotated = await call(client.get_webhook_secret)
    assert rotated["primary_secret"] == "sdk_****ghij" and rotated["has_secondary"] is False
    result = await call(client.submit_job, url=f"{up}/signed", webhooks=[{"url": f"{hook}/hook"}])
    await wait_webhooks(sink, 1)
    assert sink.payloads()[0]["job_id"] == result["job_id"]
    assert signed_with(sink, 0, "sdk_third_secret_abcdefghij") and not signed_with(sink, 0, SDK_SECRET)

    deleted = await call(client.delete_webhook_secret)
    assert deleted == {"status": "ok", "message": "Webhook secrets deleted"}
    with pytest.raises(EZThrottleError, match="No webhook secrets configured"):
        await call(client.get_webhook_secret)
    await call(client.submit_job, url=f"{up}/unsigned", webhooks=[{"url": f"{hook}/hook"}])
    await wait_webhooks(sink, 2)
    assert "x-ezthrottle-signature" not in sink.received[1][0]  # none set anywhere: unsigned
    for secret in (SDK_SECRET, SDK_SECRET_2, "sdk_third_secret_abcdefghij"):
        assert secret not in caplog.text and secret not in json.dumps([shown, rotated, created, deleted])


class FakeUsage:
    """A usage report as edge/placement/usage.py will give one (`UsageReport`), for an account over its quota."""

    def breach_status(self, account_id: str) -> dict[str, Any]:
        return {
            "is_breached": True,
            "current_usage": 1000,
            "limit_value": 1000,
            "limit_operator": "gte",
            "breach_action": "deny",
        }

    def usage(self, account_id: str) -> dict[str, Any]:
        return {"account_id": account_id, "used": 1000, "quota": 1000, "remaining": 0}


async def test_a_quota_refusal_reaches_the_sdk_as_an_error_with_retry_at(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The refusal's shape whatever the report says: the test injects a fake report and a router that refuses,
    through the app's private attributes (a real plan's refusal: the tests on a small plan below)."""
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        metered = await client.get("/api/v1/usage", headers=auth())
        assert metered.status_code == 200 and metered.json()["count"] == 0  # acme is on the pro plan, metered
        allowed = await client.post(
            "/api/v1/proxy",
            json={"target_url": f"{node.base_url}/api/v1/jobs", "method": "POST", "body": '{"url": "http://a.b/"}'},
            headers=auth(),
        )
        assert allowed.json()["breach_status"] == {
            "is_breached": False,
            "current_usage": 1,
            "limit_value": 10_000_000,  # the built-in pro plan's monthly_requests
            "limit_operator": "gte",
            "breach_action": "deny",
        }

        retry_at_ms = int(time.time() * 1000) + 42_500

        async def refuse(record: Any) -> Any:
            raise QuotaExceeded(record.account_id, 1000, retry_at_ms)

        monkeypatch.setattr(node.app, "_usage", FakeUsage())
        monkeypatch.setattr(node.app._router, "submit", refuse)

        before = time.time() * 1000
        with pytest.raises(EZThrottleError, match="Plan limit exceeded") as refused:
            await call(sdk(node).submit_job, url="https://api.example.com/x")
        assert refused.value.retry_at is not None
        assert before + 43_000 - 1_000 <= refused.value.retry_at <= time.time() * 1000 + 43_000 + 1_000

        raw = await client.post(
            "/api/v1/proxy",
            json={"target_url": f"{GO_TARGET}/api/v1/jobs", "method": "POST", "body": '{"url": "https://a.b/"}'},
            headers=auth(),
        )
        assert raw.status_code == 429 and raw.headers["retry-after"] in ("42", "43")
        assert raw.json() == {
            "status": "denied",
            "breach_status": FakeUsage().breach_status("acme"),
            "error": "Plan limit exceeded",
            "retry_at": retry_at_ms,
        }

        direct = await client.post("/api/v1/jobs", json={"url": "https://a.b/"}, headers=auth())
        assert direct.status_code == 429 and direct.headers["content-type"] == "application/problem+json"
        assert direct.json()["type"].endswith("/quota-exceeded") and direct.json()["retry_at"] == retry_at_ms
        assert direct.headers["retry-after"] in ("42", "43")

        usage = await client.get("/api/v1/usage", headers=auth())
        assert usage.status_code == 200 and usage.json() == FakeUsage().usage("acme")
        assert (await client.get("/api/v1/usage")).status_code == 401


TINY_KEY = "ck_test_tiny_0123456789"
TINY_PLAN = f"""
[plans.tiny]
monthly_requests = 2
overage_requests_max = 0

[[accounts]]
id = "tiny"
key = "{TINY_KEY}"
plan = "tiny"
"""


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_small_plan_takes_two_jobs_from_the_sdk_and_refuses_the_third_with_the_months_end(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A real quota, no fakes: 2 jobs a month, no overage. The third submission is refused with a 429 whose
    `retry_at` is the first instant of next month (UTC); the SDK's error carries it as the SDK computes it."""
    node = await start_node(nursery, tmp_path, TINY_PLAN)
    answers: list[requests.Response] = []  # what the node answered the SDK, call by call
    real_post = requests.post

    def recording_post(*args: Any, **kwargs: Any) -> requests.Response:
        answers.append(real_post(*args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(ezthrottle.client.requests, "post", recording_post)
    client = sdk(node, TINY_KEY)
    job = {"url": "https://api.example.com/v1/charges", "method": "POST", "body": '{"amount": 42}', "retry_at": LATER}
    for index in range(2):
        accepted = await call(client.submit_job, **job, idempotent_key=f"tiny-{index}")
        assert accepted["status"] == "queued" and accepted["idempotent_key"] == f"tiny-{index}"

    before_ms = now_ms()
    with pytest.raises(EZThrottleError, match=r"^Rate limited: Plan limit exceeded$") as refused:
        await call(client.submit_job, **job, idempotent_key="tiny-2")
    after_ms = now_ms()
    assert type(refused.value) is EZThrottleError  # the SDK's QuotaExceededError is never raised by submit_job

    answer = answers[-1]
    assert answer.status_code == 429 and answer.headers["content-type"] == "application/json"
    month_end = month_end_ms(before_ms)
    assert month_end_ms(after_ms) == month_end, "the test ran across a month's end: run it again"
    assert answer.json() == {
        "status": "denied",
        "breach_status": {
            "is_breached": True,
            "current_usage": 2,
            "limit_value": 2,
            "limit_operator": "gte",
            "breach_action": "deny",
        },
        "error": "Plan limit exceeded",
        "retry_at": month_end,
    }
    retry_after_s = int(answer.headers["retry-after"])
    assert math.ceil((month_end - after_ms) / 1000) <= retry_after_s <= math.ceil((month_end - before_ms) / 1000)
    # client.py prefers Retry-After to the JSON's retry_at: time.time() + Retry-After, so it carries the node's
    # retry_at rounded up to the header's whole second (never earlier, at most a second and the call's time later).
    assert refused.value.retry_at is not None
    assert month_end - 1 <= refused.value.retry_at <= month_end + 1_000 + (after_ms - before_ms)

    async with httpx.AsyncClient(base_url=node.base_url) as http:
        usage = (await http.get("/api/v1/usage", headers=auth(TINY_KEY))).json()
    assert (usage["account_id"], usage["plan"], usage["count"], usage["quota"]) == ("tiny", "tiny", 2, 2)
    assert usage["remaining"] == 0 and usage["overage_max"] == 0  # the refusal counted nothing
    assert await accepted_jobs(node) == 2


# -- the Node and Go SDKs, replayed ------------------------------------------------------------------------------


def envelope(target: str, method: str, body: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The envelope every SDK builds (client.ts / client.go): all six fields, always."""
    return {
        "scope": "customer",
        "metric_name": "",
        "target_url": target,
        "method": method,
        "headers": {"Content-Type": "application/json"} if headers is None else headers,
        "body": body,
    }


async def proxied(client: httpx.AsyncClient, doc: dict[str, Any], key: str = ACCOUNT_KEY) -> dict[str, Any]:
    """POST an envelope; assert what every SDK checks (HTTP 200, "allowed", string headers) and return the
    forwarded response with its body parsed."""
    response = await client.post("/api/v1/proxy", json=doc, headers=auth(key))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "allowed" and set(answer["breach_status"]) >= {"is_breached", "current_usage"}
    forwarded = answer["forwarded_response"]
    assert isinstance(forwarded["body"], str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in forwarded["headers"].items())
    return {**forwarded, "json": json.loads(forwarded["body"])}


async def test_the_node_sdks_fallback_chain_and_camel_case_follow_up(nursery: trio.Nursery, tmp_path: Path):
    """Integration tests 3 and 4 as the Node SDK sends them: the top level in snake_case (submitJob converts it),
    every nested job as Step._buildJobPayload builds it, in camelCase."""
    upstream, sink = RegionUpstream({}), WebhookSink()
    up, hook = await upstream.serve(nursery), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    webhooks = [{"url": f"{hook}/webhook", "has_quorum_vote": True}]
    chain = {
        "url": f"{up}/status/500",
        "method": "GET",
        "webhooks": webhooks,
        "idempotent_key": "node-fallback-1",
        "fallback_job": {
            "url": f"{up}/delay/2",
            "method": "GET",
            "trigger": {"type": "on_error", "codes": [500, 502, 503]},
            "fallbackJob": {
                "url": f"{up}/status/200",
                "method": "GET",
                "trigger": {"type": "on_timeout", "timeout_ms": 500},
            },
        },
    }
    follow_up = {
        "url": f"{up}/status/200?parent",
        "method": "GET",
        "webhooks": webhooks,
        "idempotent_key": "node-parent-1",
        "on_success": {
            "url": f"{up}/status/200?child",
            "method": "GET",
            "webhooks": webhooks,
            "idempotentKey": "node-child-1",
            "retryPolicy": {"max_retries": 1},
        },
    }
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        root = await proxied(client, envelope(f"{node.base_url}/api/v1/jobs", "POST", json.dumps(chain)))
        assert root["status_code"] == 201 and root["json"]["status"] == "queued"
        [payload] = await wait_webhooks(sink, 1)
        assert (payload["job_id"], payload["idempotent_key"], payload["status"]) == (
            root["json"]["job_id"],
            "node-fallback-1",
            "success",
        )
        assert payload["step"] == 2  # the nested camelCase fallbackJob ran

        parent = await proxied(client, envelope(f"{node.base_url}/api/v1/jobs", "POST", json.dumps(follow_up)))
        assert parent["status_code"] == 201
        payloads = await wait_webhooks(sink, 3)
        assert [p["idempotent_key"] for p in payloads[1:]] == ["node-parent-1", "node-child-1"]
        assert payloads[1]["job_id"] == parent["json"]["job_id"] != payloads[2]["job_id"]


async def test_the_go_sdks_envelopes_with_its_hard_coded_host_and_camel_case_tags(
    nursery: trio.Nursery, tmp_path: Path
):
    """As client.go / step.go build them: target_url always https://ezthrottle.fly.dev, `headers: {}` and
    `metadata: {}` always present, `hasQuorumVote` and the retry policy's fields in camelCase, the defaults spelled
    out. Go accepts only a forwarded 200 or 201 and decodes the headers as map[string]string."""
    upstream, sink = RateLimitedUpstream(limit_rps=100, fail_first=1, fail_status=503), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    job = {
        "url": f"{up}/go",
        "method": "GET",
        "headers": {},
        "metadata": {},
        "webhooks": [{"url": f"{hook}/webhook", "hasQuorumVote": True}],
        "webhook_quorum": 1,
        "region_policy": "fallback",
        "execution_mode": "race",
        "retry_policy": {"maxRetries": 1, "maxReroutes": 1, "retryCodes": [503], "rerouteCodes": [502]},
        "idempotent_key": "go-1",
        "on_success": {
            "url": f"{up}/go-child",
            "method": "GET",
            "webhook_quorum": 1,
            "region_policy": "fallback",
            "execution_mode": "race",
        },
    }
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        created = await proxied(client, envelope(f"{GO_TARGET}/api/v1/jobs", "POST", json.dumps(job)))
        assert created["status_code"] in (200, 201) and created["json"]["idempotent_key"] == "go-1"
        record = await node.store.get_job(created["json"]["job_id"])
        assert record is not None
        spec = record.spec.to_wire()
        assert spec["retry_policy"] == {
            "max_retries": 1,
            "max_reroutes": 1,
            "retry_codes": [503],
            "reroute_codes": [502],
        }
        [payload] = await wait_webhooks(sink, 1)
        assert payload["status"] == "success" and payload["idempotent_key"] == "go-1"
        assert [a.status for a in upstream.arrivals[:2]] == [503, 200]  # maxRetries: 1 retried the 503

        # Webhook secrets, as CreateWebhookSecret / GetWebhookSecret / DeleteWebhookSecret send them.
        target = f"{GO_TARGET}/api/v1/webhook-secrets"
        post = await proxied(client, envelope(target, "POST", json.dumps({"primary_secret": SDK_SECRET})), OTHER_KEY)
        assert post["status_code"] == 200 and post["json"]["status"] == "ok"
        got = await proxied(client, envelope(target, "GET", "", headers={}), OTHER_KEY)
        assert got["json"]["primary_secret"] == "sdk_****6789" and got["json"]["customer_id"] == "other"
        deleted = await proxied(client, envelope(target, "DELETE", "", headers={}), OTHER_KEY)
        assert deleted["json"] == {"status": "ok", "message": "Webhook secrets deleted"}
        missing = await proxied(client, envelope(target, "GET", "", headers={}), OTHER_KEY)
        assert missing["status_code"] == 404  # Go turns it into "no webhook secrets configured"


def node_sdk_submit(target: str, job: dict[str, Any]) -> bytes:
    """client.ts submitJob's request body: JSON.stringify (compact, insertion order) of the envelope, whose body is
    JSON.stringify of the job."""
    doc = envelope(target, "POST", json.dumps(job, separators=(",", ":")))
    return json.dumps(doc, separators=(",", ":")).encode()


def go_sdk_submit(job: dict[str, Any]) -> bytes:
    """client.go SubmitJob's request body: json.Marshal of maps (compact, keys sorted), the hard-coded host."""
    body = json.dumps(job, separators=(",", ":"), sort_keys=True)
    return json.dumps(
        envelope(f"{GO_TARGET}/api/v1/jobs", "POST", body), separators=(",", ":"), sort_keys=True
    ).encode()


def node_sdk_rate_limit(response: httpx.Response) -> tuple[str, int | None]:
    """client.ts on a 429: RateLimitError(`Rate limited: ${error}`, retryAt), retryAt the JSON's retry_at, or only
    without one Date.now() + parseInt(Retry-After) * 1000."""
    data = response.json()
    retry_at = data.get("retry_at")
    retry_after = response.headers.get("retry-after")
    if retry_after and not retry_at:
        retry_at = now_ms() + int(retry_after) * 1000
    return f"Rate limited: {data.get('error') or 'Unknown error'}", retry_at


class _GoFloat(float):
    """A JSON number with a fraction or an exponent, which Go refuses to decode into an int64."""


def go_sdk_rate_limit(response: httpx.Response) -> tuple[str, int]:
    """client.go on a 429: json.Unmarshal into ErrorResponse{Error string; RetryAt int64} (any failure, a fractional
    retry_at say, and the error is a bare "Rate limited" with no RetryAt), then, with a Retry-After header,
    RetryAt = time.Now().UnixMilli() + Sscanf(Retry-After, "%d") * 1000."""
    data = json.loads(response.content, parse_float=_GoFloat)
    assert isinstance(data.get("error", ""), str)
    retry_at = data.get("retry_at", 0)
    assert type(retry_at) is int and -(2**63) <= retry_at < 2**63, "Go's decoder would refuse this retry_at"
    retry_after = response.headers.get("retry-after")
    if retry_after:
        leading = re.match(r"[+-]?\d+", retry_after)
        retry_at = now_ms() + (int(leading[0]) if leading else 0) * 1000
    return data.get("error", ""), retry_at


async def test_a_quota_refusal_as_the_node_and_go_sdks_read_it(nursery: trio.Nursery, tmp_path: Path):
    """The same small plan, through the Node and Go SDKs' envelopes byte for byte: 2 jobs accepted, then a 429
    with Retry-After and an integer JSON retry_at, which Node reads as is and Go recomputes from Retry-After."""
    node = await start_node(nursery, tmp_path, TINY_PLAN)
    job = {"url": "https://api.example.com/v1/charges", "method": "POST", "body": '{"amount": 42}', "retry_at": LATER}
    headers = {**auth(TINY_KEY), "Content-Type": "application/json"}
    node_target = f"{node.base_url}/api/v1/jobs"
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        for content in (
            node_sdk_submit(node_target, {**job, "idempotent_key": "node-1"}),
            go_sdk_submit({**job, "idempotent_key": "go-1"}),
        ):
            accepted = await client.post("/api/v1/proxy", content=content, headers=headers)
            assert accepted.status_code == 200 and accepted.json()["forwarded_response"]["status_code"] == 201

        before_ms = now_ms()
        from_node = await client.post(
            "/api/v1/proxy", content=node_sdk_submit(node_target, {**job, "idempotent_key": "node-2"}), headers=headers
        )
        from_go = await client.post(
            "/api/v1/proxy", content=go_sdk_submit({**job, "idempotent_key": "go-2"}), headers=headers
        )
        after_ms = now_ms()
        usage = (await client.get("/api/v1/usage", headers=auth(TINY_KEY))).json()

    month_end = month_end_ms(before_ms)
    assert month_end_ms(after_ms) == month_end, "the test ran across a month's end: run it again"
    for refused in (from_node, from_go):
        assert refused.status_code == 429 and refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"].isdigit()
        retry_after_s = int(refused.headers["retry-after"])
        assert math.ceil((month_end - after_ms) / 1000) <= retry_after_s <= math.ceil((month_end - before_ms) / 1000)
        document = refused.json()
        assert (document["status"], document["error"], document["retry_at"]) == (
            "denied",
            "Plan limit exceeded",
            month_end,
        )
        assert document["breach_status"]["is_breached"] is True

    assert node_sdk_rate_limit(from_node) == ("Rate limited: Plan limit exceeded", month_end)
    message, go_retry_at = go_sdk_rate_limit(from_go)
    assert message == "Plan limit exceeded"
    assert month_end - 1 <= go_retry_at <= month_end + 1_000 + (now_ms() - before_ms)
    assert usage["count"] == 2 and usage["remaining"] == 0


# -- what the proxy refuses ---------------------------------------------------------------------------------------


async def test_the_proxy_runs_only_its_two_routes_and_never_fetches(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=100)
    up = await serve(nursery, upstream)
    node = await start_node(nursery, tmp_path)
    job = json.dumps({"url": "http://127.0.0.1:9/x", "retry_at": LATER})
    async with httpx.AsyncClient(base_url=node.base_url) as client:

        async def refused(doc: Any, status: int = 400, *, key: str = ACCOUNT_KEY, raw: bytes | None = None) -> dict:
            content = raw if raw is not None else json.dumps(doc).encode()
            response = await client.post("/api/v1/proxy", content=content, headers=auth(key))
            assert response.status_code == status, (doc, response.text)
            assert response.headers["content-type"] == "application/json"
            return dict(response.json())

        for target in (
            f"{up}/v1/charges",  # the upstream itself, another path
            f"{up}/api/v1/jobs/job_1",
            f"{node.base_url}/api/v1/proxy",
            f"{node.base_url}/internal/v1/jobs",
            f"{node.base_url}/healthz",
            "file:///etc/passwd",
            "file:///api/v1/jobs",
            "http://169.254.169.254/latest/meta-data/iam/",
            "http://10.0.0.1:8080/admin",
            "gopher://127.0.0.1:9/api/v1/jobs",
        ):
            answer = await refused(envelope(target, "POST", job))
            assert answer["error"] == "Bad Request" and answer["message"]

        for malformed in (
            {"method": "POST", "body": job},  # no target_url
            {"target_url": f"{up}/api/v1/jobs", "body": job},  # no method
            {"target_url": f"{up}/api/v1/jobs", "method": "POST"},  # no body
            envelope(f"{up}/api/v1/jobs", "POST", {"url": "http://x/"}),  # body an object
            envelope(f"{up}/api/v1/jobs", "POST", "{not json"),
            envelope(f"{up}/api/v1/jobs", "POST", json.dumps(job) + "]"),
            envelope(f"{up}/api/v1/jobs", "TELEPORT", job),
            ["not", "an", "object"],
        ):
            assert (await refused(malformed))["error"] == "Bad Request"
        assert (await refused(None, raw=b"\x00 not json at all"))["error"] == "Bad Request"
        assert (await refused(None, raw=b"[" * 200_000))["error"] == "Bad Request"

        unauthorized = await refused(envelope(f"{up}/api/v1/jobs", "POST", job), 401, key="ck_wrong_0000000000")
        assert unauthorized == {"error": "Unauthorized", "message": "Invalid API key"}
        too_big = await refused(None, 413, raw=b'{"body": "' + b"x" * (1024 * 1024 + 10) + b'"}')
        assert too_big["error"] == "Request Entity Too Large"
        assert (await client.get("/api/v1/proxy", headers=auth())).status_code == 405

        # The host is ignored: a target naming the upstream with the job path runs here, and the upstream sees
        # nothing. Headers inside the envelope never change the account.
        ran = await proxied(
            client,
            envelope(f"{up}/api/v1/jobs", "POST", job, headers={"Authorization": f"Bearer {OTHER_KEY}"}),
        )
        assert ran["status_code"] == 201
        record = await node.store.get_job(ran["json"]["job_id"])
        assert record is not None and record.account_id == "acme"
        # The inner call's own refusals travel inside the envelope's answer, as the hosted proxy forwards them.
        invalid = await proxied(client, envelope(f"{up}/api/v1/jobs", "POST", json.dumps({"method": "GET"})))
        assert invalid["status_code"] == 422 and invalid["json"]["field"] == "url"
        assert invalid["headers"]["content-type"] == "application/problem+json"
        wrong_method = await proxied(client, envelope(f"{up}/api/v1/jobs", "GET", "", headers={}))
        assert wrong_method["status_code"] == 405 and wrong_method["headers"]["allow"] == "POST"
    assert upstream.arrivals == []
