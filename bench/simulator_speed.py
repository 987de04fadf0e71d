"""Simulator speed: simulated seconds per wall second for the baseline scenario (issue 5's speed reference).

The baseline (simulations/scenarios/baseline.toml): 5 real nodes in 2 regions, 100 keys, 200 jobs/s, no faults;
the whole run is measured (warm-up, workload and drain, with every invariant checked each virtual second), in
this process, with the wall clock read only outside the simulated world. The goal in the issue is >= 50x.

`profile=True` also runs it under cProfile and lists the functions with the most time of their own, to show
where a run's time goes: in the simulator (simulations/) or in the node code it runs (edge/, httpx, trio).

Run alone: `python -m bench.simulator_speed` (prints JSON).
"""

from __future__ import annotations

import cProfile
import json
import pstats
import time
from typing import Any

from simulations.run import run_scenario
from simulations.scenario import load_scenario

SCENARIO = "baseline"
GOAL_X = 50.0
PROFILE_ENTRIES = 12


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
    notes = [
        "Wall time includes the 5 s warm-up and the 20 s drain, on this shared machine (runs vary by about ±25%).",
    ]
    if with_profile:
        notes.append("cProfile, most time of its own: " + "; ".join(profile(seed=seed)))
    return {
        "title": "Simulator speed: simulated seconds per wall second (baseline scenario)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"scenario": f"simulations/scenarios/{SCENARIO}.toml", "runner": "simulations.run:run_scenario"},
        "commands": ["python -m bench.simulator_speed"],
        "rows": [
            {
                "scenario": SCENARIO,
                "virtual s": f"{result['virtual_s']:g}",
                "wall s": f"{result['wall_s']:g}",
                "simulated s / wall s": f"{result['speed_x']:g}x (goal {GOAL_X:g}x)",
                "jobs acknowledged": f"{result['jobs_acked']:,}",
                "upstream calls": f"{result['upstream_requests']:,}",
                "invariants": "held" if result["passed"] else "VIOLATED",
            }
        ],
        "checks": {"every invariant held": result["passed"]},
        "notes": notes,
        "measurements": result,
    }


if __name__ == "__main__":
    print(json.dumps(run(with_profile=True), indent=2))
