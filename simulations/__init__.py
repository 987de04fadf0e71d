"""simulations: the deterministic simulator (issue 5), which runs the real node code on virtual time.

General layout:
- determinism: `run_simulation(main, seed=...)` (MockClock + trio's scheduling knobs, the only module that
  touches them), the `Simulation` handed to `main` (seed, clock, trace, per-subsystem RNGs), the `Trace` digest
- runtime: a node's injected world (`edge.runtime.Runtime`) from the simulation: virtual wall clock, seeded RNG,
  a static DNS table
- network: `SimulatedNetwork`, a cluster `Transport` / `TransportFactory` with loss, duplication, jitter and
  partitions
- http: `SimulatedHttp`, an httpx transport that routes by host:port to in-process ASGI apps
- cluster: `SimulatedCluster` (real `ClusterMember`s on the simulated network) and the crash-detection scenario,
  also runnable as `python -m simulations.cluster --seed N`
"""

from .cluster import SimulatedCluster as SimulatedCluster
from .determinism import Simulation as Simulation
from .determinism import SimulationResult as SimulationResult
from .determinism import Trace as Trace
from .determinism import run_simulation as run_simulation
from .http import Latency as Latency
from .http import SimulatedHttp as SimulatedHttp
from .network import LinkFaults as LinkFaults
from .network import SimulatedNetwork as SimulatedNetwork
from .network import open_simulated_network as open_simulated_network
from .runtime import simulated_runtime as simulated_runtime
