"""Forwarded intake: job submissions per second through a node that does not own the queue key, against the owner.

Two real nodes run in two processes (`bench.common.served_app`), each with its own SQLite store, clustered over
loopback gossip (LAN timings, an HMAC cluster key). Every job carries the same `X-Api-Key`, so every job has one
queue key and one owner. The bench submits one job, asks GET /api/v1/queues which node holds its queue, then
alternates h2load runs at the owner directly and at the other node, which forwards each job to the owner over the
internal HTTP/2 API and answers 201 only after the owner made it durable.

Each process serves its node's job API through `bench.job_api_target.UniqueJobIntake`, so every request is a new
job (see that module). The two processes number their idempotent keys from disjoint ranges: the same key arriving
at both entries would be one job and a 200, not two jobs. Jobs carry `retry_at` in 2100, so none runs.

Checks afterwards: the 201s both entries sent (counted by their apps) against the jobs in the owner's SQLite file
and in the other node's (which should hold none), read from this process; and that membership did not change
during the runs (a falsely suspected owner would move the key and measure something else).
`python -m bench.forwarding` runs it alone and prints its RESULTS.md section.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    LOOPBACK,
    STARTUP_TIMEOUT_S,
    BenchTarget,
    LoadResult,
    ServedTarget,
    alternate,
    free_loopback_port,
    run_h2load,
    served_app,
    summarize,
)
from bench.intake import CLIENTS, DURATION_S, ROUNDS, SAMPLE_JOB, STREAMS_PER_CLIENT, WARM_UP_S
from bench.job_api_target import (
    BENCH_ACCOUNT_ID,
    DURABILITY_PATH,
    FAR_FUTURE_MS,
    JOBS_PATH,
    KEY_DIGITS,
    PLACEHOLDER_KEY,
    UniqueJobIntake,
    bench_headers,
)

NODE_FACTORY = "bench.forwarding:clustered_job_api_target"
# How the bench process hands a node process its settings: JSON {"settings": {dotted: value}, "first_key": n}.
NODE_ENV = "BENCH_FORWARDING_NODE"
NODE_NAMES = ("node-a", "node-b")
# Node i numbers its idempotent keys from i * KEY_RANGE: far more than any run sends, within KEY_DIGITS digits.
KEY_RANGE = 10 ** (KEY_DIGITS - 1)
QUEUE_CREDENTIAL = "provider-key-forwarding-bench"
# Forwards abandoned by h2load finish within the node's forwarding deadline (10 s by default).
SETTLE_TIMEOUT_S = 12.0
SETTLE_POLL_S = 0.5
DIRECT = "at the owner"
FORWARDED = "through the non-owner"

FORWARDED_JOB = {
    **SAMPLE_JOB,
    "headers": {"X-Api-Key": QUEUE_CREDENTIAL, "Content-Type": "application/json"},
    "idempotent_key": PLACEHOLDER_KEY,
    "retry_at": FAR_FUTURE_MS,
}


def clustered_job_api_target() -> BenchTarget:
    """The factory each node process calls: its settings come from `NODE_ENV`."""
    handed = json.loads(os.environ[NODE_ENV])
    return BenchTarget(
        app=UniqueJobIntake(handed["settings"], handed["first_key"]),
        path=JOBS_PATH,
        headers=tuple(bench_headers().items()),
        body=json.dumps(FORWARDED_JOB).encode(),
    )


def node_settings(name: str, gossip_port: int, seeds: list[str], cluster_key_hex: str) -> dict[str, Any]:
    """A cluster member on loopback; its API port is fixed up front because peers forward to that address."""
    return {
        "server.node_id": name,
        "server.listen": f"{LOOPBACK}:{free_loopback_port()}",
        "cluster.bind": f"{LOOPBACK}:{gossip_port}",
        "cluster.seeds": seeds,
        "cluster.keys": [cluster_key_hex],
        "cluster.profile": "lan",
    }


def start_node(
    stack: ExitStack, settings: Mapping[str, Any], first_key: int, factory: str = NODE_FACTORY
) -> ServedTarget:
    """Serve one clustered node until `stack` closes; the child's `factory` reads its settings from the
    environment (`NODE_ENV`)."""
    os.environ[NODE_ENV] = json.dumps({"settings": dict(settings), "first_key": first_key})
    try:
        return stack.enter_context(served_app(factory))
    finally:
        del os.environ[NODE_ENV]


def start_cluster(
    stack: ExitStack,
    names: Sequence[str] = NODE_NAMES,
    *,
    factory: str = NODE_FACTORY,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, ServedTarget]:
    """One node per name, clustered with a fresh key (`settings` laid over each node's), served until `stack`
    closes; returns once every node sees every node alive."""
    cluster_key_hex = secrets.token_hex(32)
    gossip_ports = [free_loopback_port() for _ in names]
    nodes: dict[str, ServedTarget] = {}
    for index, name in enumerate(names):
        # The first node is the seed and starts alone (no join wait); the others join through it.
        seeds = [f"{LOOPBACK}:{gossip_ports[0]}"] if index else []
        node = {**node_settings(name, gossip_ports[index], seeds, cluster_key_hex), **(settings or {})}
        nodes[name] = start_node(stack, node, first_key=index * KEY_RANGE, factory=factory)
    wait_for_cluster(nodes)
    return nodes


def cluster_view(node: ServedTarget) -> dict[str, Any]:
    response = httpx.get(node.base_url + "/api/v1/cluster", headers=bench_headers(), timeout=10)
    response.raise_for_status()
    return response.json()


def wait_for_cluster(nodes: Mapping[str, ServedTarget], timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Return once every node lists every node as alive: until then a node may believe it owns every key."""
    deadline = time.monotonic() + timeout_s
    while True:
        views = [cluster_view(node) for node in nodes.values()]
        if all({m["node"] for m in view["members"] if m["state"] == "alive"} == set(nodes) for view in views):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the nodes did not see each other alive within {timeout_s} s: {views}")
        time.sleep(0.1)


def owner_of_queue(entry: ServedTarget) -> str:
    """Submit one job through `entry` and return the node that holds its queue."""
    headers = dict(entry.headers)
    accepted = httpx.post(entry.url, content=entry.body, headers=headers, timeout=10)
    if accepted.status_code != 201:
        raise RuntimeError(f"the first job was refused: {accepted.status_code} {accepted.text}")
    queues = httpx.get(entry.base_url + "/api/v1/queues", headers=headers, timeout=10).json()["queues"]
    if len(queues) != 1:
        raise RuntimeError(f"expected one queue for one credential, found {queues}")
    return str(queues[0]["node"])


def h2load_once(node: ServedTarget, scratch: Path) -> LoadResult:
    return run_h2load(
        node,
        scratch,
        duration_s=DURATION_S,
        warm_up_s=WARM_UP_S,
        clients=CLIENTS,
        streams=STREAMS_PER_CLIENT,
    )


def durability(nodes: Mapping[str, ServedTarget], owner: str) -> dict[str, Any]:
    """All 201s (both entries) against the jobs in each node's SQLite file.

    The counters are read before the files: a 201 counted was sent after its job was committed, so a durable
    node can only show as many stored jobs as 201s or more (a job committed whose 201 never reached a client).
    """
    reports = settled_reports(nodes)
    stored = {name: stored_jobs(Path(report["store_file"])) for name, report in reports.items()}
    created = sum(int(report["responses_201"]) for report in reports.values())
    misplaced = sum(count for name, count in stored.items() if name != owner)
    if misplaced:
        verdict = f"FAILED: {misplaced} jobs stored on a node that does not own their key"
    elif stored[owner] == created:
        verdict = "every 201 is in the owner's file, and nothing else"
    elif stored[owner] > created:
        verdict = (
            f"every 201 is in the owner's file, plus {stored[owner] - created} jobs whose 201 never reached a client"
        )
    else:
        verdict = f"FAILED: {created - stored[owner]} jobs answered 201 are missing from the owner's file"
    return {
        "201s sent by both entries (counted by the served apps)": created,
        **{f"jobs in {name}'s SQLite file (counted by the bench process)": count for name, count in stored.items()},
        "durability": verdict,
    }


def settled_reports(nodes: Mapping[str, ServedTarget], timeout_s: float = SETTLE_TIMEOUT_S) -> dict[str, Any]:
    """The entries' durability reports once their 201 counts stop moving.

    h2load stops at its deadline with requests in flight, and a forwarded one may still be on its way to the
    owner: counted too early, its job would show up in the file without its 201.
    """
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        reports = {name: httpx.get(node.base_url + DURABILITY_PATH, timeout=10).json() for name, node in nodes.items()}
        counts = {name: report["responses_201"] for name, report in reports.items()}
        if counts == previous or time.monotonic() > deadline:
            return reports
        previous = counts
        time.sleep(SETTLE_POLL_S)


def stored_jobs(store_file: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{store_file}?mode=ro", uri=True)) as database:
        (count,) = database.execute("SELECT COUNT(*) FROM jobs WHERE account_id = ?", (BENCH_ACCOUNT_ID,)).fetchone()
    return int(count)


def run() -> dict[str, Any]:
    """Start the two-node cluster, find the key's owner, measure both entries over h2c, then check."""
    label = f"h2c, {CLIENTS} connections x {STREAMS_PER_CLIENT} streams"
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-forwarding-")))
        # Forwarding alone: with replicas the non-owner would hold a copy of every job (bench.replication
        # measures that cost), and the durability check below counts jobs by the one node holding them.
        nodes = start_cluster(stack, settings={"cluster.replicas": 1})
        owner = owner_of_queue(nodes[NODE_NAMES[0]])
        forwarder = next(name for name in nodes if name != owner)
        versions_before = {name: cluster_view(node)["version"] for name, node in nodes.items()}
        runs = alternate(
            {
                DIRECT: functools.partial(h2load_once, nodes[owner], scratch),
                FORWARDED: functools.partial(h2load_once, nodes[forwarder], scratch),
            },
            ROUNDS,
        )
        views_after = {name: cluster_view(node) for name, node in nodes.items()}
        checks: dict[str, Any] = {
            "queue key owner": f"{owner} (the other node, {forwarder}, forwards)",
            "forwarded / direct, median req/s": f"{_median_rate(runs, FORWARDED) / _median_rate(runs, DIRECT):.2f}x",
            "membership changes during the runs": sum(
                views_after[name]["version"] - versions_before[name] for name in nodes
            ),
            **durability(nodes, owner),
        }
    return {
        "title": "Forwarded intake (POST /api/v1/jobs through a non-owner, 2-node cluster)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {DIRECT: NODE_FACTORY, FORWARDED: NODE_FACTORY},
        "commands": [results[0].command for results in runs.values()],
        "rows": summarize(runs, baseline=DIRECT, label=label),
        "checks": checks,
        "notes": [
            "Both nodes, their internal HTTP/2 link and h2load share this machine's cores: the forwarded path"
            " spreads a job's work over two processes, the direct path keeps it in one."
        ],
    }


def _median_rate(runs: Mapping[str, list[LoadResult]], name: str) -> float:
    return statistics.median(result.requests_per_s for result in runs[name])


def main() -> None:
    """`python -m bench.forwarding`: print this benchmark's RESULTS.md section."""
    from bench.__main__ import render_section  # here, not at the top: bench.__main__ imports this module

    print(render_section(run()))


if __name__ == "__main__":
    main()
