"""simulations: the deterministic simulator (issue 5), which runs the real node code on virtual time.

General layout, engine first:
- determinism: `run_simulation(main, seed=...)` (MockClock + trio's scheduling knobs, the only module that
  touches them), the `Simulation` handed to `main` (seed, clock, trace, per-subsystem RNGs), the `Trace` digest
- runtime: a node's injected world (`edge.runtime.Runtime`) from the simulation: virtual wall clock, seeded RNG,
  a static DNS table, the simulated HTTP and gossip networks
- network: `SimulatedNetwork`, a cluster `Transport` / `TransportFactory` with loss, duplication, jitter and
  partitions
- http: `SimulatedHttp`, an httpx transport that routes by host:port to in-process ASGI apps and judges each
  request by its source host (partitions, outages); servers with a nursery are cut by a crash
- cluster: `SimulatedCluster` (bare `ClusterMember`s on the simulated network) and the crash-detection scenario,
  also runnable as `python -m simulations.cluster --seed N`
The simulated cluster:
- world: `World`, N real nodes (`edge.node.run_node`) in R regions with durable stores kept across crashes (and
  emptied by a disk loss), providers and receivers mounted on the HTTP network, clients submitting through the real
  job API
- actors: upstream `Provider`s (their answers `UpstreamCore`'s), webhook `WebhookReceiver`s; upstream: the pure
  parts both models share (`UpstreamCore`: per-credential GCRA limits, 429 dialects, lognormal latency, 5xx; arrival
  processes)
- workload: tenants submitting jobs, and the `Ledger` of what clients were told and what webhooks reported
- faults: `FaultInjector`, a scenario's fault schedule applied and healed on virtual time
- invariants: the safety checks run every virtual second and the liveness checks at the end
- bugs: `PLANTED_BUGS`, switches that break the design on purpose so tests can prove the invariants bite
- run: `run_scenario(scenario, seed=...)` -> `RunReport`, also `python -m simulations.run SCENARIO --seed N`
Using it: scenario (the TOML schema and loader, scenarios/*.toml), report (tables, JSON, plots), cli
(`ezthrottle simulate`).
The fast model: fast/ (`run_fast`: the same scenario through the pure cores on a discrete-event loop, for large
sweeps), and plan (`ezthrottle plan WORKLOAD.toml`: the smallest cluster meeting a workload's targets, workloads/).
"""

from .cluster import SimulatedCluster as SimulatedCluster
from .determinism import Simulation as Simulation
from .determinism import SimulationResult as SimulationResult
from .determinism import Trace as Trace
from .determinism import run_simulation as run_simulation
from .http import Latency as Latency
from .http import PathState as PathState
from .http import SimulatedHttp as SimulatedHttp
from .network import LinkFaults as LinkFaults
from .network import SimulatedNetwork as SimulatedNetwork
from .network import open_simulated_network as open_simulated_network
from .runtime import simulated_runtime as simulated_runtime
from .world import World as World
