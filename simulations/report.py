"""What `ezthrottle simulate` hands back: a capacity table, a machine-readable JSON report and PNG charts.

Everything here reads finished `RunReport`s (simulations/run.py) and never runs anything, so a report can be
rebuilt from its JSON. matplotlib is optional (the `plots` extra): it is imported only when charts are asked
for, and `require_matplotlib` lets the command refuse `--plots` before it spends minutes on runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from .cpu import CPU_SERIES_PREFIX as CPU_SERIES_PREFIX
from .scenario import TIERS, FaultSpec, Scenario

if TYPE_CHECKING:
    from .run import RunReport

# Bumped when the JSON layout changes incompatibly, so tools reading old reports can tell.
JSON_FORMAT_VERSION = 1
PLOTS_EXTRA_HINT = "PNG plots need matplotlib: pip install 'ezthrottle-edge[plots]'"
# The `RunReport.series` names the charts read (simulations/run.py writes them).
QUEUE_DEPTH_SERIES = "queue_depth"
LATENCY_SERIES_PREFIX = "latency_p99_s/"
THROUGHPUT_SERIES_PREFIX = "throughput/"
# A node whose CPU is booked this much of a sample is saturated: its operations queue for a core from then on.
SATURATION_UTILISATION = 0.95
# How a fault kind reads on a chart, and its shading colour (one per family: nodes, network, upstream, receivers).
FAULT_LABELS = {
    "crash": ("crash", "tab:red"),
    "disk_loss": ("disk loss", "tab:red"),
    "partition": ("partition", "tab:purple"),
    "loss": ("packet loss", "tab:orange"),
    "duplication": ("duplication", "tab:orange"),
    "delay": ("delay spike", "tab:orange"),
    "upstream_outage": ("outage", "tab:brown"),
    "upstream_errors": ("5xx burst", "tab:brown"),
    "receiver_outage": ("receiver outage", "tab:blue"),
}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


@final
@dataclass(frozen=True, kw_only=True)
class FaultWindow:
    """One fault as a span of a run's series time (seconds from the run's start, warm-up included), as its charts
    shade it; `end_s` None: never healed."""

    kind: str
    label: str
    start_s: float
    end_s: float | None


def fault_windows(scenario: Scenario) -> tuple[FaultWindow, ...]:
    """The scenario's faults (swarm faults included once drawn) on its series' time axis."""
    return tuple(
        FaultWindow(
            kind=fault.kind,
            label=_fault_label(fault),
            start_s=scenario.warmup_s + fault.at_s,
            end_s=None if fault.duration_s is None else scenario.warmup_s + fault.end_s,
        )
        for fault in scenario.faults
    )


def _fault_label(fault: FaultSpec) -> str:
    """What the fault did, in a few words: "crash n2", "outage llm@iad", "delay spike 0.3 s"."""
    words = [FAULT_LABELS[fault.kind][0]]
    if fault.nodes:
        words.append(",".join(fault.nodes))
    if fault.target:
        words.append(fault.target + (f"@{fault.region}" if fault.region else ""))
    if fault.kind == "delay":
        words.append(f"{fault.rate:g} s")
    elif fault.rate:
        words.append(f"{fault.rate:.0%}")
    return " ".join(words)


def saturation_at(series: Mapping[str, Sequence[tuple[float, float]]]) -> tuple[float, str] | None:
    """(time, node) of the first sample in which a node's CPU reached SATURATION_UTILISATION; None when none did,
    or the run has no CPU series."""
    first: tuple[float, str] | None = None
    for name, points in series.items():
        if name.startswith(CPU_SERIES_PREFIX):
            at = next((t for t, utilisation in points if utilisation >= SATURATION_UTILISATION), None)
            if at is not None and (first is None or at < first[0]):
                first = (at, name.removeprefix(CPU_SERIES_PREFIX))
    return first


@final
@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """One run of the command: the sweep point and seed it ran with, and its report, or why it has none."""

    point: Mapping[str, str]  # the --sweep values of this run; empty without --sweep
    seed: int
    swarm: bool
    replay: str  # the command that reruns exactly this run
    report: RunReport | None
    error: str | None = None  # the run crashed before it could report: the exception, one line
    faults: tuple[FaultWindow, ...] = ()  # what its charts shade

    @property
    def passed(self) -> bool:
        return self.report is not None and self.report.passed


def point_label(point: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in point.items()) or "-"


def tier_columns(reports: Sequence[RunReport]) -> list[str]:
    """The tiers any run saw, in tier order, then "all"."""
    seen = {tier for report in reports for tier in report.tiers}
    return [tier for tier in (*TIERS, "all") if tier in seen]


def format_table(outcomes: Sequence[RunOutcome]) -> str:
    """A fixed-width table, one row per run: the figures capacity planning compares across sweep points."""
    reports = [outcome.report for outcome in outcomes if outcome.report is not None]
    tiers = tier_columns(reports)
    header = [
        "point",
        "seed",
        "verdict",
        "jobs/s",
        *(f"{tier} p50/p99 s" for tier in tiers),
        "shed",
        "429s",
        "queue max",
        "failover s",
        "cpu max",
    ]
    rows = [header]
    for outcome in outcomes:
        report = outcome.report
        row = [point_label(outcome.point), str(outcome.seed)]
        if report is None:
            rows.append([*row, "CRASH", *("" for _ in header[3:])])
            continue
        latencies = []
        for tier in tiers:
            stats = report.tiers.get(tier)
            latencies.append(
                "-" if stats is None else f"{_seconds(stats.latency_p50_s)}/{_seconds(stats.latency_p99_s)}"
            )
        rows.append(
            [
                *row,
                "pass" if report.passed else "FAIL",
                f"{report.throughput_per_s:.1f}",
                *latencies,
                f"{report.shed_rate:.1%}",
                str(report.upstream_429s),
                str(report.max_queue_depth),
                _seconds(report.failover_s),
                cpu_label(report.cpu_utilisation),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        # Text columns (point, verdict) left-aligned, figures right-aligned.
        cells = [
            cell.ljust(width) if column in (0, 2) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def cpu_label(utilisation: Mapping[str, float]) -> str:
    """The busiest node's CPU utilisation over the workload, and which node it is; "-" with the CPU model off."""
    if not utilisation:
        return "-"
    busiest = max(utilisation, key=lambda name: (utilisation[name], name))
    return f"{utilisation[busiest]:.0%} {busiest}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def to_jsonable(value: object) -> Any:
    """Dataclasses (with `passed` where they have it), mappings and tuples as JSON values; inf becomes null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {spec.name: to_jsonable(getattr(value, spec.name)) for spec in dataclasses.fields(value)}
        if isinstance(getattr(type(value), "passed", None), property):
            fields["passed"] = value.passed  # type: ignore[attr-defined]
        return fields
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | frozenset):
        return [to_jsonable(item) for item in (sorted(value) if isinstance(value, frozenset) else value)]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_json(*, scenario: str, outcomes: Sequence[RunOutcome]) -> dict[str, Any]:
    """The whole command's result: every run's sweep point, seed, replay command and full report."""
    return {
        "format": JSON_FORMAT_VERSION,
        "scenario": scenario,
        "passed": all(outcome.passed for outcome in outcomes),
        "runs": [to_jsonable(outcome) for outcome in outcomes],
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def run_report_from_json(document: Mapping[str, Any]) -> RunReport:
    """A `RunReport` back from its JSON form (`to_jsonable`), equal to the one written."""
    from .run import RunReport

    return typing.cast("RunReport", _from_jsonable(RunReport, document))


def _from_jsonable(hint: Any, value: Any) -> Any:
    """`value` rebuilt as the annotated type: the inverse of `to_jsonable` for the types a RunReport uses."""
    if value is None:
        return None
    if isinstance(hint, types.UnionType):
        (hint,) = (member for member in typing.get_args(hint) if member is not type(None))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(
            **{spec.name: _from_jsonable(hints[spec.name], value[spec.name]) for spec in dataclasses.fields(hint)}
        )
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_from_jsonable(arguments[0], item) for item in value)
        return tuple(_from_jsonable(argument, item) for argument, item in zip(arguments, value, strict=True))
    if origin in (Mapping, dict):
        return {key: _from_jsonable(arguments[1], item) for key, item in value.items()}
    if hint is float:
        return float(value)
    return value


def require_matplotlib() -> None:
    """Fail early, with the extra to install, when --plots cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotsUnavailable(PLOTS_EXTRA_HINT) from None


def write_plots(directory: Path, scenario: str, outcomes: Sequence[RunOutcome]) -> list[Path]:
    """One PNG per run: p99 latency per tier, queue depth, throughput per tenant and each node's CPU utilisation (with
    the CPU model on) over virtual time."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for outcome in outcomes:
        report = outcome.report
        if report is None:
            continue
        figure, (latency, queue, throughput, cpu) = pyplot.subplots(4, 1, figsize=(9, 12), sharex=True)
        point = "" if not outcome.point else f", {point_label(outcome.point)}"
        verdict = "passed" if report.passed else "FAILED"
        figure.suptitle(f"{scenario}, seed {outcome.seed}{point} ({verdict})")
        _plot_series(latency, report.series, LATENCY_SERIES_PREFIX, "p99 latency (s)")
        _plot_series(queue, report.series, QUEUE_DEPTH_SERIES, "queue depth (jobs)")
        _plot_series(throughput, report.series, THROUGHPUT_SERIES_PREFIX, "throughput (jobs/s)")
        _plot_series(cpu, report.series, CPU_SERIES_PREFIX, "CPU utilisation")
        _mark_faults((latency, queue, throughput, cpu), outcome.faults, end_s=report.virtual_s)
        saturated = saturation_at(report.series)
        if saturated is not None:
            _mark_saturation((latency, queue, throughput, cpu), *saturated)
        cpu.set_xlabel("virtual time (s)")
        figure.tight_layout()
        path = directory / plot_filename(scenario, outcome)
        figure.savefig(path, format="png", dpi=80)
        pyplot.close(figure)
        written.append(path)
    return written


def plot_filename(scenario: str, outcome: RunOutcome) -> str:
    point = "".join(f"-{key}{value}" for key, value in outcome.point.items())
    swarm = "-swarm" if outcome.swarm else ""
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", f"{scenario}{point}{swarm}-seed{outcome.seed}.png")


def _plot_series(axes: Any, series: Mapping[str, Sequence[tuple[float, float]]], name: str, label: str) -> None:
    """Every series named `name`, or starting with it when it ends in "/" (one line per tier or tenant)."""
    for key in sorted(series):
        if key == name or (name.endswith("/") and key.startswith(name)):
            points = series[key]
            axes.plot([t for t, _ in points], [v for _, v in points], label=key.removeprefix(name) or key)
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper right", fontsize="small")


def _mark_faults(axes_column: Sequence[Any], faults: Sequence[FaultWindow], *, end_s: float) -> None:
    """Shade each fault's window on every chart of a run, and name it at the top of the first, so a chart says
    why its lines move."""
    top = axes_column[0]
    for fault in faults:
        colour = FAULT_LABELS[fault.kind][1]
        end = end_s if fault.end_s is None else fault.end_s
        for axes in axes_column:
            axes.axvspan(fault.start_s, end, color=colour, alpha=0.12, linewidth=0)
        top.annotate(
            fault.label if fault.end_s is not None else f"{fault.label} (never healed)",
            xy=(fault.start_s, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2),
            textcoords="offset points",
            va="top",
            fontsize="small",
            color=colour,
            rotation=90 if len(faults) > 3 else 0,
        )


def _mark_saturation(axes_column: Sequence[Any], at_s: float, node: str) -> None:
    """A dashed line where a node's CPU first saturated, named on the last chart."""
    for axes in axes_column:
        axes.axvline(at_s, color="black", linestyle="--", linewidth=1)
    bottom = axes_column[-1]
    bottom.annotate(
        f"{node} CPU >= {SATURATION_UTILISATION:.0%}",
        xy=(at_s, 0.0),
        xycoords=("data", "axes fraction"),
        xytext=(3, 3),
        textcoords="offset points",
        fontsize="small",
    )
