"""The shell reads the world only through its Runtime, and stays out of the core's face."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cluster.shell
from tests.unit.test_injection import offending_calls

SHELL_PATHS = sorted(Path(cluster.shell.__file__).parent.glob("*.py"))


def test_the_shell_modules_are_all_scanned() -> None:
    assert {path.stem for path in SHELL_PATHS} >= {"member", "transport", "discovery"}


@pytest.mark.parametrize("path", SHELL_PATHS, ids=lambda path: path.name)
def test_the_shell_takes_time_randomness_and_dns_from_its_runtime(path: Path) -> None:
    """Wall clock, RNG and resolver are injected (the simulator replaces them); monotonic time is trio's."""
    assert offending_calls(path) == []


def test_importing_the_core_does_not_load_the_shell() -> None:
    probe = "import sys, cluster; print('cluster.shell' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "False"
