"""Regions: a race's time to result, how fast the losers are cut off, and the cost of a reroute.

Three real nodes in this process, one per region (real UDP gossip, real HTTP/2 between them), each binding its
outbound connections to its own loopback source address, and one upstream on 127.0.0.1 that answers by region
(the caller's source address) after a fixed delay: 50 ms in iad, 100 ms in lax, 400 ms in ord. Jobs go in
through one node's HTTP API; times come from the job records (submission to finish) and from the upstream
(when each request arrived, was answered, or was hung up on). Alternating rounds, in one run:

- race: a job racing iad, lax and ord, against the same job asking for iad alone (the fastest region called
  directly, through the same node and hop). Goal from the issue: race <= 1.15x the fastest alone (medians).
- cancellation: from the winner's answer at the upstream to the upstream seeing each loser hang up. Goal: p99 <=
  50 ms.
- reroute: a job for iad whose iad answers 500 at once and is rerouted (to the healthiest other region), against a
  direct job for the region it moved to: the extra time is the reroute (one more internal hop and a decision).

Then, on a second cluster whose keys allow one attempt in flight (so each dispatch is one leg, placed by health):

- slow region: GET jobs naming all three regions, from STREAMS credentials at once (a queue key each), against an
  upstream where ord answers 20x slower than iad and lax (1 s against 50 ms), and against one where every region
  answers in 50 ms. After a warm-up, the share of attempts ord still gets (goal <= 10%) and the p99 job time
  against the all-healthy upstream's (goal <= 1.2x).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import free_loopback_port
from bench.job_api_target import BENCH_ACCOUNT_KEY, bench_config
from edge.http.server import serve_asgi
from edge.node import Node, run_node
from edge.runtime import Runtime

SOURCES = {"iad": "127.0.0.11", "lax": "127.0.0.12", "ord": "127.0.0.13"}
DELAYS_S = {"iad": 0.05, "lax": 0.1, "ord": 0.4}
SLOW_DELAYS_S = {"iad": 0.05, "lax": 0.05, "ord": 1.0}
EVEN_DELAYS_S = {"iad": 0.05, "lax": 0.05, "ord": 0.05}
STREAMS = 4
SLOW_WARMUP_JOBS = 10  # per stream, not counted
SLOW_MEASURED_JOBS = 40  # per stream
SLOW_SHARE_GOAL = 0.10
SLOW_P99_GOAL_RATIO = 1.2
ROUNDS = 5
JOBS_PER_ROUND = 8
RACE_GOAL_RATIO = 1.15
CANCEL_GOAL_P99_MS = 50.0
CLUSTER_KEY_HEX = "5e" * 32
FINISH_TIMEOUT_S = 30.0


@dataclass
class Visit:
    region: str
    path: str
    answered: float | None = None
    disconnected: float | None = None


@dataclass
class Upstream:
    """Answers after its region's delay (a path starting /fail answers 500 at once); records every visit."""

    visits: list[Visit] = field(default_factory=list)
    delays_s: dict[str, float] = field(default_factory=lambda: dict(DELAYS_S))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        region = {source: name for name, source in SOURCES.items()}.get(scope["client"][0], "?")
        visit = Visit(region, scope["path"])
        self.visits.append(visit)
        while (await receive()).get("more_body"):
            pass
        failing = scope["path"].startswith(f"/fail-{region}")
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                if (await receive())["type"] == "http.disconnect":
                    visit.disconnected = trio.current_time()
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            if not failing:
                await trio.sleep(self.delays_s.get(region, 0.0))
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 500 if failing else 200, "headers": headers})
            await send({"type": "http.response.body", "body": region.encode()})
            visit.answered = trio.current_time()
            nursery.cancel_scope.cancel()


async def _start_cluster(nursery: trio.Nursery, data_dir: Path, max_concurrent: int = 64) -> dict[str, Node]:
    gossip = {region: free_loopback_port() for region in SOURCES}
    nodes = {}
    for region, source in SOURCES.items():
        seeds = [f"127.0.0.1:{port}" for other, port in gossip.items() if other != region]
        settings = {
            "security.allow_private_targets": True,
            "defaults.rps": 10_000,
            "defaults.max_concurrent": max_concurrent,
            "http_client.source_address": source,
            "server.node_id": region,
            "server.listen": f"127.0.0.1:{free_loopback_port()}",
            "cluster.bind": f"127.0.0.1:{gossip[region]}",
            "cluster.seeds": seeds,
            "cluster.keys": [CLUSTER_KEY_HEX],
            "cluster.profile": "local",
            "cluster.region": region,
            "cluster.join_wait_s": 1,
        }
        config = bench_config(data_dir / region, settings)
        nodes[region] = await nursery.start(run_node, config, Runtime.real())
    with trio.fail_after(30):
        while any(len(node.membership.live_members()) < len(SOURCES) for node in nodes.values() if node.membership):
            await trio.sleep(0.05)
    return nodes


async def _job_time(
    client: httpx.AsyncClient, url: str, key: str, poll_s: float = 0.01, **job: Any
) -> tuple[float, dict[str, Any]]:
    """Submit one job and wait for it; its time from submission to finish, from the record (seconds)."""
    headers = {"authorization": f"Bearer {BENCH_ACCOUNT_KEY}"}
    answer = await client.post("/api/v1/jobs", json={"url": url, "idempotent_key": key, **job}, headers=headers)
    answer.raise_for_status()
    job_id = answer.json()["job_id"]
    with trio.fail_after(FINISH_TIMEOUT_S):
        while True:
            view = (await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
            if view["status"] in ("success", "failed"):
                return (view["finished_at_ms"] - view["created_at_ms"]) / 1000, view
            await trio.sleep(poll_s)


async def measure() -> dict[str, Any]:
    upstream = Upstream()
    times: dict[str, list[float]] = {
        "race": [],
        "fastest alone": [],
        "rerouted": [],
        "direct to the region it moved to": [],
    }
    gaps_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-regions-") as data_dir:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(serve_asgi, upstream, bind="127.0.0.1:0"))
            base = f"http://{bound[0]}"
            nodes = await _start_cluster(nursery, Path(data_dir))
            async with httpx.AsyncClient(base_url=nodes["iad"].base_url, timeout=30) as client:
                for round_index in range(ROUNDS):
                    for i in range(JOBS_PER_ROUND):
                        tag = f"{round_index}-{i}"
                        elapsed, view = await _job_time(client, f"{base}/r", f"race-{tag}", regions=list(SOURCES))
                        times["race"].append(elapsed)
                        gaps_ms += _cancel_gaps_ms(upstream, view)
                        elapsed, _ = await _job_time(client, f"{base}/a", f"alone-{tag}", regions=["iad"])
                        times["fastest alone"].append(elapsed)
                        elapsed, view = await _job_time(client, f"{base}/fail-iad", f"reroute-{tag}", regions=["iad"])
                        moved_to = view["attempts"][-1]["region"]
                        times["rerouted"].append(elapsed)
                        elapsed, _ = await _job_time(client, f"{base}/d", f"direct-{tag}", regions=[moved_to])
                        times["direct to the region it moved to"].append(elapsed)
            for node in nodes.values():
                node.stop()
            nursery.cancel_scope.cancel()
    return {"times": times, "gaps_ms": gaps_ms}


async def measure_slow_region() -> dict[str, Any]:
    """Per upstream ("slow", "even"): every measured job's time and the region of its last attempt."""
    upstreams = {"slow": Upstream(delays_s=dict(SLOW_DELAYS_S)), "even": Upstream(delays_s=dict(EVEN_DELAYS_S))}
    figures: dict[str, dict[str, list[Any]]] = {name: {"times": [], "regions": []} for name in upstreams}
    with tempfile.TemporaryDirectory(prefix="bench-slow-region-") as data_dir:
        async with trio.open_nursery() as nursery:
            urls = {}
            for name, upstream in upstreams.items():
                bound = await nursery.start(partial(serve_asgi, upstream, bind="127.0.0.1:0"))
                urls[name] = f"http://{bound[0]}"
            nodes = await _start_cluster(nursery, Path(data_dir), max_concurrent=1)
            async with httpx.AsyncClient(base_url=nodes["iad"].base_url, timeout=30) as client:

                async def stream(name: str, index: int) -> None:
                    credential = {"Authorization": f"Bearer user-{index}"}
                    for i in range(SLOW_WARMUP_JOBS + SLOW_MEASURED_JOBS):
                        elapsed, view = await _job_time(
                            client,
                            f"{urls[name]}/get",
                            f"{name}-{index}-{i}",
                            poll_s=0.005,
                            regions=list(SOURCES),
                            headers=credential,
                        )
                        if i >= SLOW_WARMUP_JOBS:
                            figures[name]["times"].append(elapsed)
                            figures[name]["regions"] += [a["region"] for a in view["attempts"]]

                for name in ("even", "slow"):
                    async with trio.open_nursery() as streams:
                        for index in range(STREAMS):
                            streams.start_soon(stream, name, index)
            for node in nodes.values():
                node.stop()
            nursery.cancel_scope.cancel()
    return figures


def _cancel_gaps_ms(upstream: Upstream, view: dict[str, Any]) -> list[float]:
    """For the race just finished: from the winner's answer to each loser's hang-up, as the upstream saw them."""
    visits = [v for v in upstream.visits if v.path == "/r"][-len(SOURCES) :]
    upstream.visits.clear()
    won = [v.answered for v in visits if v.answered is not None]
    if not won:
        return []
    return [(v.disconnected - min(won)) * 1000 for v in visits if v.answered is None and v.disconnected is not None]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run() -> dict[str, Any]:
    figures = trio.run(measure)
    slow = trio.run(measure_slow_region)
    times: dict[str, list[float]] = figures["times"]
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    race_ratio = medians["race"] / medians["fastest alone"]
    gaps = figures["gaps_ms"]
    rows = [
        {
            "jobs": name,
            "median ms": f"{medians[name]:.1f}",
            "p90 ms": f"{sorted(v)[int(0.9 * len(v))] * 1000:.1f}",
            "jobs measured": str(len(v)),
        }
        for name, v in times.items()
    ]
    slow_regions = slow["slow"]["regions"]
    slow_share = slow_regions.count("ord") / len(slow_regions)
    p99_ratio = _p99(slow["slow"]["times"]) / _p99(slow["even"]["times"])
    for name, label in (("even", "every region 50 ms"), ("slow", "ord 20x slower (1 s)")):
        values = slow[name]["times"]
        share = slow[name]["regions"].count("ord") / len(slow[name]["regions"])
        rows.append(
            {
                "jobs": f"one leg placed by health, {label}",
                "median ms": f"{statistics.median(values) * 1000:.1f}",
                "p90 ms": f"{sorted(values)[int(0.9 * len(values))] * 1000:.1f} (p99 {_p99(values) * 1000:.1f}; "
                f"ord's share {share:.1%})",
                "jobs measured": str(len(values)),
            }
        )
    p99 = _p99(gaps) if gaps else float("nan")
    return {
        "title": "Regions: race, cancellation of the losers, reroute (three nodes, three regions)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"cluster": "3 x edge.node:run_node, regions iad / lax / ord, upstream delays 50 / 100 / 400 ms"},
        "commands": ["python -m bench regions"],
        "rows": rows,
        "checks": {
            f"race <= {RACE_GOAL_RATIO}x the fastest region alone": (
                f"{'met' if race_ratio <= RACE_GOAL_RATIO else 'missed'} ({race_ratio:.2f}x)"
            ),
            f"win -> loser disconnect at the upstream, p99 <= {CANCEL_GOAL_P99_MS:g} ms": (
                f"{'met' if p99 <= CANCEL_GOAL_P99_MS else 'missed'} (p99 {p99:.1f} ms, median "
                f"{statistics.median(gaps) if gaps else float('nan'):.1f} ms, {len(gaps)} losers)"
            ),
            "reroute: extra time over the direct job to the region it moves to": (
                f"{medians['rerouted'] - medians['direct to the region it moved to']:.1f} ms (median)"
            ),
            f"slow region: its share of attempts after warm-up <= {SLOW_SHARE_GOAL:.0%}": (
                f"{'met' if slow_share <= SLOW_SHARE_GOAL else 'missed'} ({slow_share:.1%})"
            ),
            f"slow region: p99 job time <= {SLOW_P99_GOAL_RATIO}x all-healthy": (
                f"{'met' if p99_ratio <= SLOW_P99_GOAL_RATIO else 'missed'} ({p99_ratio:.2f}x)"
            ),
        },
        "notes": [
            f"{ROUNDS} rounds of {JOBS_PER_ROUND} jobs of each kind, one after another through the iad node; times "
            "from each job's record (created to finished), so both sides include intake, the owner's queue and the "
            "internal hop when the owner is not in the region.",
            f"Slow region: {STREAMS} credentials at once, {SLOW_WARMUP_JOBS} warm-up and {SLOW_MEASURED_JOBS} measured "
            "GET jobs each, on a cluster where a key allows one attempt in flight; the slow run follows the healthy "
            "one. The measured window (about 10 s) is shorter than the 30 s staleness probe, so the slow region's "
            "share in it is its random probes alone; over longer runs it also gets one job per 30 s per origin.",
        ],
    }


def main() -> None:
    from bench.__main__ import render_section

    print(render_section(run()))


if __name__ == "__main__":
    main()
