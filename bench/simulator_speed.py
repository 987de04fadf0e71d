"""Simulator speed: simulated seconds per wall second for the baseline scenario (issue 5's speed reference).

The baseline (simulations/scenarios/baseline.toml): 5 real nodes in 2 regions, 100 keys, 200 jobs/s, no faults;
the whole run is measured (warm-up, workload and drain, with every invariant checked each virtual second), in
this process, with the wall clock read only outside the simulated world. The goal in the issue is >= 50x.

The second row is the ceiling trio itself sets. A counting run of the baseline records how much scheduling it asked
of trio: task steps, tasks spawned, and the jumps of the virtual clock (each jump wakes a sleeper). Then trio runs
alone on the same MockClock with the same deterministic scheduling, doing that same work and nothing else: sleepers
that wake at as many distinct virtual times, spawn as many empty tasks and take as many plain checkpoints. No node
code, HTTP or simulator runs in it, so its speed is an upper bound on any simulator that runs the baseline's tasks
on trio. Both rows are measured in the same process, one after the other.

The last rows are a swarm, the way `ezthrottle simulate --seeds` is used: SWARM_SEEDS seeds of the baseline at a
quarter of its load, once in one process and once with `--jobs` set to the CPU count, each as a real command (so
process start and the workers' imports are counted). Runs are independent, so the digests must match.

`profile=True` also runs it under cProfile and lists the functions with the most time of their own, to show
where a run's time goes: in the simulator (simulations/) or in the node code it runs (edge/, httpx, trio).

Run alone: `python -m bench.simulator_speed` (prints JSON).
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from simulations.determinism import deterministic_scheduling
from simulations.run import run_scenario
from simulations.scenario import load_scenario

SCENARIO = "baseline"
GOAL_X = 50.0
PROFILE_ENTRIES = 12
SWARM_SEEDS = 4
SWARM_LOAD = 0.25
# Long-lived tasks that carry the floor's sleeps: enough that their wake-ups rarely coincide.
FLOOR_SLEEPERS = 100


@dataclass(eq=False)  # trio keeps instruments in a set: hashed by identity
class SchedulerWork(trio.abc.Instrument):
    """Counts what a run asks of trio's scheduler: task steps, spawns, and distinct virtual times with work."""

    steps: int = 0
    spawns: int = 0
    time_jumps: int = 0
    _last_time: float = -1.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawns += 1

    def before_io_wait(self, timeout: float) -> None:
        now = trio.current_time()
        if now != self._last_time:
            self.time_jumps += 1
            self._last_time = now

    def counts(self) -> dict[str, int]:
        return {name: value for name, value in asdict(self).items() if not name.startswith("_")}


def measure(*, seed: int = 1) -> dict[str, Any]:
    """One run of the baseline: virtual and wall seconds, the ratio, and what the run did."""
    started = time.perf_counter()
    report = run_scenario(load_scenario(SCENARIO), seed=seed)
    wall_s = time.perf_counter() - started
    return {
        "virtual_s": round(report.virtual_s, 1),
        "wall_s": round(wall_s, 2),
        "speed_x": round(report.virtual_s / wall_s, 2),
        "jobs_acked": report.tiers["all"].acked,
        "upstream_requests": report.upstream_requests,
        "trace_events": report.trace_events,
        "passed": report.passed,
    }


def scheduler_work(*, seed: int = 1) -> dict[str, int]:
    """The baseline's scheduling work, from a separate run with a counting instrument (it slows that run)."""
    work = SchedulerWork()
    run_scenario(load_scenario(SCENARIO), seed=seed, instruments=[work])
    return work.counts()


def scheduler_floor(work: dict[str, int], virtual_s: float, *, seed: int = 1) -> dict[str, Any]:
    """trio alone doing `work` over `virtual_s` virtual seconds: wall seconds, speed, and the work it counted."""
    sleeps_each = max(1, work["time_jumps"] // FLOOR_SLEEPERS)
    wakes = sleeps_each * FLOOR_SLEEPERS
    spawns_per_wake = work["spawns"] / wakes
    checkpoints_per_wake = max(0, work["steps"] - wakes - work["spawns"]) / wakes
    mean_gap_s = virtual_s / sleeps_each

    async def nothing() -> None:
        pass

    async def sleeper(nursery: trio.Nursery, rng: random.Random) -> None:
        spawn_debt = checkpoint_debt = 0.0
        for _wake in range(sleeps_each):
            await trio.sleep(rng.uniform(0.0, 2.0 * mean_gap_s))  # spread, yet ending near `virtual_s`
            spawn_debt += spawns_per_wake
            while spawn_debt >= 1.0:
                nursery.start_soon(nothing)
                spawn_debt -= 1.0
            checkpoint_debt += checkpoints_per_wake
            while checkpoint_debt >= 1.0:
                await trio.lowlevel.checkpoint()
                checkpoint_debt -= 1.0

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(FLOOR_SLEEPERS):
                nursery.start_soon(sleeper, nursery, random.Random(seed * 1_000 + index))

    def run_floor(instruments: list[trio.abc.Instrument]) -> tuple[float, float]:
        clock = trio.testing.MockClock(autojump_threshold=0)
        started = time.perf_counter()
        with deterministic_scheduling(seed):
            trio.run(main, clock=clock, instruments=instruments)
        return clock.current_time(), time.perf_counter() - started

    replayed = SchedulerWork()
    run_floor([replayed])
    floor_virtual_s, wall_s = run_floor([])
    return {
        "virtual_s": round(floor_virtual_s, 1),
        "wall_s": round(wall_s, 2),
        "speed_x": round(floor_virtual_s / wall_s, 2),
        "work": replayed.counts(),
    }


def swarm(jobs: int) -> dict[str, Any]:
    """`python -m simulations baseline` over SWARM_SEEDS seeds with `--jobs jobs`: wall time, virtual seconds in
    all, and every run's trace digest."""
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "swarm.json"
        command = [
            sys.executable, "-m", "simulations", SCENARIO, "--seeds", f"1..{SWARM_SEEDS}",
            "--sweep", f"load={SWARM_LOAD:g}", "--quiet", "--jobs", str(jobs), "--json", str(report_path),
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=SWARM_SEEDS * 120)
        wall_s = time.perf_counter() - started
        report = json.loads(report_path.read_text())
    virtual_s = sum(run["report"]["virtual_s"] for run in report["runs"])
    return {
        "jobs": jobs,
        "wall_s": round(wall_s, 2),
        "virtual_s": round(virtual_s, 1),
        "speed_x": round(virtual_s / wall_s, 2),
        "passed": report["passed"],
        "digests": [run["report"]["trace_digest"] for run in report["runs"]],
    }


def profile(*, seed: int = 1) -> list[str]:
    """The baseline under cProfile: the PROFILE_ENTRIES functions with the most time of their own, as
    "function (package/module.py) seconds"."""
    profiler = cProfile.Profile()
    profiler.runcall(run_scenario, load_scenario(SCENARIO), seed=seed)
    own_time = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    ranked = sorted(own_time.items(), key=lambda item: item[1][2], reverse=True)[:PROFILE_ENTRIES]
    return [f"{name} ({_short_path(path)}) {stats[2]:.2f} s" for (path, _line, name), stats in ranked]


def _short_path(path: str) -> str:
    """The last two parts of a source path: enough to tell trio's scheduler from httpx or our own code."""
    return "/".join(path.split("/")[-2:])


def run(*, seed: int = 1, with_profile: bool = False) -> dict[str, Any]:
    result = measure(seed=seed)
    work = scheduler_work(seed=seed)
    floor = scheduler_floor(work, result["virtual_s"], seed=seed)
    cpus = os.cpu_count() or 1
    swarms = [swarm(1), swarm(cpus)]
    notes = [
        "Wall time includes the 5 s warm-up and the 20 s drain, on this shared machine (runs vary by about ±25%).",
        f"Scheduling work of the baseline (counting run): {work['steps']:,} task steps, {work['spawns']:,} tasks "
        f"spawned, {work['time_jumps']:,} distinct virtual times with work. Replayed by trio alone: "
        f"{floor['work']['steps']:,} steps, {floor['work']['spawns']:,} spawned, {floor['work']['time_jumps']:,} "
        f"distinct times. trio alone took {floor['wall_s'] / result['wall_s']:.0%} of the baseline's wall time.",
    ]
    if with_profile:
        notes.append("cProfile, most time of its own: " + "; ".join(profile(seed=seed)))
    return {
        "title": "Simulator speed: simulated seconds per wall second (baseline scenario)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"scenario": f"simulations/scenarios/{SCENARIO}.toml", "runner": "simulations.run:run_scenario"},
        "commands": ["python -m bench.simulator_speed", "python -m bench simulator_speed (this section only)"],
        "rows": [
            {
                "run": f"{SCENARIO}: the real nodes, simulated",
                "virtual s": f"{result['virtual_s']:g}",
                "wall s": f"{result['wall_s']:g}",
                "simulated s / wall s": f"{result['speed_x']:g}x (goal {GOAL_X:g}x)",
                "jobs acknowledged": f"{result['jobs_acked']:,}",
                "upstream calls": f"{result['upstream_requests']:,}",
                "invariants": "held" if result["passed"] else "VIOLATED",
            },
            {
                "run": "trio alone, the baseline's scheduling work (the ceiling)",
                "virtual s": f"{floor['virtual_s']:g}",
                "wall s": f"{floor['wall_s']:g}",
                "simulated s / wall s": f"{floor['speed_x']:g}x",
                "jobs acknowledged": "-",
                "upstream calls": "-",
                "invariants": "-",
            },
            *(
                {
                    "run": f"swarm: {SWARM_SEEDS} seeds at load {SWARM_LOAD:g}, --jobs {run['jobs']}",
                    "virtual s": f"{run['virtual_s']:g}",
                    "wall s": f"{run['wall_s']:g}",
                    "simulated s / wall s": f"{run['speed_x']:g}x",
                    "jobs acknowledged": "-",
                    "upstream calls": "-",
                    "invariants": "held" if run["passed"] else "VIOLATED",
                }
                for run in swarms
            ),
        ],
        "checks": {
            "every invariant held": result["passed"],
            "the replay did the baseline's steps within 5%": abs(floor["work"]["steps"] - work["steps"])
            <= 0.05 * work["steps"],
            f"--jobs {cpus} gave the trace digests of one process": swarms[0]["digests"] == swarms[1]["digests"],
        },
        "notes": notes,
        "measurements": {**result, "scheduler_work": work, "floor": floor, "swarms": swarms},
    }


if __name__ == "__main__":
    print(json.dumps(run(with_profile=True), indent=2))
