"""The simulator seam: node code takes time, randomness and DNS from its Runtime, never from the world.

An AST scan of edge/: only edge/runtime.py may touch `time.time`, the global `random` functions or
`socket.getaddrinfo`. (scheduler/ is held to stricter rules by tests/scheduler/test_purity.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parents[2] / "edge"
ALLOWED = {"runtime.py"}
FORBIDDEN_CALLS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("time", "sleep"),
    ("time", "perf_counter"),
    ("random", "random"),
    ("random", "randint"),
    ("random", "randrange"),
    ("random", "choice"),
    ("random", "uniform"),
    ("random", "shuffle"),
    ("socket", "getaddrinfo"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
}


def offending_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and (node.value.id, node.attr) in FORBIDDEN_CALLS
        ):
            found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module in {"time", "random"}:
            found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
    return found


@pytest.mark.parametrize("path", sorted(p for p in EDGE.rglob("*.py") if p.name not in ALLOWED), ids=str)
def test_edge_reads_the_world_only_through_runtime(path: Path):
    assert offending_calls(path) == []


def test_the_scan_finds_a_planted_call(tmp_path: Path):
    planted = tmp_path / "planted.py"
    planted.write_text("import time\nstamp = time.time()\n")
    assert offending_calls(planted) == ["planted.py:2 time.time"]
