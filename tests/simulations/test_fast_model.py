"""The fast model (simulations/fast/): it agrees with the full model, replays by seed, shows saturation and
failover, refuses what it does not model; and the charts mark faults and saturation."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from simulations.cli import main as simulate
from simulations.cpu import Calibration, Operation
from simulations.fast import EventLoop, UnsupportedScenario, run_fast, unsupported
from simulations.report import RunOutcome, fault_windows, saturation_at, write_plots
from simulations.run import RunReport, run_scenario
from simulations.scenario import CpuSpec, FaultSpec, Scenario, load_scenario

# A job's operations cost about 8 ms of CPU in all under load (twice that alone): a node saturates near 120 jobs/s.
COSTS_S = {
    Operation.SUBMIT: 0.0012,
    Operation.FORWARD: 0.0012,
    Operation.ACCEPT: 0.0010,
    Operation.ATTEMPT: 0.0015,
    Operation.WEBHOOK: 0.0010,
    Operation.PROXY: 0.0005,
    Operation.REFUSAL: 0.0004,
    Operation.GOSSIP: 0.0001,
    Operation.REPLICATE: 0.0008,
}

SMALL = """\
duration_s = 10
warmup_s = 3
drain_s = 10

[cluster]
nodes = 2
regions = ["iad", "lax"]

[cpu]
calibration = "{calibration}"

[[providers]]
name = "payments"
rate_limit_rps = 5
burst = 5

[[receivers]]
name = "app"

[[tenants]]
name = "shop"
tier = "paid"
keys = 12
rate_per_s = 40
provider = "payments"
receivers = ["app"]

[[tenants]]
name = "hobby"
tier = "free"
keys = 2
rate_per_s = 2
provider = "payments"
receivers = ["app"]
"""


def calibration_file(directory: Path, scale: float = 1.0) -> Path:
    """A calibration as `ezthrottle simulate --calibrate` writes it: costs COSTS_S times `scale` with 8 operations
    in flight, and twice that one at a time (so both models must book by the operations in flight)."""
    path = directory / "calibration.json"
    Calibration(
        costs_s={operation: cost * scale for operation, cost in COSTS_S.items()},
        solo_costs_s={operation: 2 * cost * scale for operation, cost in COSTS_S.items()},
        concurrency=8,
        machine="test machine",
        measured_at="2026-01-01",
    ).save(path)
    return path


def small_scenario(directory: Path, scale: float = 1.0) -> Scenario:
    path = directory / "small.toml"
    path.write_text(SMALL.format(calibration=calibration_file(directory, scale)))
    return load_scenario(path)


def within(fast: float | None, full: float | None, tolerance: float) -> bool:
    assert fast is not None and full is not None
    return abs(fast - full) <= tolerance * full


def test_fast_and_full_models_agree_on_a_small_scenario(tmp_path: Path) -> None:
    scenario = small_scenario(tmp_path)
    fast = run_fast(scenario, seed=3)
    full = run_scenario(scenario, seed=3)
    assert full.passed
    # The two models draw from different random streams, so their figures differ as two seeds' do: the paid tier's
    # 400 jobs give a median within 10% and a p99 within 25% (the free tier's 20 are too few to compare).
    assert within(fast.throughput_per_s, full.throughput_per_s, 0.10)
    assert within(fast.tiers["paid"].latency_p50_s, full.tiers["paid"].latency_p50_s, 0.10)
    assert within(fast.tiers["paid"].latency_p99_s, full.tiers["paid"].latency_p99_s, 0.25)
    for report in (fast, full):
        assert report.shed_rate == 0.0
        assert all(stats.succeeded == stats.acked for stats in report.tiers.values())
    for node, utilisation in full.cpu_utilisation.items():
        assert abs(fast.cpu_utilisation[node] - utilisation) <= 0.05, node
    assert fast.calibration == full.calibration == "test machine, measured 2026-01-01"


def test_a_seed_replays_exactly_and_another_differs(tmp_path: Path) -> None:
    scenario = small_scenario(tmp_path)
    first, again, other = (run_fast(scenario, seed=seed) for seed in (1, 1, 2))
    assert first.trace_digest == again.trace_digest
    assert first.series == again.series
    assert first.trace_digest != other.trace_digest


def test_a_node_past_its_cpu_saturates(tmp_path: Path) -> None:
    """The same scenario with every operation ten times as dear: CPU, not the provider, sets the pace."""
    cheap = run_fast(small_scenario(tmp_path), seed=1)
    dear = run_fast(small_scenario(tmp_path, scale=10.0), seed=1)
    assert max(cheap.cpu_utilisation.values()) < 0.5
    assert max(dear.cpu_utilisation.values()) > 1.0
    assert saturation_at(cheap.series) is None
    saturated = saturation_at(dear.series)
    assert saturated is not None and saturated[0] <= cheap.virtual_s
    cheap_p99, dear_p99 = cheap.tiers["all"].latency_p99_s, dear.tiers["all"].latency_p99_s
    assert cheap_p99 is not None and dear_p99 is not None and dear_p99 > 5 * cheap_p99


def test_a_crashed_owner_s_keys_fail_over_and_no_job_is_lost(tmp_path: Path) -> None:
    """Three nodes, one down for good: its keys move after failure detection and the takeover wait (about 6 s and
    5 s with three LAN members); until then the jobs forwarded to it are refused."""
    crash = FaultSpec(at_s=2, kind="crash", nodes=("n1",))
    small = small_scenario(tmp_path)
    scenario = dataclasses.replace(
        small, cluster=dataclasses.replace(small.cluster, nodes=3), faults=(crash,), drain_s=20
    )
    report = run_fast(scenario, seed=1)
    assert report.fault_schedule == (crash.describe(),)
    assert report.failover_s is not None and 8.0 < report.failover_s < 15.0
    stats = report.tiers["all"]
    assert stats.pending == 0 and stats.acked == stats.succeeded
    assert 0 < stats.shed < 0.5 * stats.submitted


def test_what_the_fast_model_does_not_model_is_refused(tmp_path: Path) -> None:
    partition = FaultSpec(at_s=1, kind="partition", nodes=("n1",), duration_s=2)
    scenario = dataclasses.replace(small_scenario(tmp_path), faults=(partition,))
    assert unsupported(scenario) == ["faults[0]: partition (membership is not simulated; use --model full)"]
    with pytest.raises(UnsupportedScenario, match="partition"):
        run_fast(scenario, seed=1)


def test_the_cpu_model_switched_off_costs_nothing(tmp_path: Path) -> None:
    scenario = dataclasses.replace(small_scenario(tmp_path), cpu=CpuSpec(enabled=False))
    report = run_fast(scenario, seed=1)
    assert report.cpu_utilisation == {} and report.calibration == ""
    assert report.tiers["all"].succeeded == report.tiers["all"].acked > 0


def test_the_event_loop_runs_in_time_order_then_booking_order() -> None:
    loop = EventLoop()
    ran: list[str] = []
    loop.at(2.0, ran.append, "late")
    loop.at(1.0, ran.append, "first")
    loop.at(1.0, ran.append, "second")
    loop.run_until(1.5)
    assert ran == ["first", "second"] and loop.now == 1.5
    loop.at(0.0, ran.append, "past: now")
    loop.run_until(3.0)
    assert ran == ["first", "second", "past: now", "late"] and loop.events == 4


def test_simulate_model_fast_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(SMALL.format(calibration=calibration_file(tmp_path)))
    out, err = io.StringIO(), io.StringIO()
    from simulations.cli import build_parser, run

    status = run(build_parser().parse_args([str(path), "--model", "fast", "--sweep", "nodes=1,2"]), out=out, err=err)
    assert status == 0, err.getvalue()
    assert "2 runs, 2 passed" in out.getvalue()
    assert simulate([str(path), "--model", "fast", "--plant-bug", "queue-per-node"]) == 2


def test_charts_shade_fault_windows_and_mark_saturation(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    outage = FaultSpec(at_s=2, kind="upstream_outage", target="payments", duration_s=3)
    scenario = dataclasses.replace(small_scenario(tmp_path, scale=10.0), faults=(outage,))
    windows = fault_windows(scenario)
    assert [(w.label, w.start_s, w.end_s) for w in windows] == [("outage payments", 5.0, 8.0)]
    report: RunReport = run_fast(scenario, seed=1)
    outcome = RunOutcome(point={}, seed=1, swarm=False, replay="", report=report, faults=windows)
    [png] = write_plots(tmp_path / "plots", scenario.name, [outcome])
    assert png.read_bytes().startswith(b"\x89PNG")
