"""The shell stays out of the core's face. (That it reads the world only through its Runtime is checked with
the other such rules in tests/test_layering.py.)"""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_does_not_load_the_shell() -> None:
    probe = "import sys, cluster; print('cluster.shell' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "False"
