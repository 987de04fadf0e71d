"""Three real `ezthrottle serve` processes on loopback form one cluster with one queue per key.

- Jobs for one credential submitted round-robin to all three land in one queue: the upstream sees the configured
  rate, not three times it.
- `kill -9` the owner: another node takes the key within the detection bound and new jobs for it run.
- The killed node restarts on its data dir: its queued jobs complete. Nothing acknowledged is lost.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.support import RateLimitedUpstream, auth, free_port, serve, write_config
from tests.e2e.test_pacing import assert_paced

CLUSTER_KEY_HEX = "5f" * 32
RATE = 10.0
CREDENTIAL = "Bearer shared-provider-key"


class ClusterNode:
    def __init__(self, tmp_path: Path, name: str, upstream: str, gossip_port: int, seeds: list[str]) -> None:
        self.name = name
        self.upstream = upstream
        self.api_port, self.gossip_port = free_port(), gossip_port
        self.dir = tmp_path / name
        self.dir.mkdir()
        seeds_toml = "[" + ", ".join(f'"{seed}"' for seed in seeds) + "]"
        cluster = (
            f'[targets."{upstream}"]\nrps = {RATE}\nmax_concurrent = 2\n'
            f'[cluster]\nbind = "127.0.0.1:{self.gossip_port}"\nseeds = {seeds_toml}\n'
            f'keys = ["{CLUSTER_KEY_HEX}"]\nprofile = "local"\n'
        )
        self.config = write_config(self.dir, cluster, server_extra=f'node_id = "{name}"\n')
        self.log = self.dir / "node.log"
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "serve",
                "--config",
                str(self.config),
                "--listen",
                f"127.0.0.1:{self.api_port}",
            ],
            stdout=open(self.log, "ab"),  # noqa: SIM115 - the child owns the file
            stderr=subprocess.STDOUT,
        )

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(self.process.wait)

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await trio.to_thread.run_sync(self.process.wait)
            self.process.kill()


async def cluster_view(client: httpx.AsyncClient, node: ClusterNode) -> dict:
    return (await client.get(f"{node.base_url}/api/v1/cluster", headers=auth())).json()


async def wait_for_members(client: httpx.AsyncClient, nodes: list[ClusterNode], alive: set[str], timeout_s: float):
    with trio.fail_after(timeout_s):
        while True:
            try:
                views = [await cluster_view(client, node) for node in nodes]
            except httpx.TransportError:
                views = []
            if views and all({m["node"] for m in view["members"] if m["state"] == "alive"} == alive for view in views):
                return views
            await trio.sleep(0.1)


def job_for(node: ClusterNode, i: int) -> dict:
    return {
        "url": f"{node.upstream}/c/{i}",
        "method": "POST",
        "body": f"job-{i}",
        "headers": {"Authorization": CREDENTIAL},
    }


async def submit(client: httpx.AsyncClient, node: ClusterNode, i: int) -> str:
    response = await client.post(f"{node.base_url}/api/v1/jobs", json=job_for(node, i), headers=auth())
    assert response.status_code == 201, (node.name, response.status_code, response.text)
    return response.json()["job_id"]


async def submit_as_client(client: httpx.AsyncClient, node: ClusterNode, i: int, timeout_s: float) -> str:
    """Submit the way a client does while a key's owner is down: a 503 owner-unavailable (the entry node's forward
    deadline passed before the members declared the owner dead) is tried again after its Retry-After."""
    with trio.fail_after(timeout_s):
        while True:
            response = await client.post(f"{node.base_url}/api/v1/jobs", json=job_for(node, i), headers=auth())
            if response.status_code == 201:
                return response.json()["job_id"]
            problem = response.json()
            assert response.status_code == 503 and problem["type"].endswith("/owner-unavailable"), problem
            await trio.sleep(float(response.headers["Retry-After"]))


async def wait_done(client: httpx.AsyncClient, nodes: list[ClusterNode], ids: list[str], timeout_s: float):
    pending = set(ids)
    entry = itertools.cycle(nodes)
    with trio.fail_after(timeout_s):
        while pending:
            for job_id in list(pending):
                node = next(entry)
                try:
                    doc = (await client.get(f"{node.base_url}/api/v1/jobs/{job_id}", headers=auth())).json()
                except httpx.TransportError:
                    continue
                assert doc.get("status") != "failed", doc
                if doc.get("status") == "success":
                    pending.discard(job_id)
            await trio.sleep(0.2)


def seeds_except(gossip: dict[str, int], name: str) -> list[str]:
    return [f"127.0.0.1:{port}" for peer, port in gossip.items() if peer != name]


@pytest.mark.slow
async def test_three_processes_one_queue_per_key_and_failover(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000)
    upstream_url = await serve(nursery, upstream)
    gossip = {f"n{i}": free_port() for i in (1, 2, 3)}
    nodes = [
        ClusterNode(tmp_path, name, upstream_url, port, seeds_except(gossip, name)) for name, port in gossip.items()
    ]
    first = nodes[0]
    try:
        for node in nodes:
            await node.start()
        async with httpx.AsyncClient(timeout=15) as client:
            await wait_for_members(client, nodes, {"n1", "n2", "n3"}, timeout_s=30)

            # Phase 1: round-robin intake, one global queue.
            ids = [await submit(client, nodes[i % 3], i) for i in range(24)]
            await wait_done(client, nodes, ids, timeout_s=40)
            assert_paced(upstream.accepted_times(CREDENTIAL), rps=RATE)
            queues = (await client.get(f"{first.base_url}/api/v1/queues", headers=auth())).json()["queues"]
            assert len(queues) == 1, queues  # one key, one queue, on one node of the three
            owner = next(node for node in nodes if node.name == queues[0]["node"])
            survivors = [node for node in nodes if node is not owner]

            # Phase 2: kill -9 the owner while it holds queued jobs.
            held = [await submit(client, owner, 100 + i) for i in range(20)]
            bound_s = (await cluster_view(client, survivors[1]))["detection_bound_s"]
            await owner.kill()
            killed_at = trio.current_time()
            # Forwarded once the survivors agree on a new owner; refused with 503 + Retry-After until then.
            after = await submit_as_client(client, survivors[0], 200, timeout_s=bound_s + 5)
            takeover_s = trio.current_time() - killed_at
            print(f"owner {owner.name} killed with {len(held)} jobs held; key taken over in {takeover_s:.2f}s")
            await wait_done(client, survivors, [after], timeout_s=20)

            # Phase 3: the killed node returns; the jobs it held complete; nothing acknowledged is lost.
            await owner.start()
            await wait_for_members(client, nodes, {"n1", "n2", "n3"}, timeout_s=30)
            await wait_done(client, nodes, ids + held + [after], timeout_s=60)
    finally:
        for node in nodes:
            await node.stop()
    runs = {arrival.body.decode() for arrival in upstream.arrivals}
    for i in [*range(24), *range(100, 120), 200]:
        assert f"job-{i}" in runs
