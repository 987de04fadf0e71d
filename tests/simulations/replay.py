"""Replay a simulation in a fresh interpreter: the check that a run does not depend on this process's hash seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REPLAY_TIMEOUT_S = 60


def replay_output(arguments: list[str], *, hash_seed: str) -> list[str]:
    """The words `python <arguments>` prints when run from the repository root under PYTHONHASHSEED=`hash_seed`."""
    completed = subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        timeout=REPLAY_TIMEOUT_S,
        check=True,
    )
    return completed.stdout.split()
