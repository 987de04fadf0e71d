"""`kill -9` a real `ezthrottle serve` process under load, restart it, and account for every acknowledged job."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.support import RateLimitedUpstream, auth, free_port, serve, start_process, write_config

MAX_RETRIES = 2


@pytest.mark.slow
async def test_kill_9_under_load_loses_nothing(nursery: trio.Nursery, tmp_path: Path):
    upstream = RateLimitedUpstream(limit_rps=1000, delay_s=0.02)
    up = await serve(nursery, upstream)
    config = write_config(
        tmp_path, f'[targets."{up}"]\nrps = 40\nmax_concurrent = 8\n[defaults]\nbackoff_base_s = 0.05\n'
    )
    log, port = tmp_path / "node.log", free_port()
    base = f"http://127.0.0.1:{port}"
    process = await start_process(config, log, port)
    acknowledged: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            for i in range(200):
                job = {
                    "url": f"{up}/work/{i}",
                    "method": "POST",
                    "body": f"job-{i}",
                    "retry_policy": {"max_retries": MAX_RETRIES},
                }
                response = await client.post("/api/v1/jobs", json=job, headers=auth())
                assert response.status_code == 201, response.text
                acknowledged.append(response.json()["job_id"])
                if i == 150:
                    process.send_signal(signal.SIGKILL)
                    break
    finally:
        process.kill()
        await trio.to_thread.run_sync(process.wait)
    executed_before = len(upstream.arrivals)
    assert executed_before < len(acknowledged), "the crash should interrupt work in progress"

    process = await start_process(config, log, port)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            with trio.fail_after(60):
                pending = set(acknowledged)
                while pending:
                    for job_id in list(pending):
                        doc = (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).json()
                        assert doc.get("status") != "failed", doc
                        if doc.get("status") == "success":
                            pending.discard(job_id)
                    await trio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await trio.to_thread.run_sync(process.wait)
    # Every acknowledged job ran; none ran more often than its retries allow (at-least-once across the crash:
    # an attempt cut off by the kill counts as one of those runs).
    runs = Counter(arrival.body.decode() for arrival in upstream.arrivals)
    for i in range(len(acknowledged)):
        assert 1 <= runs[f"job-{i}"] <= 1 + MAX_RETRIES + 1, (i, runs[f"job-{i}"])
    assert process.returncode == 0, log.read_text()[-2000:]
