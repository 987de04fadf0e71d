"""The scheduler's public face exports each name once, from where it lives, and no loaded module holds an impure one.

The source scan that keeps the scheduler pure is tests/test_layering.py, with the other cores'.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import scheduler
from tests.test_layering import FORBIDDEN_IN_CORES


@pytest.mark.parametrize("info", list(pkgutil.iter_modules(scheduler.__path__)), ids=lambda info: info.name)
def test_loaded_module_holds_no_impure_module(info: pkgutil.ModuleInfo) -> None:
    """The run-time face of the source scan: what a module holds once imported, however it got there."""
    module = importlib.import_module(f"scheduler.{info.name}")
    held = {
        name
        for name, value in vars(module).items()
        if getattr(value, "__name__", None) in FORBIDDEN_IN_CORES and type(value).__name__ == "module"
    }
    assert held == set()


def test_public_face_exports_every_name_once_from_its_module() -> None:
    assert len(scheduler.__all__) == len(set(scheduler.__all__))
    for name in scheduler.__all__:
        exported = getattr(scheduler, name)
        assert exported.__module__.startswith("scheduler."), name
        assert getattr(importlib.import_module(exported.__module__), name) is exported
