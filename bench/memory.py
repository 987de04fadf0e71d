"""Memory: resident bytes per idle queue key, with 100,000 distinct keys registered through real jobs.

Goal from the issue: at most 2 KB per key. Each key is created the way production creates it: a job posted to
the node's job API (validated, stored, queued) under its own credential, so its own queue key
(account | origin | credential fingerprint); the key's task runs the job through the executor and exits when
the queue is idle, leaving the `KeyQueue` registered with no task and no job container.

Setup, all in this one process: `run_node` with the in-memory store, and an `httpx.MockTransport` answering 200
as the node's outbound transport (this measures memory, not the network, and it keeps 100,000 jobs affordable).
Jobs are posted by calling the node's ASGI app directly. They go in batches of `BATCH_KEYS`; after each batch
the node must be idle (no active queue, no live job) and the finished jobs are purged from the store, so that
neither job records nor their garbage pile up: what stays is what the keys hold.

Figures:
- RSS: resident set (/proc/self/statm) after `KEYS` keys minus before them, divided by `KEYS`. The process has
  already run `WARM_UP_KEYS` keys the same way, so imports, caches and pools are in the "before". It includes
  allocator slack (memory freed by finished jobs but not returned to the OS), so it errs on the high side.
- tracemalloc: bytes still allocated after `TRACED_KEYS` further keys, per key, traced from their first job to
  their last purge. Python objects only, no slack: the cross-check of what one idle key really holds.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import time
import tracemalloc
from collections.abc import MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.job_api_target import JOBS_PATH, bench_config, bench_headers, node_api
from edge.api import JobApi
from edge.node import Node, run_node
from edge.runtime import Runtime
from edge.store import MemoryStoreData, open_memory_store

GOAL_BYTES_PER_KEY = 2048
KEYS = 100_000
WARM_UP_KEYS = 2_000
TRACED_KEYS = 10_000
BATCH_KEYS = 1_000
IDLE_TIMEOUT_S = 60.0
IDLE_POLL_S = 0.005
# A name that cannot resolve: nothing here may reach a network (the transport is in-process anyway).
TARGET_URL = "http://upstream.invalid/v1/ping"
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


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
        headers = [(name.encode(), value.encode()) for name, value in bench_headers().items()]
        scope = {"type": "http", "method": "POST", "path": JOBS_PATH, "headers": headers}
        body = json.dumps(job).encode()
        statuses = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.api(scope, receive, send)
        if statuses != [201]:
            raise RuntimeError(f"job {index} was answered {statuses}")

    async def _wait_until_idle(self) -> None:
        """Every job finished and every queue task gone: the keys are registered and idle."""
        with trio.fail_after(IDLE_TIMEOUT_S):
            while True:
                state = self.node.manager.statistics()
                if state["jobs"] == 0 and state["active_queues"] == 0:
                    return
                await trio.sleep(IDLE_POLL_S)


def resident_bytes() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


async def measure() -> dict[str, Any]:
    runtime = dataclasses.replace(Runtime.real(), transport=httpx.MockTransport(_answer_ok))
    settings = {"security.allow_private_targets": True}  # skips DNS: the target name must never be resolved
    config = bench_config(Path("unused-with-the-memory-store"), settings)
    stored = MemoryStoreData()
    async with open_memory_store(stored) as store, trio.open_nursery() as nursery:
        node: Node = await nursery.start(partial(run_node, config, runtime, store=store))
        registrar = KeyRegistrar(node, node_api(node, runtime), runtime)
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
        node.stop()
    return {
        "rss_bytes_per_key": (rss_after - rss_before) / KEYS,
        "traced_bytes_per_key": traced_bytes / TRACED_KEYS,
        "registration_s": registration_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "queues": queues,
    }


def run() -> dict[str, Any]:
    figures = trio.run(measure)
    rss, traced = figures["rss_bytes_per_key"], figures["traced_bytes_per_key"]
    return {
        "title": "Memory per idle queue key",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"candidate": "edge.queues:QueueManager (via run_node and the job API)"},
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
            "peak RSS of the process": f"{figures['peak_rss_bytes'] / 2**20:.0f} MiB",
        },
        "measurements": figures,
    }


def _answer_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def main() -> None:
    """`python -m bench.memory`: run this benchmark alone and print its section of RESULTS.md."""
    # Imported here, not at the top: bench.__main__ imports this module.
    from bench.__main__ import render_section

    print(render_section(run()))


if __name__ == "__main__":
    main()
