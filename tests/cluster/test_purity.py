"""The cluster core stays sans-I/O, and its public face exports each name once, from where it lives.

The source scan is the scheduler suite's (tests/scheduler/test_purity.py), reused so both cores obey one rule.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import cluster
from tests.scheduler.test_purity import violations_in

PACKAGE_DIR = Path(cluster.__file__).parent
# The simulation harness seeds its own Random instances; it is test support, not protocol logic.
CORE_PATHS = sorted(path for path in PACKAGE_DIR.glob("*.py") if path.stem != "testing")


def test_the_core_modules_are_all_scanned() -> None:
    names = {path.stem for path in CORE_PATHS}
    assert {"swim", "membership", "codec", "envelope", "suspicion", "broadcast", "ownership", "probe"} <= names


@pytest.mark.parametrize("path", CORE_PATHS, ids=lambda path: path.name)
def test_core_module_is_pure(path: Path) -> None:
    assert violations_in(path.read_text(encoding="utf-8")) == []


def test_the_core_imports_random_only_for_type_hints() -> None:
    """`Random` is the type of the injected rng; importing it at runtime would invite `random.random()`."""
    for path in CORE_PATHS:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level_imports = [node for node in tree.body if isinstance(node, ast.ImportFrom | ast.Import)]
        assert not any(isinstance(node, ast.ImportFrom) and node.module == "random" for node in top_level_imports), (
            path.name
        )


def test_public_face_exports_every_name_once_from_its_module() -> None:
    source = (PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8")
    exported = [
        alias.asname for node in ast.parse(source).body if isinstance(node, ast.ImportFrom) for alias in node.names
    ]
    assert len(exported) == len(set(exported)) > 10
    for name in exported:
        value = getattr(cluster, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("cluster."):  # aliases such as Address have no home module
            assert getattr(importlib.import_module(home), name) is value


def test_importing_the_package_loads_neither_the_harness_nor_trio() -> None:
    probe = "import sys, cluster; print(sorted(m for m in ('cluster.testing', 'trio') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"
