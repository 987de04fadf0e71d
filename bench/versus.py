"""Versus: job intake and execution at an earlier commit and in the working tree, alternating in one run.

`python -m bench.versus REF [intake] [execution] [--rounds N]` checks REF out into a temporary `git worktree`
(removed at the end, also on an error or Ctrl-C) and alternates between the two trees, one round at a time:
REF, working tree, REF, working tree, ... (`ROUNDS` rounds each by default, at least `ROUNDS_MIN`). A round of
one side is a child process of this one whose current directory is that side's tree, so `bench` and `edge`
there are that tree's packages (`python -c` puts the current directory first on sys.path, ahead of the
editable install): each side runs its own benchmark code, since the two trees' import paths differ.

The child runs that tree's `bench.intake.run` or `bench.execution.run` with the module's `ROUNDS` set to 1 (one
baseline run and one candidate run, per protocol for intake), which both trees offer unchanged. Each side is
judged by its own ratio to its own baseline, measured in the same child; raw req/s never cross sides.

Intake's CPU per job: the child wraps the tree's `served_app` (to learn the pid of each server process it
starts, a child of the child) and its `run_h2load` / `run_wrk` (to read that server's utime + stime from
/proc/PID/stat, all threads, before and after each load run, and the 201s the served app counted over the same
run from its `/bench/durability` report). CPU seconds / 201s is the served node's cost per accepted job.

This file is also the child's driver: `CHILD_BOOTSTRAP` loads it by path, under another module name, so at
module level it imports the standard library only (in the child, `bench` is the other tree's package).
`RESULTS.md` gets the section the way `python -m bench NAME` replaces one, and it is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("intake", "execution")
PROTOCOLS = ("h2c", "HTTP/1.1")
ROUNDS = 5  # per side and benchmark
ROUNDS_MIN = 3
CHILD_TIMEOUT_S = 900.0  # one round of one side takes about 30 s (intake) or 20 s (execution)
CHILD_STOP_S = 15.0
RETRY_WAIT_S = 180.0
LOG_TAIL_LINES = 40
TITLE = "Job engine refactor: intake and execution against the previous commit"
CANDIDATE, BASELINE = "candidate", "baseline"

# `python -c CHILD_BOOTSTRAP THIS_FILE BENCH OUT_JSON`, run with a tree as the current directory.
CHILD_BOOTSTRAP = "\n".join(
    [
        "import importlib.util, sys",
        "spec = importlib.util.spec_from_file_location('bench_versus_child', sys.argv[1])",
        "module = importlib.util.module_from_spec(spec)",
        "sys.modules[spec.name] = module",
        "spec.loader.exec_module(module)",
        "module.child_main(sys.argv[2:])",
    ]
)
# Every module of these packages that a child loaded must come from that side's tree.
PROJECT_PACKAGES = frozenset({"bench", "edge", "cluster", "scheduler", "simulations"})


# --- /proc ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat this benchmark reads (proc(5) fields 1, 4, 14 and 15)."""

    pid: int
    ppid: int
    utime_ticks: int
    stime_ticks: int

    @property
    def cpu_ticks(self) -> int:
        return self.utime_ticks + self.stime_ticks


def parse_proc_stat(line: str) -> ProcStat:
    """One /proc/PID/stat line: "pid (comm) state ppid ...". The command name may hold spaces and parentheses,
    so the fields are counted from the last ")": the first field after it is field 3 (state)."""
    head, closing, tail = line.rpartition(")")
    pid, opening, _ = head.partition(" (")
    fields = tail.split()
    if not closing or not opening or len(fields) < 13:
        raise ValueError(f"not a /proc/PID/stat line: {line!r}")
    return ProcStat(pid=int(pid), ppid=int(fields[1]), utime_ticks=int(fields[11]), stime_ticks=int(fields[12]))


def read_proc_stat(pid: int) -> ProcStat:
    return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads, in seconds (clock-tick resolution)."""
    return read_proc_stat(pid).cpu_ticks / os.sysconf("SC_CLK_TCK")


def child_pids(parent: int) -> set[int]:
    """The live children of `parent`, by scanning /proc (this kernel has no /proc/PID/task/TID/children)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = read_proc_stat(int(entry.name))
        except (OSError, ValueError):
            continue  # it ended while we looked
        if stat.ppid == parent:
            children.add(stat.pid)
    return children


# --- the child: one round of one side, in that side's tree ----------------------------------------------------


def child_main(argv: Sequence[str]) -> None:
    """`bench_name out_json`: measure one round with the current directory's tree, write the figures as JSON."""
    bench_name, out_json = argv
    figures = {"intake": _intake_round, "execution": _execution_round}[bench_name]()
    Path(out_json).write_text(json.dumps({"modules": project_module_files(), bench_name: figures}))


def project_module_files() -> dict[str, str]:
    """Where this process's project modules came from (the check that a side ran its own tree)."""
    files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
    return {
        name: str(Path(file).resolve())
        for name, file in files.items()
        if file is not None and name.partition(".")[0] in PROJECT_PACKAGES
    }


def _intake_round() -> dict[str, Any]:
    """The tree's `bench.intake.run` for one round, with the candidate server's CPU per accepted job."""
    import httpx

    from bench import intake, job_api_target  # this tree's

    intake.ROUNDS = 1
    servers: dict[str, tuple[str, int]] = {}  # base URL -> (target name, server pid)
    loads: dict[tuple[str, str], dict[str, Any]] = {}
    serve = intake.served_app

    @contextlib.contextmanager
    def served_app_noting_its_pid(factory: str) -> Iterator[Any]:
        before = child_pids(os.getpid())
        with serve(factory) as served:
            started = child_pids(os.getpid()) - before
            if len(started) != 1:
                raise RuntimeError(f"expected one new server process for {factory}, found {sorted(started)}")
            name = CANDIDATE if factory == job_api_target.FACTORY else BASELINE
            servers[served.base_url] = (name, started.pop())
            yield served

    def accepted(target: Any) -> int:
        report = httpx.get(target.base_url + job_api_target.DURABILITY_PATH, timeout=10).json()
        return int(report["responses_201"])

    def with_server_cpu(protocol: str, load: Callable[..., Any]) -> Callable[..., Any]:
        def measured(target: Any, scratch: Path, **options: Any) -> Any:
            name, pid = servers[target.base_url]
            cpu_before = cpu_seconds(pid)
            accepted_before = accepted(target) if name == CANDIDATE else 0
            started = time.monotonic()
            result = load(target, scratch, **options)
            wall_s = time.monotonic() - started
            accepted_during = accepted(target) - accepted_before if name == CANDIDATE else None
            loads[name, protocol] = {
                "requests_per_s": result.requests_per_s,
                "failed": result.failed,
                "cpu_s": cpu_seconds(pid) - cpu_before,
                "wall_s": wall_s,
                "accepted": accepted_during,
            }
            return result

        return measured

    # `run` looks these names up in its module when it runs; the child exits afterwards.
    intake.served_app = served_app_noting_its_pid  # type: ignore[assignment]
    intake.run_h2load = with_server_cpu("h2c", intake.run_h2load)
    intake.run_wrk = with_server_cpu("HTTP/1.1", intake.run_wrk)
    result = intake.run(job_api_target.FACTORY, verify=job_api_target.verify_durability)
    return {
        **{protocol: _intake_figures(loads[CANDIDATE, protocol], loads[BASELINE, protocol]) for protocol in PROTOCOLS},
        "durability": str(result["checks"].get("durability", "not checked")),
    }


def _intake_figures(candidate: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ratio": candidate["requests_per_s"] / baseline["requests_per_s"],
        "candidate_req_s": candidate["requests_per_s"],
        "baseline_req_s": baseline["requests_per_s"],
        "cpu_ms_per_job": 1000 * candidate["cpu_s"] / candidate["accepted"] if candidate["accepted"] else None,
        "accepted": candidate["accepted"],
        "candidate_cpu_share": candidate["cpu_s"] / candidate["wall_s"],
        "failed": candidate["failed"] + baseline["failed"],
    }


def _execution_round() -> dict[str, Any]:
    """The tree's `bench.execution.run` for one round: node and plain loop, once each."""
    from bench import execution  # this tree's

    execution.ROUNDS = 1
    measured = execution.run()["measurements"]
    return {"ratio": measured["ratio"], "node_per_s": measured["node_per_s"], "httpx_per_s": measured["httpx_per_s"]}


# --- the parent: alternate the sides, then judge ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Side:
    label: str  # the table's "side" cell
    tree: Path


class SideFailed(RuntimeError):
    """A side's round did not produce figures (its tree may be mid-edit): nothing is written."""


def main(argv: Sequence[str]) -> int:
    # bench.__main__ imports every benchmark of the working tree, so it is imported here and not at module level
    # (the child loads this file inside the other tree); importing it first fails early if that tree is broken.
    from bench.__main__ import RESULTS, render_section, replace_section

    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__.strip().splitlines()[0])
    parser.add_argument("ref", help="the commit to compare the working tree with, e.g. 9b7761a")
    parser.add_argument("benches", nargs="*", metavar="BENCH", help=f"{' and/or '.join(BENCHES)} (default: both)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"per side and benchmark (default {ROUNDS})")
    parser.add_argument(
        "--retry-wait",
        type=float,
        default=RETRY_WAIT_S,
        metavar="S",
        help=f"a failed round is run once more after S seconds (default {RETRY_WAIT_S:g})",
    )
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.benches) - set(BENCHES)):
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(BENCHES)}")
    if args.rounds < ROUNDS_MIN:
        parser.error(f"--rounds must be at least {ROUNDS_MIN}")
    benches = [name for name in BENCHES if name in args.benches] or list(BENCHES)
    ref = _git("rev-parse", "--verify", "--quiet", f"{args.ref}^{{commit}}", check=False)
    if not ref:
        parser.error(f"{args.ref} is not a commit")
    command = shlex.join(["python", "-m", "bench.versus", *argv])
    ref_label = f"{_git('rev-parse', '--short', ref)} (previous commit)"
    head_label = f"working tree (HEAD {_git('rev-parse', '--short', 'HEAD')}"
    head_label += " + uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ")"

    signal.signal(signal.SIGTERM, _interrupted)  # so that the worktree and the children go as on Ctrl-C
    with tempfile.TemporaryDirectory(prefix="bench-versus-") as scratch, worktree(ref, Path(scratch) / "tree") as old:
        sides = [Side(ref_label, old), Side(head_label, REPO_ROOT)]
        figures, retried = alternate_sides(sides, benches, args.rounds, Path(scratch), args.retry_wait)
    section = render_section(versus_result(sides[0].label, sides[1].label, figures, command, retried))
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    section = stamp(section, command, now)
    RESULTS.write_text(replace_section(RESULTS.read_text(), section.partition("\n")[0], section))
    print(section)
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


def stamp(section: str, command: str, now: str) -> str:
    """The "Re-measured ..." line under the heading, as `python -m bench NAME` stamps its sections."""
    heading, _, rest = section.partition("\n")
    return f"{heading}\n\nRe-measured {now} by `{command}`: both trees in one run.\n{rest}"


@contextlib.contextmanager
def worktree(ref: str, path: Path) -> Iterator[Path]:
    """`ref` checked out (detached) at `path` for the block; removed afterwards, whatever happened."""
    try:
        _git("worktree", "add", "--detach", str(path), ref)
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO_ROOT, capture_output=True)


def alternate_sides(
    sides: Sequence[Side], benches: Sequence[str], rounds: int, scratch: Path, retry_wait_s: float
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """Figures per side label, per benchmark, one entry per round (sides alternate within each round), and the
    rounds that were run again: a failed round is retried once, `retry_wait_s` later (the working tree may have
    been caught mid-edit); a second failure ends the run."""
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {side.label: {name: [] for name in benches} for side in sides}
    retried: list[str] = []
    for round_index in range(rounds):
        for bench_name in benches:
            for side_index, side in enumerate(sides):
                what = f"round {round_index + 1}/{rounds}: {bench_name}, {side.label}"
                print(f"{what} ...", file=sys.stderr, flush=True)
                out = scratch / f"round-{round_index}-{bench_name}-side-{side_index}"
                try:
                    report = run_side(side, bench_name, out)
                except SideFailed as failure:
                    print(f"{failure}\n  trying once more in {retry_wait_s:g} s ...", file=sys.stderr, flush=True)
                    time.sleep(retry_wait_s)
                    report = run_side(side, bench_name, out.with_name(f"{out.name}-again"))
                    retried.append(f"{what} ({str(failure).splitlines()[-1].strip()})")
                figures[side.label][bench_name].append(report[bench_name])
                print(f"  {progress(bench_name, report[bench_name])}", file=sys.stderr, flush=True)
    return figures, retried


def run_side(side: Side, bench_name: str, out: Path) -> dict[str, Any]:
    """One round of `bench_name` in a child process with `side.tree` as its current directory."""
    out_json, log = out.with_suffix(".json"), out.with_suffix(".log")
    argv = [sys.executable, "-c", CHILD_BOOTSTRAP, str(Path(__file__).resolve()), bench_name, str(out_json)]
    with log.open("wb") as log_file:
        # Its own session: Ctrl-C reaches only this process, which then stops the child's whole process group
        # (the child, its servers, the upstream) and waits for it, before the worktree goes.
        process = subprocess.Popen(
            argv,
            cwd=side.tree,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=CHILD_TIMEOUT_S)
        except BaseException:
            stop_group(process)
            raise
    if returncode != 0 or not out_json.exists():
        stop_group(process)  # whatever it left running
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise SideFailed(f"{bench_name} at {side.label} exited {returncode}; the end of its output:\n{tail}")
    report: dict[str, Any] = json.loads(out_json.read_text())
    strays = {name: file for name, file in report["modules"].items() if not Path(file).is_relative_to(side.tree)}
    if strays:
        raise SideFailed(f"{bench_name} at {side.label} imported modules from outside {side.tree}: {strays}")
    return report


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to the child's process group (so it cleans up as on Ctrl-C), SIGKILL if it lingers."""
    for signal_number in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + CHILD_STOP_S
        while time.monotonic() < deadline:
            process.poll()  # reap the child, or its zombie keeps the group alive
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _interrupted(signal_number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal_number}")


def _git(*args: str, check: bool = True) -> str:
    completed = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=check)
    return completed.stdout.strip()


# --- figures, verdicts and the table (pure) ---------------------------------------------------------------------


def progress(bench_name: str, figures: Mapping[str, Any]) -> str:
    """One line per round for the terminal."""
    if bench_name == "execution":
        return f"execution {figures['ratio']:.2f}x ({figures['node_per_s']} vs {figures['httpx_per_s']} completed/s)"
    return (
        "; ".join(
            f"{protocol} {figures[protocol]['ratio']:.2f}x ({figures[protocol]['candidate_req_s']:.0f} vs "
            f"{figures[protocol]['baseline_req_s']:.0f} req/s), {_ms(figures[protocol]['cpu_ms_per_job'])} ms CPU/job "
            f"at {figures[protocol]['candidate_cpu_share']:.0%} of a core"
            for protocol in PROTOCOLS
        )
        + f"; {figures['durability']}"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """One side's medians over its rounds (None: the benchmark was not run)."""

    intake_ratio: dict[str, float] | None
    cpu_ms_per_job: dict[str, float] | None
    execution_ratio: float | None


def summarize_side(figures: Mapping[str, Sequence[Mapping[str, Any]]]) -> Summary:
    intake_rounds = figures.get("intake") or []
    execution_rounds = figures.get("execution") or []
    return Summary(
        intake_ratio={p: statistics.median(r[p]["ratio"] for r in intake_rounds) for p in PROTOCOLS}
        if intake_rounds
        else None,
        cpu_ms_per_job={p: statistics.median(_cpu_values(intake_rounds, p)) for p in PROTOCOLS}
        if intake_rounds
        else None,
        execution_ratio=statistics.median(r["ratio"] for r in execution_rounds) if execution_rounds else None,
    )


def verdicts(before: Summary, after: Summary) -> dict[str, str]:
    """The issue's three checks, previous commit -> working tree, each "met" or "missed" with its numbers."""
    checks: dict[str, str] = {}
    if before.intake_ratio is not None and after.intake_ratio is not None:
        held = all(after.intake_ratio[p] >= before.intake_ratio[p] for p in PROTOCOLS)
        moves = ", ".join(f"{p} {before.intake_ratio[p]:.3f}x -> {after.intake_ratio[p]:.3f}x" for p in PROTOCOLS)
        checks["intake ratio does not fall"] = f"{_verdict(held)} ({moves})"
    if before.execution_ratio is not None and after.execution_ratio is not None:
        held = after.execution_ratio >= before.execution_ratio
        moves = f"{before.execution_ratio:.3f}x -> {after.execution_ratio:.3f}x"
        checks["execution ratio does not fall"] = f"{_verdict(held)} ({moves})"
    if before.cpu_ms_per_job is not None and after.cpu_ms_per_job is not None:
        lower = all(after.cpu_ms_per_job[p] < before.cpu_ms_per_job[p] for p in PROTOCOLS)
        moves = ", ".join(
            f"{p} {before.cpu_ms_per_job[p]:.3f} -> {after.cpu_ms_per_job[p]:.3f} ms "
            f"({after.cpu_ms_per_job[p] / before.cpu_ms_per_job[p] - 1:+.0%})"
            for p in PROTOCOLS
        )
        checks["intake CPU per job is lower"] = f"{_verdict(lower)} ({moves})"
    return checks


def table_rows(
    labels: Sequence[str], summaries: Sequence[Summary], figures: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]]
) -> list[dict[str, str]]:
    """A row per side (medians and per-round figures), then the working tree's medians over the previous's."""
    rows = [
        {
            "side": label,
            "intake h2c ratio": _ratio(_lookup(summary.intake_ratio, "h2c")),
            "intake HTTP/1.1 ratio": _ratio(_lookup(summary.intake_ratio, "HTTP/1.1")),
            "intake CPU ms per job": _per_protocol(summary.cpu_ms_per_job, "{:.3f}"),
            "execution ratio": _ratio(summary.execution_ratio),
            "per-round figures": _per_round(side_figures),
        }
        for label, summary, side_figures in zip(labels, summaries, figures, strict=True)
    ]
    before, after = summaries
    rows.append(
        {
            "side": "working tree / previous commit",
            "intake h2c ratio": _change(before.intake_ratio, after.intake_ratio, "h2c"),
            "intake HTTP/1.1 ratio": _change(before.intake_ratio, after.intake_ratio, "HTTP/1.1"),
            "intake CPU ms per job": ", ".join(
                f"{p} {_change(before.cpu_ms_per_job, after.cpu_ms_per_job, p)}" for p in PROTOCOLS
            )
            if before.cpu_ms_per_job and after.cpu_ms_per_job
            else "-",
            "execution ratio": _ratio(
                after.execution_ratio / before.execution_ratio
                if before.execution_ratio and after.execution_ratio
                else None
            ),
            "per-round figures": "-",
        }
    )
    return rows


def versus_result(
    ref_label: str,
    head_label: str,
    figures: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    command: str,
    retried: Sequence[str] = (),
) -> dict[str, Any]:
    """What `render_section` (bench/__main__.py) turns into the RESULTS.md section."""
    labels = [ref_label, head_label]
    summaries = [summarize_side(figures[label]) for label in labels]
    checks: dict[str, Any] = verdicts(*summaries)
    intake_rounds = {label: figures[label].get("intake") or [] for label in labels}
    if any(intake_rounds.values()):
        checks["durability, every intake round of both sides"] = _durability(intake_rounds)
        checks["failed requests, all intake runs (baseline and candidate)"] = ", ".join(
            f"{label}: {sum(r[p]['failed'] for r in rounds for p in PROTOCOLS)}"
            for label, rounds in intake_rounds.items()
        )
    rounds = max(len(side_rounds) for side in figures.values() for side_rounds in side.values())
    return {
        "title": TITLE,
        "about": __doc__.strip().splitlines()[0],
        "targets": {"previous commit": f"{ref_label}, its own bench code", "working tree": head_label},
        "commands": [command],
        "rows": table_rows(labels, summaries, [figures[label] for label in labels]),
        "checks": checks,
        "notes": [
            f"{rounds} rounds per side and benchmark, alternating (previous, working tree, previous, ...), each a "
            "child process in that side's tree (the previous commit in a temporary `git worktree`) running that "
            "tree's `bench.intake.run` or `bench.execution.run` with `ROUNDS = 1`: one baseline and one candidate "
            "run (per protocol for intake) with their sections' settings. A round's ratio is candidate / baseline "
            "in that child; the table gives the medians of the per-round ratios and, in the last row, the working "
            "tree's medians over the previous commit's. A check compares medians only; the per-round figures "
            "show how far the rounds spread.",
            "Intake CPU per job: the candidate server process's utime + stime (/proc/PID/stat, all threads) over "
            "each load run, h2load's warm-up included, divided by the 201s the served app counted over the same "
            "run (its /bench/durability report): the served node's CPU per accepted job, warm-up and idle "
            f"housekeeping included. {_cpu_share(intake_rounds)}",
            "The working tree is read as it is when each of its rounds starts: edits made during the run go "
            "into the later rounds.",
            *([f"Run again after a failure: {'; '.join(retried)}."] if retried else []),
        ],
    }


def _lookup(values: Mapping[str, float] | None, key: str) -> float | None:
    return None if values is None else values[key]


def _cpu_values(rounds: Sequence[Mapping[str, Any]], protocol: str) -> list[float]:
    values = [r[protocol]["cpu_ms_per_job"] for r in rounds if r[protocol]["cpu_ms_per_job"] is not None]
    return values or [float("nan")]


def _per_round(figures: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    intake_rounds = figures.get("intake") or []
    execution_rounds = figures.get("execution") or []
    parts = [f"{p} " + ", ".join(f"{r[p]['ratio']:.2f}" for r in intake_rounds) for p in PROTOCOLS if intake_rounds]
    parts += [
        f"CPU ms/job {p} " + ", ".join(_ms(r[p]["cpu_ms_per_job"]) for r in intake_rounds)
        for p in PROTOCOLS
        if intake_rounds
    ]
    if execution_rounds:
        parts.append("execution " + ", ".join(f"{r['ratio']:.2f}" for r in execution_rounds))
    return "; ".join(parts) or "-"


def _cpu_share(rounds_by_side: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    shares = [r[p]["candidate_cpu_share"] for rounds in rounds_by_side.values() for r in rounds for p in PROTOCOLS]
    if not shares:
        return ""
    return f"The candidate server used {min(shares):.0%}-{max(shares):.0%} of one core during its load runs."


def _durability(rounds_by_side: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    verdicts = [r["durability"] for rounds in rounds_by_side.values() for r in rounds]
    if all(verdict.startswith("every 201 is in the file") for verdict in verdicts):
        return f"every 201 was in the SQLite file, in all {len(verdicts)} rounds"
    return "FAILED: " + "; ".join(
        f"{label} round {index + 1}: {r['durability']}"
        for label, rounds in rounds_by_side.items()
        for index, r in enumerate(rounds)
        if not r["durability"].startswith("every 201 is in the file")
    )


def _verdict(held: bool) -> str:
    return "met" if held else "missed"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _per_protocol(values: Mapping[str, float] | None, form: str) -> str:
    return "-" if values is None else ", ".join(f"{p} {form.format(values[p])}" for p in PROTOCOLS)


def _change(before: Mapping[str, float] | None, after: Mapping[str, float] | None, protocol: str) -> str:
    return "-" if before is None or after is None else _ratio(after[protocol] / before[protocol])


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except SideFailed as failure:
        sys.exit(f"bench.versus: {failure}")
    except KeyboardInterrupt:
        sys.exit("bench.versus: interrupted; the worktree and every child process are gone, nothing was written")
