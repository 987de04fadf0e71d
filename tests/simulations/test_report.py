"""Reports from real runs: the sweep table, JSON that round-trips, PNG plots, and the whole command end to end."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from simulations import cli
from simulations.report import (
    RunOutcome,
    format_table,
    report_json,
    run_report_from_json,
    to_jsonable,
    write_json,
    write_plots,
)
from simulations.run import RunReport, run_scenario
from simulations.scenario import load_scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A small, fast cluster: two tiers on one provider, a crash to give the run a fault schedule and a failover.
SMALL_SCENARIO = """\
# A small two-tier scenario for the report tests: quick to run, with one crash.
description = "report test"
duration_s = 6
warmup_s = 3
drain_s = 10

[cluster]
nodes = 2

[[providers]]
name = "api"
rate_limit_rps = 20
burst = 5

[[receivers]]
name = "hooks"

[[tenants]]
name = "gold"
tier = "reserved"
keys = 2
rate_per_s = 4
provider = "api"
receivers = ["hooks"]

[[tenants]]
name = "basic"
tier = "free"
keys = 2
rate_per_s = 4
provider = "api"
receivers = ["hooks"]

[[faults]]
at_s = 2
kind = "crash"
nodes = ["n2"]
duration_s = 2
"""


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenarios") / "small.toml"
    path.write_text(SMALL_SCENARIO)
    return path


@pytest.fixture(scope="module")
def outcome(scenario_file: Path) -> RunOutcome:
    report = run_scenario(load_scenario(scenario_file), seed=3)
    return RunOutcome(
        point={"nodes": "2"}, seed=3, swarm=False, replay="ezthrottle simulate small --seed 3", report=report
    )


def report_of(outcome: RunOutcome) -> RunReport:
    assert outcome.report is not None
    return outcome.report


def test_table_has_a_row_per_run_with_every_figure(outcome: RunOutcome) -> None:
    report = report_of(outcome)
    crashed = RunOutcome(point={"nodes": "5"}, seed=4, swarm=False, replay="", report=None, error="boom")
    header, rule, row, crash_row = format_table([outcome, crashed]).splitlines()
    for column in ("point", "seed", "verdict", "jobs/s", "reserved p50/p99 s", "free p50/p99 s", "all p50/p99 s"):
        assert column in header
    for column in ("shed", "429s", "queue max", "failover s"):
        assert column in header
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.startswith("nodes=2") and ("pass" if report.passed else "FAIL") in row
    assert f"{report.throughput_per_s:.1f}" in row and str(report.max_queue_depth) in row
    assert crash_row.startswith("nodes=5") and "CRASH" in crash_row
    assert len({len(line) for line in (header, rule)}) == 1


def test_json_round_trips_to_an_equal_run_report(outcome: RunOutcome, tmp_path: Path) -> None:
    report = report_of(outcome)
    path = tmp_path / "out" / "report.json"
    write_json(path, report_json(scenario="small", outcomes=[outcome]))
    document = json.loads(path.read_text())
    assert document["scenario"] == "small" and document["passed"] == report.passed
    (run,) = document["runs"]
    assert (run["seed"], run["point"], run["replay"]) == (3, {"nodes": "2"}, "ezthrottle simulate small --seed 3")
    assert run["report"]["passed"] == report.passed
    assert run["report"]["trace_digest"] == report.trace_digest
    assert run_report_from_json(run["report"]) == report
    assert json.loads(json.dumps(to_jsonable(report))) == run["report"]


def test_plots_are_png_files_named_after_scenario_point_and_seed(outcome: RunOutcome, tmp_path: Path) -> None:
    (path,) = write_plots(tmp_path / "plots", "small", [outcome])
    assert path.name == "small-nodes2-seed3.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert path.stat().st_size > 10_000  # three panels with lines, not an empty canvas
    report = report_of(outcome)
    assert report.series["queue_depth"], "the run recorded no queue depth series to plot"


def test_sweep_end_to_end_prints_a_table_and_writes_json_and_plots(scenario_file: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = [str(scenario_file), "--seed", "5", "--sweep", "nodes=2,3", "--sweep", "load=0.5"]
    argv += ["--json", str(tmp_path / "sweep.json"), "--plots", str(tmp_path / "plots"), "--progress"]
    status = cli.run(cli.build_parser().parse_args(argv), out=out, err=err)
    text = out.getvalue()
    assert status == 0, text + err.getvalue()
    assert "seed 5 [nodes=2 load=0.5]: passed" in text and "seed 5 [nodes=3 load=0.5]: passed" in text
    assert "small: 2 runs, 2 passed, 0 failed" in text
    table = [line for line in text.splitlines() if line.startswith("nodes=")]
    assert len(table) == 2
    assert "100%" in err.getvalue()  # the forced progress bar reached the end
    document = json.loads((tmp_path / "sweep.json").read_text())
    assert [run["point"] for run in document["runs"]] == [{"nodes": "2", "load": "0.5"}, {"nodes": "3", "load": "0.5"}]
    two_nodes = run_report_from_json(document["runs"][0]["report"])
    assert two_nodes.seed == 5 and two_nodes.passed
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2
