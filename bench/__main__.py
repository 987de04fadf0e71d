"""`python -m bench`: run every benchmark, rewrite bench/RESULTS.md with tables, commands, machine facts.

`python -m bench NAME [NAME ...]` re-measures only the named benchmarks (keys of BENCHMARKS) and replaces their
sections in RESULTS.md, each stamped with when and by which command it was re-measured; the other sections stay
as they were, under the header of the full run that produced them.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import (
    cpu_model,
    execution,
    fast_model,
    forwarding,
    fuzz,
    gossip,
    intake,
    job_api_target,
    memory,
    noisy_neighbour,
    proxy_intake,
    proxy_overhead,
    regions,
    replication,
    scheduler_ops,
    simulator_speed,
    usage_convergence,
    workers,
)

RESULTS = Path(__file__).with_name("RESULTS.md")
# Each returns {"title", "about", "targets", "commands", "rows"}; rows are dicts of preformatted cells.
# Optional: "checks" (name -> value, what the benchmark verified) and "notes" (paragraphs on method).
BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "intake": functools.partial(intake.run, job_api_target.FACTORY, verify=job_api_target.verify_durability),
    "scheduler_ops": scheduler_ops.run,
    "execution": execution.run,
    "memory": memory.run,
    "forwarding": forwarding.run,
    "gossip": gossip.run,
    "proxy_overhead": proxy_overhead.run,
    "proxy_intake": proxy_intake.run,
    "noisy_neighbour": noisy_neighbour.run,
    "regions": regions.run,
    "simulator_speed": simulator_speed.run,
    "fast_model": fast_model.run,
    "usage_convergence": usage_convergence.run,
    "replication": replication.run,
    "cpu_model": cpu_model.run,
    "fuzz": fuzz.run,
    "workers": workers.run,
}


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    if argv:
        remeasure(argv)
        return 0
    sections = [_machine()]
    for name, benchmark in BENCHMARKS.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        sections.append(render_section(benchmark()))
    RESULTS.write_text("\n\n".join(["# Benchmark results", *sections]) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


def remeasure(names: list[str]) -> None:
    """Run `names` and put each section in place of the one with the same heading (appended if there is none)."""
    text = RESULTS.read_text()
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        section = render_section(BENCHMARKS[name]())
        heading, _, rest = section.partition("\n")
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        section = f"{heading}\n\nRe-measured {now} by `python -m bench {name}`, alone.\n{rest}"
        text = replace_section(text, heading, section)
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}", file=sys.stderr)


def replace_section(text: str, heading: str, section: str) -> str:
    """`text` with the "## " section titled `heading` replaced by `section` (which starts with that heading)."""
    blocks = text.rstrip("\n").split("\n\n## ")
    for index, block in enumerate(blocks[1:], start=1):
        if "## " + block.partition("\n")[0] == heading:
            blocks[index] = section.removeprefix("## ")
            return "\n\n## ".join(blocks) + "\n"
    return "\n\n## ".join([*blocks, section.removeprefix("## ")]) + "\n"


def _machine() -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    packages = ", ".join(f"{package} {version(package)}" for package in ("trio", "hypercorn", "h2", "httpx"))
    return "\n".join(
        [
            f"Generated {now} by `python -m bench` (`make bench`). Medians of alternating runs; only ratios",
            "between rows of one table mean much on a shared machine (runs vary by about ±25%).",
            "",
            f"- machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}",
            f"- python {platform.python_version()}, {packages}",
            f"- load generators: {_first_line(['h2load', '--version'])}; {_first_line(['wrk', '--version'])}",
        ]
    )


def render_section(result: dict[str, Any]) -> str:
    """One benchmark's part of RESULTS.md (also what each `python -m bench.<name>` prints)."""
    rows: list[dict[str, str]] = result["rows"]
    columns = list(rows[0])
    table = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row[column] for column in columns) + " |" for row in rows),
    ]
    targets = ", ".join(f"{name} = `{factory}`" for name, factory in result["targets"].items())
    commands = [f"    {command}" for command in result["commands"]]
    checks = [f"- {name}: {value}" for name, value in result.get("checks", {}).items()]
    notes = [line for note in result.get("notes", []) for line in (note, "")]
    return "\n".join(
        [
            f"## {result['title']}",
            "",
            result["about"],
            "",
            f"Targets: {targets}",
            "",
            *table,
            "",
            *(["Checks:", "", *checks, ""] if checks else []),
            *notes,
            "Commands:",
            "",
            *commands,
        ]
    )


def _first_line(argv: list[str]) -> str:
    """A tool's version banner (wrk prints it on stderr and exits 1)."""
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        return f"{argv[0]} missing"
    return (completed.stdout or completed.stderr).splitlines()[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
