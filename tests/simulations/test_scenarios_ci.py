"""The simulator in CI: every bundled scenario, over a fixed set of seeds, must pass every invariant.

Runs are shortened through the same sweep overrides a user has (CI_OVERRIDES) so the whole file stays fast; the
scenario files keep their full length for `ezthrottle simulate`. A failure prints what the command prints, with the
replay command, so the seed can be rerun at full detail.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from simulations.cli import Plan, print_outcome
from simulations.report import RunOutcome
from simulations.run import run_scenario
from simulations.scenario import bundled_scenarios, load_scenario

CI_SEEDS = (1, 2)
# Per scenario, the overrides that keep a CI run short (about 1-3 s of wall time) without dropping what it checks:
# every fault stays in the schedule (durations never end before the last fault starts) and every flood stays above
# its limit; only the number of jobs shrinks.
CI_OVERRIDES: dict[str, dict[str, str]] = {
    "baseline": {"duration": "3", "load": "0.25"},
    "noisy-neighbour": {"duration": "4"},
    "region-outage": {"duration": "26", "load": "0.3"},
    "rolling-restart": {"duration": "33", "load": "0.15"},
    "partition": {"duration": "21", "load": "0.25"},
    "one-key-50-workers": {"duration": "6"},
    "racing": {"duration": "10", "load": "0.5"},
    "slow-region": {"duration": "19", "load": "0.4"},
    "quota": {"duration": "30", "load": "0.7"},  # still 5x the allowance, spent during the split
    "disk-loss": {"duration": "21", "load": "0.5", "keys": "4"},  # half the jobs on half the keys: each still 1.5x
}


@pytest.mark.parametrize("seed", CI_SEEDS)
@pytest.mark.parametrize("path", bundled_scenarios(), ids=lambda path: path.stem)
def test_bundled_scenario_passes(path: Path, seed: int) -> None:
    overrides = CI_OVERRIDES.get(path.stem, {})
    scenario = load_scenario(path).with_overrides(overrides)
    report = run_scenario(scenario, seed=seed)
    plan = Plan(
        scenario_arg=path.stem, scenario=scenario, points=(overrides,), seeds=(seed,), swarm=False, bugs=frozenset()
    )
    outcome = RunOutcome(
        point=overrides, seed=seed, swarm=False, replay=plan.replay_command(overrides, seed), report=report
    )
    printed = io.StringIO()
    print_outcome(printed, scenario, outcome, quiet=False)
    assert report.passed, printed.getvalue()
    assert report.tiers["all"].submitted > 0 and report.tiers["all"].acked > 0, printed.getvalue()
    assert len(report.fault_schedule) == len(scenario.faults), printed.getvalue()
    for tenant, stats in report.quotas.items():
        # Demand over the allowance, and the run healed early enough for quota-reached to judge it: used up.
        assert stats.submitted > 2 * stats.allowance and stats.refused > 0, (tenant, stats)
        assert stats.reached == "judged" and stats.counted == stats.allowance - stats.stranded, (tenant, stats)
