"""`ezthrottle plan`: workload files, the search, and a known answer (one node is too few, two are enough)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from edge.cli import registered_commands
from simulations.cpu import Calibration, Operation
from simulations.plan import _fast_search, load_workload, main, search
from simulations.scenario import ScenarioError

WORKLOADS_DIR = Path(__file__).parents[2] / "simulations" / "workloads"

# 40 jobs/s; every operation costs 10 ms of one core. One node spends 30 ms per job (its submission, attempt and
# webhook): 120% of its core, so its CPU queue, and every job's latency, grows for the whole run. Two spend 35 ms
# per job between them (half the jobs are forwarded, so the owner accepts them too): 70% of each core.
TWO_ARE_ENOUGH = """\
duration_s = 8
warmup_s = 2
drain_s = 10

[cluster]
regions = ["iad"]
replicas = 1

[cpu]
calibration = "{calibration}"

[targets]
latency_p99_s = 1.0
shed_rate_max = 0.01

[search]
nodes_per_region_max = 4

[[providers]]
name = "payments"
rate_limit_rps = 5
burst = 5

[[receivers]]
name = "app"

[[tenants]]
name = "shop"
keys = 40
rate_per_s = 40
provider = "payments"
receivers = ["app"]
"""


def write_workload(directory: Path, text: str = TWO_ARE_ENOUGH) -> Path:
    calibration = directory / "calibration.json"
    costs = {operation: 0.010 for operation in Operation} | {Operation.GOSSIP: 0.0001}
    Calibration(costs_s=costs, machine="test machine", measured_at="2026-01-01").save(calibration)
    path = directory / "two-are-enough.toml"
    path.write_text(text.format(calibration=calibration))
    return path


def test_plan_finds_that_one_node_is_too_few_and_two_are_enough(tmp_path: Path) -> None:
    result = search(load_workload(write_workload(tmp_path)))
    assert (result.fast_answer, result.answer) == (2, 2)
    runs = {(evaluation.model, evaluation.nodes_per_region): evaluation for evaluation in result.evaluations}
    assert sorted(runs) == [("fast", 1), ("fast", 2), ("full", 2)]
    one = runs["fast", 1]
    assert not one.meets and any("p99" in miss or "unfinished" in miss for miss in one.misses)
    assert max(one.report.cpu_utilisation.values()) > 1.0
    assert runs["fast", 2].meets and runs["full", 2].meets


def test_plan_on_the_command_line_prints_the_answer_and_writes_json_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, err = io.StringIO(), io.StringIO()
    argv = [str(write_workload(tmp_path)), "--json", str(tmp_path / "plan.json"), "--plots", str(tmp_path / "png")]
    assert main(argv, out=out, err=err) == 0, err.getvalue()
    printed = out.getvalue()
    assert "smallest cluster meeting the targets: 2 node(s) per region, 2 in all (iad)" in printed
    assert "no: " in printed  # the table says why one node was not enough
    document = json.loads((tmp_path / "plan.json").read_text())
    assert (document["format"], document["answer"], document["passed"]) == (1, 2, True)
    assert [run["model"] for run in document["evaluations"]] == ["fast", "fast", "full"]
    pngs = sorted(path.name for path in (tmp_path / "png").iterdir())
    assert pngs == ["two-are-enough-latency.png", "two-are-enough-utilisation.png"]


def test_a_workload_names_no_node_count_and_needs_targets(tmp_path: Path) -> None:
    with_nodes = TWO_ARE_ENOUGH.replace('regions = ["iad"]', 'regions = ["iad"]\nnodes = 3')
    with pytest.raises(ScenarioError, match=r"cluster\.nodes: is what the plan searches"):
        load_workload(write_workload(tmp_path, with_nodes))
    without_targets = TWO_ARE_ENOUGH.replace("[targets]", "[unused]")
    with pytest.raises(ScenarioError, match="targets: missing"):
        load_workload(write_workload(tmp_path, without_targets))
    bad_target = TWO_ARE_ENOUGH.replace("latency_p99_s = 1.0", "latency_p99_s = -1.0")
    with pytest.raises(ScenarioError, match=r"targets\.latency_p99_s: must be > 0"):
        load_workload(write_workload(tmp_path, bad_target))
    assert main([str(tmp_path / "missing.toml")], out=io.StringIO(), err=io.StringIO()) == 2


def test_the_bundled_workloads_load() -> None:
    for path in sorted(WORKLOADS_DIR.glob("*.toml")):
        workload = load_workload(path)
        assert workload.scenario(3).cluster.nodes == 3 * len(workload.regions), path


@pytest.mark.parametrize("limit", [1, 2, 5, 16])
def test_the_search_finds_the_smallest_count_in_few_runs(limit: int) -> None:
    for answer in range(1, limit + 2):
        tried: list[int] = []

        def meets(n: int, answer: int = answer, tried: list[int] = tried) -> bool:
            tried.append(n)
            return n >= answer

        assert _fast_search(meets, limit) == (answer if answer <= limit else None)
        assert len(tried) <= 2 * max(1, limit.bit_length()) + 1


def test_plan_is_an_ezthrottle_command() -> None:
    """Registered as `simulate` is (pyproject.toml): edge finds it without importing the simulator."""
    assert registered_commands()["plan"].value == "simulations.plan:main"
