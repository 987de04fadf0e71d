"""`ezthrottle simulate` (also `python -m simulations`): run a scenario over seeds, swarms and sweeps, and report.

Exit status, so seed loops and CI can tell outcomes apart: 0 every run passed, 1 some run failed (a violated
invariant or a crash of the simulator itself), 2 the command line or the scenario is wrong. A failed run prints its
seed, the faults that hit it, the violations and a one-line command that replays exactly that run.

`--calibrate` runs no scenario: it measures what each operation of the CPU model costs on this machine
(simulations/calibrate.py) and writes the calibration file (`--out`), which a scenario's `[cpu] calibration` or
`--calibration FILE` then uses.

Swarm mode runs seeds first..first+COUNT-1 (first = --seed, default 0); each seed also draws random faults from the
scenario's [swarm] section (`Scenario.with_swarm_faults`), so `--seed S --swarm 1` replays seed S of any swarm.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, final

from edge.process import tune_garbage_collector

from .report import (
    PlotsUnavailable,
    RunOutcome,
    fault_windows,
    format_table,
    point_label,
    report_json,
    require_matplotlib,
    write_json,
    write_plots,
)
from .scenario import SWEEP_KEYS, Scenario, ScenarioError, load_scenario

if TYPE_CHECKING:
    from .run import RunReport

PROG = "ezthrottle simulate"
# Redraw the progress bar at most this often (wall seconds): a bar that redraws on every callback costs more terminal
# output than the run is worth.
PROGRESS_REDRAW_S = 0.1
PROGRESS_BAR_WIDTH = 30
CALIBRATION_OUT = Path("calibration.json")
MODELS = ("full", "fast")  # `--model`, the default first

DESCRIPTION = """\
Run a scenario on the deterministic simulator: the real node code for a whole cluster in one process, on virtual
time, with faults, checking invariants throughout. SCENARIO is a TOML file or the name of one in
simulations/scenarios/ (baseline, noisy-neighbour, region-outage, rolling-restart, partition, one-key-50-workers,
racing, slow-region, quota)."""

EPILOG = f"""\
examples:
  {PROG} baseline --seed 7
  {PROG} rolling-restart --seeds 1..20 --quiet
  {PROG} partition --swarm 200
  {PROG} baseline --sweep nodes=1,3,5 --sweep load=0.5,1,2 --json sweep.json --plots plots/
  {PROG} baseline --model fast --sweep nodes=10,20,50 --sweep load=2,5,10

sweep keys: {", ".join(SWEEP_KEYS)} (load multiplies every tenant's rate).
exit status: 0 all runs passed, 1 a run failed (seed, faults, violations and a replay command are printed),
2 bad arguments or scenario."""


class UsageError(ValueError):
    """The command line or the scenario is wrong: exit 2 with this message."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulate arguments, on a parser of its own or on `ezthrottle`'s subcommand."""
    parser.add_argument(
        "scenario", metavar="SCENARIO", nargs="?", help="scenario TOML file, or a bundled scenario's name"
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, metavar="N", help="run this seed (default 0); with --swarm, the first seed")
    seeds.add_argument("--seeds", metavar="N..M", help="run every seed from N to M, both included")
    parser.add_argument(
        "--swarm",
        type=int,
        metavar="COUNT",
        help="run COUNT seeds, each with random faults from the scenario's [swarm] section; lists the failing ones",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help=f"run every value of KEY (one of {', '.join(SWEEP_KEYS)}); several --sweep run the cartesian product",
    )
    parser.add_argument(
        "--plant-bug",
        action="append",
        default=[],
        metavar="NAME",
        help="switch on a deliberate bug the invariants must catch (an unknown NAME lists them)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run N seeds or sweep points at a time, each in its own process (0: one per CPU); results are the "
        "same and print in the same order",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default=MODELS[0],
        help="full: the real node code on trio (default); fast: the pure cores on an event loop with the CPU model, "
        "for large sweeps (simulations/fast/: no invariants checked, no partitions)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="the CPU model's costs for every run, instead of the scenario's [cpu] calibration (or the bundled one)",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the CPU model's costs on this machine with the real node code and write them (--out); "
        "runs no scenario",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=CALIBRATION_OUT,
        metavar="FILE",
        help=f"with --calibrate (default {CALIBRATION_OUT})",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        metavar="N",
        help="with --calibrate: operations measured per phase (default: simulations/calibrate.py REPETITIONS)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every run's full report as JSON")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write PNG charts per run (needs the `plots` extra)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no line per passing run")
    parser.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a TTY")
    parser.add_argument(
        "--log-level",
        default="ERROR",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the nodes' own log (default ERROR: nodes warn about every fault they ride out; the invariants judge)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a scenario on the deterministic simulator (seeds, swarm, capacity sweeps).

    `ezthrottle simulate ARGS` calls this with ARGS (registered in pyproject.toml under the `ezthrottle.commands`
    entry points; the first line above is its line in `ezthrottle --help`); `python -m simulations` with None,
    so argparse reads sys.argv. The exit status is as the module docstring says.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its message (or the help)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.calibrate:
        # A process entry point: the costs are then those of a node as `ezthrottle serve` runs it (edge/process.py).
        tune_garbage_collector()
    return run(args)


@final
@dataclass(frozen=True, kw_only=True)
class Plan:
    """Every run the command line asks for, checked before the first one starts."""

    scenario_arg: str
    scenario: Scenario
    points: tuple[Mapping[str, str], ...]  # sweep points; one empty point without --sweep
    seeds: tuple[int, ...]
    swarm: bool
    bugs: frozenset[str]
    model: str = MODELS[0]
    calibration: Path | None = None  # --calibration

    def scenario_for(self, point: Mapping[str, str], seed: int) -> Scenario:
        scenario = self.scenario.with_overrides(point)
        return scenario.with_swarm_faults(seed) if self.swarm else scenario

    def replay_command(self, point: Mapping[str, str], seed: int) -> str:
        """The command that reruns exactly this run: same scenario argument, seed, overrides, swarm and bugs."""
        words = ["ezthrottle", "simulate", self.scenario_arg, "--seed", str(seed)]
        if self.swarm:
            words += ["--swarm", "1"]
        for key, value in point.items():
            words += ["--sweep", f"{key}={value}"]
        for bug in sorted(self.bugs):
            words += ["--plant-bug", bug]
        if self.model != MODELS[0]:
            words += ["--model", self.model]
        if self.calibration is not None:
            words += ["--calibration", str(self.calibration)]
        return shlex.join(words)


def plan_from(args: argparse.Namespace) -> Plan:
    """Turn the arguments into a plan, or raise UsageError naming what is wrong."""
    if args.scenario is None:
        raise UsageError("SCENARIO is needed (a TOML file or a bundled scenario's name), unless --calibrate")
    try:
        scenario = load_scenario(args.scenario)
        if args.calibration is not None:
            cpu = dataclasses.replace(scenario.cpu, calibration=str(args.calibration))
            scenario = dataclasses.replace(scenario, cpu=cpu)
    except ScenarioError as exc:
        raise UsageError(f"bad scenario: {exc}") from None
    if args.swarm is not None and args.swarm < 1:
        raise UsageError("--swarm COUNT must be at least 1")
    if args.jobs < 0:
        raise UsageError("--jobs N must be 0 (one per CPU) or more")
    if args.swarm is not None and args.seeds is not None:
        raise UsageError("--swarm runs COUNT seeds from --seed: it cannot be combined with --seeds")
    first_seed = 0 if args.seed is None else args.seed
    if args.swarm is not None:
        seeds = tuple(range(first_seed, first_seed + args.swarm))
    elif args.seeds is not None:
        seeds = parse_seed_range(args.seeds)
    else:
        seeds = (first_seed,)
    points = sweep_points([parse_sweep(text) for text in args.sweep])
    for point in points:  # every point must make a valid scenario before any run starts
        try:
            scenario.with_overrides(point)
        except ScenarioError as exc:
            raise UsageError(f"bad --sweep value: {exc}") from None
    bugs = frozenset(args.plant_bug)
    if bugs:
        from .run import PLANTED_BUGS

        unknown = sorted(bugs - set(PLANTED_BUGS))
        if unknown:
            known = "\n".join(f"  {name}: {what}" for name, what in sorted(PLANTED_BUGS.items()))
            raise UsageError(f"unknown --plant-bug {', '.join(unknown)}; the planted bugs are:\n{known}")
    if args.plots is not None:
        try:
            require_matplotlib()
        except PlotsUnavailable as exc:
            raise UsageError(str(exc)) from None
    if args.model == "fast":
        _check_fast_model(scenario, points, swarm=args.swarm is not None, bugs=bugs)
    return Plan(
        scenario_arg=args.scenario,
        scenario=scenario,
        points=points,
        seeds=seeds,
        swarm=args.swarm is not None,
        bugs=bugs,
        model=args.model,
        calibration=args.calibration,
    )


def _check_fast_model(
    scenario: Scenario, points: Sequence[Mapping[str, str]], *, swarm: bool, bugs: frozenset[str]
) -> None:
    """Refuse, before any run, what the fast model cannot do: planted bugs, unsupported scenarios or swarm faults,
    and a CPU model without its calibration."""
    from .fast import unsupported
    from .fast.model import UNSUPPORTED_FAULTS

    if bugs:
        raise UsageError("--plant-bug needs the full model: the fast model checks no invariants")
    problems = [problem for point in points for problem in unsupported(scenario.with_overrides(point))]
    drawn = sorted(set(scenario.swarm.kinds) & set(UNSUPPORTED_FAULTS)) if swarm else []
    if drawn:
        problems.append(f"swarm.kinds: {', '.join(drawn)}")
    if problems:
        raise UsageError("--model fast cannot run this: " + "; ".join(dict.fromkeys(problems)))
    try:
        if scenario.cpu.enabled:
            scenario.cpu.load()
    except ScenarioError as exc:
        raise UsageError(f"--model fast needs the CPU model's calibration ([cpu] calibration): {exc}") from None


def parse_seed_range(text: str) -> tuple[int, ...]:
    first, separator, last = text.partition("..")
    try:
        if not separator:
            raise ValueError
        first_seed, last_seed = int(first), int(last)
    except ValueError:
        raise UsageError(f"--seeds takes N..M, for example 1..100 (got {text!r})") from None
    if first_seed > last_seed:
        raise UsageError(f"--seeds {text}: the first seed is after the last")
    return tuple(range(first_seed, last_seed + 1))


def parse_sweep(text: str) -> tuple[str, tuple[str, ...]]:
    """`key=v1,v2,...` as (key, values)."""
    key, separator, values_text = text.partition("=")
    key = key.strip()
    values = tuple(value.strip() for value in values_text.split(","))
    if not separator or not key or not all(values):
        raise UsageError(f"--sweep takes KEY=V1,V2,... with no empty value, for example nodes=1,3,5 (got {text!r})")
    if key not in SWEEP_KEYS:
        raise UsageError(f"--sweep {text}: unknown key {key!r} (sweep keys: {', '.join(SWEEP_KEYS)})")
    return key, values


def sweep_points(sweeps: Sequence[tuple[str, tuple[str, ...]]]) -> tuple[Mapping[str, str], ...]:
    """The cartesian product of the sweeps, in command-line order; one empty point without any."""
    keys = [key for key, _ in sweeps]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UsageError(f"--sweep {', '.join(repeated)} given twice: list every value in one --sweep")
    return tuple(dict(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in sweeps)))


@final
class ProgressBar:
    """A one-line text bar on a terminal, redrawn in place; silent when switched off."""

    __slots__ = ("_clock", "_drawn_at", "_enabled", "_label", "_stream", "_total_runs")

    def __init__(
        self, stream: TextIO, *, enabled: bool, total_runs: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._enabled = enabled
        self._total_runs = total_runs
        self._label = ""
        self._clock = clock
        self._drawn_at = -PROGRESS_REDRAW_S

    def start_run(self, index: int, label: str) -> None:
        self._label = f"run {index + 1}/{self._total_runs} {label}"
        self._drawn_at = -PROGRESS_REDRAW_S
        self.update(0.0)

    def update(self, fraction: float) -> None:
        """Called by the run with how far it is (0..1 of its virtual time)."""
        now = self._clock()
        if not self._enabled or (now - self._drawn_at < PROGRESS_REDRAW_S and fraction < 1.0):
            return
        self._drawn_at = now
        filled = round(max(0.0, min(1.0, fraction)) * PROGRESS_BAR_WIDTH)
        bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
        self._stream.write(f"\r[{bar}] {fraction:4.0%} {self._label}\x1b[K")
        self._stream.flush()

    def clear(self) -> None:
        """Erase the bar so the next line of output starts clean."""
        if self._enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run what `args` (from `add_arguments`) asks for; the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.calibrate:
        return _calibrate(args, out, err)
    try:
        plan = plan_from(args)
    except UsageError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 2
    node_log = logging.getLogger("ezthrottle")
    level_before = node_log.level
    node_log.setLevel(args.log_level)
    try:
        return _run_plan(plan, args, out, err)
    finally:
        node_log.setLevel(level_before)


def _calibrate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`--calibrate`: measure, write the file, print the costs."""
    from .calibrate import REPETITIONS, calibrate

    repetitions = REPETITIONS if args.repetitions is None else args.repetitions
    if args.scenario is not None or repetitions < 10:
        err.write(f"{PROG}: error: --calibrate takes no SCENARIO, and --repetitions of at least 10\n")
        return 2
    if not args.quiet:
        err.write(f"calibrating: {repetitions} operations per phase, the real node code on this machine ...\n")
    calibration = calibrate(repetitions)
    calibration.save(args.out)
    out.write(f"calibration of {calibration.machine}, {calibration.measured_at}, CPU per operation:\n")
    out.write(f"  {'':<10} {'alone':>8}    {calibration.concurrency} in flight\n")
    for operation, cost_s in calibration.costs_s.items():
        solo_s = calibration.solo_costs_s[operation]
        out.write(f"  {operation.value:<10} {solo_s * 1e6:8.0f} us {cost_s * 1e6:8.0f} us\n")
    out.write(f"written to {args.out}\n")
    return 0


def _run_plan(plan: Plan, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    runs = [(point, seed, plan.scenario_for(point, seed)) for point in plan.points for seed in plan.seeds]
    show_progress = not args.quiet and (args.progress or err.isatty())
    bar = ProgressBar(err, enabled=show_progress, total_runs=len(runs))
    outcomes: list[RunOutcome] = []
    workers = min(args.jobs or os.cpu_count() or 1, len(runs))
    with contextlib.ExitStack() as stack:
        pending: list[concurrent.futures.Future[RunResult]] = []
        if workers > 1:
            pool = concurrent.futures.ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_set_node_log_level,
                initargs=(args.log_level,),
            )
            # Leaving early (Ctrl-C, a broken worker) drops the runs not yet started instead of waiting for them.
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            pending = [pool.submit(_run_one, scenario, seed, plan.bugs, plan.model) for _point, seed, scenario in runs]
        for index, (point, seed, scenario) in enumerate(runs):
            bar.start_run(index, f"seed {seed}" + (f" {point_label(point)}" if point else ""))
            if pending:
                result = pending[index].result()  # taken in plan order: the output does not depend on --jobs
                bar.update(1.0)
            else:
                result = _run_one(scenario, seed, plan.bugs, plan.model, progress=bar.update)
            bar.clear()
            if result.traceback is not None:
                err.write(result.traceback)
            outcome = RunOutcome(
                point=point,
                seed=seed,
                swarm=plan.swarm,
                replay=plan.replay_command(point, seed),
                report=result.report,
                error=result.error,
                faults=fault_windows(scenario),
            )
            outcomes.append(outcome)
            print_outcome(out, scenario, outcome, quiet=args.quiet)
    if len(plan.points) > 1 or plan.points[0]:
        out.write("\n" + format_table(outcomes) + "\n")
    _print_summary(out, plan, outcomes)
    if args.json is not None:
        write_json(args.json, report_json(scenario=plan.scenario.name, outcomes=outcomes))
        out.write(f"JSON report: {args.json}\n")
    if args.plots is not None:
        written = write_plots(args.plots, plan.scenario.name, outcomes)
        out.write(f"{len(written)} PNG plots in {args.plots}\n")
    return 0 if all(outcome.passed for outcome in outcomes) else 1


@final
@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run gives back to the command (from a worker process with --jobs): a report, or a crash."""

    report: RunReport | None
    error: str | None = None  # a crash of the simulator, one line
    traceback: str | None = None


def _run_one(
    scenario: Scenario,
    seed: int,
    bugs: frozenset[str],
    model: str = MODELS[0],
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """One run on `model`. A crash of the simulator is a failed run, not the end of a 1000-seed swarm."""
    try:
        if model == "fast":
            from .fast import run_fast

            return RunResult(run_fast(scenario, seed=seed, progress=progress))
        from .run import run_scenario

        return RunResult(run_scenario(scenario, seed=seed, bugs=bugs, progress=progress))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return RunResult(None, error=error, traceback=traceback.format_exc())


def _set_node_log_level(level: str) -> None:
    """A worker process's nodes log at the level the command asked for, as they would in the command's own."""
    logging.getLogger("ezthrottle").setLevel(level)


def print_outcome(out: TextIO, scenario: Scenario, outcome: RunOutcome, *, quiet: bool) -> None:
    """A run's verdict line; for a failure also its fault schedule, violations and replay command."""
    where = f"seed {outcome.seed}" + (f" [{point_label(outcome.point)}]" if outcome.point else "")
    report = outcome.report
    if report is not None and report.passed:
        if not quiet:
            out.write(f"{where}: passed  {_figures(report)}\n")
        return
    if report is None:
        out.write(f"{where}: CRASHED  {outcome.error}\n")
        faults = tuple(fault.describe() for fault in scenario.faults)
    else:
        out.write(f"{where}: FAILED  {_figures(report)}\n")
        faults = report.fault_schedule
    out.write("  fault schedule:" + ("".join(f"\n    {line}" for line in faults) if faults else " none") + "\n")
    if report is not None:
        out.write("  violations:\n")
        for violation in report.violations:
            out.write(f"    {violation.invariant} at t={violation.at_s:.3f}s: {violation.detail}\n")
    out.write(f"  replay: {outcome.replay}\n")


def _figures(report: RunReport) -> str:
    speed = report.virtual_s / report.wall_s if report.wall_s > 0 else float("inf")
    quotas = "".join(
        f", quota {tenant} {stats.counted}/{stats.allowance} ({stats.refused} refused)"
        for tenant, stats in report.quotas.items()
    )
    return (
        f"{report.virtual_s:.0f} virtual s in {report.wall_s:.1f} s wall ({speed:.0f}x), "
        f"{report.throughput_per_s:.1f} jobs/s, shed {report.shed_rate:.1%}{quotas}, trace {report.trace_digest[:12]}"
    )


def _print_summary(out: TextIO, plan: Plan, outcomes: Sequence[RunOutcome]) -> None:
    failed = [outcome for outcome in outcomes if not outcome.passed]
    runs = f"{len(outcomes)} run" + ("" if len(outcomes) == 1 else "s")
    out.write(f"{plan.scenario.name}: {runs}, {len(outcomes) - len(failed)} passed, {len(failed)} failed\n")
    if failed:
        seeds = sorted({outcome.seed for outcome in failed})
        out.write(f"failing seeds: {' '.join(map(str, seeds))}\n")
