"""Scenarios: what a simulated run sets up (cluster, network, providers, receivers, tenants) and which faults hit it.

A scenario is a TOML file (simulations/scenarios/*.toml) parsed into frozen, validated dataclasses, so the world
that runs it (simulations/run.py) never has to second-guess its input. Every optional value has a default; unknown
keys are errors, because a misspelt `duraton_s` that silently falls back to its default makes a run test something
else than its author thinks. Errors name the file and the field (`tenants[1].tier`).

Conventions the world relies on:
- Durations are in seconds, and their names end in `_s`, in TOML as in Python.
- Node names are "n1".."nN"; node i sits in region `cluster.regions[(i - 1) % len(regions)]` (round-robin).
- A run is `warmup_s` (membership settles, no workload), then `duration_s` of workload, then `drain_s` (no new
  jobs, no new faults; queues drain and webhooks finish before the final checks).
- `FaultSpec.at_s` counts from the start of the workload (the end of the warm-up), so a scenario's faults stay put
  when only its warm-up changes. A fault with `duration_s = None` is never healed.
- A tenant is one account; its plan is its `plan`, or else its tier's (reserved: enterprise, unlimited; paid: pro;
  free: free, `TIER_PLANS`). `[[plans]]` define plans by name, as `[plans.NAME]` does in a node's configuration (a
  built-in name overrides that plan), so a scenario can give an account a small monthly allowance
  (`monthly_requests` + `overage_requests_max`) and check that the cluster enforces it (simulations/invariants.py).
- `[cpu]`: the CPU model (simulations/cpu.py), on unless `enabled = false`: every node has `cores` (0: the
  calibration's) and every operation it performs costs what `calibration` (a file written by `ezthrottle simulate
  --calibrate`, relative to the working directory; empty: the bundled one) says, divided by `speed` (a faster or
  slower machine than the measured one). `machine_cores` > 0 puts every node on one machine of that many cores
  instead (a cluster on one host, as the validation benchmark runs one), of which other processes keep
  `background_cores` busy.
- Two faults that act on the same thing (the same node's crash or disk loss, any two partitions, the same link
  fault, the same provider or receiver) must not overlap in time: what "crash a node that is already down" means is
  not a question the scenario should leave to the world.

`Scenario.with_overrides` applies the sweep keys of `ezthrottle simulate --sweep`; `Scenario.with_swarm_faults`
adds the random faults of swarm mode, drawn from the seed, so the world only ever sees a fixed schedule.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, final

from edge.config import IDENTIFIER_PATTERN, PLANS

from .cpu import Calibration, CalibrationError, bundled_calibration
from .determinism import derive_seed
from .http import Latency
from .network import LinkFaults

SCENARIOS_DIR = Path(__file__).parent / "scenarios"

TIERS = ("reserved", "paid", "free")
TIER_PLANS = {"reserved": "enterprise", "paid": "pro", "free": "free"}  # a tenant's plan unless it names one
SIGNALS = ("retry-after", "ratelimit", "x-ratelimit", "none")
EXECUTION_MODES = ("race", "fanout")  # as the job API's `execution_mode`, its default first
REGION_POLICIES = ("fallback", "strict")  # as the job API's `region_policy`, its default first
ARRIVALS = ("poisson", "bursty", "periodic")
PROFILES = ("lan", "wan", "local")
FAULT_KINDS = (
    "crash",
    "disk_loss",
    "partition",
    "loss",
    "duplication",
    "delay",
    "upstream_outage",
    "upstream_errors",
    "receiver_outage",
)
# Faults that stop nodes (`nodes`): both cut the node at once, a disk loss also empties its store.
NODE_FAULTS = ("crash", "disk_loss")
# Faults whose `rate` is a probability (0 < rate <= 1); `delay` reads `rate` as seconds instead.
FAULTS_WITH_PROBABILITY = ("loss", "duplication", "upstream_errors")
SWEEP_KEYS = ("nodes", "load", "keys", "duration", "regions", "loss", "cores")
# Region names handed out when `regions=N` asks for more regions than a scenario names (Fly.io region codes).
REGION_NAMES = ("iad", "lax", "fra", "sin", "syd", "gru", "nrt", "lhr", "ams", "bom")
# simulations.cluster puts members on hosts 127.0.1.1 .. 127.0.1.254.
NODES_MAX = 254
# Attempts to place one random swarm fault where it does not overlap another on the same thing, before giving up
# on that fault: keeps drawing bounded when a scenario is already crowded with faults.
SWARM_PLACEMENT_ATTEMPTS = 20
# Swarm mode draws only disk losses the design survives: with `cluster.replicas` >= 2 every job is on two disks, so
# one may go, but not while the cluster is still restoring second copies after a crash, a disk loss or a partition
# (a node that saw no other member acknowledged jobs on its own disk alone). So a drawn disk loss starts at least
# this long after every such fault that began before it has ended (copies were back about 1 s after a restart in
# the disk-loss scenario).
DISK_LOSS_CLEARANCE_S = 5.0

T = TypeVar("T")
_LINK_DEFAULTS = LinkFaults()
_HTTP_DEFAULTS = Latency()


class ScenarioError(ValueError):
    """A scenario that cannot run: `where` names the file and/or field, `problem` says what is wrong with it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem

    def located(self, prefix: str) -> ScenarioError:
        """The same problem, its location prefixed by the table or file it sits in."""
        if not prefix:
            return self
        if not self.where:
            return ScenarioError(prefix, self.problem)
        separator = "" if self.where.startswith("[") else "."
        return ScenarioError(f"{prefix}{separator}{self.where}", self.problem)


def _check(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise ScenarioError(where, problem)


def _check_choice(value: str, choices: tuple[str, ...], where: str) -> None:
    _check(value in choices, where, f"must be one of {', '.join(choices)} (got {value!r})")


def _check_unique(names: tuple[str, ...] | list[str], where: str) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    _check(not duplicates, where, f"names must be unique, {', '.join(map(repr, duplicates))} repeats")


def _check_latency(median_s: float, p99_s: float) -> None:
    _check(median_s >= 0, "latency_median_s", "must be >= 0")
    _check(p99_s >= median_s, "latency_p99_s", "must be >= latency_median_s")


def _check_probability(value: float, where: str) -> None:
    _check(0.0 <= value <= 1.0, where, f"is a probability, 0..1 (got {value})")


@final
@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """How many nodes, in which regions (round-robin), with which memberlist timing preset."""

    nodes: int = 3
    regions: tuple[str, ...] = ("iad",)
    profile: str = "lan"
    replicas: int = 2  # `cluster.replicas`: members that hold each job before it is acknowledged

    def __post_init__(self) -> None:
        _check(1 <= self.nodes <= NODES_MAX, "nodes", f"must be 1..{NODES_MAX} (got {self.nodes})")
        _check(self.replicas >= 1, "replicas", f"must be >= 1 (got {self.replicas})")
        _check(bool(self.regions), "regions", "needs at least one region")
        _check_unique(self.regions, "regions")
        _check_choice(self.profile, PROFILES, "profile")

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(f"n{index}" for index in range(1, self.nodes + 1))

    def region_of(self, node: str) -> str:
        """The region of node "n<i>": round-robin over `regions`."""
        return self.regions[(int(node.removeprefix("n")) - 1) % len(self.regions)]


@final
@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """The gossip network outside any fault: the same knobs, and defaults, as `simulations.network.LinkFaults`;
    and the one-way delay of each leg of every HTTP request, as `simulations.http.Latency` (its defaults)."""

    loss: float = _LINK_DEFAULTS.loss
    duplication: float = _LINK_DEFAULTS.duplication
    delay_min_s: float = _LINK_DEFAULTS.delay_min_s
    delay_max_s: float = _LINK_DEFAULTS.delay_max_s
    http_delay_min_s: float = _HTTP_DEFAULTS.min_s
    http_delay_max_s: float = _HTTP_DEFAULTS.max_s

    def __post_init__(self) -> None:
        try:
            self.link_faults()
            self.http_latency()
        except ValueError as exc:
            raise ScenarioError("", str(exc)) from None

    def link_faults(self) -> LinkFaults:
        return LinkFaults(
            loss=self.loss, duplication=self.duplication, delay_min_s=self.delay_min_s, delay_max_s=self.delay_max_s
        )

    def http_latency(self) -> Latency:
        return Latency(min_s=self.http_delay_min_s, max_s=self.http_delay_max_s)


@final
@dataclass(frozen=True, kw_only=True)
class CpuSpec:
    """The CPU model (`[cpu]`): whether it is on, the calibration, and the cores of each node or of one machine."""

    enabled: bool = True
    calibration: str = ""  # a calibration file; empty: the bundled one (simulations/calibration.json)
    cores: int = 0  # per node; 0: the calibration's
    machine_cores: int = 0  # > 0: every node shares one machine of this many cores
    speed: float = 1.0  # against the calibration's machine: 2.0 halves every cost, 0.5 doubles it
    background_cores: float = 0.0  # with machine_cores: how many of them other processes keep busy

    def __post_init__(self) -> None:
        _check(self.cores >= 0, "cores", f"must be >= 0 (0: the calibration's; got {self.cores})")
        _check(
            self.machine_cores >= 0, "machine_cores", f"must be >= 0 (0: a machine per node; got {self.machine_cores})"
        )
        _check(self.speed > 0, "speed", f"must be > 0 (got {self.speed})")
        _check(
            self.background_cores == 0 or 0 < self.background_cores < self.machine_cores,
            "background_cores",
            f"needs machine_cores, and must be below it (got {self.background_cores} of {self.machine_cores})",
        )
        if self.calibration:
            self.load()

    def load(self) -> Calibration:
        """The calibration the runs use, at `speed`."""
        try:
            calibration = Calibration.load(Path(self.calibration)) if self.calibration else bundled_calibration()
        except CalibrationError as exc:
            raise ScenarioError("calibration", str(exc)) from None
        return calibration.at_speed(self.speed)

    def node_cores(self, calibration: Calibration) -> int:
        return self.cores or calibration.cores


@final
@dataclass(frozen=True, kw_only=True)
class RegionLatencySpec:
    """How fast a provider answers the nodes of one region (`[[providers.region_latency]]`), instead of its own
    `latency_median_s` / `latency_p99_s`."""

    region: str
    latency_median_s: float
    latency_p99_s: float

    def __post_init__(self) -> None:
        _check(bool(self.region), "region", "must not be empty")
        _check_latency(self.latency_median_s, self.latency_p99_s)


@final
@dataclass(frozen=True, kw_only=True)
class ProviderSpec:
    """An upstream API: its per-credential limit, how it says so when exceeded, how fast and how reliable it is.

    `region_latency` makes it answer the nodes of some regions at another speed (a far or overloaded region); the
    nodes of every other region, and callers with no region, get `latency_median_s` / `latency_p99_s`."""

    name: str
    rate_limit_rps: float = 10.0  # per credential (queue key)
    burst: int = 1  # requests above the steady rate it tolerates at once
    signal: str = "retry-after"  # what a 429 carries: Retry-After, IETF RateLimit fields, x-ratelimit-*, or nothing
    latency_median_s: float = 0.05
    latency_p99_s: float = 0.25
    error_rate: float = 0.0  # fraction of requests answered 5xx outside any fault
    regions: tuple[str, ...] = ()  # where it serves from; empty = one endpoint reachable from every region
    region_latency: tuple[RegionLatencySpec, ...] = ()  # per calling region, instead of latency_*_s

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "must not be empty")
        _check(self.rate_limit_rps > 0, "rate_limit_rps", "must be > 0")
        _check(self.burst >= 1, "burst", "must be >= 1")
        _check_choice(self.signal, SIGNALS, "signal")
        _check_latency(self.latency_median_s, self.latency_p99_s)
        _check_probability(self.error_rate, "error_rate")
        _check_unique(self.regions, "regions")
        _check_unique([latency.region for latency in self.region_latency], "region_latency")
        for index, latency in enumerate(self.region_latency):
            _check(
                not self.regions or latency.region in self.regions,
                f"region_latency[{index}].region",
                f"{self.name} does not serve {latency.region!r} (regions: {', '.join(self.regions)})",
            )

    @property
    def latency_p99_max_s(self) -> float:
        """The slowest p99 it answers any region with (what an operator sizes concurrency for)."""
        return max([self.latency_p99_s, *(latency.latency_p99_s for latency in self.region_latency)])


@final
@dataclass(frozen=True, kw_only=True)
class ReceiverSpec:
    """A webhook receiver: how fast it answers and how often it fails (5xx) outside any fault."""

    name: str
    latency_median_s: float = 0.02
    latency_p99_s: float = 0.1
    failure_rate: float = 0.0

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "must not be empty")
        _check_latency(self.latency_median_s, self.latency_p99_s)
        _check_probability(self.failure_rate, "failure_rate")


@final
@dataclass(frozen=True, kw_only=True)
class TenantSpec:
    """One account: its tier, how many credentials (queue keys) it spreads jobs over, how jobs arrive, and what
    its jobs ask of the node beyond a plain call.

    The job fields are the job API's, and their defaults leave them out of the job (today's plain jobs):
    - `regions`, `execution_mode` ("race" | "fanout"), `region_policy` ("fallback" | "strict"): where each attempt
      runs (edge/engine/legs.py); a mode or a policy needs `regions`;
    - `send_idempotency_key`: the node sends the job's idempotency key upstream as `Idempotency-Key`, which is how
      the invariants tell whose call a provider saw (simulations/invariants.py);
    - `on_success` / `on_failure`: every job carries that follow-up, one more call to the same provider with the
      same credential (its idempotency key derived from the parent's, sent upstream as the parent's is)."""

    name: str
    provider: str
    tier: str = "paid"
    keys: int = 1
    rate_per_s: float = 1.0  # jobs per second for the whole tenant, spread evenly over its keys
    arrival: str = "poisson"  # poisson | bursty (on/off) | periodic (fixed spacing)
    receivers: tuple[str, ...] = ()  # webhooks on every job, each with a quorum vote
    quorum: int = 1  # as the job API's webhook_quorum: 1..len(receivers), and 1 when there are none
    workers: int = 0  # concurrent submitters, each waiting for its ack before the next job; 0 = open loop
    regions: tuple[str, ...] = ()  # the job's `regions` (cluster regions); empty = none, the owner runs it
    execution_mode: str = EXECUTION_MODES[0]
    region_policy: str = REGION_POLICIES[0]
    send_idempotency_key: bool = False
    on_success: bool = False
    on_failure: bool = False
    plan: str = ""  # the account's plan: one of the scenario's [[plans]] or a built-in; empty = its tier's plan

    @property
    def plan_name(self) -> str:
        return self.plan or TIER_PLANS[self.tier]

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "must not be empty")
        _check_choice(self.tier, TIERS, "tier")
        _check(self.keys >= 1, "keys", "must be >= 1")
        _check(self.rate_per_s > 0, "rate_per_s", "must be > 0")
        _check_choice(self.arrival, ARRIVALS, "arrival")
        _check_unique(self.receivers, "receivers")
        voters = max(len(self.receivers), 1)
        _check(1 <= self.quorum <= voters, "quorum", f"must be 1..{voters} (got {self.quorum})")
        _check(self.workers >= 0, "workers", "must be >= 0")
        _check_unique(self.regions, "regions")
        _check_choice(self.execution_mode, EXECUTION_MODES, "execution_mode")
        _check_choice(self.region_policy, REGION_POLICIES, "region_policy")
        _check(bool(self.regions) or self.execution_mode == EXECUTION_MODES[0], "execution_mode", "needs regions")
        _check(bool(self.regions) or self.region_policy == REGION_POLICIES[0], "region_policy", "needs regions")


@final
@dataclass(frozen=True, kw_only=True)
class PlanSpec:
    """A plan, as a node's `[plans.NAME]` table: the accepted jobs a month its accounts get (`monthly_requests`,
    0 = unlimited) and how many more beyond it (`overage_requests_max`). Tenants name it in `plan`."""

    name: str
    monthly_requests: int = 0
    overage_requests_max: int = 0

    def __post_init__(self) -> None:
        _check(bool(IDENTIFIER_PATTERN.fullmatch(self.name)), "name", "must be 1-64 characters from A-Z a-z 0-9 _ . -")
        _check(self.monthly_requests >= 0, "monthly_requests", "must be >= 0 (0 = unlimited)")
        _check(self.overage_requests_max >= 0, "overage_requests_max", "must be >= 0")

    @property
    def allowance(self) -> int | None:
        """The jobs a month its accounts may have accepted in all; None when unlimited."""
        return None if self.monthly_requests == 0 else self.monthly_requests + self.overage_requests_max


@final
@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    """One scheduled fault. Which fields matter depends on `kind`:

    - crash: `nodes` crash (in-memory state lost, store kept) and restart after `duration_s`.
    - disk_loss: `nodes` crash and lose their disk (a machine destroyed with its volume): they restart after
      `duration_s` with an empty store, or never without it (lost for good).
    - partition: `nodes` cannot reach `other_nodes` (empty = every other node); with `one_way`, only traffic from
      `nodes` to `other_nodes` is dropped.
    - loss / duplication: every datagram is lost / duplicated with probability `rate`.
    - delay: the one-way delay of every datagram and stream leg is drawn up to `rate` seconds; node-to-node HTTP
      legs are held up by up to what that adds to the scenario's own `delay_max_s`.
    - upstream_outage: provider `target` stops answering (in `region` only, if given).
    - upstream_errors: provider `target` answers a fraction `rate` of requests with 5xx (in `region`, if given).
    - receiver_outage: webhook receiver `target` stops answering.
    """

    at_s: float  # from the start of the workload
    kind: str
    duration_s: float | None = None  # healed (restarted) this long after `at_s`; None = never
    nodes: tuple[str, ...] = ()
    other_nodes: tuple[str, ...] = ()
    one_way: bool = False
    rate: float = 0.0
    target: str = ""
    region: str = ""

    def __post_init__(self) -> None:
        _check(self.at_s >= 0, "at_s", "must be >= 0")
        _check_choice(self.kind, FAULT_KINDS, "kind")
        _check(self.duration_s is None or self.duration_s > 0, "duration_s", "must be > 0 (omit it: never healed)")
        needs_nodes = self.kind in (*NODE_FAULTS, "partition")
        _check(bool(self.nodes) == needs_nodes, "nodes", f"{'needed' if needs_nodes else 'not used'} by {self.kind}")
        _check_unique(self.nodes + self.other_nodes, "other_nodes")
        _check(not self.other_nodes or self.kind == "partition", "other_nodes", f"not used by {self.kind}")
        _check(not self.one_way or self.kind == "partition", "one_way", f"not used by {self.kind}")
        if self.kind in FAULTS_WITH_PROBABILITY:
            _check(0 < self.rate <= 1, "rate", f"{self.kind} needs a probability, 0 < rate <= 1 (got {self.rate})")
        elif self.kind == "delay":
            _check(self.rate > 0, "rate", f"delay needs the delay ceiling in seconds, > 0 (got {self.rate})")
        else:
            _check(self.rate == 0, "rate", f"not used by {self.kind}")
        needs_target = self.kind.startswith(("upstream_", "receiver_"))
        _check(
            bool(self.target) == needs_target, "target", f"{'needed' if needs_target else 'not used'} by {self.kind}"
        )
        _check(not self.region or self.kind.startswith("upstream_"), "region", f"not used by {self.kind}")

    @property
    def end_s(self) -> float:
        return math.inf if self.duration_s is None else self.at_s + self.duration_s

    @property
    def subject(self) -> str:
        """What the fault acts on; two faults on the same subject must not overlap."""
        if self.kind in NODE_FAULTS:
            return f"node {','.join(self.nodes)}"
        if self.kind.startswith("upstream_"):
            return f"provider {self.target}"
        if self.kind == "receiver_outage":
            return f"receiver {self.target}"
        return self.kind

    def overlaps(self, other: FaultSpec) -> bool:
        shared = self.subject == other.subject or (
            self.kind in NODE_FAULTS and other.kind in NODE_FAULTS and bool(set(self.nodes) & set(other.nodes))
        )
        return shared and self.at_s < other.end_s and other.at_s < self.end_s

    def describe(self) -> str:
        """One readable line, as a fault schedule prints it."""
        parts = [f"t={self.at_s:g}s {self.kind}"]
        if self.nodes:
            parts.append(",".join(self.nodes))
        if self.other_nodes:
            parts.append(("-/-> " if self.one_way else "<-/-> ") + ",".join(self.other_nodes))
        elif self.kind == "partition":
            parts.append("-/-> rest" if self.one_way else "<-/-> rest")
        if self.target:
            parts.append(self.target + (f"@{self.region}" if self.region else ""))
        if self.rate:
            parts.append(f"rate={self.rate:g}")
        parts.append("never healed" if self.duration_s is None else f"for {self.duration_s:g}s")
        return " ".join(parts)


@final
@dataclass(frozen=True, kw_only=True)
class SwarmSpec:
    """Random faults for swarm mode: which kinds, how often (a Poisson process), how long each lasts at most."""

    kinds: tuple[str, ...] = ("crash", "partition", "loss", "delay", "upstream_errors")
    rate_per_min: float = 4.0
    max_duration_s: float = 10.0

    def __post_init__(self) -> None:
        _check(bool(self.kinds), "kinds", "needs at least one fault kind")
        for index, kind in enumerate(self.kinds):
            _check_choice(kind, FAULT_KINDS, f"kinds[{index}]")
        _check_unique(self.kinds, "kinds")
        _check(self.rate_per_min > 0, "rate_per_min", "must be > 0")
        _check(self.max_duration_s >= 1, "max_duration_s", "must be >= 1")


@final
@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A whole simulated run: phases, cluster, network, the outside world, the workload and the faults."""

    name: str
    description: str = ""
    duration_s: float = 30.0
    warmup_s: float = 5.0
    drain_s: float = 30.0
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    providers: tuple[ProviderSpec, ...]
    receivers: tuple[ReceiverSpec, ...] = ()
    tenants: tuple[TenantSpec, ...]
    faults: tuple[FaultSpec, ...] = ()
    swarm: SwarmSpec = field(default_factory=SwarmSpec)
    plans: tuple[PlanSpec, ...] = ()
    cpu: CpuSpec = field(default_factory=CpuSpec)

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "must not be empty")
        _check(self.duration_s > 0, "duration_s", "must be > 0")
        _check(self.warmup_s >= 0, "warmup_s", "must be >= 0")
        _check(self.drain_s >= 0, "drain_s", "must be >= 0")
        _check(bool(self.providers), "providers", "needs at least one [[providers]]")
        _check(bool(self.tenants), "tenants", "needs at least one [[tenants]]")
        _check_unique([provider.name for provider in self.providers], "providers")
        _check_unique([receiver.name for receiver in self.receivers], "receivers")
        _check_unique([tenant.name for tenant in self.tenants], "tenants")
        _check_unique([plan.name for plan in self.plans], "plans")
        plans = {plan.name for plan in self.plans} | set(PLANS)
        providers = {provider.name: provider for provider in self.providers}
        receivers = {receiver.name for receiver in self.receivers}
        for index, tenant in enumerate(self.tenants):
            where = f"tenants[{index}]"
            _check(tenant.provider in providers, f"{where}.provider", f"no provider named {tenant.provider!r}")
            for receiver in tenant.receivers:
                _check(receiver in receivers, f"{where}.receivers", f"no receiver named {receiver!r}")
            _check(
                not tenant.plan or tenant.plan in plans,
                f"{where}.plan",
                f"no plan named {tenant.plan!r} (plans: {', '.join(sorted(plans))})",
            )
        for index, tenant in enumerate(self.tenants):
            for region in tenant.regions:
                self._check_region(region, f"tenants[{index}].regions")
        for index, provider in enumerate(self.providers):
            for region in provider.regions:
                self._check_region(region, f"providers[{index}].regions")
            for latency_index, latency in enumerate(provider.region_latency):
                self._check_region(latency.region, f"providers[{index}].region_latency[{latency_index}].region")
        for index, fault in enumerate(self.faults):
            self._check_fault(fault, f"faults[{index}]", providers, receivers)
        if "receiver_outage" in self.swarm.kinds:
            _check(bool(self.receivers), "swarm.kinds", "receiver_outage needs at least one [[receivers]]")

    def _check_region(self, region: str, where: str) -> None:
        _check(
            region in self.cluster.regions,
            where,
            f"{region!r} is not a cluster region ({', '.join(self.cluster.regions)})",
        )

    def _check_fault(
        self, fault: FaultSpec, where: str, providers: Mapping[str, ProviderSpec], receivers: set[str]
    ) -> None:
        nodes = self.cluster.node_names
        for name in fault.nodes + fault.other_nodes:
            _check(name in nodes, f"{where}.nodes", f"no node {name!r} in a {self.cluster.nodes}-node cluster")
        if fault.kind == "partition":
            isolated = len(set(fault.nodes) | set(fault.other_nodes or nodes))
            _check(isolated > len(fault.nodes), f"{where}.nodes", "a partition needs nodes on both sides")
        _check(fault.at_s <= self.duration_s, f"{where}.at_s", f"after the workload ends ({self.duration_s:g} s)")
        if fault.kind.startswith("upstream_"):
            _check(fault.target in providers, f"{where}.target", f"no provider named {fault.target!r}")
            regions = providers[fault.target].regions or self.cluster.regions
            _check(
                not fault.region or fault.region in regions,
                f"{where}.region",
                f"{fault.target} has no region {fault.region!r}",
            )
        if fault.kind == "receiver_outage":
            _check(fault.target in receivers, f"{where}.target", f"no receiver named {fault.target!r}")
        for other_index, other in enumerate(self.faults):
            if other is fault:
                break
            _check(
                not fault.overlaps(other),
                f"{where}.at_s",
                f"overlaps faults[{other_index}] ({other.describe()}) on the same {fault.subject}",
            )

    def plan_spec(self, tenant: TenantSpec) -> PlanSpec | None:
        """The scenario's `[[plans]]` entry the tenant's account is on; None when it is on a built-in plan."""
        return next((plan for plan in self.plans if plan.name == tenant.plan_name), None)

    @property
    def total_keys(self) -> int:
        return sum(tenant.keys for tenant in self.tenants)

    @property
    def total_rate_per_s(self) -> float:
        return sum(tenant.rate_per_s for tenant in self.tenants)

    def with_overrides(self, overrides: Mapping[str, str]) -> Scenario:
        """This scenario with sweep keys applied (values as typed on the command line): nodes=N, load=FACTOR
        (multiplies every tenant's rate), keys=N (total, spread over tenants as they were), duration=SECONDS,
        regions=N (the first N of the scenario's regions, then REGION_NAMES), loss=PROBABILITY, cores=N (each
        node's, or the shared machine's when the scenario has one)."""
        scenario = self
        for key, text in overrides.items():
            _check_choice(key, SWEEP_KEYS, "override")
            apply = _OVERRIDES[key]
            try:
                scenario = apply(scenario, text)
            except ScenarioError as exc:
                raise ScenarioError(f"{key}={text}", exc.problem if exc.where in ("", key) else str(exc)) from None
        return scenario

    def with_swarm_faults(self, seed: int) -> Scenario:
        """This scenario plus random faults drawn from `swarm` and `seed` alone (so a seed replays exactly).

        Faults arrive as a Poisson process over the workload, each healed within `max_duration_s` and before the
        workload ends (so the drain checks liveness on a healed cluster), never overlapping another fault on the
        same subject, and disk losses kept DISK_LOSS_CLEARANCE_S clear of earlier node faults and partitions; kinds
        that cannot apply (a partition of one node, a disk loss without a second replica) are skipped."""
        rng = random.Random(derive_seed(seed, "swarm"))
        faults = list(self.faults)
        at_s = rng.expovariate(self.swarm.rate_per_min / 60.0)
        while at_s < self.duration_s - 1.0:
            for _attempt in range(SWARM_PLACEMENT_ATTEMPTS):
                fault = self._draw_fault(rng, at_s)
                if fault is not None and not any(
                    fault.overlaps(other) or _disk_loss_too_soon(fault, other) for other in faults
                ):
                    faults.append(fault)
                    break
            at_s += rng.expovariate(self.swarm.rate_per_min / 60.0)
        faults.sort(key=lambda fault: fault.at_s)
        return dataclasses.replace(self, faults=tuple(faults))

    def _draw_fault(self, rng: random.Random, at_s: float) -> FaultSpec | None:
        kind = rng.choice(self.swarm.kinds)
        longest_s = min(self.swarm.max_duration_s, self.duration_s - at_s)
        duration_s = round(rng.uniform(min(1.0, longest_s), longest_s), 3)
        at_s = round(at_s, 3)
        nodes = list(self.cluster.node_names)
        if kind == "disk_loss" and (len(nodes) < 2 or self.cluster.replicas < 2):
            return None  # the only copy of every job it holds would go with it
        if kind in NODE_FAULTS:
            return FaultSpec(at_s=at_s, kind=kind, duration_s=duration_s, nodes=(rng.choice(nodes),))
        if kind == "partition":
            if len(nodes) < 2:
                return None
            rng.shuffle(nodes)
            side = tuple(sorted(nodes[: rng.randint(1, len(nodes) // 2)]))
            return FaultSpec(at_s=at_s, kind=kind, duration_s=duration_s, nodes=side, one_way=rng.random() < 0.3)
        if kind in ("loss", "duplication"):
            return FaultSpec(at_s=at_s, kind=kind, duration_s=duration_s, rate=round(rng.uniform(0.05, 0.3), 3))
        if kind == "delay":
            return FaultSpec(at_s=at_s, kind=kind, duration_s=duration_s, rate=round(rng.uniform(0.05, 0.5), 3))
        if kind == "receiver_outage":
            target = rng.choice(self.receivers).name
            return FaultSpec(at_s=at_s, kind=kind, duration_s=duration_s, target=target)
        provider = rng.choice(self.providers)
        region = rng.choice(("", *provider.regions))
        rate = round(rng.uniform(0.2, 0.8), 3) if kind == "upstream_errors" else 0.0
        return FaultSpec(at_s=at_s, kind=kind, duration_s=duration_s, target=provider.name, region=region, rate=rate)


def _disk_loss_too_soon(fault: FaultSpec, other: FaultSpec) -> bool:
    """Whether one of the two is a disk loss that starts before the cluster is back to two copies of every job
    after the other (a crash or disk loss that began before it, or a partition): see DISK_LOSS_CLEARANCE_S."""
    return any(
        loss.kind == "disk_loss"
        and earlier.kind in (*NODE_FAULTS, "partition")
        and earlier.at_s <= loss.at_s < earlier.end_s + DISK_LOSS_CLEARANCE_S
        for loss, earlier in ((fault, other), (other, fault))
    )


def _parse_number(text: str, kind: Callable[[str], T], problem: str) -> T:
    try:
        return kind(text)
    except ValueError:
        raise ScenarioError("", problem) from None


def _override_nodes(scenario: Scenario, text: str) -> Scenario:
    nodes = _parse_number(text, int, "nodes must be a whole number")
    return dataclasses.replace(scenario, cluster=dataclasses.replace(scenario.cluster, nodes=nodes))


def _override_load(scenario: Scenario, text: str) -> Scenario:
    factor = _parse_number(text, float, "load must be a number (a factor on every tenant's rate)")
    _check(factor > 0, "load", "must be > 0")
    tenants = tuple(dataclasses.replace(tenant, rate_per_s=tenant.rate_per_s * factor) for tenant in scenario.tenants)
    return dataclasses.replace(scenario, tenants=tenants)


def _override_keys(scenario: Scenario, text: str) -> Scenario:
    total = _parse_number(text, int, "keys must be a whole number")
    _check(total >= len(scenario.tenants), "keys", f"needs at least one per tenant ({len(scenario.tenants)})")
    # Largest remainder: shares proportional to each tenant's keys today, summing exactly to `total`.
    exact = [tenant.keys * total / scenario.total_keys for tenant in scenario.tenants]
    shares = [max(1, math.floor(value)) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda index: exact[index] - math.floor(exact[index]), reverse=True)
    for index in by_remainder[: total - sum(shares)]:
        shares[index] += 1
    while sum(shares) > total:  # the max(1, ...) floors overshot: take from the largest
        shares[shares.index(max(shares))] -= 1
    tenants = tuple(
        dataclasses.replace(tenant, keys=keys) for tenant, keys in zip(scenario.tenants, shares, strict=True)
    )
    return dataclasses.replace(scenario, tenants=tenants)


def _override_duration(scenario: Scenario, text: str) -> Scenario:
    return dataclasses.replace(scenario, duration_s=_parse_number(text, float, "duration must be seconds"))


def _override_regions(scenario: Scenario, text: str) -> Scenario:
    count = _parse_number(text, int, "regions must be a whole number")
    _check(count >= 1, "regions", "must be >= 1")
    names = list(scenario.cluster.regions)
    names += [name for name in REGION_NAMES if name not in names]
    _check(count <= len(names), "regions", f"at most {len(names)} region names are known")
    return dataclasses.replace(scenario, cluster=dataclasses.replace(scenario.cluster, regions=tuple(names[:count])))


def _override_loss(scenario: Scenario, text: str) -> Scenario:
    loss = _parse_number(text, float, "loss must be a probability, 0..1")
    return dataclasses.replace(scenario, network=dataclasses.replace(scenario.network, loss=loss))


def _override_cores(scenario: Scenario, text: str) -> Scenario:
    cores = _parse_number(text, int, "cores must be a whole number")
    _check(cores >= 1, "cores", "must be >= 1")
    if scenario.cpu.machine_cores:
        return dataclasses.replace(scenario, cpu=dataclasses.replace(scenario.cpu, machine_cores=cores))
    return dataclasses.replace(scenario, cpu=dataclasses.replace(scenario.cpu, cores=cores))


_OVERRIDES: Mapping[str, Callable[[Scenario, str], Scenario]] = {
    "nodes": _override_nodes,
    "load": _override_load,
    "keys": _override_keys,
    "duration": _override_duration,
    "regions": _override_regions,
    "loss": _override_loss,
    "cores": _override_cores,
}


def scenario_path(path_or_name: str | Path) -> Path:
    """A path as given, or a bare name (`baseline`) looked up in simulations/scenarios/."""
    path = Path(path_or_name)
    if path.suffix != ".toml" and path.parent == Path("."):
        return SCENARIOS_DIR / f"{path}.toml"
    return path


def bundled_scenarios() -> tuple[Path, ...]:
    """Every scenario shipped in simulations/scenarios/, by name."""
    return tuple(sorted(SCENARIOS_DIR.glob("*.toml")))


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Parse and validate a scenario file; its `name` defaults to the file name without `.toml`."""
    path = scenario_path(path_or_name)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(bundled.stem for bundled in bundled_scenarios())
        raise ScenarioError(str(path), f"no such scenario file (bundled scenarios: {known})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(str(path), f"not a readable TOML file: {exc}") from None
    table.setdefault("name", path.stem)
    try:
        return _build(Scenario, table)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc.where}" if exc.where else str(path), exc.problem) from None


def _build(cls: type[T], table: object) -> T:
    """A spec dataclass from a TOML table: every key known, every value of the declared type, then validated."""
    if not isinstance(table, dict):
        raise ScenarioError("", f"must be a table, not {type(table).__name__}")
    known = {spec.name: spec for spec in fields(cls)}  # type: ignore[arg-type]
    for key in table:
        _check(key in known, key, f"unknown key (known: {', '.join(known)})")
    for name, spec in known.items():
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        _check(name in table or not required, name, "missing (required)")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        try:
            values[key] = _convert(hints[key], value)
        except ScenarioError as exc:
            raise exc.located(key) from None
    return cls(**values)


def _convert(hint: Any, value: object) -> object:
    """`value` as the annotated type: TOML already gives str, int, float, bool, list and table."""
    if isinstance(hint, types.UnionType):  # `float | None`: TOML has no null, so only the float can appear
        (hint,) = (member for member in typing.get_args(hint) if member is not type(None))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if typing.get_origin(hint) is tuple:
        item_hint = typing.get_args(hint)[0]
        _check(isinstance(value, list), "", f"must be a list, not {_toml_type(value)}")
        items = []
        for index, item in enumerate(typing.cast(list[object], value)):
            try:
                items.append(_convert(item_hint, item))
            except ScenarioError as exc:
                raise exc.located(f"[{index}]") from None
        return tuple(items)
    if hint is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            "",
            f"must be a number, not {_toml_type(value)}",
        )
        return float(typing.cast(float, value))
    if hint is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            "",
            f"must be a whole number, not {_toml_type(value)}",
        )
        return value
    _check(isinstance(value, hint), "", f"must be {_toml_type_name(hint)}, not {_toml_type(value)}")
    return value


def _toml_type_name(python_type: type) -> str:
    return {str: "a string", bool: "true or false", dict: "a table", list: "a list"}.get(
        python_type, python_type.__name__
    )


def _toml_type(value: object) -> str:
    return (
        f"{_toml_type_name(type(value))} ({value!r})"
        if not isinstance(value, dict | list)
        else _toml_type_name(type(value))
    )
