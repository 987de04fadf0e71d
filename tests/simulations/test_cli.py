"""`ezthrottle simulate` argument handling: usage errors exit 2 with a clear message, before any run starts."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge import cli as edge_cli
from simulations import cli
from simulations.cli import ProgressBar, UsageError, parse_seed_range, parse_sweep, sweep_points


def simulate(argv: list[str]) -> tuple[int, str, str]:
    """Run `ezthrottle simulate ARGV` in process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    args = cli.build_parser().parse_args(argv)
    return cli.run(args, out=out, err=err), out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-scenario"], "bad scenario: "),
        (["baseline", "--sweep", "nodes"], "--sweep takes KEY=V1,V2,..."),
        (["baseline", "--sweep", "nodes=1,,3"], "with no empty value"),
        (["baseline", "--sweep", "colour=red,blue"], "unknown key 'colour' (sweep keys: nodes, load, keys"),
        (["baseline", "--sweep", "nodes=1,3", "--sweep", "nodes=5"], "--sweep nodes given twice"),
        (["baseline", "--sweep", "nodes=1,abc"], "bad --sweep value: nodes=abc: nodes must be a whole number"),
        (["baseline", "--sweep", "load=1,-2"], "bad --sweep value: load=-2: must be > 0"),
        (["baseline", "--seeds", "5"], "--seeds takes N..M"),
        (["baseline", "--seeds", "9..3"], "the first seed is after the last"),
        (["baseline", "--swarm", "0"], "--swarm COUNT must be at least 1"),
        (["baseline", "--swarm", "3", "--seeds", "1..2"], "cannot be combined with --seeds"),
        (["baseline", "--jobs", "-1"], "--jobs N must be 0 (one per CPU) or more"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message_and_run_nothing(argv: list[str], message: str) -> None:
    status, out, err = simulate(argv)
    assert status == 2
    assert out == ""
    assert err.startswith("ezthrottle simulate: error: ")
    assert message in err, err


def test_bad_scenario_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text('[cluster]\nnodez = 3\n[[providers]]\nname = "p"\n[[tenants]]\nname = "t"\nprovider = "p"\n')
    status, _, err = simulate([str(path)])
    assert status == 2
    assert f"bad scenario: {path}: cluster.nodez: unknown key" in err


def test_argparse_errors_exit_2_too() -> None:
    assert cli.main(["baseline", "--seed", "one"]) == 2
    assert cli.main(["baseline", "--seed", "1", "--seeds", "1..2"]) == 2
    assert cli.main([]) == 2


def test_parsers() -> None:
    assert parse_seed_range("1..3") == (1, 2, 3)
    assert parse_seed_range("-1..0") == (-1, 0)
    assert parse_sweep(" nodes = 1, 3 ,5") == ("nodes", ("1", "3", "5"))
    points = sweep_points([("nodes", ("1", "3")), ("load", ("0.5", "1", "2"))])
    assert len(points) == 6
    assert points[0] == {"nodes": "1", "load": "0.5"} and points[-1] == {"nodes": "3", "load": "2"}
    assert list(points[1]) == ["nodes", "load"]  # command-line order, which the replay command keeps
    assert sweep_points([]) == ({},)
    with pytest.raises(UsageError):
        parse_sweep("=1")


def test_replay_command_repeats_scenario_seed_sweep_point_swarm_and_bugs() -> None:
    args = cli.build_parser().parse_args(["my dir/x.toml", "--swarm", "4", "--seed", "10", "--sweep", "nodes=1,3"])
    args.scenario = "baseline"  # the plan loads the scenario; the replay keeps the argument as typed
    plan = cli.plan_from(args)
    assert plan.seeds == (10, 11, 12, 13) and plan.swarm
    assert plan.points == ({"nodes": "1"}, {"nodes": "3"})
    plan = dataclasses.replace(plan, scenario_arg="my dir/x.toml", bugs=frozenset({"b", "a"}))
    assert plan.replay_command({"nodes": "3"}, 12) == (
        "ezthrottle simulate 'my dir/x.toml' --seed 12 --swarm 1 --sweep nodes=3 --plant-bug a --plant-bug b"
    )
    # In swarm mode each seed carries its own random faults; without it the scenario's schedule is kept.
    three_nodes = plan.scenario.with_overrides({"nodes": "3"})
    assert plan.scenario_for({"nodes": "3"}, 12) == three_nodes.with_swarm_faults(12)
    assert three_nodes.with_swarm_faults(12).faults != three_nodes.faults
    assert dataclasses.replace(plan, swarm=False).scenario_for({"nodes": "3"}, 12) == three_nodes


def test_progress_bar_draws_in_place_throttled_and_only_when_enabled() -> None:
    ticks = iter([0.0, 0.01, 0.02, 0.5, 0.6])
    stream = io.StringIO()
    bar = ProgressBar(stream, enabled=True, total_runs=2, clock=lambda: next(ticks))
    bar.start_run(0, "seed 4")  # draws 0%
    bar.update(0.3)  # within the redraw interval: skipped
    bar.update(1.0)  # the end is always drawn
    bar.update(0.7)  # a later tick: drawn
    bar.clear()
    frames = stream.getvalue().split("\r")
    assert [frame.split("]")[1].split()[0] for frame in frames if frame.startswith("[")] == ["0%", "100%", "70%"]
    assert "run 1/2 seed 4" in frames[1]
    assert "#" * cli.PROGRESS_BAR_WIDTH in stream.getvalue()
    silent = io.StringIO()
    off = ProgressBar(silent, enabled=False, total_runs=1)
    off.start_run(0, "seed 1")
    off.update(0.5)
    off.clear()
    assert silent.getvalue() == ""


def test_ezthrottle_simulate_and_python_m_simulations_are_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert edge_cli.main(["simulate", "baseline", "--sweep", "nodes=x"]) == 2
    assert "bad --sweep value: nodes=x" in capsys.readouterr().err
    completed = subprocess.run(
        [sys.executable, "-m", "simulations", "baseline", "--seeds", "2..1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "the first seed is after the last" in completed.stderr


# Every key gets jobs far faster than its provider allows, so with one pacer per node (the planted bug) the
# provider sees a key above its limit within seconds; a crash gives the failure a fault schedule to print.
BACKLOGGED = """\
# Backlogged keys for the failure-reporting tests.
duration_s = 12
warmup_s = 3
drain_s = 3

[cluster]
nodes = 3

[[providers]]
name = "api"
rate_limit_rps = 0.5

[[tenants]]
name = "acme"
provider = "api"
keys = 4
rate_per_s = 10

[[faults]]
at_s = 1
kind = "crash"
nodes = ["n3"]
duration_s = 2
"""


def test_unknown_planted_bug_lists_the_known_ones() -> None:
    status, _, err = simulate(["baseline", "--plant-bug", "no-such-bug"])
    assert status == 2
    assert "unknown --plant-bug no-such-bug; the planted bugs are:" in err
    assert "  queue-per-node: " in err and "  ack-before-commit: " in err


def test_a_failed_run_prints_seed_faults_violation_and_a_replay_that_reproduces_it(tmp_path: Path) -> None:
    scenario = tmp_path / "backlogged.toml"
    scenario.write_text(BACKLOGGED)
    status, out, _ = simulate([str(scenario), "--seed", "11", "--plant-bug", "queue-per-node", "--quiet"])
    assert status == 1
    lines = out.splitlines()
    assert lines[0].startswith("seed 11: FAILED")
    assert lines[1:3] == ["  fault schedule:", "    t=1s crash n3 for 2s"]
    assert lines[3] == "  violations:" and lines[4].startswith("    upstream-limit at t=")
    replay = f"ezthrottle simulate {scenario} --seed 11 --plant-bug queue-per-node"
    assert lines[5] == f"  replay: {replay}"
    assert lines[-2:] == ["backlogged: 1 run, 0 passed, 1 failed", "failing seeds: 11"]

    first = tmp_path / "first.json"
    again = tmp_path / "again.json"
    assert simulate([*shlex.split(replay)[2:], "--quiet", "--json", str(first)])[0] == 1
    assert cli.main([*shlex.split(replay)[2:], "--quiet", "--json", str(again)]) == 1
    reports = [json.loads(path.read_text())["runs"][0]["report"] for path in (first, again)]
    assert reports[0]["trace_digest"] == reports[1]["trace_digest"]
    assert reports[0]["violations"] == reports[1]["violations"] != []


def test_swarm_runs_consecutive_seeds_with_drawn_faults_and_lists_the_failing_ones(tmp_path: Path) -> None:
    scenario = tmp_path / "backlogged.toml"
    scenario.write_text(BACKLOGGED + '\n[swarm]\nkinds = ["loss"]\nrate_per_min = 30\nmax_duration_s = 2\n')
    status, out, _ = simulate([str(scenario), "--swarm", "2", "--seed", "40", "--plant-bug", "queue-per-node"])
    assert status == 1
    assert "failing seeds: 40 41" in out
    assert f"replay: ezthrottle simulate {scenario} --seed 41 --swarm 1 --plant-bug queue-per-node" in out
    assert " loss " in out.split("seed 41: FAILED")[1]  # the drawn faults are in the printed schedule


def test_plots_without_matplotlib_is_refused_up_front_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the `plots` extra were not installed
    status, out, err = simulate(["baseline", "--plots", str(tmp_path)])
    assert (status, out) == (2, "")
    assert "PNG plots need matplotlib: pip install 'ezthrottle-edge[plots]'" in err
    assert not any(tmp_path.iterdir())


def test_runs_in_worker_processes_print_what_one_process_prints_in_the_same_order() -> None:
    """--jobs changes only how fast: verdicts, trace digests, table and summary are those of one process."""
    argv = ["baseline", "--seed", "3", "--swarm", "3", "--sweep", "load=0.05,0.1", "--sweep", "duration=3"]
    one_status, one_out, _ = simulate(argv)
    two_status, two_out, _ = simulate([*argv, "--jobs", "2"])

    def without_wall_time(out: str) -> str:
        return re.sub(r"in [0-9.]+ s wall \([0-9]+x\)", "in - s wall", out)

    assert one_status == two_status == 0
    assert one_out.count(": passed ") == 6
    assert without_wall_time(two_out) == without_wall_time(one_out)


def _session_members(session: int) -> list[int]:
    """Live processes of a session (Linux /proc): the command and any worker it left behind."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


# A run's outcome line, as `print_outcome` writes it ("seed 0 [load=0.25]: passed  ...").
RUN_OUTCOME = re.compile(rb"^seed \d+.*: (?:passed|FAILED|CRASHED) ", re.MULTILINE)
# Bounds on waits for the swarm, generous for a loaded CI machine (a run takes seconds of wall time on a laptop),
# and still finite, so a hang fails the test.
FIRST_OUTCOME_TIMEOUT_S = 180.0
WORKERS_GONE_TIMEOUT_S = 30.0
POLL_S = 0.1


def _read_stdout_until(process: subprocess.Popen[bytes], pattern: re.Pattern[bytes], timeout_s: float) -> bytes:
    """The process's stdout up to where `pattern` first shows; AssertionError if it exits or `timeout_s` passes.

    stderr is drained meanwhile, so that a chatty process cannot fill that pipe and stall. Reads the pipes' file
    descriptors directly, as `communicate` does afterwards for the rest.
    """
    assert process.stdout is not None and process.stderr is not None
    stdout_fd, stderr_fd = process.stdout.fileno(), process.stderr.fileno()
    received = {stdout_fd: bytearray(), stderr_fd: bytearray()}
    open_fds = {stdout_fd, stderr_fd}
    deadline = time.monotonic() + timeout_s
    while not pattern.search(received[stdout_fd]):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"no {pattern.pattern!r} on stdout after {timeout_s} s: {bytes(received[stdout_fd])!r}"
            )
        ready, _, _ = select.select(sorted(open_fds), [], [], remaining)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                received[fd] += chunk
            elif fd == stdout_fd:
                raise AssertionError(
                    f"the command closed stdout (exit status {process.wait()}) before {pattern.pattern!r}; "
                    f"stderr: {bytes(received[stderr_fd])!r}"
                )
            else:
                open_fds.discard(fd)
    return bytes(received[stdout_fd])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_parallel_swarm_and_its_workers() -> None:
    # -u: the command's stdout is a pipe here, which Python would otherwise buffer until exit.
    command = [sys.executable, "-u", "-m", "simulations", "baseline", "--swarm", "40", "--sweep", "load=0.25"]
    command += ["--sweep", "duration=5"]  # short runs: the first outcome comes soon, 40 would still take long
    command += ["--jobs", "2"]
    swarm = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # As from a terminal: a shell that starts the tests in the background hands its children SIGINT ignored,
        # and a Python that starts with SIGINT ignored never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )
    try:
        # The workers have started and are inside runs: the first run's outcome is out, 39 more are to come.
        _read_stdout_until(swarm, RUN_OUTCOME, FIRST_OUTCOME_TIMEOUT_S)
        assert len(_session_members(swarm.pid)) >= 3  # the command and its two workers
        os.killpg(swarm.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
        swarm.communicate(timeout=60)  # 40 runs would take minutes: it stopped early
        assert swarm.returncode != 0
        deadline = time.monotonic() + WORKERS_GONE_TIMEOUT_S
        while _session_members(swarm.pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        assert _session_members(swarm.pid) == []
    finally:
        if swarm.poll() is None:
            os.killpg(swarm.pid, signal.SIGKILL)
