"""CPU model validation: a real three-node cluster at increasing load against the simulator's prediction.

Goal from issue 15: the simulator, with the CPU model calibrated on this machine, predicts the cluster's
saturation throughput within +-20% and its p50 latency below saturation within +-25%. One run, in order:

1. calibration: `simulations.calibrate.calibrate()` in this process, with the garbage collector tuned as
   `ezthrottle serve` tunes it; written to a file the simulated runs read (its costs are in the notes);
2. the real cluster: three `python -m edge serve` processes on loopback, one per node (`workers = 1`, SQLite stores
   in temporary data dirs, clustered over real UDP gossip with an HMAC key, LAN profile, replicas = 2), an upstream
   in its own process (`python -m bench.execution upstream`) and the webhook receiver in this process. For each
   offered rate, `LEVEL_S` of Poisson arrivals (at most WORKERS submissions in flight), round-robin over the nodes
   as the simulator's clients submit, each job a POST to the upstream with one webhook, over `KEYS` credentials;
   then the backlog drains. Per level: completions per second while submitting (webhooks received after the first
   `WARM_S`), the p50 from submission to webhook of the jobs submitted then, the share of submissions refused, the
   node processes' CPU per job, and the cores the rest of the machine left them;
3. the prediction: the same workload as a scenario (`validation_scenario`) on the full model, the three nodes on
   one machine of this machine's CPUs (`[cpu] machine_cores`, as the processes share them), the calibration of
   step 1, loopback latencies, with as many of the cores kept busy by others as the real level had beside it
   (`[cpu] background_cores`); and once more on the whole machine.

Saturation throughput is the most completions per second of any level; "below saturation" is every level offered
at most SATURATED_SHARE of the real saturation throughput. `python -m bench.cpu_model` runs it alone and prints its
RESULTS.md section.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import h11
import httpx
import trio

from bench.common import LOOPBACK, ServedTarget, free_loopback_port, running_command
from bench.forwarding import cluster_view, wait_for_cluster
from bench.job_api_target import BENCH_ACCOUNT_ID, BENCH_ACCOUNT_KEY, bench_headers
from edge.process import tune_garbage_collector
from simulations.calibrate import calibrate, serve_ok
from simulations.cpu import Calibration
from simulations.run import run_scenario
from simulations.scenario import (
    ClusterSpec,
    CpuSpec,
    NetworkSpec,
    ProviderSpec,
    ReceiverSpec,
    Scenario,
    TenantSpec,
)

RATES = (5, 10, 20, 30, 45, 60, 90, 120, 160, 200)  # offered jobs per second, one level each
LEVEL_S = 12.0
WARM_S = 2.0  # the start of each level that no figure counts (queues filling)
DRAIN_MAX_S = 40.0
SUBMIT_TIMEOUT_S = 30.0
NODES = ("n1", "n2", "n3")
KEYS = 32
# Submissions in flight at most (the simulator's closed-loop `workers`, the same in both): past capacity an arrival
# waits for one to answer, so the offered load is capped and the cluster runs at its capacity; an open loop would
# pile up connections and timeouts until nothing finishes, a collapse the model shows too, that says nothing about
# capacity.
WORKERS = 24
PROVIDER_RPS = 1000.0  # per credential: far above any level, so pacing never holds a job back
PROVIDER_CONCURRENCY = 2  # what the simulated world configures for it (simulations/world.py `_target`)
SATURATED_SHARE = 0.8
SATURATION_GOAL = 0.20
P50_GOAL = 0.25
POLL_S = 0.05
# The simulated network's legs on loopback: tens of microseconds, as measured between two local processes.
LOOPBACK_DELAY_MIN_S = 0.00003
LOOPBACK_DELAY_MAX_S = 0.0001
CORES_LEFT_MIN = 0.1  # the least of the machine a simulated level leaves the nodes (a level that found none left)


@dataclass(frozen=True, slots=True)
class Level:
    """One offered rate's figures, real or simulated."""

    offered_per_s: float
    completed_per_s: float
    p50_s: float | None
    refused: float  # share of submissions not answered 201/200
    cpu_per_job_s: float  # the nodes' CPU while submitting, over the jobs acknowledged meanwhile
    cores_left: float = 0.0  # real: the cores neither this process nor other processes kept busy meanwhile
    membership_changes: int = 0  # real: how often the nodes' views changed (a starved node is suspected)


@dataclass(slots=True)
class _Ledger:
    submitted: dict[str, float] = field(default_factory=dict)  # job id -> when submitted
    delivered: dict[str, float] = field(default_factory=dict)  # job id -> when its webhook arrived
    refused: Counter[str] = field(default_factory=Counter)  # by status, or "no answer"
    sent: int = 0

    def on_webhook(self, _path: str, body: bytes) -> None:
        job_id = json.loads(body).get("job_id")
        if isinstance(job_id, str):
            self.delivered.setdefault(job_id, trio.current_time())


def job_body(upstream: str, receiver: str, number: int, key_index: int) -> dict[str, Any]:
    """A job as the simulated world's tenant sends it (simulations/world.py `job_body`)."""
    return {
        "url": f"{upstream}/v1/acme",
        "method": "POST",
        "headers": {"Authorization": f"Bearer acme-credential-{key_index}"},
        "body": f"job {number}",
        "idempotent_key": f"acme-{number}-{secrets.token_hex(4)}",
        "metadata": {"tenant": "acme"},
        "webhooks": [{"url": f"{receiver}/acme"}],
        "webhook_quorum": 1,
    }


def node_config(name: str, scratch: Path, ports: Mapping[str, tuple[int, int]], key: str, upstream: str) -> Path:
    api_port, gossip_port = ports[name]
    seeds = [f"{LOOPBACK}:{ports[other][1]}" for other in NODES if other != name]
    text = f"""
[server]
listen = "{LOOPBACK}:{api_port}"
data_dir = "{scratch / name}"
node_id = "{name}"
workers = 1
[security]
allow_private_targets = true
[cluster]
bind = "{LOOPBACK}:{gossip_port}"
api_advertise = "{LOOPBACK}:{api_port}"
seeds = {json.dumps(seeds)}
keys = ["{key}"]
profile = "lan"
replicas = 2
[targets."{upstream}"]
rps = {PROVIDER_RPS}
max_concurrent = {PROVIDER_CONCURRENCY}
[[accounts]]
id = "{BENCH_ACCOUNT_ID}"
key = "{BENCH_ACCOUNT_KEY}"
plan = "pro"
"""
    path = scratch / f"{name}.toml"
    path.write_text(text)
    return path


@dataclass(frozen=True, slots=True)
class RealCluster:
    nodes: dict[str, ServedTarget]
    pids: list[int]

    def cpu_s(self) -> float:
        """The node processes' CPU so far (user + system, from /proc)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        return total / ticks

    def membership_versions(self) -> int:
        """The sum of the nodes' membership versions: it grows with every change any node saw."""
        return sum(int(cluster_view(node)["version"]) for node in self.nodes.values())


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every process, /proc/stat), for the other load on it."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def real_cluster(scratch: Path, upstream: str) -> Iterator[RealCluster]:
    """Three `python -m edge serve` node processes, clustered, until the block ends."""
    ports = {name: (free_loopback_port(), _free_udp_port()) for name in NODES}
    key = secrets.token_hex(32)
    nodes = {}
    pids = []
    with contextlib.ExitStack() as stack:
        for name in NODES:
            config = node_config(name, scratch, ports, key, upstream)
            argv = [sys.executable, "-m", "edge", "serve", "--config", str(config), "--log-level", "ERROR"]
            base_url = f"http://{LOOPBACK}:{ports[name][0]}"
            pids.append(stack.enter_context(running_command(argv, base_url + "/api/v1/cluster")).pid)
            nodes[name] = ServedTarget(base_url=base_url, path="/api/v1/jobs", headers=(), body=b"")
        wait_for_cluster(nodes)
        yield RealCluster(nodes, pids)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@final
class _Poster:
    """POSTs to one node over keep-alive HTTP/1.1 connections (h11), as cheap a load generator as Python allows:
    httpx cost about 2 ms of CPU a request here, CPU the nodes then lacked."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        url = httpx.URL(base_url)
        self._host, self._port = url.host, url.port or 80
        self._headers = [("host", f"{self._host}:{self._port}"), *headers.items()]
        self._idle: list[tuple[trio.SocketStream, h11.Connection]] = []

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body); raises OSError or h11.ProtocolError when the exchange broke. A kept-alive connection the
        server closed meanwhile is replaced once."""
        for reused in (bool(self._idle), False):
            if reused:
                stream, http = self._idle.pop()
            else:
                stream, http = await trio.open_tcp_stream(self._host, self._port), h11.Connection(h11.CLIENT)
            try:
                answer = await self._exchange(stream, http, path, body)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                await trio.aclose_forcefully(stream)
                if reused:
                    continue
                raise
            except BaseException:  # cancelled (the caller's timeout) mid-exchange: the connection is unusable
                await trio.aclose_forcefully(stream)
                raise
            http.start_next_cycle()
            self._idle.append((stream, http))
            return answer
        raise AssertionError("unreachable: the second try raises or returns")

    async def _exchange(
        self, stream: trio.SocketStream, http: h11.Connection, path: str, body: bytes
    ) -> tuple[int, bytes]:
        headers = [*self._headers, ("content-length", str(len(body)))]
        request = http.send(h11.Request(method="POST", target=path, headers=headers)) or b""
        await stream.send_all(
            request + (http.send(h11.Data(data=body)) or b"") + (http.send(h11.EndOfMessage()) or b"")
        )
        status, chunks = 0, []
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the node closed the connection before answering")

    async def aclose(self) -> None:
        for stream, _http in self._idle:
            await trio.aclose_forcefully(stream)


@dataclass(frozen=True, slots=True)
class RealRun:
    levels: list[Level]
    harness_cpu_per_job_s: float  # this process's CPU per job: the load generator and the receiver
    others_cores: float  # cores that processes outside the benchmark kept busy, on average
    refusals: Mapping[str, int]  # submissions not answered 200/201, by status (or "no answer")


async def drive_real(cluster: RealCluster, upstream: str) -> RealRun:
    """Every level against the real cluster, and what else kept the machine busy meanwhile."""
    ledger = _Ledger()
    rng = random.Random(15)
    listener = (await trio.open_tcp_listeners(0, host=LOOPBACK))[0]
    receiver = f"http://{LOOPBACK}:{listener.socket.getsockname()[1]}"
    levels = []
    cpu_before = time.process_time()
    machine_before, nodes_before, started = machine_busy_s(), cluster.cpu_s(), trio.current_time()
    posters = [_Poster(node.base_url, bench_headers()) for node in cluster.nodes.values()]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_ok, listener, ledger.on_webhook)
        numbers = itertools.count()
        for rate in RATES:
            levels.append(await _real_level(ledger, cluster, posters, upstream, receiver, rate, rng, numbers))
        for poster in posters:
            await poster.aclose()
        nursery.cancel_scope.cancel()
    harness_s = time.process_time() - cpu_before
    others_s = machine_busy_s() - machine_before - harness_s - (cluster.cpu_s() - nodes_before)
    others = others_s / (trio.current_time() - started)
    return RealRun(levels, harness_s / max(1, ledger.sent), others, dict(ledger.refused))


async def _real_level(
    ledger: _Ledger,
    cluster: RealCluster,
    posters: Sequence[_Poster],
    upstream: str,
    receiver: str,
    rate: float,
    rng: random.Random,
    numbers: Iterator[int],
) -> Level:
    start = trio.current_time()
    end = start + LEVEL_S
    refused_before, sent_before, acked_before = ledger.refused.total(), ledger.sent, len(ledger.submitted)
    cpu_before, machine_before = cluster.cpu_s(), machine_busy_s()
    views_before = await trio.to_thread.run_sync(cluster.membership_versions)
    window: list[str] = []  # jobs submitted after the warm-up

    async def submit(poster: _Poster, number: int) -> None:
        submitted_at = trio.current_time()
        body = json.dumps(job_body(upstream, receiver, number, rng.randrange(KEYS))).encode()
        status, answer = 0, b""
        try:
            with (
                contextlib.suppress(OSError, trio.BrokenResourceError, h11.ProtocolError),
                trio.move_on_after(SUBMIT_TIMEOUT_S),
            ):
                status, answer = await poster.post("/api/v1/jobs", body)
        finally:
            outstanding.release()
        if status not in (200, 201):
            ledger.refused[str(status or "no answer")] += 1
            return
        job_id = json.loads(answer)["job_id"]
        ledger.submitted[job_id] = submitted_at
        if submitted_at >= start + WARM_S:
            window.append(job_id)

    outstanding = trio.Semaphore(WORKERS)
    async with trio.open_nursery() as submissions:
        at = start
        for index in itertools.count():
            at += rng.expovariate(rate)
            if at >= end:
                break
            await trio.sleep_until(at)
            with trio.move_on_at(end) as waited:  # past capacity, the wait for a free worker may outlast the level
                await outstanding.acquire()
            if waited.cancelled_caught:
                break
            ledger.sent += 1
            submissions.start_soon(submit, posters[index % len(posters)], next(numbers))
        await trio.sleep_until(end)
        cpu_s, acked = cluster.cpu_s() - cpu_before, len(ledger.submitted) - acked_before
        # What the nodes did not use of the machine's busy time was this process's or other processes'.
        not_nodes_s = machine_busy_s() - machine_before - cpu_s
    with trio.move_on_after(DRAIN_MAX_S):
        while any(job_id not in ledger.delivered for job_id in window):
            await trio.sleep(POLL_S)
    counted_s = LEVEL_S - WARM_S
    completed = sum(start + WARM_S <= at <= end for at in ledger.delivered.values())
    latencies = [ledger.delivered[job] - ledger.submitted[job] for job in window if job in ledger.delivered]
    sent = ledger.sent - sent_before
    return Level(
        offered_per_s=rate,
        completed_per_s=completed / counted_s,
        p50_s=statistics.median(latencies) if latencies else None,
        refused=(ledger.refused.total() - refused_before) / max(1, sent),
        cpu_per_job_s=cpu_s / max(1, acked),
        cores_left=(os.cpu_count() or 1) - not_nodes_s / LEVEL_S,
        membership_changes=await trio.to_thread.run_sync(cluster.membership_versions) - views_before,
    )


def validation_scenario(rate: float, calibration_file: Path, background_cores: float = 0.0) -> Scenario:
    """The benchmark's workload as a scenario: one level at `rate`, the cluster on this machine's cores, of which
    other processes keep `background_cores` busy."""
    return Scenario(
        name="cpu-model-validation",
        duration_s=LEVEL_S,
        warmup_s=5.0,
        drain_s=DRAIN_MAX_S / 2,
        cluster=ClusterSpec(nodes=len(NODES), regions=("iad",), profile="lan", replicas=2),
        network=NetworkSpec(
            delay_min_s=LOOPBACK_DELAY_MIN_S,
            delay_max_s=LOOPBACK_DELAY_MAX_S,
            http_delay_min_s=LOOPBACK_DELAY_MIN_S,
            http_delay_max_s=LOOPBACK_DELAY_MAX_S,
        ),
        providers=(
            ProviderSpec(
                name="upstream",
                rate_limit_rps=PROVIDER_RPS,
                burst=int(PROVIDER_RPS),
                latency_median_s=0.0002,
                latency_p99_s=0.0005,
            ),
        ),
        receivers=(ReceiverSpec(name="app", latency_median_s=0.0002, latency_p99_s=0.0005),),
        tenants=(
            TenantSpec(
                name="acme",
                provider="upstream",
                tier="paid",
                keys=KEYS,
                rate_per_s=rate,
                receivers=("app",),
                workers=WORKERS,
            ),
        ),
        cpu=CpuSpec(
            calibration=str(calibration_file),
            machine_cores=os.cpu_count() or 1,
            background_cores=background_cores,
        ),
    )


def simulated_level(rate: float, calibration_file: Path, background_cores: float = 0.0) -> Level:
    scenario = validation_scenario(rate, calibration_file, background_cores)
    report = run_scenario(scenario, seed=15)
    first, last = scenario.warmup_s + WARM_S, scenario.warmup_s + scenario.duration_s
    completed = sum(count for at, count in report.series["throughput/acme"] if first < at <= last + 1e-9)
    everyone = report.tiers["all"]
    busy_s = sum(report.cpu_utilisation.values()) * scenario.cpu.machine_cores * scenario.duration_s
    return Level(
        offered_per_s=rate,
        completed_per_s=completed / (scenario.duration_s - WARM_S),
        p50_s=everyone.latency_p50_s,
        refused=everyone.shed / max(1, everyone.submitted),
        cpu_per_job_s=busy_s / max(1, everyone.acked),
    )


def background_cores(cores_left: float, cores: int) -> float:
    """What other processes kept busy, as the scenario's `[cpu] background_cores` (0 when they left every core)."""
    busy = cores - max(CORES_LEFT_MIN, cores_left)
    return busy if busy >= 0.01 else 0.0


@dataclass(frozen=True, slots=True)
class Measured:
    """Everything one run of the benchmark measured, as `section` shapes it."""

    calibration: Calibration
    real: RealRun
    simulated: Sequence[Level]  # beside the other processes the real cluster had beside it, level by level
    whole_machine: Sequence[Level]  # on the whole machine, as if nothing else ran on it
    wall_s: float


def run() -> dict[str, Any]:
    """Calibrate, drive the real cluster, simulate, compare (see the module docstring)."""
    wall_started = time.monotonic()
    tune_garbage_collector()  # as `ezthrottle serve` does, so the calibration measures what the real nodes run
    calibration = calibrate()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-cpu-model-") as scratch_dir:
        scratch = Path(scratch_dir)
        calibration_file = scratch / "calibration.json"
        calibration.save(calibration_file)
        port = free_loopback_port()
        upstream = f"http://{LOOPBACK}:{port}"
        upstream_argv = [sys.executable, "-m", "bench.execution", "upstream", str(port)]
        with running_command(upstream_argv, upstream + "/"), real_cluster(scratch, upstream) as cluster:
            real = trio.run(drive_real, cluster, upstream)
        left = [
            simulated_level(level.offered_per_s, calibration_file, background_cores(level.cores_left, cores))
            for level in real.levels
        ]
        whole = [simulated_level(rate, calibration_file) for rate in RATES]
    return section(Measured(calibration, real, left, whole, time.monotonic() - wall_started))


def section(measured: Measured) -> dict[str, Any]:
    real, simulated = measured.real.levels, measured.simulated
    real_saturation = max(level.completed_per_s for level in real)
    sim_saturation = max(level.completed_per_s for level in simulated)
    whole_saturation = max(level.completed_per_s for level in measured.whole_machine)
    saturation_ratio = sim_saturation / real_saturation
    p50_ratios = [
        s.p50_s / r.p50_s
        for r, s in zip(real, simulated, strict=True)
        if r.offered_per_s <= SATURATED_SHARE * real_saturation and r.p50_s and s.p50_s
    ]
    rows = [
        {
            "offered jobs/s": f"{r.offered_per_s:g}",
            "cores left": f"{r.cores_left:.2f}",
            "real membership changes": str(r.membership_changes),
            "real completed/s": f"{r.completed_per_s:.1f}",
            "sim completed/s": f"{s.completed_per_s:.1f}",
            "real p50 ms": _ms(r.p50_s),
            "sim p50 ms": _ms(s.p50_s),
            "sim / real p50": f"{s.p50_s / r.p50_s:.2f}" if r.p50_s and s.p50_s else "-",
            "real refused": f"{r.refused:.1%}",
            "sim refused": f"{s.refused:.1%}",
            "real CPU ms/job": f"{r.cpu_per_job_s * 1000:.1f}",
            "sim CPU ms/job": f"{s.cpu_per_job_s * 1000:.1f}",
            "sim, whole machine: completed/s, p50 ms": f"{w.completed_per_s:.1f}, {_ms(w.p50_s)}",
        }
        for r, s, w in zip(real, simulated, measured.whole_machine, strict=True)
    ]
    saturation_met = abs(saturation_ratio - 1) <= SATURATION_GOAL
    p50_met = bool(p50_ratios) and all(abs(ratio - 1) <= P50_GOAL for ratio in p50_ratios)
    calibration = measured.calibration
    costs = ", ".join(f"{op.value} {cost * 1e6:.0f} us" for op, cost in calibration.costs_s.items())
    return {
        "title": "CPU model: the simulator's prediction against a real three-node cluster",
        "about": __doc__.strip().splitlines()[0],
        "targets": {
            "real": "3 x python -m edge serve (loopback, SQLite, replicas = 2, workers = 1)",
            "simulated": "simulations.run.run_scenario (full model, [cpu] machine_cores = this machine's CPUs)",
        },
        "commands": ["python -m bench cpu_model"],
        "rows": rows,
        "checks": {
            f"saturation throughput, sim / real, goal within +-{SATURATION_GOAL:.0%}": (
                f"{'met' if saturation_met else 'missed'} ({sim_saturation:.1f} / {real_saturation:.1f} jobs/s "
                f"= {saturation_ratio:.2f}; on the whole machine the model predicts {whole_saturation:.1f})"
            ),
            f"p50 below saturation (offered <= {SATURATED_SHARE:.0%} of the real saturation), sim / real, goal "
            f"within +-{P50_GOAL:.0%}": (
                f"{'met' if p50_met else 'missed'} ({', '.join(f'{ratio:.2f}' for ratio in p50_ratios) or 'no level'})"
            ),
            "cores other processes kept busy while the real cluster ran (not the benchmark's)": (
                f"{measured.real.others_cores:.2f} of {os.cpu_count()}"
            ),
            "real submissions not answered 200/201, by status": (
                ", ".join(f"{status}: {count}" for status, count in sorted(measured.real.refusals.items())) or "none"
            ),
        },
        "notes": [
            f"Calibration (measured in this run, {calibration.machine}): {costs}.",
            f"Each level: {LEVEL_S:g} s of Poisson arrivals over {KEYS} credentials, the first {WARM_S:g} s not "
            "counted; real p50 over the jobs submitted after it, simulated p50 over every job of the level. CPU per "
            "job: the node processes' CPU (/proc) while submitting, over the jobs acknowledged meanwhile; the "
            "simulated nodes' booked CPU likewise.",
            "The machine is shared: other processes, and this one (the load generator and the receiver, "
            f"{measured.real.harness_cpu_per_job_s * 1e6:.0f} us of CPU per job, which the model does not charge), "
            "keep some of its cores busy. `cores left` is what they left to the nodes while each level was submitted "
            "(/proc/stat), and the simulated level has the rest kept busy (`[cpu] background_cores`); the last "
            f"column is the model on the whole machine. Wall time: {measured.wall_s:.0f} s.",
            "A level whose nodes were left too little CPU can collapse, in both: gossip is late, members are "
            "suspected (membership changes) and keys wait for the majority lease and the takeover before they "
            "dispatch again, while submissions keep coming in. The real cluster carries that into the levels "
            "after; every simulated level starts afresh.",
        ],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def main() -> None:
    """`python -m bench.cpu_model`: print this benchmark's RESULTS.md section."""
    from bench.__main__ import render_section  # here, not at the top: bench.__main__ imports this module

    print(render_section(run()))


if __name__ == "__main__":
    main()
