"""Fast model: speed at 50 nodes, 10,000 keys, 2,000 jobs/s; agreement with the full model; the full model's ceiling.

1. Speed. The baseline scenario (simulations/scenarios/baseline.toml) swept to 50 nodes, 10,000 keys and 10x its
   load (2,000 jobs/s), on the fast model (simulations/fast/) with the bundled CPU calibration and 2 cores per node
   (one core would be saturated), twice (the machine is shared): virtual seconds per wall second, warm-up and
   drain included. The issue's goal is >= 100x.
   One more run under cProfile (a third of the duration) splits its time between the job engine's real queue
   core (edge/, scheduler/, cluster/) and the fast model's own loop and bookkeeping (simulations/). Two ceilings
   follow from it, for the goal's sake: the speed if the fast model's own part cost nothing (the cores' share of
   the median run's wall time, which the issue requires the fast model to drive), and the speed of a bare heapq
   event loop popping and pushing as many events as the run had, doing nothing else.
2. Agreement. The baseline on both models, same seed, same calibration: throughput, p50 and p99 per tier, shed
   rate and the busiest node's CPU, each within AGREEMENT (10%) of the full model's (the goal); and the same at half
   the load, where no node is near saturation. The two models draw the same arrivals, keys, provider and receiver
   latencies from the seed, so what differs is what each models.
3. The full model against its ceiling: the baseline on the full model, then trio alone doing the same scheduling
   work (bench/simulator_speed.py's replay), as a ratio (goal >= 0.5; measured, not changed here); with the CPU
   model on, as the baseline runs now, and off, as it ran when the issue measured about 0.3.

Run alone: `python -m bench.fast_model` (prints JSON).
"""

from __future__ import annotations

import cProfile
import dataclasses
import heapq
import json
import pstats
import statistics
import time
from typing import Any

from bench.simulator_speed import SchedulerWork, scheduler_floor
from simulations.fast import run_fast
from simulations.run import RunReport, run_scenario
from simulations.scenario import CpuSpec, Scenario, load_scenario

SCENARIO = "baseline"
LARGE = {"nodes": "50", "keys": "10000", "load": "10", "cores": "2"}
SPEED_GOAL_X = 100.0
AGREEMENT = 0.10
CEILING_GOAL = 0.5
SPEED_RUNS = 2
PROFILE_SHARE_OF_DURATION = 3  # the profiled run is this many times shorter: cProfile slows it about threefold
# Where the profiled time goes, by the path of the function that spent it.
CORE_PACKAGES = ("/edge/", "/scheduler/", "/cluster/")


def speed(scenario: Scenario, *, seed: int = 1) -> dict[str, Any]:
    report = run_fast(scenario, seed=seed)
    return {
        "virtual_s": round(report.virtual_s, 1),
        "wall_s": round(report.wall_s, 2),
        "speed_x": round(report.virtual_s / report.wall_s, 2),
        "events": report.trace_events,
        "jobs_acked": report.tiers["all"].acked,
        "throughput_per_s": round(report.throughput_per_s, 1),
        "cpu_busiest": round(max(report.cpu_utilisation.values(), default=0.0), 2),
    }


def where_the_time_goes(scenario: Scenario, *, seed: int = 1) -> dict[str, float]:
    """Shares of a profiled fast run's own time: the real cores it drives, the fast model, everything else."""
    profiler = cProfile.Profile()
    profiler.runcall(run_fast, scenario, seed=seed)
    own = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    totals = {"cores (edge, scheduler, cluster)": 0.0, "fast model (simulations)": 0.0, "other": 0.0}
    for (path, _line, _name), stats in own.items():
        if any(package in path for package in CORE_PACKAGES):
            totals["cores (edge, scheduler, cluster)"] += stats[2]
        elif "/simulations/" in path:
            totals["fast model (simulations)"] += stats[2]
        else:
            totals["other"] += stats[2]
    spent = sum(totals.values()) or 1.0
    return {name: round(value / spent, 3) for name, value in totals.items()}


def bare_event_loop_s(events: int, pending: int = 2_000) -> float:
    """Wall seconds for a heapq loop to pop `events` events and push a successor for each, with `pending` waiting:
    the least any discrete-event loop in CPython spends on that many events."""
    heap = [(float(index), index) for index in range(pending)]
    heapq.heapify(heap)
    started = time.perf_counter()
    for index in range(pending, pending + events):
        now, _ = heapq.heappop(heap)
        heapq.heappush(heap, (now + 1.0, index))
    return time.perf_counter() - started


def figures(report: RunReport) -> dict[str, float | None]:
    """What the agreement compares, by name."""
    found: dict[str, float | None] = {"throughput jobs/s": report.throughput_per_s, "shed rate": report.shed_rate}
    for tier, stats in report.tiers.items():
        found[f"{tier} p50 s"] = stats.latency_p50_s
        found[f"{tier} p99 s"] = stats.latency_p99_s
    found["busiest node's CPU"] = max(report.cpu_utilisation.values(), default=None)
    return found


def agreement(scenario: Scenario, *, seed: int = 1) -> dict[str, Any]:
    fast = run_fast(scenario, seed=seed)
    full = run_scenario(scenario, seed=seed)
    fast_figures, full_figures = figures(fast), figures(full)
    compared = {}
    for name, reference in full_figures.items():
        value = fast_figures.get(name)
        if reference is None or value is None:
            within = value == reference
        elif reference == 0:
            within = abs(value) <= AGREEMENT / 10  # a share that is 0 in one: within 1 point in the other
        else:
            within = abs(value - reference) <= AGREEMENT * abs(reference)
        compared[name] = {"fast": value, "full": reference, "within": within}
    return {
        "compared": compared,
        "agree": all(figure["within"] for figure in compared.values()),
        "fast_wall_s": round(fast.wall_s, 2),
        "full_wall_s": round(full.wall_s, 2),
        "full_passed": full.passed,
    }


def ceiling(scenario: Scenario, *, seed: int = 1) -> dict[str, Any]:
    """The full model's speed on `scenario`, trio's alone on the same scheduling work (counted in a second run,
    which the counting slows), and their ratio."""
    report = run_scenario(scenario, seed=seed)
    work = SchedulerWork()
    run_scenario(scenario, seed=seed, instruments=[work])
    floor = scheduler_floor(work.counts(), report.virtual_s, seed=seed)
    speed_x = report.virtual_s / report.wall_s
    return {"full_x": round(speed_x, 2), "trio_x": floor["speed_x"], "ratio": round(speed_x / floor["speed_x"], 3)}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def run(*, seed: int = 1) -> dict[str, Any]:
    base = load_scenario(SCENARIO)
    large = base.with_overrides(LARGE)
    speeds = [speed(large, seed=seed) for _ in range(SPEED_RUNS)]
    short = large.with_overrides({"duration": f"{large.duration_s / PROFILE_SHARE_OF_DURATION:g}"})
    shares = where_the_time_goes(short, seed=seed)
    agreements = {
        "baseline": agreement(base, seed=seed),
        "baseline at half load": agreement(base.with_overrides({"load": "0.5"}), seed=seed),
    }
    ceilings = {
        "CPU model on": ceiling(base, seed=seed),
        "CPU model off": ceiling(dataclasses.replace(base, cpu=CpuSpec(enabled=False)), seed=seed),
    }
    median_x = statistics.median(run["speed_x"] for run in speeds)
    median_run = min(speeds, key=lambda run: abs(run["speed_x"] - median_x))
    core_share = shares["cores (edge, scheduler, cluster)"]
    cores_only_x = median_run["virtual_s"] / (median_run["wall_s"] * core_share) if core_share else None
    bare_loop_s = bare_event_loop_s(median_run["events"])
    rows = [
        {
            "measure": f"fast model, {SCENARIO} at 50 nodes / 10,000 keys / 2,000 jobs/s, run {index + 1}",
            "result": f"{result['speed_x']:g}x real time (goal {SPEED_GOAL_X:g}x)",
            "detail": f"{result['virtual_s']:g} virtual s in {result['wall_s']:g} s; {result['events']:,} events, "
            f"{result['jobs_acked']:,} jobs, busiest node's CPU {result['cpu_busiest']:.0%}",
        }
        for index, result in enumerate(speeds)
    ]
    rows += [
        {
            "measure": "ceiling: the real cores alone (the fast model's own work free)",
            "result": f"{_cell(cores_only_x)}x real time",
            "detail": f"the cores' share of a profiled run, {core_share:.0%}, "
            f"of the median run's {median_run['wall_s']:g} s",
        },
        {
            "measure": "ceiling: a bare heapq event loop, as many events, no work",
            "result": f"{median_run['virtual_s'] / bare_loop_s:.0f}x real time",
            "detail": f"{median_run['events']:,} pops and pushes in {bare_loop_s:.2f} s",
        },
    ]
    for label, compared in agreements.items():
        for name, figure in compared["compared"].items():
            rows.append(
                {
                    "measure": f"agreement, {label}: {name}",
                    "result": "within 10%" if figure["within"] else "OFF",
                    "detail": f"fast {_cell(figure['fast'])}, full {_cell(figure['full'])}",
                }
            )
    rows += [
        {
            "measure": f"full model against trio's ceiling ({SCENARIO}, {label})",
            "result": f"{result['ratio']:.2f} (goal {CEILING_GOAL:g})",
            "detail": f"full model {result['full_x']:g}x, trio alone doing its scheduling work {result['trio_x']:g}x",
        }
        for label, result in ceilings.items()
    ]
    return {
        "title": "Fast model: speed, agreement with the full model, and the full model against its ceiling",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"fast model": "simulations.fast:run_fast", "full model": "simulations.run:run_scenario"},
        "commands": ["python -m bench.fast_model", "python -m bench fast_model (this section only)"],
        "rows": rows,
        "checks": {
            f"fast model >= {SPEED_GOAL_X:g}x at 50 nodes / 10,000 keys / 2,000 jobs/s (median {median_x:g}x)": (
                median_x >= SPEED_GOAL_X
            ),
            **{
                f"the models agree within 10% on the {label}": compared["agree"]
                for label, compared in agreements.items()
            },
            **{
                f"full model >= {CEILING_GOAL:g} of trio's ceiling, {label}": result["ratio"] >= CEILING_GOAL
                for label, result in ceilings.items()
            },
        },
        "notes": [
            "Where a profiled fast run (a third of the duration) spends its own time: "
            + ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
            + ". Every job goes through the real queue core (push, next, settle, commit: each attempt copies the "
            "job record twice), which alone costs tens of microseconds per job in CPython.",
            f"Wall times: the fast model ran the baseline in {agreements['baseline']['fast_wall_s']:g} s, the full "
            f"model in {agreements['baseline']['full_wall_s']:g} s. Shared 2-core machine: runs vary by about ±25%.",
        ],
        "measurements": {
            "speeds": speeds,
            "profile_shares": shares,
            "agreement": agreements,
            "ceilings": ceilings,
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
