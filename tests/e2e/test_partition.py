"""A split on three real processes: one key's pacer never runs on both sides (cluster/lease.py).

The owner of one key (ord) is cut off from its peers by nftables (tests/e2e/partition.py) for longer than failure
detection plus the takeover wait, while jobs for the key keep arriving on both sides. The upstream, served on the
one address the partition leaves open, sees the key paced as by one pacer the whole time: ord stops dispatching
once it has heard from no majority for its lease, and the majority side takes the key over only after its wait.
After the heal every acknowledged job has completed.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from cluster import Rendezvous
from edge.engine.spec import queue_key, validate_job
from edge.http.server import serve_asgi
from simulations.actors import read_body, respond
from tests.e2e import partition
from tests.e2e.regions import RegionCluster, source_address, start_region_cluster
from tests.e2e.support import auth
from tests.e2e.test_pacing import assert_paced

RATE = 4.0
SPLIT_S = 20.0  # longer than detection (local profile) plus the takeover wait of three members
TIMEOUT_S = 120.0


@dataclass
class PacedUpstream:
    """Records when each request arrived, from which source address, with which body."""

    arrivals: list[tuple[float, str, str]] = field(default_factory=list)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = (await read_body(receive)).decode()
        self.arrivals.append((trio.current_time(), scope["client"][0], body))
        await respond(send, 200, b'{"ok": true}', [("content-type", "application/json")])


def job_owned_by(upstream: str, owner: str) -> dict:
    """A job whose queue key `owner` owns among the three members."""
    ring = Rendezvous(["iad-1", "lax-1", "ord-1"])
    for i in itertools.count():
        job = {"url": f"{upstream}/pay", "method": "POST", "headers": {"Authorization": f"Bearer k{i}"}}
        key = queue_key(account_id="acme", plan="pro", job=validate_job(job), account_queue=True)
        if ring.owner(key) == owner:
            return job
    raise AssertionError("unreachable")


async def submit(client: httpx.AsyncClient, job: dict, tag: str) -> tuple[int, str | None]:
    try:
        answer = await client.post("/api/v1/jobs", json={**job, "body": tag, "idempotent_key": tag}, headers=auth())
    except httpx.TransportError:
        return 0, None
    return answer.status_code, answer.json().get("job_id") if answer.status_code in (200, 201) else None


async def wait_all_done(client: httpx.AsyncClient, ids: set[str]) -> None:
    with trio.fail_after(TIMEOUT_S):
        while ids:
            for job_id in list(ids):
                doc = (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).json()
                assert doc.get("status") not in ("failed", "canceled"), doc
                if doc.get("status") == "success":
                    ids.discard(job_id)
            await trio.sleep(0.5)


@pytest.mark.slow
async def test_a_split_never_runs_a_key_on_both_sides(nursery: trio.Nursery, tmp_path: Path, cgroup: Path) -> None:
    upstream = PacedUpstream()
    [bound] = await nursery.start(
        lambda task_status: serve_asgi(upstream, bind="127.0.0.50:0", task_status=task_status)
    )
    upstream_url = f"http://{bound}"
    config = f'[targets."{upstream_url}"]\nrps = {RATE}\nmax_concurrent = 1\n[cluster]\nforward_deadline_s = 2.0\n'
    cluster: RegionCluster = await start_region_cluster(nursery, tmp_path, extra_config=config, cgroups={"ord": cgroup})
    job = job_owned_by(upstream_url, "ord-1")
    async with contextlib.AsyncExitStack() as stack:
        iad = await stack.enter_async_context(partition.client(cluster["iad"]))
        ord_ = await stack.enter_async_context(partition.client(cluster["ord"]))
        acknowledged: set[str] = set()
        uncertain: list[tuple[httpx.AsyncClient, str]] = []

        async def send(client: httpx.AsyncClient, tag: str) -> None:
            status, job_id = await submit(client, job, tag)
            if job_id is not None:
                acknowledged.add(job_id)
            else:
                assert status in (0, 503), (tag, status)
                uncertain.append((client, tag))

        split_at, healed_at = await partition.submit_across_a_split(
            cluster, cluster["ord"], iad, ord_, send, backlog=12, split_s=SPLIT_S
        )
        for client, tag in uncertain:  # what the client could not learn during the split, it learns now
            status, job_id = await submit(client, job, tag)
            assert job_id is not None, (tag, status)
            acknowledged.add(job_id)
        await wait_all_done(iad, set(acknowledged))

    times = [at for at, _source, _body in upstream.arrivals]
    assert_paced(times, RATE)  # one pacer at a time, across the split, the takeover and the heal
    ord_source = source_address(cluster.regions.index("ord"))
    during = [(at, source) for at, source, _body in upstream.arrivals if split_at < at < healed_at]
    assert any(source != ord_source for _at, source in during), "the majority never took the key over"
    bodies = [body for _at, _source, body in upstream.arrivals]
    assert len(set(bodies)) == len(acknowledged)  # every acknowledged job ran; at most the one in flight twice
    repeated = {body for body in bodies if bodies.count(body) > 1}
    detail = [(round(at - split_at, 2), source, body) for at, source, body in upstream.arrivals if body in repeated]
    assert len(bodies) - len(set(bodies)) <= 1, (detail, round(healed_at - split_at, 2))
