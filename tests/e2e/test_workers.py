"""A node of two worker processes (edge/workers.py), run for real: `ezthrottle serve --workers 2` on loopback.

- Jobs of many keys, all sent to the one public port, each run exactly once with its webhook, and both workers own
  some of the keys; SIGTERM to the supervisor then stops everything gracefully (exit 0, no worker left).
- `kill -9` of a worker holding queued jobs: the supervisor restarts it, and every acknowledged job completes.
- A protected listener on a two-worker node never sends its upstream more than `max_concurrency` at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from simulations.actors import Receive, Scope, Send, read_body, respond
from tests.e2e.support import RateLimitedUpstream, WebhookSink, auth, serve, wait_ready, write_config

WORKERS = 2


def free_port_run(count: int) -> int:
    """A port P with P..P+count-1 all free on loopback a moment ago (a node of N workers uses 2N + 1 ports)."""
    for _attempt in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as taken:
                        taken.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


class WorkerNode:
    """`ezthrottle serve --workers 2` on 127.0.0.1:`port`; the workers' own listeners are port + 1 + i."""

    def __init__(self, tmp_path: Path, extra: str = "") -> None:
        self.port = free_port_run(2 * WORKERS + 1)
        self.config = write_config(tmp_path, extra)
        self.log = tmp_path / "node.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port + 1 + index}"

    async def start(self) -> None:
        command = [sys.executable, "-m", "edge", "serve", "--config", str(self.config)]
        command += ["--listen", f"127.0.0.1:{self.port}", "--workers", str(WORKERS)]
        self.process = subprocess.Popen(command, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        for index in range(WORKERS):
            await wait_ready(self.process, self.port + 1 + index, self.log, timeout_s=30)

    def workers(self) -> list[int]:
        """The pids of the supervisor's children: its workers (started from any of its threads)."""
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task").glob("*/children")
        return sorted(int(child) for task in tasks for child in task.read_text().split())

    async def stop(self) -> int:
        """SIGTERM to the supervisor; its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await trio.to_thread.run_sync(self.process.wait)
            self.process.kill()
        return self.process.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def job(upstream: str, webhook: str, i: int, credentials: int) -> dict:
    return {
        "url": f"{upstream}/r/{i}",
        "method": "POST",
        "body": f"job-{i}",
        "headers": {"Authorization": f"Bearer provider-key-{i % credentials}"},
        "webhooks": [{"url": webhook}],
    }


async def wait_webhooks(sink: WebhookSink, ids: set[str], timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while {payload["job_id"] for payload in sink.payloads()} < ids:
            await trio.sleep(0.1)


@pytest.mark.slow
async def test_two_workers_share_one_port_and_run_every_job_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RateLimitedUpstream(limit_rps=1000)
    upstream_url = await serve(nursery, upstream)
    sink = WebhookSink()
    webhook_url = await serve(nursery, sink) + "/hook"
    node = WorkerNode(tmp_path, f'[targets."{upstream_url}"]\nrps = 50\nmax_concurrent = 4\n')
    try:
        await node.start()
        pids = node.workers()
        assert len(pids) == WORKERS
        ids = set()
        # A new connection per job, so the kernel spreads them over both workers.
        for i in range(60):
            async with httpx.AsyncClient(timeout=20) as client:
                response = await client.post(
                    f"{node.base_url}/api/v1/jobs", json=job(upstream_url, webhook_url, i, 20), headers=auth()
                )
            assert response.status_code == 201, response.text
            ids.add(response.json()["job_id"])
        async with httpx.AsyncClient(timeout=20) as client:
            queues = (await client.get(f"{node.base_url}/api/v1/queues", headers=auth())).json()["queues"]
            owners = Counter(queue["node"] for queue in queues)
            cluster = (await client.get(f"{node.worker_url(1)}/api/v1/cluster", headers=auth())).json()
        assert len(owners) == WORKERS, owners  # 20 keys: both workers own some
        assert {m["node"] for m in cluster["members"] if m["state"] == "alive"} == set(owners)
        machine = cluster["node"].rsplit("-w", 1)[0]  # both workers run on the node's machine: its id
        assert [m["machine"] for m in cluster["members"]] == [machine] * WORKERS
        await wait_webhooks(sink, ids, timeout_s=30)
    finally:
        status = await node.stop()
    assert status == 0, node.log.read_text()[-3000:]
    assert not [pid for pid in pids if alive(pid)], "a worker outlived its supervisor"
    runs = Counter(arrival.body.decode() for arrival in upstream.arrivals)
    assert runs == Counter({f"job-{i}": 1 for i in range(60)})
    assert Counter(payload["job_id"] for payload in sink.payloads()) == Counter(dict.fromkeys(ids, 1))


@pytest.mark.slow
async def test_a_worker_killed_with_9_is_restarted_and_loses_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RateLimitedUpstream(limit_rps=1000)
    upstream_url = await serve(nursery, upstream)
    sink = WebhookSink()
    webhook_url = await serve(nursery, sink) + "/hook"
    # 4 keys paced at 2/s each: 40 jobs take about 5 s, so many are still queued at the kill.
    node = WorkerNode(tmp_path, f'[targets."{upstream_url}"]\nrps = 2\nmax_concurrent = 1\n')
    try:
        await node.start()
        ids = set()
        async with httpx.AsyncClient(timeout=20) as client:
            for i in range(40):
                response = await client.post(
                    f"{node.base_url}/api/v1/jobs", json=job(upstream_url, webhook_url, i, 4), headers=auth()
                )
                assert response.status_code == 201, response.text
                ids.add(response.json()["job_id"])
        victim = node.workers()[1]
        os.kill(victim, signal.SIGKILL)
        ran_at_kill = len(upstream.accepted)
        assert ran_at_kill < 40, "the test needs jobs still queued at the kill"
        with trio.fail_after(20):
            while len(node.workers()) < WORKERS or victim in node.workers():
                await trio.sleep(0.05)
        for index in range(WORKERS):
            assert node.process is not None
            await wait_ready(node.process, node.port + 1 + index, node.log, timeout_s=30)
        await wait_webhooks(sink, ids, timeout_s=40)
    finally:
        status = await node.stop()
    assert status == 0, node.log.read_text()[-3000:]
    assert "restarting it in" in node.log.read_text()
    runs = Counter(arrival.body.decode() for arrival in upstream.accepted)
    assert set(runs) == {f"job-{i}" for i in range(40)}
    # At-least-once only for what was in flight at the kill (one per key, 4 keys).
    assert sum(count - 1 for count in runs.values()) <= 4, runs


class CountingUpstream:
    """Answers every request after `delay_s`, counting how many it holds at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.in_flight_max = 0
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            await trio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        self.served += 1
        await respond(send, 200, b"ok", [("content-type", "text/plain")])


@pytest.mark.slow
async def test_a_protected_listener_never_exceeds_its_upstream_concurrency(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = CountingUpstream(delay_s=0.05)
    upstream_url = await serve(nursery, upstream)
    proxy_port = free_port_run(1)
    protect = (
        f'[[protect]]\nlisten = "127.0.0.1:{proxy_port}"\nupstream = "{upstream_url}"\nmax_concurrency = 3\n'
        'key_header = "x-api-key"\nqueue_wait_s_max = 20\n'
        '[[protect.keys]]\nkey = "cust_heavy_0123456789"\nid = "heavy"\ntier = "paid"\n'
        '[[protect.keys]]\nkey = "cust_light_0123456789"\nid = "light"\ntier = "paid"\n'
    )
    node = WorkerNode(tmp_path, protect)
    statuses: Counter[int] = Counter()
    try:
        await node.start()

        async def client(key: str, requests: int) -> None:
            # A connection of its own per client, so the kernel may give each one to either worker.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy_port}", timeout=30) as http:
                for _ in range(requests):
                    statuses[(await http.get("/x", headers={"x-api-key": key})).status_code] += 1

        async with trio.open_nursery() as clients:
            for i in range(12):
                clients.start_soon(client, "cust_heavy_0123456789" if i % 4 else "cust_light_0123456789", 8)
    finally:
        status = await node.stop()
    assert status == 0, node.log.read_text()[-3000:]
    assert statuses[200] == 96, statuses
    assert upstream.in_flight_max <= 3, upstream.in_flight_max
