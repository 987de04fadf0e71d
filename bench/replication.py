"""Replication: intake with replicas = 2 against 1, takeover after the owner is lost, a key's limit under partition.

The benchmarks of the issue "Nothing acknowledged is lost when a node is lost for good". Three parts, each on real
node processes on loopback, each figure a ratio or a comparison within this run:

- intake: two three-node clusters side by side, `replicas = 1` and `replicas = 2`, each node serving its job API
  through `bench.job_api_target.UniqueJobIntake` (every request a new job, `retry_at` in 2100 so none runs).
  h2load submits to one node of each cluster in turn; the jobs' credentials spread evenly over the three owners,
  so two thirds are forwarded. Goal from the issue: replicas = 2 keeps >= 0.7x the req/s of replicas = 1.
  Afterwards every acknowledged job is looked up in the three SQLite files: it must be held by exactly its key's
  owner and first successor (replicas = 2), or by its owner alone (replicas = 1).
- takeover: three `ezthrottle serve` processes (the harness of tests/e2e/regions.py); a key with jobs queued on
  its owner; the owner killed with -9 and its data dir deleted; the time from the kill until a survivor's first
  attempt for the key reaches the upstream, against the failure-detection bound plus the takeover wait that
  `GET /api/v1/cluster` reports. The owner comes back with an empty disk before the next repetition.
- partition: the scenario of tests/e2e/test_partition.py (the key's owner cut off by nftables while jobs for the
  key arrive on both sides); the most upstream arrivals in any 1 s window against the key's limit.

The takeover and partition parts reuse the end-to-end harness (tests/e2e/regions.py, tests/e2e/partition.py)
rather than a copy of it; the intake part reuses `bench.forwarding`'s cluster of `UniqueJobIntake` processes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import BenchTarget, LoadResult, ServedTarget, alternate, summarize
from bench.forwarding import NODE_ENV, cluster_view, h2load_once, settled_reports, start_cluster
from bench.intake import CLIENTS, DURATION_S, SAMPLE_JOB, STREAMS_PER_CLIENT, WARM_UP_S
from bench.job_api_target import (
    ACKNOWLEDGED_PATH,
    BENCH_ACCOUNT_ID,
    FAR_FUTURE_MS,
    JOBS_PATH,
    KEY_DIGITS,
    PLACEHOLDER_CREDENTIAL,
    PLACEHOLDER_KEY,
    UniqueJobIntake,
    bench_headers,
    intake_key,
)
from cluster import Rendezvous
from edge.engine.spec import queue_key, validate_job
from edge.http.server import serve_asgi
from tests.e2e import partition
from tests.e2e.regions import RegionCluster, RegionNode, RegionUpstream, Visit, start_region_cluster
from tests.e2e.support import auth

# -- intake ------------------------------------------------------------------------------------------------------

INTAKE_FACTORY = "bench.replication:spread_job_api_target"
INTAKE_NODES = ("node-a", "node-b", "node-c")
ENTRY = INTAKE_NODES[0]  # where h2load sends every job
CREDENTIALS_PER_OWNER = 4
INTAKE_ROUNDS = 5  # per config, alternating: more than bench.intake's, as six node processes share the cores
INTAKE_REPLICAS = (1, 2)
INTAKE_GOAL_RATIO = 0.7
H2C_LABEL = f"h2c, {CLIENTS} connections x {STREAMS_PER_CLIENT} streams"
SPREAD_JOB = {
    **SAMPLE_JOB,
    "headers": {"Authorization": f"Bearer {PLACEHOLDER_CREDENTIAL}", "Content-Type": "application/json"},
    "idempotent_key": PLACEHOLDER_KEY,
    "retry_at": FAR_FUTURE_MS,
}

# -- takeover and partition (the harness's accounts: "acme", plan pro) --------------------------------------------

HARNESS_ACCOUNT_ID = "acme"
TAKEOVER_REPETITIONS = 5
TAKEOVER_JOBS = 6  # queued on the owner at the kill, paced at TAKEOVER_RPS, so most are still waiting
TAKEOVER_RPS = 2.0
TAKEOVER_TIMEOUT_S = 60.0
RUNS_KEYS_TIMEOUT_S = 30.0
# As tests/e2e/test_partition.py: the split outlasts detection plus the takeover wait of three members.
PARTITION_RPS = 4.0
PARTITION_SPLIT_S = 20.0
PARTITION_BACKLOG = 12  # jobs queued on the owner before the split
PARTITION_FORWARD_DEADLINE_S = 2.0
PARTITION_WINDOW_S = 1.0
PARTITION_GOAL_RATIO = 1.0
FINISH_TIMEOUT_S = 120.0


def replicas_label(replicas: int) -> str:
    return f"replicas = {replicas}"


def owners_of_credentials(
    job: Mapping[str, Any], credentials: Iterable[str], members: Sequence[str], account_id: str
) -> Iterator[tuple[str, str | None]]:
    """(credential, owner of the queue key) for `job` with each credential as its `Authorization: Bearer`."""
    ring = Rendezvous(members)
    for credential in credentials:
        headers = {**job.get("headers", {}), "Authorization": f"Bearer {credential}"}
        spec = validate_job({**job, "headers": headers})
        yield credential, ring.owner(queue_key(account_id=account_id, plan="pro", job=spec, account_queue=True))


def spread_credentials(members: Sequence[str], per_owner: int) -> list[str]:
    """Credentials for SPREAD_JOB (each as wide as PLACEHOLDER_CREDENTIAL), `per_owner` of them owned by each of
    `members`: submitted in turn, the jobs spread evenly over the owners."""
    candidates = (f"credential-{i:0{KEY_DIGITS}d}" for i in itertools.count())
    owned: Counter[str | None] = Counter()
    chosen = []
    for credential, owner in owners_of_credentials(SPREAD_JOB, candidates, members, BENCH_ACCOUNT_ID):
        if owned[owner] < per_owner:
            owned[owner] += 1
            chosen.append(credential)
            if len(chosen) == per_owner * len(members):
                return chosen
    raise AssertionError("unreachable: the candidates never end")


def credential_owned_by(job: Mapping[str, Any], owner: str, members: Sequence[str], prefix: str) -> str:
    """A credential that puts `job` (of the harness's account) in a queue key `owner` owns among `members`."""
    candidates = (f"{prefix}-{i}" for i in itertools.count())
    owned = owners_of_credentials(job, candidates, members, HARNESS_ACCOUNT_ID)
    return next(credential for credential, found in owned if found == owner)


def spread_job_api_target() -> BenchTarget:
    """The factory each intake node process calls (settings from `NODE_ENV`, as in `bench.forwarding`)."""
    handed = json.loads(os.environ[NODE_ENV])
    credentials = spread_credentials(INTAKE_NODES, CREDENTIALS_PER_OWNER)
    return BenchTarget(
        app=UniqueJobIntake(handed["settings"], handed["first_key"], credentials),
        path=JOBS_PATH,
        headers=tuple(bench_headers().items()),
        body=json.dumps(SPREAD_JOB).encode(),
    )


def misplaced(
    acknowledged: Iterable[str],
    holders: Mapping[str, set[str]],
    queue_keys: Mapping[str, str],
    members: Sequence[str],
    replicas: int,
) -> list[str]:
    """The acknowledged idempotent keys not held by exactly the first `replicas` members of their queue key's
    rendezvous order (`holders`: key -> nodes whose store has it; `queue_keys`: key -> its queue key)."""
    ring = Rendezvous(members)
    return [
        key
        for key in acknowledged
        if key not in queue_keys or holders.get(key, set()) != set(ring.ranked(queue_keys[key], replicas))
    ]


def stored_copies(nodes: Mapping[str, ServedTarget]) -> tuple[list[str], dict[str, set[str]], dict[str, str]]:
    """The entry's acknowledged idempotent keys, then who holds each job and its queue key, from the SQLite files.

    Read in that order, once the 201 counts stopped moving: a 201 went out only after its commits, so every
    acknowledged job is already in the files read after it.
    """
    reports = settled_reports(nodes)
    response = httpx.get(nodes[ENTRY].base_url + ACKNOWLEDGED_PATH, timeout=30)
    acknowledged = [intake_key(number) for number in response.json()["numbers"]]
    holders: dict[str, set[str]] = {}
    queue_keys: dict[str, str] = {}
    for name, report in reports.items():
        uri = f"file:{report['store_file']}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as database:
            rows = database.execute(
                "SELECT idempotent_key, queue_key FROM jobs WHERE account_id = ?", (BENCH_ACCOUNT_ID,)
            )
            for key, queue in rows:
                holders.setdefault(key, set()).add(name)
                queue_keys[key] = queue
    return acknowledged, holders, queue_keys


def placement_check(nodes: Mapping[str, ServedTarget], replicas: int) -> str:
    acknowledged, holders, queue_keys = stored_copies(nodes)
    faults = misplaced(acknowledged, holders, queue_keys, INTAKE_NODES, replicas)
    copies = sum(len(holders.get(key, ())) for key in acknowledged) / max(1, len(acknowledged))
    verdict = "FAILED" if faults or not acknowledged else "met"
    return (
        f"{verdict}: {len(acknowledged) - len(faults)} of {len(acknowledged)} acknowledged jobs "
        f"({copies:.2f} copies each; examples of faults: {faults[:3] or 'none'})"
    )


def measure_intake(scratch: Path) -> tuple[dict[str, list[LoadResult]], dict[str, str]]:
    """Both clusters up at once, h2load at each entry in turn; then where every acknowledged job is."""
    with ExitStack() as stack:
        clusters = {
            replicas: start_cluster(
                stack, INTAKE_NODES, factory=INTAKE_FACTORY, settings={"cluster.replicas": replicas}
            )
            for replicas in INTAKE_REPLICAS
        }
        versions = {replicas: _versions(nodes) for replicas, nodes in clusters.items()}
        runs = alternate(
            {
                replicas_label(replicas): functools.partial(h2load_once, nodes[ENTRY], scratch)
                for replicas, nodes in clusters.items()
            },
            INTAKE_ROUNDS,
        )
        checks = {}
        for replicas, nodes in clusters.items():
            changes = sum(after - before for after, before in zip(_versions(nodes), versions[replicas], strict=True))
            holder = "their owner and first successor" if replicas == 2 else "their owner"
            checks[f"{replicas_label(replicas)}: acknowledged jobs held by exactly {holder}"] = placement_check(
                nodes, replicas
            )
            checks[f"{replicas_label(replicas)}: membership changes during the runs"] = str(changes)
    return runs, checks


def _versions(nodes: Mapping[str, ServedTarget]) -> list[int]:
    return [int(cluster_view(node)["version"]) for node in nodes.values()]


# -- takeover ----------------------------------------------------------------------------------------------------


def paced_target(url: str, rps: float, extra: str = "") -> str:
    """Harness TOML: the upstream's origin paced at `rps`, one attempt at a time."""
    return f'[targets."{url}"]\nrps = {rps}\nmax_concurrent = 1\n{extra}'


async def serve_upstream(nursery: trio.Nursery, upstream: RegionUpstream, host: str) -> str:
    [bound] = await nursery.start(functools.partial(serve_asgi, upstream, bind=f"{host}:0"))
    return f"http://{bound}"


@dataclass(frozen=True, slots=True)
class Takeovers:
    seconds: list[float]  # from the kill to a survivor's first attempt, per repetition
    detection_bound_s: float
    takeover_wait_s: float


async def wait_all_run_keys(cluster: RegionCluster) -> None:
    """Until every node holds the majority lease: a node back from the dead runs nothing for a while, and a
    takeover waiting on it would measure that instead."""
    with trio.fail_after(RUNS_KEYS_TIMEOUT_S):
        while not all([(await cluster.view(node))["runs_keys"] for node in cluster]):
            await trio.sleep(0.1)


async def lose_owner(cluster: RegionCluster, upstream: RegionUpstream, url: str, owner: RegionNode, tag: str) -> float:
    """Queue jobs of a key on `owner`, kill it once the key runs, wipe its disk; seconds until a survivor's first
    attempt for the key arrives. Then bring `owner` back empty and wait until every node runs keys again."""
    path = f"/takeover/{tag}"
    members = [node.node_id for node in cluster]
    job: dict[str, Any] = {"url": url + path, "method": "POST"}
    job["headers"] = {"Authorization": f"Bearer {credential_owned_by(job, owner.node_id, members, tag)}"}
    for i in range(TAKEOVER_JOBS):
        await cluster.submit({**job, "body": f"{tag}-{i}", "idempotent_key": f"{tag}-{i}"}, via=owner)
    await upstream.wait_for(lambda visits: any(visit.path == path for visit in visits))
    killed_at = trio.current_time()
    await owner.kill()
    shutil.rmtree(owner.data_dir)

    def by_survivor(visits: list[Visit]) -> list[Visit]:
        return [visit for visit in visits if visit.path == path and visit.region != owner.region]

    visits = await upstream.wait_for(lambda visits: bool(by_survivor(visits)), timeout_s=TAKEOVER_TIMEOUT_S)
    taken_over_s = min(visit.started for visit in by_survivor(visits)) - killed_at
    await owner.restart()
    await cluster.wait_alive()
    await wait_all_run_keys(cluster)
    return taken_over_s


async def measure_takeovers(directory: Path) -> Takeovers:
    """TAKEOVER_REPETITIONS owners lost in turn (iad, lax, ord, iad, ...) on one three-node cluster."""
    upstream = RegionUpstream()
    async with trio.open_nursery() as nursery:
        url = await serve_upstream(nursery, upstream, "127.0.0.1")
        cluster = await start_region_cluster(nursery, directory, extra_config=paced_target(url, TAKEOVER_RPS))
        view = await cluster.view(cluster.nodes[0])
        seconds = [
            await lose_owner(cluster, upstream, url, cluster.nodes[index % len(cluster.nodes)], f"key{index}")
            for index in range(TAKEOVER_REPETITIONS)
        ]
        nursery.cancel_scope.cancel()
    return Takeovers(seconds, float(view["detection_bound_s"]), float(view["takeover_wait_s"]))


# -- partition ---------------------------------------------------------------------------------------------------


def max_in_window(times: Iterable[float], window_s: float) -> int:
    """The most arrivals in any closed window [t, t + window_s] (one starting at an arrival is always the worst)."""
    ordered = sorted(times)
    most = 0
    first = 0
    for last, at in enumerate(ordered):
        while at - ordered[first] > window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def gcra_window_ratio(arrivals: int, rps: float, window_s: float) -> float:
    """`arrivals` in one window against what a GCRA pacer at `rps` with a burst of one may send in it: n arrivals
    need (n - 1) / rps, so (n - 1) / (rps * window_s) <= 1.00 is within the limit."""
    return (arrivals - 1) / (rps * window_s)


@dataclass(frozen=True, slots=True)
class Split:
    arrivals: list[Visit]
    acknowledged: int
    split_at: float
    healed_at: float
    owner_region: str


async def _submit(client: httpx.AsyncClient, job: Mapping[str, Any], tag: str) -> str | None:
    """The job id, or None when the client could not learn whether the job was accepted (no answer, 503)."""
    try:
        answer = await client.post("/api/v1/jobs", json={**job, "body": tag, "idempotent_key": tag}, headers=auth())
    except httpx.TransportError:
        return None
    return str(answer.json()["job_id"]) if answer.status_code in (200, 201) else None


async def measure_partition(directory: Path, cgroup: Path) -> Split:
    """tests/e2e/test_partition.py's scenario: ord owns the key, has a backlog, and is cut off while a job for
    the key arrives on each side every second; after the heal every acknowledged job runs."""
    upstream = RegionUpstream()
    async with trio.open_nursery() as nursery:
        url = await serve_upstream(nursery, upstream, partition.CLIENT_ADDRESS)
        config = paced_target(url, PARTITION_RPS, f"[cluster]\nforward_deadline_s = {PARTITION_FORWARD_DEADLINE_S}\n")
        cluster = await start_region_cluster(nursery, directory, extra_config=config, cgroups={"ord": cgroup})
        owner = cluster["ord"]
        job: dict[str, Any] = {"url": f"{url}/pay", "method": "POST"}
        credential = credential_owned_by(job, owner.node_id, [node.node_id for node in cluster], "split")
        job["headers"] = {"Authorization": f"Bearer {credential}"}
        acknowledged: set[str] = set()
        async with partition.client(cluster["iad"]) as majority, partition.client(owner) as minority:
            uncertain: list[tuple[httpx.AsyncClient, str]] = []

            async def send(client: httpx.AsyncClient, tag: str) -> None:
                job_id = await _submit(client, job, tag)
                if job_id is None:
                    uncertain.append((client, tag))
                else:
                    acknowledged.add(job_id)

            split_at, healed_at = await partition.submit_across_a_split(
                cluster, owner, majority, minority, send, backlog=PARTITION_BACKLOG, split_s=PARTITION_SPLIT_S
            )
            for client, tag in uncertain:  # what a client could not learn during the split, its retry learns now
                job_id = await _submit(client, job, tag)
                if job_id is None:
                    raise RuntimeError(f"{tag} was refused after the heal")
                acknowledged.add(job_id)
        for job_id in acknowledged:
            await cluster.wait_finished(job_id, timeout_s=FINISH_TIMEOUT_S)
        nursery.cancel_scope.cancel()
    return Split(list(upstream.visits), len(acknowledged), split_at, healed_at, owner.region)


def partition_checks(split: Split) -> dict[str, str]:
    times = [visit.started for visit in split.arrivals]
    most = max_in_window(times, PARTITION_WINDOW_S)
    ratio = gcra_window_ratio(most, PARTITION_RPS, PARTITION_WINDOW_S)
    bodies = Counter(visit.body for visit in split.arrivals)
    took_over = any(
        split.split_at < visit.started < split.healed_at and visit.region != split.owner_region
        for visit in split.arrivals
    )
    return {
        f"partition: max arrivals in any {PARTITION_WINDOW_S:g} s window / the key's limit, as the GCRA counts "
        f"((n - 1) / rps), goal <= {PARTITION_GOAL_RATIO:.2f}": (
            f"{'met' if ratio <= PARTITION_GOAL_RATIO else 'missed'} ({ratio:.2f}: at most {most} arrivals in a "
            f"{PARTITION_WINDOW_S:g} s window at {PARTITION_RPS:g}/s; {most / PARTITION_RPS:.2f} counted as n / rps)"
        ),
        "partition: the majority took the key over during the split": "yes" if took_over else "NO",
        "partition: acknowledged jobs that reached the upstream after the heal": (
            f"{len(bodies)} of {split.acknowledged}; {sum(count - 1 for count in bodies.values())} ran twice "
            f"({len(split.arrivals)} arrivals in all)"
        ),
    }


# -- the section -------------------------------------------------------------------------------------------------


def takeover_checks(takeovers: Takeovers) -> dict[str, str]:
    seconds = takeovers.seconds
    bound = takeovers.detection_bound_s + takeovers.takeover_wait_s
    worst = max(seconds)
    return {
        f"takeover after kill -9 and a deleted data dir, {len(seconds)} repetitions: median / max": (
            f"{statistics.median(seconds):.2f} / {worst:.2f} s (runs: {', '.join(f'{s:.2f}' for s in seconds)}); "
            f"less the takeover wait, detection + sync + first dispatch took "
            f"{statistics.median(seconds) - takeovers.takeover_wait_s:.2f} s (median)"
        ),
        "takeover against detection_bound_s + takeover_wait_s (GET /api/v1/cluster)": (
            f"max {worst:.2f} s {'within' if worst <= bound else 'OVER'} {takeovers.detection_bound_s:.2f} + "
            f"{takeovers.takeover_wait_s:.2f} = {bound:.2f} s (max / bound {worst / bound:.2f}x)"
        ),
    }


def run() -> dict[str, Any]:
    """The three parts in turn (about three minutes), as the section `python -m bench` renders."""
    with tempfile.TemporaryDirectory(prefix="bench-replication-") as scratch:
        runs, checks = measure_intake(Path(scratch))
        takeovers = trio.run(measure_takeovers, Path(scratch) / "takeover")
        if partition.available():
            cgroup = partition.make_cgroup("bench-ord")
            try:
                split_checks = partition_checks(trio.run(measure_partition, Path(scratch) / "partition", cgroup))
            finally:
                partition.remove_cgroup(cgroup)
        else:
            split_checks = {"partition": "skipped: needs root, nftables and cgroup v2 (tests/e2e/partition.py)"}
    one, two = runs[replicas_label(1)], runs[replicas_label(2)]
    ratio = statistics.median(run.requests_per_s for run in two) / statistics.median(run.requests_per_s for run in one)
    # Each round's pair ran back to back, so its ratio is spared the drift between rounds.
    paired = [b.requests_per_s / a.requests_per_s for a, b in zip(one, two, strict=True)]
    intake_goal = f"intake: {replicas_label(2)} / {replicas_label(1)}, req/s, goal >= {INTAKE_GOAL_RATIO:.2f}x"
    intake_verdict = "met" if min(ratio, statistics.median(paired)) >= INTAKE_GOAL_RATIO else "missed"
    return {
        "title": "Replication: intake with replicas = 2 against 1, takeover, the limit under partition",
        "about": __doc__.strip().splitlines()[0],
        "targets": {
            replicas_label(replicas): f"3 x {INTAKE_FACTORY}, cluster.replicas = {replicas}"
            for replicas in INTAKE_REPLICAS
        }
        | {"takeover, partition": "3 x ezthrottle serve (tests/e2e/regions.py), profile local"},
        "commands": ["python -m bench replication", *(results[0].command for results in runs.values())],
        "rows": summarize(runs, baseline=replicas_label(1), label=H2C_LABEL),
        "checks": {
            intake_goal: (
                f"{intake_verdict} ({ratio:.2f}x of the medians; round by round {statistics.median(paired):.2f}x "
                f"median, {min(paired):.2f}x to {max(paired):.2f}x)"
            ),
            **checks,
            **takeover_checks(takeovers),
            **split_checks,
        },
        "notes": [
            f"Intake: two clusters of {len(INTAKE_NODES)} `UniqueJobIntake` processes (profile lan, HMAC key), up "
            f"at the same time; {INTAKE_ROUNDS} alternating h2load runs of {DURATION_S} s (after {WARM_UP_S} s "
            f"warm-up) at {ENTRY} of each. Jobs take {CREDENTIALS_PER_OWNER} credentials per owner in turn, so a "
            "third are owned by the entry and two thirds forwarded; with replicas = 2 each also waits for the "
            "successor's commit. Everything shares this machine's cores.",
            f"Takeover: jobs paced at {TAKEOVER_RPS:g}/s, {TAKEOVER_JOBS} queued on the owner; the clock starts just "
            "before SIGKILL, once the owner's first attempt for the key arrived, and stops at the first attempt "
            "from another node's source address (the upstream's clock, the bench process's). Owners in turn; the "
            "lost one restarts on an empty data dir and the next repetition waits until every node runs keys.",
            f"Partition: as tests/e2e/test_partition.py, the key at {PARTITION_RPS:g}/s and one attempt at a time, "
            f"{PARTITION_BACKLOG} jobs queued on ord, ord cut off for {PARTITION_SPLIT_S:g} s while one job a second "
            "arrives at ord and one at iad, forward_deadline_s = "
            f"{PARTITION_FORWARD_DEADLINE_S:g}; every arrival at the upstream counts, before, during and after "
            "the split. Windows are closed ([t, t + 1 s], from each arrival), no jitter allowance: a pacer at r/s "
            "with a burst of one sends at most r + 1 in one, so (n - 1) / r is the share of the limit used.",
        ],
    }


def main() -> None:
    """`python -m bench.replication`: print this benchmark's RESULTS.md section."""
    from bench.__main__ import render_section  # here, not at the top: bench.__main__ imports this module

    print(render_section(run()))


if __name__ == "__main__":
    main()
