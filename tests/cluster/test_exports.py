"""The cluster core's public face exports each name once, from where it lives, and importing it loads neither the
simulation harness nor trio.

The source scan that keeps the core sans-I/O is tests/test_layering.py, with the other cores'.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import cluster

PACKAGE_DIR = Path(cluster.__file__).parent


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
