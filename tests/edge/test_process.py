"""The serving process's garbage-collector settings (edge/process.py), checked in a fresh interpreter: they are
process-wide, and the test process keeps the interpreter's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

from edge.process import YOUNG_THRESHOLD

PROBE = """
import gc, json
from edge.process import tune_garbage_collector
before = gc.get_threshold()
long_lived = [object() for _ in range(1000)]
tune_garbage_collector()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_tuning_freezes_what_exists_and_raises_only_the_young_threshold() -> None:
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    report = json.loads(completed.stdout)
    young, middle, old = report["before"]
    assert young < YOUNG_THRESHOLD  # the interpreter's default is lower, or this test proves nothing
    assert report["after"] == [YOUNG_THRESHOLD, middle, old]
    assert report["frozen"] >= 1000  # start-up objects (and the probe's list) are out of the collector's sight
