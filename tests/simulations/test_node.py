"""One real node (edge.node.run_node) on virtual time: jobs reach it, upstreams and webhook receivers through
SimulatedHttp, with the in-memory store.

No real socket: run_node(serve_http=False) opens no listener, and every request reaches `Node.app` through
SimulatedHttp.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import trio

from edge.config import Config, load_config
from edge.node import Node, run_node
from edge.store import MemoryStoreData, open_memory_store
from simulations.determinism import Simulation, run_simulation, wait_for
from simulations.http import SimulatedHttp
from simulations.runtime import simulated_runtime
from tests.e2e.support import RateLimitedUpstream, WebhookSink, auth, write_config

JOBS = 6
LIMIT_RPS = 2.0


def jobs_through_one_node(config: Config, seed: int) -> tuple[list[float], int, list[str], str]:
    """Submit JOBS jobs to one node; return the upstream's accepted times and 429 count, the webhook statuses,
    and the trace digest."""

    async def main(simulation: Simulation) -> tuple[list[float], int, list[str]]:
        http = SimulatedHttp(rng=simulation.rng_for("http"), trace=simulation.trace)
        upstream, receiver = RateLimitedUpstream(limit_rps=LIMIT_RPS), WebhookSink()
        http.mount("upstream.sim:80", upstream)
        http.mount("hooks.sim:80", receiver)
        runtime = simulated_runtime(simulation, "node-1", transport=http)
        async with open_memory_store(MemoryStoreData()) as store, trio.open_nursery() as nursery:
            node: Node = await nursery.start(partial(run_node, config, runtime, store=store, serve_http=False))
            http.mount("node-1.sim:80", node.app)
            async with httpx.AsyncClient(transport=http, base_url="http://node-1.sim") as client:
                for index in range(JOBS):  # distinct bodies: identical jobs would share one idempotency key
                    job = {
                        "url": "http://upstream.sim/v1/send",
                        "method": "POST",
                        "body": f"message {index}",
                        "webhooks": [{"url": "http://hooks.sim/done"}],
                    }
                    created = await client.post("/api/v1/jobs", json=job, headers=auth())
                    assert created.status_code in (200, 201, 202), created.text
            await wait_for(lambda: len(receiver.received) >= JOBS, timeout_s=120, what="every webhook delivered")
            node.stop()
        rejected = sum(arrival.status == 429 for arrival in upstream.arrivals)
        return upstream.accepted_times(), rejected, [payload["status"] for payload in receiver.payloads()]

    result = run_simulation(main, seed=seed)
    return (*result.value, result.trace.hexdigest())


def test_a_node_paces_retries_and_delivers_on_virtual_time_and_replays_from_its_seed(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path), env={})
    first = jobs_through_one_node(config, seed=1)
    accepted, rejected, statuses, digest = first
    assert statuses == ["success"] * JOBS
    assert len(accepted) == JOBS
    assert rejected >= 1  # the node met the limit as a 429 with Retry-After, and retried
    # The upstream admits one call per 1/LIMIT_RPS s, so the last of JOBS calls cannot come before this:
    assert accepted[-1] - accepted[0] >= (JOBS - 1) / LIMIT_RPS - 0.01
    assert jobs_through_one_node(config, seed=1) == first
    assert jobs_through_one_node(config, seed=2)[3] != digest
