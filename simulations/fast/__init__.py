"""simulations.fast: the fast model (issue 15), the same scenario through the pure cores on a discrete-event loop.

General layout:
- loop: `EventLoop`, a heap of timed callbacks (the clock: no trio, no tasks)
- model: `FastModel` / `run_fast(scenario, seed=..., calibration=...)` -> `RunReport`, the cluster as the job
  engine's queue core, rendezvous ownership and the providers' core, with a `CpuQueue` per node; `unsupported`
  names what in a scenario it cannot run (its module docstring says what is run and what is modelled)
"""

from .loop import EventLoop as EventLoop
from .model import FastModel as FastModel
from .model import UnsupportedScenario as UnsupportedScenario
from .model import run_fast as run_fast
from .model import unsupported as unsupported
