"""`run_scenario`: build the world a Scenario describes, run it on virtual time, check it, and report.

A run, all inside one `run_simulation` (so one seed replays it exactly):
1. the world (simulations/world.py) starts every node; `warmup_s` passes with no workload (membership settles);
2. for `duration_s` the tenants submit (simulations/workload.py) while the fault schedule (simulations/faults.py)
   is applied;
3. for `drain_s` no new jobs arrive; queues drain, webhooks finish, scheduled heals and restarts still happen;
4. the final checks run (simulations/invariants.py).
Every virtual second the safety invariants are checked and the series are sampled; the first violation stops the
run, and the report says which and when. With the CPU model on (simulations/cpu.py), the report gives each node's
CPU utilisation over the workload (booked CPU time / its cores x `duration_s`) and a series of it per second.
Planted bugs (simulations/bugs.py) change only how the world is wired.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import final

import trio

from edge.node import Node

from .bugs import (
    PLANTED_BUGS,
    lagging_commits,
    losers_run_to_the_end,
    quota_by_count,
    replicate_late,
    runs_keys_by_view,
)
from .cpu import CPU_SERIES_PREFIX
from .determinism import Simulation, run_simulation
from .faults import RANDOM_FAULT_KINDS, FaultInjector
from .invariants import LIMIT_WINDOW_S, Invariants, InvariantViolated, QuotaStats, Violation
from .network import open_simulated_network
from .scenario import Scenario, load_scenario
from .workload import JobEntry, Ledger, TierCounts, run_tenant
from .world import NodePatch, World

__all__ = ["PLANTED_BUGS", "RANDOM_FAULT_KINDS", "QuotaStats", "RunReport", "TierStats", "Violation", "run_scenario"]

SAMPLE_INTERVAL_S = 1.0
PROGRESS_STEPS = 100


@final
@dataclass(frozen=True, kw_only=True)
class TierStats:
    """What clients of one tier (or "all") saw. Latency is submit → terminal (first webhook, or the record)."""

    submitted: int
    acked: int
    shed: int
    succeeded: int
    failed: int
    pending: int
    latency_p50_s: float | None
    latency_p99_s: float | None


@final
@dataclass(frozen=True, kw_only=True)
class RunReport:
    """One run: identity, speed, faults applied, violations (empty = passed), and the capacity figures."""

    scenario: str
    seed: int
    bugs: tuple[str, ...]
    virtual_s: float
    wall_s: float
    trace_digest: str
    trace_events: int
    fault_schedule: tuple[str, ...]
    violations: tuple[Violation, ...]
    tiers: Mapping[str, TierStats]
    throughput_per_s: float
    shed_rate: float
    upstream_429s: int
    upstream_requests: int
    max_queue_depth: int
    failover_s: float | None
    series: Mapping[str, tuple[tuple[float, float], ...]]
    # Why acknowledged jobs were still unfinished at the end (reason -> jobs).
    pending_reasons: Mapping[str, int] = field(default_factory=dict)
    # Per tenant on a finite plan of the scenario's [[plans]]: its quota at the end (simulations/invariants.py).
    quotas: Mapping[str, QuotaStats] = field(default_factory=dict)
    # Per node, its CPU's utilisation over the workload (0..1); empty with the CPU model off.
    cpu_utilisation: Mapping[str, float] = field(default_factory=dict)
    calibration: str = ""  # the calibration's machine and date; empty with the CPU model off

    @property
    def passed(self) -> bool:
        return not self.violations


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@final
class _Sampler:
    """Per-second series: cluster-wide queue depth, p99 latency per tier, successes per tenant and, with the CPU
    model on, each node's CPU utilisation."""

    def __init__(self, world: World, ledger: Ledger, scenario: Scenario) -> None:
        self._world = world
        self._ledger = ledger
        self._seen_terminal = 0
        self.series: dict[str, list[tuple[float, float]]] = {"queue_depth": []}
        for tier in sorted({tenant.tier for tenant in scenario.tenants}):
            self.series[f"latency_p99_s/{tier}"] = []
        for tenant in scenario.tenants:
            self.series[f"throughput/{tenant.name}"] = []
        self._busy_s = cpu_busy_s(world)
        self._sampled_at = 0.0
        for name in self._busy_s:
            self.series[CPU_SERIES_PREFIX + name] = []

    def sample(self, now: float) -> None:
        depth = sum(node.running.manager.statistics()["jobs"] for node in self._world.running_nodes() if node.running)
        self.series["queue_depth"].append((now, float(depth)))
        fresh = self._ledger.terminal_events[self._seen_terminal :]
        self._seen_terminal = len(self._ledger.terminal_events)
        sample_outcomes(self.series, fresh, now)
        if now > self._sampled_at:
            for name, utilisation in cpu_utilisation(self._world, self._busy_s, now - self._sampled_at).items():
                self.series[CPU_SERIES_PREFIX + name].append((now, utilisation))
            self._busy_s, self._sampled_at = cpu_busy_s(self._world), now


def cpu_busy_s(world: World) -> dict[str, float]:
    """Each node's booked CPU so far; empty with the CPU model off."""
    return {name: node.cpu.busy_s for name, node in world.nodes.items() if node.cpu is not None}


def cpu_utilisation(world: World, busy_before: Mapping[str, float], duration_s: float) -> dict[str, float]:
    """Each node's CPU utilisation since `busy_before` (from `cpu_busy_s`), over `duration_s`."""
    return {
        name: (node.cpu.busy_s - busy_before[name]) / (node.cpu.queue.cores * duration_s)
        for name, node in world.nodes.items()
        if node.cpu is not None
    }


@final
@dataclass(slots=True)
class _Outcome:
    """What the simulated run hands back to `run_scenario` (everything but wall time and the trace)."""

    violation: Violation | None
    ledger: Ledger
    world: World
    faults: FaultInjector
    sampler: _Sampler
    pending_reasons: dict[str, int]
    quotas: dict[str, QuotaStats]
    cpu_utilisation: dict[str, float]


async def _run(
    simulation: Simulation,
    scenario: Scenario,
    bugs: frozenset[str],
    progress: Callable[[float], None] | None,
) -> _Outcome:
    ledger = Ledger()
    async with (
        open_simulated_network(
            rng=simulation.rng_for("network"), trace=simulation.trace, faults=scenario.network.link_faults()
        ) as network,
        trio.open_nursery() as nursery,
    ):
        world = World(
            simulation=simulation,
            scenario=scenario,
            network=network,
            nursery=nursery,
            clustered="queue-per-node" not in bugs,
            store_wrapper=lagging_commits if "ack-before-commit" in bugs else None,
            node_patch=_node_patch(bugs),
            on_delivery=ledger.on_delivery,
        )
        await world.start_all()
        workload_start = trio.current_time() + scenario.warmup_s
        workload_end = workload_start + scenario.duration_s
        end = workload_end + scenario.drain_s
        injector = FaultInjector(world, scenario.faults, offset_s=workload_start)
        sampler = _Sampler(world, ledger, scenario)
        invariants = Invariants(world, ledger)
        violation = None
        utilisation: dict[str, float] = {}
        nursery.start_soon(injector.run, nursery)
        try:
            clock = _Ticker(invariants, sampler, progress, start=trio.current_time(), end=end)
            await clock.run_until(workload_start)
            busy_before = cpu_busy_s(world)
            workload = trio.CancelScope()
            nursery.start_soon(_clients, simulation, world, ledger, workload)
            await clock.run_until(workload_end)
            utilisation = cpu_utilisation(world, busy_before, scenario.duration_s)
            workload.cancel()
            await clock.run_until(end)
            await invariants.final(faults_never_healed=injector.active_at_end())
        except InvariantViolated as exc:
            violation = exc.violation
        nursery.cancel_scope.cancel()
    quotas = {} if invariants.quotas is None else dict(invariants.quotas.stats)
    return _Outcome(violation, ledger, world, injector, sampler, dict(invariants.pending_reasons), quotas, utilisation)


def _node_patch(bugs: frozenset[str]) -> NodePatch | None:
    """The planted bugs that rewire each node as it starts, as one patch."""
    patches = [
        patch
        for bug, patch in (
            ("losers-not-cancelled", losers_run_to_the_end),
            ("quota-by-count", quota_by_count),
            ("ack-before-replicated", replicate_late),
            ("minority-runs-keys", runs_keys_by_view),
        )
        if bug in bugs
    ]
    if not patches:
        return None

    def patch_all(node: Node) -> None:
        for patch in patches:
            patch(node)

    return patch_all


async def _clients(simulation: Simulation, world: World, ledger: Ledger, scope: trio.CancelScope) -> None:
    """Every tenant's workload, until `scope` is cancelled."""
    with scope:
        async with trio.open_nursery() as clients:
            for tenant in world.scenario.tenants:
                rng = simulation.rng_for(f"tenant/{tenant.name}")
                clients.start_soon(run_tenant, world, ledger, tenant, rng)


@final
class _Ticker:
    """The run's clock: every SAMPLE_INTERVAL_S, check the safety invariants, sample, report progress."""

    def __init__(
        self,
        invariants: Invariants,
        sampler: _Sampler,
        progress: Callable[[float], None] | None,
        *,
        start: float,
        end: float,
    ) -> None:
        self._invariants = invariants
        self._sampler = sampler
        self._progress = progress
        self._start = start
        self._span = max(end - start, 1e-9)
        self._reported = -1

    async def run_until(self, until: float) -> None:
        while (now := trio.current_time()) < until:
            await trio.sleep_until(min(until, now + SAMPLE_INTERVAL_S))
            now = trio.current_time()
            self._invariants.check()
            self._sampler.sample(now - self._start)
            step = int(PROGRESS_STEPS * (now - self._start) / self._span)
            if self._progress is not None and step > self._reported:
                self._reported = step
                self._progress(min(1.0, step / PROGRESS_STEPS))


def run_scenario(
    scenario: Scenario,
    *,
    seed: int,
    bugs: frozenset[str] = frozenset(),
    progress: Callable[[float], None] | None = None,
    instruments: Sequence[trio.abc.Instrument] = (),
) -> RunReport:
    """Run `scenario` once with `seed` (see the module docstring); `bugs` plants PLANTED_BUGS by name;
    `instruments` watch trio's scheduler (see `run_simulation`)."""
    unknown = sorted(bugs - PLANTED_BUGS.keys())
    if unknown:
        raise ValueError(f"unknown planted bugs {unknown}; known: {', '.join(PLANTED_BUGS)}")
    wall_started = time.perf_counter()
    result = run_simulation(
        lambda simulation: _run(simulation, scenario, bugs, progress), seed=seed, instruments=instruments
    )
    wall_s = time.perf_counter() - wall_started
    outcome = result.value
    providers = outcome.world.providers.values()
    successes = sum(entry.status == "success" for entry in outcome.ledger.jobs.values())
    counts = outcome.ledger.counts.values()
    submitted = sum(count.submitted for count in counts)
    return RunReport(
        scenario=scenario.name,
        seed=seed,
        bugs=tuple(sorted(bugs)),
        virtual_s=result.virtual_s,
        wall_s=wall_s,
        trace_digest=result.trace.hexdigest(),
        trace_events=result.trace.event_count,
        fault_schedule=tuple(outcome.faults.schedule),
        violations=() if outcome.violation is None else (outcome.violation,),
        tiers=_tier_stats(outcome.ledger),
        throughput_per_s=successes / scenario.duration_s,
        shed_rate=sum(count.shed for count in counts) / submitted if submitted else 0.0,
        upstream_429s=sum(provider.rate_limited for provider in providers),
        upstream_requests=sum(provider.requests for provider in providers),
        max_queue_depth=int(max((depth for _t, depth in outcome.sampler.series["queue_depth"]), default=0)),
        failover_s=_failover_s(outcome),
        series={name: tuple(points) for name, points in outcome.sampler.series.items()},
        pending_reasons=outcome.pending_reasons,
        quotas=outcome.quotas,
        cpu_utilisation=outcome.cpu_utilisation,
        calibration=_calibration_label(outcome.world),
    )


def _calibration_label(world: World) -> str:
    calibration = world.calibration
    return "" if calibration is None else f"{calibration.machine}, measured {calibration.measured_at}"


def _tier_stats(ledger: Ledger) -> dict[str, TierStats]:
    by_tier: dict[str, list[JobEntry]] = {tier: [] for tier in ledger.counts}
    for entry in ledger.jobs.values():
        by_tier[entry.tier].append(entry)
    stats = {tier: _stats(ledger.counts[tier], entries) for tier, entries in sorted(by_tier.items())}
    counts = ledger.counts.values()
    total = TierCounts(
        submitted=sum(count.submitted for count in counts),
        acked=sum(count.acked for count in counts),
        shed=sum(count.shed for count in counts),
    )
    stats["all"] = _stats(total, list(ledger.jobs.values()))
    return stats


def _stats(counts: TierCounts, entries: list[JobEntry]) -> TierStats:
    latencies = [entry.terminal_at - entry.submitted_at for entry in entries if entry.terminal_at is not None]
    succeeded = sum(entry.status == "success" for entry in entries)
    failed = sum(entry.status == "failed" for entry in entries)
    return TierStats(
        submitted=counts.submitted,
        acked=counts.acked,
        shed=counts.shed,
        succeeded=succeeded,
        failed=failed,
        pending=len(entries) - succeeded - failed,
        latency_p50_s=percentile(latencies, 0.5),
        latency_p99_s=percentile(latencies, 0.99),
    )


def _failover_s(outcome: _Outcome) -> float | None:
    """From the first crash until every key the crashed node was calling for (in the LIMIT_WINDOW_S before) is
    called again: by the node that took it over, or by the crashed node once it is back (a restart quicker than
    failure detection keeps its keys). None without a crash, or when none of its keys was called again.
    A key whose next job came late adds its idle time, so light workloads overstate it."""
    if not outcome.faults.crashes:
        return None
    crashed_at, name = outcome.faults.crashes[0]
    host = outcome.world.nodes[name].host
    resumed: list[float] = []
    for provider in outcome.world.providers.values():
        for arrivals in provider.arrivals.values():
            before = [a for a in arrivals if crashed_at - LIMIT_WINDOW_S <= a.at < crashed_at and a.source == host]
            after = next((a.at for a in arrivals if a.at >= crashed_at), None)
            if before and after is not None:
                resumed.append(after - crashed_at)
    return max(resumed) if resumed else None


def main(argv: list[str] | None = None) -> None:
    """Run one scenario (a file or a bundled name) for one seed; print the trace digest, event count, verdict."""
    parser = argparse.ArgumentParser(prog="python -m simulations.run", description=main.__doc__)
    parser.add_argument("scenario")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--bug", action="append", default=[], choices=sorted(PLANTED_BUGS))
    args = parser.parse_args(argv)
    report = run_scenario(load_scenario(args.scenario), seed=args.seed, bugs=frozenset(args.bug))
    print(report.trace_digest, report.trace_events, "passed" if report.passed else report.violations[0].invariant)


def sample_outcomes(series: dict[str, list[tuple[float, float]]], finished: Sequence[JobEntry], now: float) -> None:
    """Add one sample at `now` to the per-tier p99 latency and per-tenant throughput series, from the jobs that
    finished since the last one (both models' samplers)."""
    latencies: dict[str, list[float]] = {}
    successes: dict[str, int] = {}
    for entry in finished:
        assert entry.terminal_at is not None
        latencies.setdefault(entry.tier, []).append(entry.terminal_at - entry.submitted_at)
        successes[entry.tenant] = successes.get(entry.tenant, 0) + (entry.status == "success")
    for name, points in series.items():
        kind, _, label = name.partition("/")
        if kind == "latency_p99_s" and (p99 := percentile(latencies.get(label, []), 0.99)) is not None:
            points.append((now, p99))
        elif kind == "throughput":
            points.append((now, float(successes.get(label, 0))))


if __name__ == "__main__":
    main()
