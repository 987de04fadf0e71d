"""Plans on a real node: a quota refuses exactly what is past it, duplicates never count, usage reports it, and the
count survives a restart, a kill -9 included."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import httpx
import trio

from edge.placement.usage import month_end_ms
from tests.e2e.support import ACCOUNT_KEY, auth, free_port, start_node, start_process, write_config

TINY = """
[plans.tiny]
monthly_requests = 5
overage_requests_max = 2
"""


def _tiny_account(tmp_path: Path) -> str:
    return f'{TINY}\n[[accounts]]\nid = "tiny"\nkey = "ck_test_tiny_0123456789"\nplan = "tiny"\n'


async def _submit(client: httpx.AsyncClient, key: str, index: int) -> httpx.Response:
    job = {"url": "http://127.0.0.1:9/x", "retry_at": 4_000_000_000_000, "idempotent_key": f"job-{index}"}
    return await client.post("/api/v1/jobs", json=job, headers=auth(key))


async def test_the_quota_plus_overage_is_accepted_and_no_more(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = await start_node(nursery, tmp_path, _tiny_account(tmp_path))
    key = "ck_test_tiny_0123456789"
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        answers: list[httpx.Response] = []

        async def one(index: int) -> None:
            answers.append(await _submit(client, key, index))

        async with trio.open_nursery() as burst:
            for index in range(20):
                burst.start_soon(one, index)
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201] * 7 + [429] * 13, statuses
        refused = next(answer for answer in answers if answer.status_code == 429)
        assert refused.headers["content-type"].startswith("application/problem+json")
        problem = refused.json()
        assert problem["type"].endswith("quota-exceeded") and problem["retry_at"] == month_end_ms(
            int(time.time() * 1000)
        )
        assert abs(int(refused.headers["retry-after"]) - math.ceil(problem["retry_at"] / 1000 - time.time())) <= 2

        # A resubmission of an accepted (unfinished) job is answered with it, and counts nothing.
        accepted = [answer.json() for answer in answers if answer.status_code == 201]
        again = await client.post(
            "/api/v1/jobs",
            json={
                "url": "http://127.0.0.1:9/x",
                "retry_at": 4_000_000_000_000,
                "idempotent_key": accepted[0]["idempotent_key"],
            },
            headers=auth(key),
        )
        assert again.status_code == 200 and again.json()["job_id"] == accepted[0]["job_id"]

        usage = (await client.get("/api/v1/usage", headers=auth(key))).json()
        assert (usage["plan"], usage["count"], usage["quota"], usage["overage_max"]) == ("tiny", 7, 5, 2)
        assert (usage["remaining"], usage["overage"]) == (0, 2)
        # Another account's plan is its own.
        other = await _submit(client, ACCOUNT_KEY, 99)
        assert other.status_code == 201
        metrics = (await client.get("/metrics")).text
        assert 'ezthrottle_quota_refused_total{plan="tiny"} 13.0' in metrics


async def test_usage_survives_a_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    key = "ck_test_tiny_0123456789"
    with trio.CancelScope() as first_life:
        async with trio.open_nursery() as life:
            node = await start_node(life, tmp_path, _tiny_account(tmp_path))
            async with httpx.AsyncClient(base_url=node.base_url) as client:
                for index in range(4):
                    assert (await _submit(client, key, index)).status_code == 201
            node.stop()
            first_life.cancel()
    node = await start_node(nursery, tmp_path, _tiny_account(tmp_path))
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        usage = (await client.get("/api/v1/usage", headers=auth(key))).json()
        assert usage["count"] == 4
        statuses = [(await _submit(client, key, 10 + index)).status_code for index in range(5)]
    assert statuses == [201, 201, 201, 429, 429]


async def test_a_node_killed_right_after_its_last_acceptance_restarts_with_no_rights_left(tmp_path: Path) -> None:
    """kill -9 the moment the allowance's last job is acknowledged: each job's usage was in its own commit, so the
    restarted node counts every one and accepts no more."""
    key = "ck_test_tiny_0123456789"
    config, log, port = write_config(tmp_path, _tiny_account(tmp_path)), tmp_path / "node.log", free_port()
    process = await start_process(config, log, port)
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            async def one(index: int) -> None:
                statuses.append((await _submit(client, key, index)).status_code)

            async with trio.open_nursery() as burst:  # 5 + 2 overage, saved in the same commits
                for index in range(7):
                    burst.start_soon(one, index)
            process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        await trio.to_thread.run_sync(process.wait)
    assert statuses == [201] * 7

    process = await start_process(config, log, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert (await client.get("/api/v1/usage", headers=auth(key))).json()["count"] == 7
            assert [(await _submit(client, key, 10 + index)).status_code for index in range(3)] == [429] * 3
    finally:
        process.kill()
        await trio.to_thread.run_sync(process.wait)
