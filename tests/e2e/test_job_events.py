"""GET /api/v1/jobs/{id}/events on two real nodes in one process, read by a real HTTP client through the node that
does not hold the job: a 429 then a success, a late reader, a reader that goes away, and who may read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio

from edge.engine.spec import queue_key, validate_job
from edge.node import Node
from simulations.actors import Receive, Scope, Send, read_body, respond
from tests.e2e.support import OTHER_KEY, WebhookSink, auth, free_port, serve, start_node
from tests.edge.placement.support import node_config, start, wait_members

IDLE_TIMEOUT_S = 0.3  # the node's idle timeout: a stream outlives it many times over
LATER = 4_000_000_000_000  # retry_at far in the future: the job stays queued


class LimitedOnce:
    """An upstream that answers its first request 429 + Retry-After: 1, and every later one 200."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        self.calls += 1
        if self.calls == 1:
            await respond(send, 429, b"slow down", [("Retry-After", "1")])
        else:
            await respond(send, 200, b'{"ok": true}', [("content-type", "application/json")])


async def two_nodes(nursery: trio.Nursery, tmp_path: Path) -> tuple[Node, Node]:
    gossip = {"a": free_port(), "b": free_port()}
    server = f"idle_timeout_s = {IDLE_TIMEOUT_S}\n"
    a, _ = await start(nursery, node_config(tmp_path, "a", gossip, server_extra=server))
    b, _ = await start(nursery, node_config(tmp_path, "b", gossip, server_extra=server))
    await wait_members(a, 2)
    await wait_members(b, 2)
    return a, b


def job_held_by(node: Node, upstream: str, **fields: Any) -> dict[str, Any]:
    """A job whose queue key `node` owns (its credential picked for that)."""
    assert node.membership is not None
    for i in range(100):
        job = {"url": f"{upstream}/charge", "headers": {"X-Api-Key": f"key-{i}"}, **fields}
        key = queue_key(account_id="acme", plan="pro", job=validate_job(job, account_id="acme"), account_queue=True)
        owner = node.membership.owner_of(key)
        if owner is not None and owner.node == node.membership.local.node:
            return job
    raise AssertionError("no credential of 100 maps to the node")


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The events of a Server-Sent Events response, as their JSON `data` (each with its `event:` name checked)."""
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            event = json.loads(line.removeprefix("data: "))
            assert event["type"] == kind
            yield event


async def read_stream(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    async with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=auth()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        return [event async for event in sse_events(response)]


async def test_a_429_then_a_success_streams_through_the_node_that_does_not_hold_the_job(
    nursery: trio.Nursery, tmp_path: Path
):
    upstream, sink = LimitedOnce(), WebhookSink()
    upstream_url, sink_url = await serve(nursery, upstream), await serve(nursery, sink)
    a, b = await two_nodes(nursery, tmp_path)
    job = job_held_by(b, upstream_url, webhooks=[{"url": f"{sink_url}/hook"}])
    async with httpx.AsyncClient(base_url=a.base_url, timeout=10) as client:
        job_id = (await client.post("/api/v1/jobs", json=job, headers=auth())).json()["job_id"]
        started = trio.current_time()
        with trio.fail_after(15):
            events = await read_stream(client, job_id)
        lasted_s = trio.current_time() - started

        kinds = [event["type"] for event in events]
        assert kinds == [
            "queued",
            "dispatched",
            "attempt",
            "retry_scheduled",
            "dispatched",
            "attempt",
            "finished",
            "webhook",
            "end",
        ], kinds
        assert {event["node"] for event in events} == {"b"} and {event["job_id"] for event in events} == {job_id}
        assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
        limited, retry, won = events[2], events[3], events[5]
        assert (limited["status_code"], limited["outcome"]) == (429, "rate_limited")
        assert retry["reason"] and "retry-after" in retry["reason"].lower() and retry["delay_s"] >= 0.9
        assert (won["status_code"], won["outcome"]) == (200, "won")
        assert events[6]["status"] == "success" and events[7]["result"] == "delivered"
        assert events[8] == {**events[8], "status": "success", "webhooks": "delivered"}
        assert lasted_s > 3 * IDLE_TIMEOUT_S  # the idle timeout did not cut the stream

        # A reader that comes after the end gets the whole history from the holder's ring, and its end.
        with trio.fail_after(5):
            again = await read_stream(client, job_id)
        assert [event["seq"] for event in again] == [event["seq"] for event in events]

        # The job's account only: another account's key is told there is no such job, no key is refused.
        other = await client.get(f"/api/v1/jobs/{job_id}/events", headers=auth(OTHER_KEY))
        assert other.status_code == 404 and other.headers["content-type"] == "application/problem+json"
        assert (await client.get(f"/api/v1/jobs/{job_id}/events")).status_code == 401
        assert (await client.post(f"/api/v1/jobs/{job_id}/events", headers=auth())).status_code == 405


async def test_a_reader_that_goes_away_leaves_the_job_and_the_holder_alone(nursery: trio.Nursery, tmp_path: Path):
    upstream = LimitedOnce()
    upstream_url = await serve(nursery, upstream)
    a, b = await two_nodes(nursery, tmp_path)
    job = job_held_by(b, upstream_url)
    async with httpx.AsyncClient(base_url=a.base_url, timeout=10) as client:
        job_id = (await client.post("/api/v1/jobs", json=job, headers=auth())).json()["job_id"]
        with trio.fail_after(5):
            async with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=auth()) as response:
                async for event in sse_events(response):
                    if event["type"] == "retry_scheduled":
                        while not b.manager.events.readers:  # A long-polls B for what comes next
                            await trio.sleep(0.01)
                        break  # hang up while the job waits out its 429
        # A's long poll on B is abandoned with the stream: B has no reader left, well before the job ends.
        with trio.fail_after(2):
            while b.manager.events.readers:
                await trio.sleep(0.02)
        assert upstream.calls == 1
        with trio.fail_after(10):
            while (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).json()["status"] != "success":
                await trio.sleep(0.1)
        assert upstream.calls == 2


async def test_a_stream_ends_cleanly_when_the_node_stops(nursery: trio.Nursery, tmp_path: Path):
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as client:
        job = {"url": "http://127.0.0.1:9/later", "retry_at": LATER}
        job_id = (await client.post("/api/v1/jobs", json=job, headers=auth())).json()["job_id"]
        # Sooner than hypercorn's graceful timeout (5 s), after which it would cut the response off mid-body.
        with trio.fail_after(3):
            async with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=auth()) as response:
                kinds = []
                async for event in sse_events(response):
                    kinds.append(event["type"])
                    node.stop()
    assert kinds == ["queued"]  # and the body ended properly: an unfinished chunked body raises in aiter_lines
