"""`ezthrottle plan WORKLOAD.toml`: the smallest cluster that meets a workload's targets, found with the fast model
and confirmed with the full one.

A workload (simulations/workloads/*.toml) is a scenario (simulations/scenario.py) without a node count, plus what
it must achieve and how far to look:

    [targets]
    latency_p99_s = 1.0      # every tier's p99, from submission to the first webhook (or the end of the job)
    shed_rate_max = 0.01     # the share of submissions refused (429, 503) or that no node answered
    [search]
    nodes_per_region_max = 16
    seed = 1

Its `[cluster]` names the regions (and profile, replicas), never `nodes`: that is what the plan searches, as nodes
per region (node i sits in region i mod R, so N per region is N * R nodes). A run meets the targets when every tier's
p99 is within `latency_p99_s`, at most 1% of its acknowledged jobs are still unfinished at the end (they count as
slower than the target) and its shed rate (the report's: submissions refused, or that no node answered) is
within `shed_rate_max`.

The search, assuming more nodes never do worse: the fast model at 1, 2, 4, ... nodes per region until one meets the
targets, then bisection between the last that did not and the first that did; then the full model at the answer,
and one more per region while it disagrees (up to the maximum). The answer is the first count the full model
confirms; the table lists every run, and `--plots` draws p99 latency and CPU utilisation against nodes per region.
Exit status: 0 an answer, confirmed; 1 none within `nodes_per_region_max`; 2 a bad command line or workload.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, final

from .cli import ProgressBar
from .report import SATURATION_UTILISATION, require_matplotlib, tier_columns, to_jsonable, write_json
from .scenario import ClusterSpec, Scenario, ScenarioError, _build

if TYPE_CHECKING:  # the simulator itself is imported only when a run starts
    from .run import RunReport

PROG: Final = "ezthrottle plan"
PLAN_FORMAT_VERSION: Final = 1
# A tier whose unfinished jobs exceed this share of its acknowledged ones has no p99 within any target.
UNFINISHED_SHARE_MAX: Final = 0.01
TABLE_ORDER: Final = ("fast", "full")  # the models, in the order the table and the plots list their runs


@final
@dataclass(frozen=True, kw_only=True)
class TargetsSpec:
    """What the workload must achieve (`[targets]`)."""

    latency_p99_s: float
    shed_rate_max: float = 0.01

    def __post_init__(self) -> None:
        if self.latency_p99_s <= 0:
            raise ScenarioError("latency_p99_s", "must be > 0")
        if not 0 <= self.shed_rate_max <= 1:
            raise ScenarioError("shed_rate_max", f"is a share, 0..1 (got {self.shed_rate_max})")


@final
@dataclass(frozen=True, kw_only=True)
class SearchSpec:
    """How far the search goes (`[search]`), and the seed of every run."""

    nodes_per_region_max: int = 16
    seed: int = 1

    def __post_init__(self) -> None:
        if self.nodes_per_region_max < 1:
            raise ScenarioError("nodes_per_region_max", "must be >= 1")


@final
@dataclass(frozen=True, kw_only=True)
class Workload:
    """A workload file: the scenario at one node per region, its targets, and the search's bounds."""

    template: Scenario
    targets: TargetsSpec
    search: SearchSpec

    @property
    def regions(self) -> tuple[str, ...]:
        return self.template.cluster.regions

    def scenario(self, nodes_per_region: int) -> Scenario:
        cluster = dataclasses.replace(self.template.cluster, nodes=nodes_per_region * len(self.regions))
        return dataclasses.replace(self.template, cluster=cluster)


def load_workload(path: Path) -> Workload:
    """Parse and validate a workload file; errors name the file and the field."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(str(path), f"not a readable TOML file: {exc}") from None
    try:
        if "targets" not in table:
            raise ScenarioError("targets", "missing (required): latency_p99_s and shed_rate_max")
        targets = _located(TargetsSpec, table.pop("targets"), "targets")
        search = _located(SearchSpec, table.pop("search", {}), "search")
        cluster = table.setdefault("cluster", {})
        if isinstance(cluster, dict) and "nodes" in cluster:
            raise ScenarioError("cluster.nodes", "is what the plan searches: leave it out (see [search])")
        if isinstance(cluster, dict):
            cluster["nodes"] = len(cluster.get("regions", ClusterSpec().regions))
        table.setdefault("name", path.stem)
        template = _build(Scenario, table)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc.where}" if exc.where else str(path), exc.problem) from None
    return Workload(template=template, targets=targets, search=search)


def _located(cls: type[Any], table: object, where: str) -> Any:
    try:
        return _build(cls, table)
    except ScenarioError as exc:
        raise exc.located(where) from None


@final
@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One run of the search: which model, at how many nodes per region, and whether it met the targets (and if
    not, why)."""

    model: str
    nodes_per_region: int
    nodes: int
    report: RunReport
    misses: tuple[str, ...]  # the targets it missed; empty: met them all

    @property
    def meets(self) -> bool:
        return not self.misses


@final
@dataclass(frozen=True, kw_only=True)
class PlanResult:
    workload: str
    regions: tuple[str, ...]
    targets: TargetsSpec
    evaluations: tuple[Evaluation, ...]
    answer: int | None  # nodes per region, confirmed by the full model; None: none within the search's bound
    fast_answer: int | None  # what the fast model alone found

    @property
    def passed(self) -> bool:
        return self.answer is not None


def misses(report: RunReport, targets: TargetsSpec) -> tuple[str, ...]:
    """The targets `report` missed, one readable line each (see the module docstring)."""
    found = [f"{violation.invariant} violated" for violation in report.violations]
    for tier, stats in report.tiers.items():
        if tier == "all":
            continue
        unfinished = stats.pending > UNFINISHED_SHARE_MAX * max(stats.acked, 1)
        if unfinished:
            found.append(f"{tier}: {stats.pending} of {stats.acked} jobs unfinished")
        elif stats.latency_p99_s is None or stats.latency_p99_s > targets.latency_p99_s:
            p99 = "-" if stats.latency_p99_s is None else f"{stats.latency_p99_s:.2f} s"
            found.append(f"{tier}: p99 {p99} > {targets.latency_p99_s:g} s")
    if report.shed_rate > targets.shed_rate_max:
        found.append(f"shed {report.shed_rate:.1%} > {targets.shed_rate_max:.1%}")
    return tuple(found)


def run_model(model: str, scenario: Scenario, seed: int, progress: Callable[[float], None] | None) -> RunReport:
    """One run of `scenario` on the fast or the full model."""
    if model == "fast":
        from .fast import run_fast

        return run_fast(scenario, seed=seed, progress=progress)
    from .run import run_scenario

    return run_scenario(scenario, seed=seed, progress=progress)


def search(workload: Workload, *, bar: ProgressBar | None = None) -> PlanResult:
    """The search of the module docstring."""
    limit = workload.search.nodes_per_region_max
    evaluations: list[Evaluation] = []

    def evaluate(model: str, nodes_per_region: int) -> Evaluation:
        if bar is not None:
            bar.start_run(len(evaluations), f"{model} model, {nodes_per_region} per region")
        scenario = workload.scenario(nodes_per_region)
        report = run_model(model, scenario, workload.search.seed, None if bar is None else bar.update)
        if bar is not None:
            bar.clear()
        evaluation = Evaluation(
            model=model,
            nodes_per_region=nodes_per_region,
            nodes=scenario.cluster.nodes,
            report=report,
            misses=misses(report, workload.targets),
        )
        evaluations.append(evaluation)
        return evaluation

    fast_answer = _fast_search(lambda n: evaluate("fast", n).meets, limit)
    answer = None
    if fast_answer is not None:
        answer = next((n for n in range(fast_answer, limit + 1) if evaluate("full", n).meets), None)
    return PlanResult(
        workload=workload.template.name,
        regions=workload.regions,
        targets=workload.targets,
        evaluations=tuple(sorted(evaluations, key=lambda e: (TABLE_ORDER.index(e.model), e.nodes_per_region))),
        answer=answer,
        fast_answer=fast_answer,
    )


def _fast_search(meets: Callable[[int], bool], limit: int) -> int | None:
    """The smallest n in 1..limit with meets(n), assuming it is monotone: doubling, then bisection."""
    below, n = 0, 1  # below: the largest n known to miss
    while not meets(n):
        if n >= limit:
            return None
        below, n = n, min(2 * n, limit)
    while n - below > 1:
        middle = (below + n) // 2
        below, n = (below, middle) if meets(middle) else (middle, n)
    return n


def expected_runs(limit: int) -> int:
    """The runs of a search that ends with one confirmation, at most: the N of the progress bar's "run i/N"."""
    steps = math.ceil(math.log2(limit)) if limit > 1 else 0
    return (steps + 1) + max(0, steps - 1) + 1


def cpu_utilisation(report: RunReport) -> tuple[float, float] | None:
    """(mean over nodes, busiest node) of the CPU booked over the workload; None with the CPU model off."""
    per_node = list(report.cpu_utilisation.values())
    return (sum(per_node) / len(per_node), max(per_node)) if per_node else None


def format_plan(result: PlanResult) -> str:
    """The verdict line and the table behind it."""
    regions = ", ".join(result.regions)
    if result.answer is not None:
        nodes = result.answer * len(result.regions)
        verdict = (
            f"smallest cluster meeting the targets: {result.answer} node(s) per region, {nodes} in all ({regions}); "
            f"fast model {result.fast_answer}, confirmed by the full model at {result.answer}"
        )
    elif result.fast_answer is not None:
        verdict = f"the fast model found {result.fast_answer} per region, the full model confirmed none up to the limit"
    else:
        verdict = "no cluster within the search's limit meets the targets"
    reports = [evaluation.report for evaluation in result.evaluations]
    tiers = [tier for tier in tier_columns(reports) if tier != "all"]
    header = ["model", "per region", "nodes", *(f"{tier} p99 s" for tier in tiers), "shed", "cpu mean/max", "meets"]
    rows = [header]
    for evaluation in result.evaluations:
        report = evaluation.report
        utilisation = cpu_utilisation(report)
        p99s = [
            "-"
            if (stats := report.tiers.get(tier)) is None or stats.latency_p99_s is None
            else f"{stats.latency_p99_s:.2f}"
            for tier in tiers
        ]
        rows.append(
            [
                evaluation.model,
                str(evaluation.nodes_per_region),
                str(evaluation.nodes),
                *p99s,
                f"{report.shed_rate:.1%}",
                "-" if utilisation is None else f"{utilisation[0]:.0%}/{utilisation[1]:.0%}",
                "yes" if evaluation.meets else "no: " + "; ".join(evaluation.misses),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        verdict,
        f"targets: p99 <= {result.targets.latency_p99_s:g} s, shed <= {result.targets.shed_rate_max:.1%}",
        "",
    ]
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if column in (0, len(header) - 1) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plan_json(result: PlanResult) -> dict[str, Any]:
    return {"format": PLAN_FORMAT_VERSION, **to_jsonable(result)}


def write_plan_plots(directory: Path, result: PlanResult) -> list[Path]:
    """Two PNGs against nodes per region, one line per model: p99 latency per tier (the target dashed) and CPU
    utilisation (mean and busiest node; the saturation level dashed), the answer marked on both."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    reports = [evaluation.report for evaluation in result.evaluations]
    tiers = [tier for tier in tier_columns(reports) if tier != "all"]
    for kind in ("latency", "utilisation"):
        figure, axes = pyplot.subplots(figsize=(8, 5))
        for model in TABLE_ORDER:
            runs = [e for e in result.evaluations if e.model == model]
            if not runs:
                continue
            counts = [e.nodes_per_region for e in runs]
            style = "o-" if model == "fast" else "s--"
            if kind == "latency":
                for tier in tiers:
                    values = [_p99_or_nan(e.report, tier) for e in runs]
                    axes.plot(counts, values, style, label=f"{tier} p99 ({model})")
            else:
                utilisations = [cpu_utilisation(e.report) for e in runs]
                axes.plot(counts, [u[0] if u else math.nan for u in utilisations], style, label=f"mean ({model})")
                axes.plot(counts, [u[1] if u else math.nan for u in utilisations], style, label=f"busiest ({model})")
        if kind == "latency":
            axes.axhline(result.targets.latency_p99_s, color="tab:red", linestyle=":", label="target p99")
            axes.set_ylabel("p99 latency (s)")
            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(FuncFormatter(_log_tick))
            axes.yaxis.set_minor_formatter(FuncFormatter(_log_tick))
        else:
            axes.axhline(SATURATION_UTILISATION, color="black", linestyle=":", label="saturated")
            axes.set_ylabel("CPU utilisation over the workload")
        counts = [evaluation.nodes_per_region for evaluation in result.evaluations]
        axes.set_xlim(min(counts) - 0.5, max(counts) + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        saturated = [
            e.nodes_per_region
            for e in result.evaluations
            if (u := cpu_utilisation(e.report)) and u[1] >= SATURATION_UTILISATION
        ]
        if saturated:
            axes.axvspan(min(counts) - 0.5, max(saturated) + 0.5, color="tab:red", alpha=0.1, linewidth=0)
            _label(axes, min(counts) - 0.5, f"a node's CPU >= {SATURATION_UTILISATION:.0%}", "tab:red", right=False)
        if result.answer is not None:
            axes.axvline(result.answer, color="tab:green", linewidth=1)
            _label(axes, result.answer, f"answer: {result.answer} per region", "tab:green", right=True)
        axes.set_xlabel(f"nodes per region ({', '.join(result.regions)})")
        axes.set_title(f"{result.workload}: {kind} against nodes")
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        path = directory / f"{result.workload}-{kind}.png"
        figure.savefig(path, format="png", dpi=80)
        pyplot.close(figure)
        written.append(path)
    return written


def _log_tick(value: float, _position: int) -> str:
    """Seconds on a log axis, labelled at 1, 2 and 5 of each decade only, so the labels stay apart."""
    if value <= 0:
        return ""
    return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value) + 1e-9)) in (1, 2, 5) else ""


def _label(axes: Any, x: float, text: str, colour: str, *, right: bool) -> None:
    """A note at the top of the chart beside `x`: to its left when `right`, so one at the last count stays in."""
    axes.annotate(
        text,
        xy=(x, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(-3 if right else 3, -12),
        textcoords="offset points",
        ha="right" if right else "left",
        color=colour,
        fontsize="small",
    )


def _p99_or_nan(report: RunReport, tier: str) -> float:
    stats = report.tiers.get(tier)
    return math.nan if stats is None or stats.latency_p99_s is None else stats.latency_p99_s


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("workload", type=Path, metavar="WORKLOAD.toml", help="a workload file (see README, Simulator)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the result, every run's report included")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write PNGs of latency and CPU against nodes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Find the smallest cluster that meets a workload's targets (fast model search, full model confirmation)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        workload = load_workload(args.workload)
        if args.plots is not None:
            require_matplotlib()
    except (ScenarioError, RuntimeError) as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 2
    from .fast import unsupported

    problems = unsupported(workload.template)
    if problems:
        err.write(f"{PROG}: error: the fast model cannot run this workload: {'; '.join(problems)}\n")
        return 2
    bar = ProgressBar(
        err, enabled=not args.quiet and err.isatty(), total_runs=expected_runs(workload.search.nodes_per_region_max)
    )
    result = search(workload, bar=bar)
    out.write(format_plan(result) + "\n")
    if args.json is not None:
        write_json(args.json, plan_json(result))
        out.write(f"JSON: {args.json}\n")
    if args.plots is not None:
        written = write_plan_plots(args.plots, result)
        out.write(f"{len(written)} PNG plots in {args.plots}\n")
    return 0 if result.passed else 1
