"""The CPU model: calibration files, the core queue, saturation in a real run, and the calibrate command."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from simulations import cli
from simulations.cpu import Calibration, CalibrationError, CpuQueue, Operation, bundled_calibration
from simulations.determinism import Simulation, run_simulation, wait_for
from simulations.network import open_simulated_network
from simulations.report import CPU_SERIES_PREFIX, RunOutcome, format_table
from simulations.run import RunReport, run_scenario
from simulations.scenario import (
    ClusterSpec,
    CpuSpec,
    ProviderSpec,
    ReceiverSpec,
    Scenario,
    ScenarioError,
    TenantSpec,
    load_scenario,
)
from simulations.world import World

# A slow machine, so that a small run saturates: 40 ms of CPU per job on one core, a capacity of 25 jobs/s.
SLOW = Calibration(
    costs_s={
        Operation.SUBMIT: 0.015,
        Operation.FORWARD: 0.015,
        Operation.ACCEPT: 0.015,
        Operation.ATTEMPT: 0.015,
        Operation.WEBHOOK: 0.010,
        Operation.PROXY: 0.001,
        Operation.REFUSAL: 0.005,
        Operation.GOSSIP: 0.0,
        Operation.REPLICATE: 0.002,
    },
    machine="a test's slow machine",
    measured_at="2026-01-01T00:00:00+00:00",
    cores=1,
    notes={"how": "written by hand"},
)
CAPACITY_PER_S = 1 / 0.040


def test_a_calibration_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    SLOW.save(path)
    assert Calibration.load(path) == SLOW
    assert json.loads(path.read_text())["costs_s"]["submit"] == 0.015


def test_a_busy_node_pays_less_per_operation_between_its_solo_and_loaded_costs(tmp_path: Path) -> None:
    batching = dataclasses.replace(
        SLOW, concurrency=8, solo_costs_s={op: 2 * cost for op, cost in SLOW.costs_s.items()}
    )
    path = tmp_path / "batching.json"
    batching.save(path)
    assert Calibration.load(path) == batching
    submit = [batching.cost_at(Operation.SUBMIT, in_flight) for in_flight in (1, 2, 4, 8, 64)]
    assert submit[0] == pytest.approx(0.030) and submit[3] == pytest.approx(0.015)  # as measured
    assert submit[0] > submit[1] > submit[2] > submit[3] == submit[4]  # no cheaper than measured under load
    assert SLOW.cost_at(Operation.SUBMIT, 64) == SLOW.cost_s(Operation.SUBMIT)  # no solo costs: constant
    assert batching.at_speed(2).cost_at(Operation.SUBMIT, 1) == pytest.approx(0.015)
    with pytest.raises(CalibrationError, match="no cost for accept, attempt"):
        dataclasses.replace(batching, solo_costs_s={Operation.SUBMIT: 1.0})


def test_the_bundled_calibration_costs_every_operation_and_names_its_machine() -> None:
    bundled = bundled_calibration()
    assert set(bundled.costs_s) == set(bundled.solo_costs_s) == set(Operation)
    assert all(cost > 0 for cost in bundled.costs_s.values())
    assert "CPUs" in bundled.machine and bundled.measured_at


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda doc: doc.update(format=2), "calibration format 2"),
        (lambda doc: doc["costs_s"].update(compile=0.1), "not a calibration: 'compile' is not a valid Operation"),
        (lambda doc: doc["costs_s"].update(submit=-0.1), "costs must not be negative"),
        (lambda doc: doc["costs_s"].pop("gossip"), "no cost for gossip"),
        (lambda doc: doc.pop("machine"), "not a calibration: 'machine'"),
        (lambda doc: doc.update(cores=0), "cores must be at least 1"),
    ],
)
def test_a_bad_calibration_file_is_refused_with_the_reason(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    document = SLOW.to_json()
    change(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CalibrationError, match=message):
        Calibration.load(path)


def test_a_file_that_is_not_json_or_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(CalibrationError, match=r"garbage\.json"):
        Calibration.load(tmp_path / "garbage.json")
    with pytest.raises(CalibrationError, match=r"missing\.json"):
        Calibration.load(tmp_path / "missing.json")


def test_a_scenario_names_the_field_of_a_bad_calibration(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"calibration: .*missing\.json"):
        CpuSpec(calibration=str(tmp_path / "missing.json"))


def test_speed_divides_every_cost() -> None:
    twice_as_slow = SLOW.at_speed(0.5)
    assert twice_as_slow.cost_s(Operation.SUBMIT) == pytest.approx(0.030)
    assert twice_as_slow.notes["speed"] == 0.5
    with pytest.raises(CalibrationError, match="speed must be > 0"):
        SLOW.at_speed(0)


@pytest.mark.parametrize(
    ("cores", "charges", "done"),
    [
        # One core: work queues behind work, and starts at once on an idle core.
        (1, [(0.0, 1.0), (0.0, 1.0), (0.5, 1.0)], [1.0, 2.0, 3.0]),
        (1, [(0.0, 1.0), (5.0, 1.0)], [1.0, 6.0]),
        # Two cores: each operation on the core that frees first.
        (2, [(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.2, 0.5)], [1.0, 1.0, 2.0, 1.5]),
        (2, [(0.0, 3.0), (0.0, 1.0), (0.0, 1.0)], [3.0, 1.0, 2.0]),
        # Free work costs nothing and waits for nothing but a core.
        (1, [(0.0, 0.0), (0.0, 2.0), (1.0, 0.0)], [0.0, 2.0, 2.0]),
    ],
)
def test_cpu_queue_serves_first_come_first_served_on_the_core_that_frees_first(
    cores: int, charges: list[tuple[float, float]], done: list[float]
) -> None:
    queue = CpuQueue(cores)
    assert [queue.charge(now, cost) for now, cost in charges] == pytest.approx(done)
    assert queue.busy_s == pytest.approx(sum(cost for _now, cost in charges))


def test_cpu_queue_backlog_and_reset() -> None:
    queue = CpuQueue(1)
    queue.charge(0.0, 4.0)
    assert queue.backlog_s(1.0) == pytest.approx(3.0)
    queue.reset(1.0)  # a crash: the booked work died with the process
    assert queue.backlog_s(1.0) == 0.0
    assert queue.charge(1.0, 1.0) == pytest.approx(2.0)
    assert queue.busy_s == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least one core"):
        CpuQueue(0)


def _one_node(rate_per_s: float, calibration: Path, *, enabled: bool = True, workers: int = 0) -> Scenario:
    tenant = TenantSpec(
        name="acme", provider="api", keys=10, rate_per_s=rate_per_s, receivers=("app",), workers=workers
    )
    return Scenario(
        name="saturation",
        duration_s=4,
        warmup_s=1,
        drain_s=8,
        cluster=ClusterSpec(nodes=1, replicas=1),
        providers=(ProviderSpec(name="api", rate_limit_rps=500, burst=500, latency_median_s=0.01, latency_p99_s=0.02),),
        receivers=(ReceiverSpec(name="app", latency_median_s=0.01, latency_p99_s=0.02),),
        tenants=(tenant,),
        cpu=CpuSpec(enabled=enabled, calibration=str(calibration)),
    )


def _completed_per_s(report: RunReport, scenario: Scenario) -> float:
    """Jobs finished per second while the workload ran (from the per-second series)."""
    window = (scenario.warmup_s + 1, scenario.warmup_s + scenario.duration_s)
    counts = [count for at, count in report.series["throughput/acme"] if window[0] < at <= window[1] + 1e-9]
    return sum(counts) / (window[1] - window[0])


def _run(rate_per_s: float, calibration: Path, workers: int = 0) -> tuple[float, float, RunReport]:
    """(jobs finished per second while submitting, p50 latency, the report) of the one-node run at `rate_per_s`."""
    scenario = _one_node(rate_per_s, calibration, workers=workers)
    report = run_scenario(scenario, seed=3)
    assert report.passed, report.violations
    p50_s = report.tiers["all"].latency_p50_s
    assert p50_s is not None
    return _completed_per_s(report, scenario), p50_s, report


def test_past_capacity_throughput_stays_flat_and_latency_rises(tmp_path: Path) -> None:
    calibration = tmp_path / "slow.json"
    SLOW.save(calibration)
    # Clients that wait for each answer (8 at a time): below, at 1.6 and at 4 times the capacity of 25 jobs/s.
    below, over, far_over = (_run(rate, calibration, workers=8) for rate in (10, 40, 100))
    assert over[0] == pytest.approx(CAPACITY_PER_S, rel=0.15)
    assert far_over[0] == pytest.approx(over[0], rel=0.05)  # flat: the node can do no more
    assert below[1] < 0.1 < 0.3 < over[1]  # queueing for the core
    assert below[2].cpu_utilisation["n1"] < 0.6 < 0.95 < far_over[2].cpu_utilisation["n1"]
    assert max(utilisation for _at, utilisation in far_over[2].series[CPU_SERIES_PREFIX + "n1"]) > 0.95
    assert below[2].calibration.startswith("a test's slow machine")
    # Clients that never wait: the backlog, and the latency, grow with what is offered; the node finishes no more
    # (fewer: new submissions take their share of the core first, as on a real node).
    open_over, open_far_over = (_run(rate, calibration) for rate in (40, 100))
    assert 1.0 < open_over[1] < open_far_over[1]
    assert open_far_over[0] < open_over[0] <= CAPACITY_PER_S * 1.05


def test_with_the_cpu_model_off_nothing_is_charged(tmp_path: Path) -> None:
    calibration = tmp_path / "slow.json"
    SLOW.save(calibration)
    scenario = _one_node(100, calibration, enabled=False)
    report = run_scenario(scenario, seed=3)
    assert report.passed, report.violations
    assert _completed_per_s(report, scenario) == pytest.approx(100, rel=0.25)  # CPU is free
    assert report.cpu_utilisation == {} and report.calibration == ""
    table = format_table([RunOutcome(point={}, seed=3, swarm=False, replay="-", report=report)])
    assert table.splitlines()[0].endswith("cpu max") and table.splitlines()[2].endswith("-")


def test_the_table_names_the_busiest_node(tmp_path: Path) -> None:
    calibration = tmp_path / "slow.json"
    SLOW.save(calibration)
    report = dataclasses.replace(
        run_scenario(_one_node(10, calibration), seed=3), cpu_utilisation={"n1": 0.3, "n2": 0.8}
    )
    table = format_table([RunOutcome(point={}, seed=3, swarm=False, replay="-", report=report)])
    assert table.splitlines()[2].endswith("80% n2")


def test_calibrate_writes_a_file_the_runs_can_use(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "here.json"
    args = cli.build_parser().parse_args(["--calibrate", "--out", str(path), "--repetitions", "20", "--quiet"])
    assert cli.run(args, out=out, err=err) == 0, err.getvalue()
    calibration = Calibration.load(path)
    assert set(calibration.costs_s) == set(Operation)
    assert calibration.cost_s(Operation.SUBMIT) > 0 and calibration.cost_s(Operation.ATTEMPT) >= 0
    assert calibration.notes["repetitions"] == 20 and "submit" in calibration.notes["one at a time"]
    assert calibration.cost_at(Operation.SUBMIT, 1) == pytest.approx(calibration.solo_costs_s[Operation.SUBMIT])
    assert f"written to {path}" in out.getvalue()
    assert CpuSpec(calibration=str(path)).load() == calibration


def test_calibrate_takes_no_scenario() -> None:
    err = io.StringIO()
    args = cli.build_parser().parse_args(["baseline", "--calibrate"])
    assert cli.run(args, out=io.StringIO(), err=err) == 2
    assert "--calibrate takes no SCENARIO" in err.getvalue()


def _only(operation: Operation) -> Calibration:
    """A calibration in which `operation` costs 1 ms and nothing else costs anything."""
    return dataclasses.replace(SLOW, costs_s={op: 0.001 if op is operation else 0.0 for op in Operation})


JOBS = 9
HTTP_OPERATIONS = (
    Operation.SUBMIT,
    Operation.FORWARD,
    Operation.ACCEPT,
    Operation.REFUSAL,
    Operation.ATTEMPT,
    Operation.WEBHOOK,
    Operation.REPLICATE,
)
THREE_NODES = Scenario(
    name="charges",
    cluster=ClusterSpec(nodes=3, replicas=2),
    providers=(ProviderSpec(name="api", rate_limit_rps=100, burst=100),),
    receivers=(ReceiverSpec(name="app"),),
    tenants=(TenantSpec(name="acme", provider="api", keys=6, receivers=("app",)),),
)


def _charges(operation: Operation, tmp_path: Path) -> tuple[int, World]:
    """How often a real three-node world charged `operation` for JOBS submissions (each to the next node)."""
    path = tmp_path / f"{operation.value}.json"
    _only(operation).save(path)
    scenario = dataclasses.replace(THREE_NODES, cpu=CpuSpec(calibration=str(path)))

    async def main(simulation: Simulation) -> tuple[float, World]:
        async with (
            open_simulated_network(rng=simulation.rng_for("network"), trace=simulation.trace) as network,
            trio.open_nursery() as nursery,
        ):
            world = World(simulation=simulation, scenario=scenario, network=network, nursery=nursery)
            await world.start_all()
            await wait_for(world.converged, timeout_s=10, what="membership settled")
            busy_before = sum(node.cpu.busy_s for node in world.nodes.values() if node.cpu is not None)
            tenant = scenario.tenants[0]
            for sequence in range(JOBS):
                answer = await world.submit(tenant, world.job_body(tenant, sequence, sequence % tenant.keys))
                assert answer.status == 201
            receiver = world.receivers["app"]
            await wait_for(lambda: receiver.deliveries >= JOBS, timeout_s=30, what="every webhook delivered")
            await trio.sleep(1)  # the last saves replicated
            busy = sum(node.cpu.busy_s for node in world.nodes.values() if node.cpu is not None) - busy_before
            nursery.cancel_scope.cancel()
            return busy, world

    busy_s, world = run_simulation(main, seed=4).value
    return round(busy_s / 0.001), world


def test_every_exchange_is_charged_to_the_node_that_does_the_work(tmp_path: Path) -> None:
    counts = {operation: _charges(operation, tmp_path) for operation in (*HTTP_OPERATIONS, Operation.GOSSIP)}
    taken, forwarded = counts[Operation.SUBMIT][0], counts[Operation.FORWARD][0]
    assert taken + forwarded == JOBS and forwarded > 0  # each submission's entry took it or passed it on
    assert counts[Operation.ACCEPT][0] == forwarded  # each forwarded job accepted by its owner
    assert counts[Operation.REFUSAL][0] == JOBS  # every submission is judged first
    attempts, world = counts[Operation.ATTEMPT]
    assert attempts == sum(provider.requests for provider in world.providers.values()) >= JOBS
    assert counts[Operation.WEBHOOK][0] == world.receivers["app"].deliveries >= JOBS
    assert counts[Operation.REPLICATE][0] >= JOBS  # every job kept on its successor, and its later saves
    assert counts[Operation.GOSSIP][0] > 0


def test_other_processes_on_a_shared_machine_take_their_share_of_its_cores(tmp_path: Path) -> None:
    calibration = tmp_path / "slow.json"
    SLOW.save(calibration)
    completed = []
    for background_cores in (0.0, 1.0):
        cpu = CpuSpec(calibration=str(calibration), machine_cores=2, background_cores=background_cores)
        scenario = dataclasses.replace(_one_node(100, calibration, workers=8), cpu=cpu)
        report = run_scenario(scenario, seed=3)
        assert report.passed, report.violations
        completed.append(_completed_per_s(report, scenario))
    alone, beside_others = completed
    assert alone == pytest.approx(2 * CAPACITY_PER_S, rel=0.15)  # both cores
    assert beside_others == pytest.approx(CAPACITY_PER_S, rel=0.15)  # the one the others leave


def test_the_cpu_section_of_a_scenario_file(tmp_path: Path) -> None:
    calibration = tmp_path / "slow.json"
    SLOW.save(calibration)
    path = tmp_path / "cpu.toml"
    body = (
        '[[providers]]\nname = "api"\n[[tenants]]\nname = "acme"\nprovider = "api"\n'
        f'[cpu]\ncalibration = "{calibration}"\nmachine_cores = 2\nbackground_cores = 0.5\nspeed = 2.0\n'
    )
    path.write_text(body)
    cpu = load_scenario(path).cpu
    assert (cpu.enabled, cpu.machine_cores, cpu.background_cores) == (True, 2, 0.5)
    assert cpu.load().cost_s(Operation.SUBMIT) == pytest.approx(0.0075)
    path.write_text(body.replace("machine_cores = 2\n", ""))
    with pytest.raises(ScenarioError, match=r"cpu\.background_cores: needs machine_cores"):
        load_scenario(path)
    path.write_text(
        '[[providers]]\nname = "api"\n[[tenants]]\nname = "acme"\nprovider = "api"\n[cpu]\nenabled = false\n'
    )
    assert not load_scenario(path).cpu.enabled
