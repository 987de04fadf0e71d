"""Forwarding, hand-off and reads across two real nodes in one process (real UDP gossip, real HTTP/2 between them)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import httpx
import trio

from edge.placement.peers import PREFIX
from edge.runtime import Runtime
from tests.e2e.support import auth, free_port
from tests.edge.placement.support import node_config, start, wait_members

LATER = 4_000_000_000_000  # retry_at far in the future: jobs stay queued where they are


def job(i: int) -> dict:
    return {"url": f"http://127.0.0.1:9/k{i}", "headers": {"X-Api-Key": f"key-{i}"}, "retry_at": LATER}


async def test_forwarding_reads_cancel_and_refusals(nursery: trio.Nursery, tmp_path: Path):
    gossip = {"a": free_port(), "b": free_port()}
    a, _ = await start(nursery, node_config(tmp_path, "a", gossip, forward_deadline_s=0.3))
    b, b_scope = await start(nursery, node_config(tmp_path, "b", gossip))
    await wait_members(a, 2)
    await wait_members(b, 2)
    async with httpx.AsyncClient(base_url=a.base_url) as client:
        ids = [(await client.post("/api/v1/jobs", json=job(i), headers=auth())).json()["job_id"] for i in range(16)]
        on_b = [job_id for job_id in ids if b.manager.live_job(job_id) is not None]
        on_a = [job_id for job_id in ids if a.manager.live_job(job_id) is not None]
        assert on_a and on_b and sorted(on_a + on_b) == sorted(ids)  # each job queued on exactly one owner
        for job_id in ids:  # and durable on both (cluster.replicas = 2, two members)
            assert await a.store.get_job(job_id) is not None and await b.store.get_job(job_id) is not None
        # Reads and cancels through either node find the job where it lives.
        for job_id in ids:
            assert (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).json()["status"] == "queued"
        cancelled = await client.delete(f"/api/v1/jobs/{on_b[0]}", headers=auth())
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        stored = await b.store.get_job(on_b[0])
        assert stored is not None and stored.status == "cancelled"
        queues = (await client.get("/api/v1/queues", headers=auth())).json()["queues"]
        assert {q["node"] for q in queues} == {"a", "b"} and len(queues) == 16
        # A duplicate submitted to the other node is the same job.
        async with httpx.AsyncClient(base_url=b.base_url) as other_entry:
            again = await other_entry.post("/api/v1/jobs", json=job(0), headers=auth())
        assert again.status_code == 200 and again.json()["job_id"] == ids[0]
        # The internal API refuses unsigned calls.
        unsigned = await client.post("/internal/v1/find", content=b"\x81\xa6job_id\xa1x")
        assert unsigned.status_code == 401

        # b dies without leaving; until a notices (longer than a's 0.3 s forwarding deadline), forwards to b
        # fail and the client hears 503 + Retry-After; once a has declared b dead, a owns b's keys.
        b_scope.cancel()
        key_of_b = next(i for i in range(16) if ids[i] in on_b)
        fresh = {**job(key_of_b), "idempotent_key": "after-b-died"}
        refused = await client.post("/api/v1/jobs", json=fresh, headers=auth())
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] and refused.json()["title"] == "Owner unavailable"
        await wait_members(a, 1)
        accepted = await client.post("/api/v1/jobs", json=fresh, headers=auth())
        assert accepted.status_code in (200, 201) and await a.store.get_job(accepted.json()["job_id"])


async def test_queued_jobs_move_to_a_node_that_joins(nursery: trio.Nursery, tmp_path: Path):
    gossip = {"a": free_port(), "b": free_port()}
    a, _ = await start(nursery, node_config(tmp_path, "a", gossip))
    async with httpx.AsyncClient(base_url=a.base_url) as client:
        ids = [(await client.post("/api/v1/jobs", json=job(i), headers=auth())).json()["job_id"] for i in range(16)]
    assert all([await a.store.get_job(job_id) for job_id in ids])
    b, _ = await start(nursery, node_config(tmp_path, "b", gossip))
    with trio.fail_after(20):
        while True:
            moved = [job_id for job_id in ids if b.manager.live_job(job_id) is not None]
            left = [job_id for job_id in ids if a.manager.live_job(job_id) is not None]
            if moved and len(moved) + len(left) == len(ids):
                break
            await trio.sleep(0.1)
    # Every job is queued on exactly one node, the one that owns its key; with two members and two replicas
    # both stores keep every job (the old owner keeps copies of the keys it handed over).
    assert not set(moved) & set(left)
    assert a.manager.statistics()["jobs"] == len(left) and b.manager.statistics()["jobs"] == len(moved)
    with trio.fail_after(10):
        while not all([await b.store.get_job(job_id) for job_id in ids]):
            await trio.sleep(0.1)
    assert all([await a.store.get_job(job_id) for job_id in ids])


async def test_a_workflow_root_and_its_steps_are_copied_to_the_other_holder(nursery: trio.Nursery, tmp_path: Path):
    gossip = {"a": free_port(), "b": free_port()}
    a, _ = await start(nursery, node_config(tmp_path, "a", gossip))
    b, _ = await start(nursery, node_config(tmp_path, "b", gossip))
    await wait_members(a, 2)
    await wait_members(b, 2)
    workflow = {
        **job(1),
        "fallback_job": {"url": "http://127.0.0.1:9/fallback", "trigger": {"type": "on_error", "codes": [500]}},
    }
    async with httpx.AsyncClient(base_url=a.base_url) as client:
        created = await client.post("/api/v1/jobs", json=workflow, headers=auth())
    assert created.status_code == 201, created.text
    root_id = created.json()["job_id"]
    # The root and its first step were saved in one commit and copied to the other member (replicas = 2) before
    # the 201: a takeover finds the workflow's state where it left it.
    for node in (a, b):
        root = await node.store.get_job(root_id)
        assert root is not None and root.steps, node.config.server.node_id
        step = await node.store.get_job(root.steps[0].job_id)
        assert step is not None and step.parent_id == root_id


class CallCounter(httpx.AsyncBaseTransport):
    """h2c with prior knowledge, as a node's PeerClient speaks it, counting requests by path."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport(http1=False, http2=True)
        self.paths: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths[request.url.path] += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_concurrent_forwards_to_one_owner_travel_in_batches(nursery: trio.Nursery, tmp_path: Path):
    """Submissions that arrive together at a non-owner share internal calls; each is answered on its own (a
    duplicate inside a batch is the same job)."""
    gossip = {"a": free_port(), "b": free_port()}
    calls = CallCounter()
    a, _ = await start(
        nursery, node_config(tmp_path, "a", gossip), dataclasses.replace(Runtime.real(), transport=calls)
    )
    b, _ = await start(nursery, node_config(tmp_path, "b", gossip))
    await wait_members(a, 2)
    await wait_members(b, 2)
    async with httpx.AsyncClient(base_url=a.base_url, http1=False, http2=True, timeout=30) as client:
        for i in range(64):  # a key b owns: every job below shares its queue
            probe = (await client.post("/api/v1/jobs", json=job(i), headers=auth())).json()["job_id"]
            if b.manager.live_job(probe) is not None:
                break
        else:
            raise AssertionError("b owns none of 64 keys")
        answers: dict[int, httpx.Response] = {}

        async def submit(n: int) -> None:
            body = {**job(i), "idempotent_key": f"batch-{n % 59}"}  # 59 to 61 repeat 0 to 2
            answers[n] = await client.post("/api/v1/jobs", json=body, headers=auth())

        calls.paths.clear()
        async with trio.open_nursery() as together:
            for n in range(62):
                together.start_soon(submit, n)
    statuses = Counter(response.status_code for response in answers.values())
    assert statuses == {201: 59, 200: 3}, statuses
    ids = {n: response.json()["job_id"] for n, response in answers.items()}
    assert ids[59] == ids[0] and ids[60] == ids[1] and ids[61] == ids[2]
    assert len(set(ids.values())) == 59 and all(b.manager.live_job(job_id) for job_id in ids.values())
    forwards = calls.paths[PREFIX + "jobs"]
    assert 1 <= forwards <= 62 // 2, calls.paths  # batched: far fewer calls than jobs (13 here, unloaded)
