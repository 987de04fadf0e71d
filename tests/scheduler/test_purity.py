"""The scheduler core stays pure: no clock, no sockets, no trio, no global randomness.

Scans the source of every module in the package (including ones added later), so a stray `import time`
fails here rather than as a flaky simulation weeks later.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import scheduler

# Modules whose import means I/O, a clock, or randomness outside the injected rng.
FORBIDDEN_MODULES = {"trio", "time", "socket", "asyncio", "threading", "os", "secrets", "uuid", "random"}
# Attribute calls that read the wall clock even through an allowed module (datetime.now, date.today).
FORBIDDEN_CLOCK_ATTRIBUTES = {"now", "utcnow", "today"}
# `from random import Random` is allowed: the class is the type of the injected rng.
ALLOWED_FROM_RANDOM = {"Random"}

PACKAGE_DIR = Path(scheduler.__file__).parent
MODULE_PATHS = sorted(PACKAGE_DIR.glob("*.py"))


def violations_in(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            root = node.module.split(".")[0]
            if root == "random":
                found += [f"from random import {a.name}" for a in node.names if a.name not in ALLOWED_FROM_RANDOM]
            elif root in FORBIDDEN_MODULES:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_CLOCK_ATTRIBUTES:
            found.append(f".{node.attr}")
    return found


def test_the_scan_itself_catches_each_kind_of_violation() -> None:
    bad = "\n".join(
        [
            "import time",
            "import trio.lowlevel",
            "from socket import socket",
            "from random import random",
            "d.now()",
        ]
    )
    assert violations_in(bad) == [
        "import time",
        "import trio.lowlevel",
        "from socket import ...",
        "from random import random",
        ".now",
    ]
    assert violations_in("from random import Random\nimport math\nnow = 1.0\n") == []


def test_the_package_has_the_modules_this_suite_covers() -> None:
    names = {path.stem for path in MODULE_PATHS}
    assert {"gcra", "backoff", "signals", "limits", "ready_queue", "retry"} <= names


@pytest.mark.parametrize("path", MODULE_PATHS, ids=lambda path: path.name)
def test_module_source_is_pure(path: Path) -> None:
    assert violations_in(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("info", list(pkgutil.iter_modules(scheduler.__path__)), ids=lambda info: info.name)
def test_loaded_module_holds_no_impure_module(info: pkgutil.ModuleInfo) -> None:
    module = importlib.import_module(f"scheduler.{info.name}")
    held = {
        name
        for name, value in vars(module).items()
        if getattr(value, "__name__", None) in FORBIDDEN_MODULES and type(value).__name__ == "module"
    }
    assert held == set()


def test_public_face_exports_every_name_once_from_its_module() -> None:
    assert len(scheduler.__all__) == len(set(scheduler.__all__))
    for name in scheduler.__all__:
        exported = getattr(scheduler, name)
        assert exported.__module__.startswith("scheduler."), name
        assert getattr(importlib.import_module(exported.__module__), name) is exported
