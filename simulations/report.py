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

from .scenario import TIERS

if TYPE_CHECKING:
    from .run import RunReport

# Bumped when the JSON layout changes incompatibly, so tools reading old reports can tell.
JSON_FORMAT_VERSION = 1
PLOTS_EXTRA_HINT = "PNG plots need matplotlib: pip install 'ezthrottle-edge[plots]'"
# The `RunReport.series` names the charts read (simulations/run.py writes them).
QUEUE_DEPTH_SERIES = "queue_depth"
LATENCY_SERIES_PREFIX = "latency_p99_s/"
THROUGHPUT_SERIES_PREFIX = "throughput/"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


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
    """One PNG per run: p99 latency per tier, queue depth and throughput per tenant over virtual time."""
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
        figure, (latency, queue, throughput) = pyplot.subplots(3, 1, figsize=(9, 9), sharex=True)
        point = "" if not outcome.point else f", {point_label(outcome.point)}"
        verdict = "passed" if report.passed else "FAILED"
        figure.suptitle(f"{scenario}, seed {outcome.seed}{point} ({verdict})")
        _plot_series(latency, report.series, LATENCY_SERIES_PREFIX, "p99 latency (s)")
        _plot_series(queue, report.series, QUEUE_DEPTH_SERIES, "queue depth (jobs)")
        _plot_series(throughput, report.series, THROUGHPUT_SERIES_PREFIX, "throughput (jobs/s)")
        throughput.set_xlabel("virtual time (s)")
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
