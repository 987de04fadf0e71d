"""Process-wide settings of a serving node: the garbage collector, tuned for a heap of long-lived job records.

A node keeps every unfinished job in memory (tens of thousands under a backlog), and CPython's collector, with its
default thresholds (700 allocations for the youngest generation), examines the young objects hundreds of times per
second under intake and the whole heap every few seconds, while nearly everything on the job path is freed by
reference counting anyway: measured in-process on this project's intake, 20% of the CPU per accepted job went to
collections. Two standard remedies, applied once the node is up:
- `gc.freeze()`: what exists after start-up (modules, configuration, records loaded from the store) is moved out
  of the collector's sight; those objects live as long as the process;
- a youngest-generation threshold of `YOUNG_THRESHOLD`, so collections run about thirty times less often; the
  older generations keep their ratios. Cyclic garbage (rare on these paths) is still collected, only later.
Called by the process entry points (`ezthrottle serve`, the benchmark servers), never on import: a test process or
a library user keeps the interpreter's defaults.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 20_000


def tune_garbage_collector() -> None:
    """Freeze what exists now and collect the youngest generation less often (see the module docstring)."""
    _young, middle, old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
