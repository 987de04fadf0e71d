"""X-EZTHROTTLE-ACCOUNT-QUEUE is cluster state, and intake limits are the key owner's: three real nodes in one
process (real UDP gossip, real HTTP/2 between them) and a real upstream on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from edge.node import Node
from edge.placement.account_queues import SHARED_KEY_PREFIX
from tests.e2e.support import auth, free_port, serve
from tests.edge.placement.support import node_config, start, wait_members

LATER = 4_000_000_000_000  # retry_at far in the future: jobs stay queued where they are
CREDENTIALS = [f"Bearer user-{i}" for i in range(8)]


class SharedLimitUpstream:
    """Answers 200 and says that every key of an account shares one limit."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"x-ezthrottle-account-queue", b"false")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps({"ok": True}).encode()})


async def stored_records(nodes: list[Node], job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Where each job is queued, and its queue key there: {job_id: (node, queue_key)}. (Its key's other replicas
    hold copies in their stores, but only one node queues it.)"""
    found: dict[str, tuple[str, str]] = {}
    for node in nodes:
        for job_id in job_ids:
            record = node.manager.live_job(job_id)
            if record is not None:
                assert await node.store.get_job(job_id) is not None
                found[job_id] = (node.config.server.node_id or "", record.queue_key)
    return found


async def test_the_flag_reaches_every_node_moves_queued_jobs_and_survives_a_restart(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = SharedLimitUpstream()
    upstream_url = await serve(nursery, upstream)
    origin = upstream_url
    gossip = {name: free_port() for name in ("a", "b", "c")}
    configs = {name: node_config(tmp_path, name, gossip) for name in gossip}
    started = {name: await start(nursery, configs[name]) for name in gossip}
    nodes = [node for node, _scope in started.values()]
    for node in nodes:
        await wait_members(node, 3)
    assert all(node.account_queues and node.account_queues.enabled(origin) for node in nodes)

    async with httpx.AsyncClient(base_url=nodes[0].base_url) as client:
        # Parked jobs, one per credential: per-credential queue keys, spread over the owners.
        parked = []
        for i, credential in enumerate(CREDENTIALS):
            job = {
                "url": f"{upstream_url}/charge",
                "headers": {"Authorization": credential},
                "retry_at": LATER,
                "idempotent_key": f"parked-{i}",
            }
            answer = await client.post("/api/v1/jobs", json=job, headers=auth())
            assert answer.status_code == 201, answer.text
            parked.append(answer.json()["job_id"])
        placed = await stored_records(nodes, parked)
        assert len({key for _node, key in placed.values()}) == len(CREDENTIALS)

        # One job runs; its response carries the header, and the node that ran it shares what it learned.
        ran = await client.post(
            "/api/v1/jobs",
            json={"url": f"{upstream_url}/probe", "headers": {"Authorization": "Bearer x"}},
            headers=auth(),
        )
        assert ran.status_code == 201
        with trio.fail_after(20):
            while any(node.account_queues and node.account_queues.enabled(origin) for node in nodes):
                await trio.sleep(0.05)
        assert upstream.requests == 1

        # The parked jobs move to the account's one queue for the origin, on its one owner.
        shared_key = f"acme|{origin}|-"
        with trio.fail_after(30):
            while True:
                placed = await stored_records(nodes, parked)
                keys = {key for _where, key in placed.values()}
                owners = {where for where, _key in placed.values()}
                if len(placed) == len(parked) and keys == {shared_key} and len(owners) == 1:
                    break
                await trio.sleep(0.1)
        owner = next(iter(placed.values()))[0]
        with trio.fail_after(10):
            while True:
                queues = (await client.get("/api/v1/queues", headers=auth())).json()["queues"]
                ours = [q for q in queues if q["origin"] == origin and q["depth"]]
                if [(q["queue_key"], q["node"], q["depth"]) for q in ours] == [(shared_key, owner, len(parked))]:
                    break
                await trio.sleep(0.1)

        # A new job for a new credential, sent to any node, gets the shared key.
        for node in nodes:
            async with httpx.AsyncClient(base_url=node.base_url) as entry:
                job = {"url": f"{upstream_url}/c", "headers": {"Authorization": f"Bearer new-{node.base_url}"}}
                job.update(retry_at=LATER, idempotent_key=f"new-{node.base_url}")
                answer = await entry.post("/api/v1/jobs", json=job, headers=auth())
                assert answer.status_code == 201
                view = (await entry.get(f"/api/v1/jobs/{answer.json()['job_id']}", headers=auth())).json()
                assert view["queue_key"] == shared_key

    # Every node saved the setting; one restarted alone (its peers gone) still knows it from its own store.
    for _node, scope in started.values():
        scope.cancel()
    await trio.sleep(0)
    alone = node_config(tmp_path, "b", {"b": gossip["b"], "gone": free_port()})
    restarted, _scope = await start(nursery, alone)
    assert restarted.membership is not None and len(restarted.membership.live_members()) == 1
    assert restarted.account_queues is not None and restarted.account_queues.enabled(origin) is False
    assert isinstance(await restarted.store.shared_state(), dict)
    assert SHARED_KEY_PREFIX + origin in await restarted.store.shared_state()


async def test_the_backlog_limit_is_decided_by_the_keys_owner(nursery: trio.Nursery, tmp_path: Path) -> None:
    gossip = {name: free_port() for name in ("a", "b")}
    limit = 3
    nodes = []
    for name in gossip:
        config = node_config(tmp_path, name, gossip, server_extra=f"account_backlog_max = {limit}\n")
        node, _scope = await start(nursery, config)
        nodes.append(node)
    for node in nodes:
        await wait_members(node, 2)
    a, b = nodes
    assert a.membership is not None
    # A credential whose key b owns, submitted through a: the forwarded jobs count on b, and b refuses the next.
    credential = next(
        f"Bearer k{i}"
        for i in range(200)
        if (owner := a.membership.owner_of(f"acme|http://127.0.0.1:9|{fingerprint(f'Bearer k{i}')}")) is not None
        and owner.node == "b"
    )
    job = {"url": "http://127.0.0.1:9/x", "headers": {"Authorization": credential}, "retry_at": LATER}
    async with httpx.AsyncClient(base_url=a.base_url) as client:
        for i in range(limit):
            answer = await client.post("/api/v1/jobs", json={**job, "idempotent_key": f"k{i}"}, headers=auth())
            assert answer.status_code == 201, answer.text
        refused = await client.post("/api/v1/jobs", json={**job, "idempotent_key": "one-too-many"}, headers=auth())
    assert refused.status_code == 429, refused.text
    assert refused.json()["title"] == "Backlog full" and refused.headers["retry-after"]
    assert b.manager.backlog("acme") == limit and a.manager.backlog("acme") == 0


def fingerprint(credential: str) -> str:
    from edge.engine.spec import credential_fingerprint

    found = credential_fingerprint({"Authorization": credential})
    assert found is not None
    return found
