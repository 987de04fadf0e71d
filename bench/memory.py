"""Memory: resident bytes per idle queue key, with 100,000 distinct keys registered through real jobs.

Goal from the issue: at most 2 KB per key. Each key is created the way production creates it: a job posted to
the node's job API (validated, stored, queued) under its own credential, so its own queue key
(account | origin | credential fingerprint); the key's task runs the job's attempt, the job finishes, and the
task exits, leaving the `KeyQueue` registered, idle, with no task and no job container.

Why the attempts are refused rather than answered: 100,000 jobs answered 200 through httpx (an in-process
`httpx.MockTransport`) took 85-91 s on the 2-core benchmark machine, well over this benchmark's one-minute
budget, and about 40% of that was httpx building requests and responses. So the node keeps its real SSRF
policy and the injected resolver answers a loopback address for the target's name: every attempt is refused
by the guard before any HTTP work (nothing is ever sent anywhere), recorded, and the job fails at once as not
retryable. That is the same path through the queue as a 200 minus the HTTP client, and it leaves the key in
the same state, because a response without rate-limit headers changes nothing in `QueueLimits`. (Checked when
this was written: at 100,000 keys both paths came out within 2% of each other in RSS bytes per key.)

Setup, all in one fresh process (`python -m bench.memory measure`, so that memory freed by whatever ran before
cannot absorb the keys): `run_node` with the in-memory store; jobs are posted by calling the node's ASGI
app directly, in batches of `BATCH_KEYS`; after each batch the node must be idle (no active queue, no live job)
and the finished jobs are purged from the store, so that neither job records nor their garbage pile up: what
stays is what the keys hold.

Figures:
- RSS: resident set (/proc/self/statm) after `KEYS` keys minus before them, divided by `KEYS`. The process has
  already run `WARM_UP_KEYS` keys the same way, so imports, caches and pools are in the "before". It includes
  allocator slack (memory freed by finished jobs but not returned to the OS), so it errs on the high side.
- tracemalloc: bytes still allocated after `TRACED_KEYS` further keys, per key, traced from their first job to
  their last purge: Python objects only, no allocator slack, but with the batches' own fixed leftovers (a few
  hundred KB of resized dicts and free lists) spread over the sample. The cross-check of what one key holds.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bench.common import REPO_ROOT
from bench.job_api_target import JOBS_PATH, bench_config, bench_headers
from edge.http.api import JobApi
from edge.node import Node, run_node
from edge.runtime import Runtime
from edge.store import MemoryStoreData, open_memory_store

GOAL_BYTES_PER_KEY = 2048
KEYS = 100_000
WARM_UP_KEYS = 1_000
TRACED_KEYS = 5_000
BATCH_KEYS = 1_000
IDLE_TIMEOUT_S = 60.0
IDLE_POLL_S = 0.005
MEASURE_TIMEOUT_S = 600
# The injected resolver answers loopback for this name, so the SSRF guard refuses every attempt.
TARGET_URL = "http://upstream.invalid/v1/ping"
REFUSED_ADDRESS = "127.0.0.1"
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
API_HEADERS = [(name.encode(), value.encode()) for name, value in bench_headers().items()]


@dataclasses.dataclass(slots=True)
class KeyRegistrar:
    """Registers fresh queue keys on a running node, one real job per key, leaving each key idle."""

    node: Node
    api: JobApi
    runtime: Runtime
    registered: int = 0

    async def register(self, count: int) -> None:
        for start in range(0, count, BATCH_KEYS):
            batch = min(BATCH_KEYS, count - start)
            async with trio.open_nursery() as nursery:
                for _ in range(batch):
                    nursery.start_soon(self._post_job, self.registered)
                    self.registered += 1
            await self._wait_until_idle()
            purged = await self.node.store.purge_finished(self.runtime.wall_ms() + 1)
            if purged != batch:
                raise RuntimeError(f"purged {purged} finished jobs, expected {batch}")

    async def _post_job(self, index: int) -> None:
        """POST one job under credential `index` straight into the node's ASGI app."""
        job = {
            "url": TARGET_URL,
            "method": "GET",
            "headers": {"Authorization": f"Bearer user-{index}"},
            "idempotent_key": f"memory-{index}",
        }
        scope = {"type": "http", "method": "POST", "path": JOBS_PATH, "headers": API_HEADERS}
        body = json.dumps(job).encode()
        statuses = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.api(scope, receive, send)
        if statuses != [201]:
            raise RuntimeError(f"job {index} was answered {statuses}")

    async def _wait_until_idle(self) -> None:
        """Wait until every queue task of the batch is gone; each had one job, so every job has finished.

        Reads the active-queues gauge: `QueueManager.statistics()` walks every key, which at 100,000 keys
        costs milliseconds per poll and would be charged to the node.
        """
        with trio.fail_after(IDLE_TIMEOUT_S):
            while self.node.metrics.registry.get_sample_value("ezthrottle_active_queues"):
                await trio.sleep(IDLE_POLL_S)


def resident_bytes() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def peak_resident_bytes() -> int:
    """VmHWM: unlike `ru_maxrss`, which Linux carries across exec from the parent, it covers this process only."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


async def measure() -> dict[str, Any]:
    runtime = dataclasses.replace(Runtime.real(), resolver=_resolve_to_loopback)
    config = bench_config(Path("unused-with-the-memory-store"))
    stored = MemoryStoreData()
    async with open_memory_store(stored) as store, trio.open_nursery() as nursery:
        node: Node = await nursery.start(partial(run_node, config, runtime, store=store))
        registrar = KeyRegistrar(node, node.app, runtime)
        await registrar.register(WARM_UP_KEYS)

        rss_before = resident_bytes()
        started = time.perf_counter()
        await registrar.register(KEYS)
        registration_s = time.perf_counter() - started
        rss_after = resident_bytes()

        tracemalloc.start()
        await registrar.register(TRACED_KEYS)
        gc.collect()
        traced_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()

        queues = node.manager.statistics()
        if queues != {"queues": registrar.registered, "active_queues": 0, "jobs": 0} or stored.jobs:
            raise RuntimeError(f"the node holds more than idle keys: {queues}, {len(stored.jobs)} stored jobs")
        failed = node.metrics.registry.get_sample_value("ezthrottle_jobs_finished_total", {"status": "failed"})
        if failed != registrar.registered:
            raise RuntimeError(f"{failed} jobs failed, expected all {registrar.registered} refused by the guard")
        node.stop()
    return {
        "rss_bytes_per_key": (rss_after - rss_before) / KEYS,
        "traced_bytes_per_key": traced_bytes / TRACED_KEYS,
        "registration_s": registration_s,
        "peak_rss_bytes": peak_resident_bytes(),
        "queues": queues,
        "refused_jobs": failed,
    }


def run() -> dict[str, Any]:
    """Measure in a child process and shape the result for `python -m bench`."""
    measured = subprocess.run(
        [sys.executable, "-m", "bench.memory", "measure"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        timeout=MEASURE_TIMEOUT_S,
        check=True,
    )
    figures = json.loads(measured.stdout)
    rss, traced = figures["rss_bytes_per_key"], figures["traced_bytes_per_key"]
    return {
        "title": "Memory per idle queue key",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"candidate": "edge.engine.shell.queues:QueueManager (via run_node and the job API)"},
        "commands": ["python -m bench.memory"],
        "rows": [
            {
                "idle keys registered": f"{KEYS:,}",
                "RSS bytes/key": f"{rss:,.0f}",
                f"tracemalloc bytes/key ({TRACED_KEYS:,} more keys)": f"{traced:,.0f}",
                "goal": f"<= {GOAL_BYTES_PER_KEY:,} B/key: {'met' if rss <= GOAL_BYTES_PER_KEY else 'missed'}",
                f"time for {KEYS:,} jobs": f"{figures['registration_s']:.0f} s",
            }
        ],
        "checks": {
            "node afterwards (QueueManager.statistics())": figures["queues"],
            "jobs failed by the SSRF guard, as intended": f"{figures['refused_jobs']:,.0f} (every job)",
            "peak RSS of the process": f"{figures['peak_rss_bytes'] / 2**20:.0f} MiB",
        },
        "measurements": figures,
    }


async def _resolve_to_loopback(host: str) -> list[str]:
    return [REFUSED_ADDRESS]


def main() -> None:
    """`python -m bench.memory` runs the benchmark alone and prints its section of RESULTS.md; `python -m
    bench.memory measure` is the child process that measures and prints the raw figures as JSON."""
    if sys.argv[1:] == ["measure"]:
        print(json.dumps(trio.run(measure)))
        return
    # Imported here, not at the top: bench.__main__ imports this module.
    from bench.__main__ import render_section

    print(render_section(run()))


if __name__ == "__main__":
    main()
