"""bench.versus: /proc parsing, medians, the issue's verdicts and the RESULTS.md section, without a load generator."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import versus
from bench.__main__ import render_section, replace_section
from bench.versus import (
    Side,
    SideFailed,
    Summary,
    alternate_sides,
    child_pids,
    cpu_seconds,
    parse_proc_stat,
    stamp,
    summarize_side,
    verdicts,
    versus_result,
)

# A real line's shape (proc(5)): the command name holds a space and parentheses.
STAT_LINE = (
    "4242 (python (serve) x) S 4241 4242 4200 34816 4242 4194304 1520 0 3 0 "
    "731 129 0 0 20 0 3 0 123456 98765432 4567 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0\n"
)


def test_proc_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    stat = parse_proc_stat(STAT_LINE)
    assert (stat.pid, stat.ppid, stat.utime_ticks, stat.stime_ticks) == (4242, 4241, 731, 129)
    assert stat.cpu_ticks == 860


def test_a_line_that_is_not_proc_stat_is_an_error() -> None:
    for line in ("", "4242 python S 1 2 3", "4242 (python) S 4241 4242"):
        with pytest.raises(ValueError, match="not a /proc/PID/stat line"):
            parse_proc_stat(line)


def test_this_process_reads_its_own_cpu_time_and_finds_its_children() -> None:
    assert parse_proc_stat(Path("/proc/self/stat").read_text()).pid == os.getpid()
    assert cpu_seconds(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in child_pids(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert child.pid not in child_pids(os.getpid())


def test_the_child_driver_imports_only_the_standard_library_at_module_level() -> None:
    """In the child this file runs inside the other tree, where `bench` is that tree's package."""
    tree = ast.parse(Path(versus.__file__).read_text())
    imported = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert {name.partition(".")[0] for name in imported} <= sys.stdlib_module_names | {"__future__"}


def intake_round(h2c: float, http1: float, cpu_h2c: float | None, cpu_http1: float, durable: bool = True) -> Any:
    def protocol(ratio: float, cpu_ms: float | None) -> dict[str, Any]:
        return {
            "ratio": ratio,
            "candidate_req_s": 1000 * ratio,
            "baseline_req_s": 1000.0,
            "cpu_ms_per_job": cpu_ms,
            "accepted": 5000,
            "candidate_cpu_share": 0.97,
            "failed": 1,
        }

    durability = "every 201 is in the file, and nothing else" if durable else "FAILED: 3 jobs answered 201 are missing"
    return {"h2c": protocol(h2c, cpu_h2c), "HTTP/1.1": protocol(http1, cpu_http1), "durability": durability}


def execution_round(ratio: float) -> dict[str, Any]:
    return {"ratio": ratio, "node_per_s": round(700 * ratio), "httpx_per_s": 700}


PREVIOUS = {
    "intake": [
        intake_round(0.50, 0.40, 1.30, 1.00),
        intake_round(0.60, 0.45, 1.20, 0.90),
        intake_round(0.55, 0.50, None, 0.95),
    ],
    "execution": [execution_round(0.70), execution_round(0.75), execution_round(0.72)],
}
WORKING = {
    "intake": [
        intake_round(0.62, 0.50, 1.00, 0.80),
        intake_round(0.58, 0.46, 1.10, 0.85),
        intake_round(0.60, 0.47, 1.05, 0.82),
    ],
    "execution": [execution_round(0.71), execution_round(0.69), execution_round(0.70)],
}


def test_a_side_is_summarised_by_the_medians_of_its_per_round_figures() -> None:
    summary = summarize_side(PREVIOUS)
    assert summary.intake_ratio == {"h2c": 0.55, "HTTP/1.1": 0.45}
    assert summary.cpu_ms_per_job == pytest.approx({"h2c": 1.25, "HTTP/1.1": 0.95})  # a round without 201s is skipped
    assert summary.execution_ratio == 0.72
    assert summarize_side({"execution": PREVIOUS["execution"]}).intake_ratio is None


def test_verdicts_compare_the_working_tree_with_the_previous_commit() -> None:
    checks = verdicts(summarize_side(PREVIOUS), summarize_side(WORKING))
    assert checks == {
        "intake ratio does not fall": "met (h2c 0.550x -> 0.600x, HTTP/1.1 0.450x -> 0.470x)",
        "execution ratio does not fall": "missed (0.720x -> 0.700x)",
        "intake CPU per job is lower": "met (h2c 1.250 -> 1.050 ms (-16%), HTTP/1.1 0.950 -> 0.820 ms (-14%))",
    }


def test_equal_ratios_do_not_fall_but_equal_cpu_is_not_lower_and_one_protocol_decides() -> None:
    same = Summary({"h2c": 0.6, "HTTP/1.1": 0.5}, {"h2c": 1.0, "HTTP/1.1": 0.9}, 0.7)
    checks = verdicts(same, same)
    assert checks["intake ratio does not fall"].startswith("met")
    assert checks["execution ratio does not fall"].startswith("met")
    assert checks["intake CPU per job is lower"].startswith("missed")
    one_worse = Summary({"h2c": 0.61, "HTTP/1.1": 0.49}, {"h2c": 0.9, "HTTP/1.1": 0.91}, 0.7)
    assert verdicts(same, one_worse)["intake ratio does not fall"].startswith("missed")
    assert verdicts(same, one_worse)["intake CPU per job is lower"].startswith("missed")
    assert verdicts(same, Summary(None, None, 0.8)) == {"execution ratio does not fall": "met (0.700x -> 0.800x)"}


def test_the_section_has_a_row_per_side_the_change_and_the_checks() -> None:
    figures = {"9b7761a (previous commit)": PREVIOUS, "working tree (HEAD 02832e8)": WORKING}
    result = versus_result(*figures, figures, "python -m bench.versus 9b7761a intake execution")
    section = render_section(result)
    lines = section.splitlines()
    assert lines[0] == f"## {versus.TITLE}"
    header = (
        "| side | intake h2c ratio | intake HTTP/1.1 ratio | intake CPU ms per job | execution ratio "
        "| per-round figures |"
    )
    assert header in lines
    previous_row = (
        "| 9b7761a (previous commit) | 0.55x | 0.45x | h2c 1.250, HTTP/1.1 0.950 | 0.72x | "
        "h2c 0.50, 0.60, 0.55; HTTP/1.1 0.40, 0.45, 0.50; CPU ms/job h2c 1.300, 1.200, n/a; "
        "CPU ms/job HTTP/1.1 1.000, 0.900, 0.950; execution 0.70, 0.75, 0.72 |"
    )
    assert previous_row in lines
    assert "| working tree / previous commit | 1.09x | 1.04x | h2c 0.84x, HTTP/1.1 0.86x | 0.97x | - |" in lines
    assert "- execution ratio does not fall: missed (0.720x -> 0.700x)" in lines
    assert "- durability, every intake round of both sides: every 201 was in the SQLite file, in all 6 rounds" in lines
    assert "- failed requests, all intake runs (baseline and candidate): " in section
    assert section.endswith("Commands:\n\n    python -m bench.versus 9b7761a intake execution")


def test_a_lost_job_and_a_benchmark_not_run_show_in_the_section() -> None:
    broken = {"intake": [*WORKING["intake"][:2], intake_round(0.6, 0.5, 1.0, 0.8, durable=False)]}
    figures = {"old": {"intake": PREVIOUS["intake"]}, "new": broken}
    result = versus_result("old", "new", figures, "python -m bench.versus 9b7761a intake")
    assert result["checks"]["durability, every intake round of both sides"] == (
        "FAILED: new round 3: FAILED: 3 jobs answered 201 are missing"
    )
    assert "execution ratio does not fall" not in result["checks"]
    assert [row["execution ratio"] for row in result["rows"]] == ["-", "-", "-"]


def test_sides_alternate_round_by_round_and_a_failed_round_is_run_once_more(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sides = [Side("old", tmp_path / "old"), Side("new", tmp_path / "new")]
    calls: list[str] = []
    broken = {"round-1-intake-side-1"}  # the working tree's second intake round, caught mid-edit
    waits: list[float] = []

    def run_side(side: Side, bench_name: str, out: Path) -> dict[str, Any]:
        calls.append(out.name)
        if out.name in broken:
            raise SideFailed("intake at new exited 1; the end of its output:\nImportError: cannot import name 'X'")
        return {bench_name: intake_round(0.5, 0.4, 1.0, 0.8) if bench_name == "intake" else execution_round(0.7)}

    monkeypatch.setattr(versus, "run_side", run_side)
    monkeypatch.setattr(versus.time, "sleep", waits.append)
    figures, retried = alternate_sides(sides, ["intake", "execution"], 3, tmp_path, retry_wait_s=120)
    assert calls[:5] == [
        "round-0-intake-side-0",
        "round-0-intake-side-1",
        "round-0-execution-side-0",
        "round-0-execution-side-1",
        "round-1-intake-side-0",
    ]
    assert calls[5:7] == ["round-1-intake-side-1", "round-1-intake-side-1-again"] and len(calls) == 13
    assert waits == [120]
    assert retried == ["round 2/3: intake, new (ImportError: cannot import name 'X')"]
    assert {len(rounds) for side in figures.values() for rounds in side.values()} == {3}
    result = versus_result("old", "new", figures, "python -m bench.versus REF", retried)
    assert result["notes"][-1] == f"Run again after a failure: {retried[0]}."

    broken.add("round-1-intake-side-1-again")
    with pytest.raises(SideFailed):
        alternate_sides(sides, ["intake"], 3, tmp_path, retry_wait_s=0)


def test_the_stamped_section_replaces_its_namesake_in_results() -> None:
    section = stamp(
        f"## {versus.TITLE}\n\nabout\n\n| table |", "python -m bench.versus 9b7761a", "2026-11-29T10:00:00+00:00"
    )
    assert section.splitlines()[:3] == [
        f"## {versus.TITLE}",
        "",
        "Re-measured 2026-11-29T10:00:00+00:00 by `python -m bench.versus 9b7761a`: both trees in one run.",
    ]
    results = "# Benchmark results\n\nheader\n\n## Intake\n\nintake\n\n"
    results += f"## {versus.TITLE}\n\nold figures\n\n## Speed\n\nspeed\n"
    replaced = replace_section(results, f"## {versus.TITLE}", section)
    assert "old figures" not in replaced and section in replaced
    assert replaced.startswith("# Benchmark results\n\nheader\n\n## Intake\n\nintake\n\n") and replaced.endswith(
        "## Speed\n\nspeed\n"
    )


@pytest.mark.parametrize("argv", [["9b7761a", "memory"], ["9b7761a", "--rounds", "2"], ["no-such-ref-0123"]])
def test_bad_arguments_are_refused_before_anything_runs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        versus.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
