"""The simulated cluster world: N real nodes in R regions, the outside world they talk to, and the clients.

Each node is the unmodified `edge.node.run_node` (no listener: `serve_http=False`), clustered through the real
`ClusterMember` on one `SimulatedNetwork` (gossip) and reaching everything over one `SimulatedHttp`: other nodes
(forwarding, hand-off, scatter reads), upstream providers and webhook receivers (simulations/actors.py). Hosts:
- node nI: 127.0.1.I, gossip on :7946, job API on :8080 (its `JobApi` is mounted there, served in the node's
  own nursery, so a crash cuts the requests it was serving);
- provider P: P.sim:80; receiver R: R.hooks.sim:80; clients send from CLIENT_HOST.
Requests are judged by their source host (`paths`): a partition between two nodes cuts their gossip and their
HTTP (a black hole), a provider outage in a region refuses calls from that region's nodes, a provider that serves
only some regions refuses the others, and a receiver outage refuses every delivery.

Durability: every node keeps one `MemoryStoreData` for the whole run. A crash unmounts the API and cancels the
node's scope at once (queues, member, deliverer and in-memory state gone); a restart is a fresh `run_node` over the
same data, with an RNG stream of its own (label "<node>/boot-<n>"). A disk loss is a crash that also replaces the
data with an empty `MemoryStoreData`; that is the node's whole disk, since a simulated node is given its node id and
the cluster's keys and so writes nothing into its data dir (no node-id or webhook-secrets key file).

Configuration the world chooses for its nodes, as an operator would: each provider's origin has `rps` equal to
the provider's documented per-credential limit; webhook retries follow WEBHOOK_SCHEDULE_S (seconds, not the
production default's minutes, so retries happen within a run); tiers map to plans (`TIER_PLANS`) unless a tenant
names its plan, and the scenario's `[[plans]]` are the nodes' `[plans.NAME]` tables.

CPU (simulations/cpu.py, unless the scenario's `[cpu]` switches it off): every node has a `NodeCpu`, a `CpuQueue`
of its own (or one shared by every node: `machine_cores`, with the `background_cores` other processes keep busy
booked on it too) that the simulated HTTP and gossip networks charge at
the boundaries a node's work crosses, waiting on virtual time until the booked work is done; `NodeCpu` says what is
charged where, and why there.

What clients asked for: every job body the world builds registers a `JobIntent` under its idempotency key (and one
for each follow-up it carries, under the key the node derives for it, `<key>#on_success`), so that a provider call
carrying an `Idempotency-Key` can be traced back to the job and what it asked (its regions, mode and policy). A
submission the client had to retry on another node (`resubmitted`) may have created two jobs under one key; the
invariants do not attribute such a key's calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, final

import httpx
import msgpack
import trio

from edge.config import (
    AccountConfig,
    ClusterConfig,
    Config,
    PlanConfig,
    SecurityConfig,
    ServerConfig,
    TargetConfig,
    WebhooksConfig,
)
from edge.engine.records import TERMINAL_STATUSES
from edge.node import Node, run_node
from edge.outbound.origins import parsed_url
from edge.problems import PROBLEM_TYPE_BASE
from edge.store import MemoryStoreData, Store, open_memory_store
from edge.store.base import EncodedJob

from .actors import DeliveryReport, LognormalLatency, Provider, WebhookReceiver
from .cpu import Calibration, CpuQueue, Operation
from .determinism import Simulation
from .http import PathState, SimulatedHttp
from .network import SimulatedNetwork
from .runtime import simulated_runtime
from .scenario import TIER_PLANS as TIER_PLANS
from .scenario import ProviderSpec, Scenario, TenantSpec

GOSSIP_PORT = 7946
API_PORT = 8080
CLIENT_HOST = "192.0.2.1"  # TEST-NET-1: the clients' side of the internet
WEBHOOK_SCHEDULE_S = (0.0, 1.0, 5.0, 15.0, 60.0)
WEBHOOK_REPEAT_S = 120.0
# Client-side: how many nodes a submission tries when a node does not answer (down, or the request was cut).
SUBMIT_NODES_TRIED_MAX = 3

StoreWrapper = Callable[[Store], Any]  # Store -> async context manager yielding the Store the node uses
NodePatch = Callable[[Node], None]  # applied to every node as it starts (a planted bug's rewiring)
FOLLOW_UPS = ("on_success", "on_failure")
# Other processes on a shared machine (`[cpu] background_cores`) book their share of its cores once per tick, in
# slices of at most one core's tick: like a busy process, each holds a core for a few milliseconds at a time.
BACKGROUND_TICK_S = 0.01
SUBMIT_PATH = "/api/v1/jobs"
INTERNAL_PREFIX = "/internal/v1/"
FORWARD_PATH = INTERNAL_PREFIX + "jobs"
REPLICATE_PATH = INTERNAL_PREFIX + "replicate"


PROVIDER_SUFFIX = ".sim"
RECEIVER_SUFFIX = ".hooks.sim"


def provider_host(name: str) -> str:
    return f"{name}{PROVIDER_SUFFIX}"


def receiver_host(name: str) -> str:
    return f"{name}{RECEIVER_SUFFIX}"


def account_key(tenant: str) -> str:
    return f"sim-account-key-{tenant}"


def credential(tenant: str, index: int) -> str:
    """The Authorization value of a tenant's `index`-th provider credential (its queue key)."""
    return f"Bearer {tenant}-credential-{index}"


@final
@dataclass(slots=True)
class _Serving:
    """The client submission a node's task is serving: whether the node passed it on to the key's owner."""

    forwarded: bool = False


# Set by `NodeCpu.serving` in the task that serves a request, so that an internal forward the node makes while
# serving a client's submission (in that task: the peer client calls the simulated transport there) marks it.
_SERVING: contextvars.ContextVar[_Serving | None] = contextvars.ContextVar("simulated_serving", default=None)


@final
class NodeCpu:
    """One node's CPU in the full model: what each exchange it serves or sends costs, and where it waits.

    Every charge books the operation's calibrated cost on the node's `CpuQueue` and waits, on virtual time, until
    that work is done, so it queues behind the node's other work. The cost is the calibration's for as many of the
    node's operations as are in flight, this one included (`Calibration.cost_at`: a busy node batches, so each
    operation costs it less than one alone would). What is charged where:
    - a client's submission (POST /api/v1/jobs): REFUSAL before the app runs, as every answer first parses,
      authenticates and judges the request, so a saturated node delays its refusals too; once the app has answered
      200/201, the rest of SUBMIT (the node took the job) or of FORWARD (it passed the job to the key's owner while
      serving it), before the answer leaves, so that a saturated entry delays the 201;
    - a forwarded submission on its key's owner (internal jobs): ACCEPT before the app runs;
    - a replicate call on a successor: REPLICATE for each record it carries (its batching is the sender's), before
      the app runs;
    - a call to a provider (an attempt): ATTEMPT once the answer is back, before the node's code sees it: handling
      the answer and saving the outcome is most of the work, and a wait before the call would move the paced
      arrivals the provider sees (when to call is the scheduler's decision, which the model must not second-guess);
    - a webhook delivery: WEBHOOK before it leaves (building, signing and sending it is the work, and the receiver
      sees it only after that: a job's latency ends there);
    - a gossip datagram, sent or received: GOSSIP (simulations/network.py).
    Other internal calls (hand-offs, lends, pulls, finds, remote attempts) are rare and not charged; the world has
    no protected listeners, so PROXY is never charged here. A crash loses the node's booked work with its process
    (`reset`), unless the queue is a machine's, shared with other nodes (whose work it is cannot be told apart).
    """

    __slots__ = ("_calibration", "_in_flight", "_shared", "busy_s", "queue")

    def __init__(self, queue: CpuQueue, calibration: Calibration, *, shared: bool) -> None:
        self.queue = queue
        self._calibration = calibration
        self._shared = shared
        self._in_flight = 0  # operations booked and not yet done
        self.busy_s = 0.0  # this node's booked CPU (a shared queue's own `busy_s` is every node's)

    async def spend(self, operation: Operation, times: float = 1.0, *, less: Operation | None = None) -> None:
        """Book `times` `operation`, less one `less` if given (what an earlier charge already booked), and wait
        until it is done."""
        self._in_flight += 1
        try:
            cost_s = times * self._calibration.cost_at(operation, self._in_flight)
            if less is not None:
                cost_s = max(0.0, cost_s - self._calibration.cost_at(less, self._in_flight))
            self.busy_s += cost_s
            await trio.sleep_until(self.queue.charge(trio.current_time(), cost_s))
        finally:
            self._in_flight -= 1

    def reset(self) -> None:
        if not self._shared:
            self.queue.reset(trio.current_time())

    async def serving(self, scope: dict[str, Any], body: bytes) -> None:
        path = scope["path"]
        submission = path == SUBMIT_PATH and scope["method"] == "POST"
        _SERVING.set(_Serving() if submission else None)
        if submission:
            await self.spend(Operation.REFUSAL)
        elif path == FORWARD_PATH:
            await self.spend(Operation.ACCEPT)
        elif path == REPLICATE_PATH:
            await self.spend(Operation.REPLICATE, len(msgpack.unpackb(body)["records"]))

    async def served(self, scope: dict[str, Any], status: int) -> None:
        serving = _SERVING.get()
        if serving is None or status not in (200, 201):
            return
        await self.spend(Operation.FORWARD if serving.forwarded else Operation.SUBMIT, less=Operation.REFUSAL)

    async def sending(self, request: httpx.Request) -> None:
        if request.url.host.endswith(RECEIVER_SUFFIX):
            await self.spend(Operation.WEBHOOK)

    async def sent(self, request: httpx.Request, status: int) -> None:
        host = request.url.host
        if host.endswith(PROVIDER_SUFFIX) and not host.endswith(RECEIVER_SUFFIX):
            await self.spend(Operation.ATTEMPT)
        elif request.url.path == FORWARD_PATH and (serving := _SERVING.get()) is not None:
            serving.forwarded = True

    async def gossip(self) -> None:
        await self.spend(Operation.GOSSIP)


@final
@dataclass(slots=True)
class SimNode:
    """One node's lasting identity and disk, its CPU (None: free), and the running process if it is up."""

    name: str
    region: str
    host: str
    data: MemoryStoreData = field(default_factory=MemoryStoreData)
    boots: int = 0
    running: Node | None = None
    scope: trio.CancelScope | None = None
    cpu: NodeCpu | None = None

    @property
    def api_authority(self) -> str:
        return f"{self.host}:{API_PORT}"

    @property
    def gossip_address(self) -> str:
        return f"{self.host}:{GOSSIP_PORT}"


@final
@dataclass(frozen=True, slots=True)
class JobIntent:
    """What a client's job asked for, as the provider's calls for it are judged (see the module docstring).

    A follow-up's intent names its parent's key and its kind ("on_success" or "on_failure")."""

    tenant: str
    regions: tuple[str, ...] = ()
    execution_mode: str = "race"
    region_policy: str = "fallback"
    follow_ups: tuple[str, ...] = ()  # the follow-ups the job carries
    parent_key: str | None = None
    kind: str | None = None


@final
@dataclass(slots=True)
class Submission:
    """What a client learnt from submitting one job."""

    status: int | None  # None: no node answered
    job_id: str | None
    node: str | None
    problem: str | None = None  # a refusal's problem kind (its `type` after PROBLEM_TYPE_BASE): "quota-exceeded"
    retry_at_ms: int | None = None  # a quota refusal's `retry_at`: when the account may submit again (unix ms)


@final
class World:
    """Nodes, providers, receivers and clients on one simulated network (see the module docstring)."""

    def __init__(
        self,
        *,
        simulation: Simulation,
        scenario: Scenario,
        network: SimulatedNetwork,
        nursery: trio.Nursery,
        clustered: bool = True,
        store_wrapper: StoreWrapper | None = None,
        node_patch: NodePatch | None = None,
        on_delivery: Callable[[DeliveryReport], None] = lambda report: None,
    ) -> None:
        self.simulation = simulation
        self.scenario = scenario
        self.network = network
        self.clustered = clustered
        self._nursery = nursery
        self._store_wrapper = store_wrapper
        self._node_patch = node_patch
        self.http = SimulatedHttp(
            rng=simulation.rng_for("http"),
            trace=simulation.trace,
            paths=self._path_state,
            spikes=self._delay_spike_s,
            cpu=self.cpu_of_host,
            latency=scenario.network.http_latency(),
        )
        self.calibration = scenario.cpu.load() if scenario.cpu.enabled else None
        self._machine: CpuQueue | None = None  # the shared machine's queue, with `machine_cores`
        self.nodes = {
            name: SimNode(name, scenario.cluster.region_of(name), f"127.0.1.{index}", cpu=self._node_cpu())
            for index, name in enumerate(scenario.cluster.node_names, start=1)
        }
        self._by_host = {node.host: node for node in self.nodes.values()}
        network.cpu = self.cpu_of_host
        self._region_by_host = {node.host: node.region for node in self.nodes.values()}
        self.cluster_key = simulation.rng_for("cluster/keyring").randbytes(32).hex()
        self.providers = {spec.name: self._provider(spec) for spec in scenario.providers}
        self._provider_regions = {spec.name: frozenset(spec.regions) for spec in scenario.providers}
        self.receivers = {
            spec.name: WebhookReceiver(
                name=spec.name,
                latency=LognormalLatency(spec.latency_median_s, spec.latency_p99_s),
                failure_rate=spec.failure_rate,
                rng=simulation.rng_for(f"receiver/{spec.name}"),
                on_delivery=on_delivery,
            )
            for spec in scenario.receivers
        }
        for name, provider in self.providers.items():
            self.http.mount(f"{provider_host(name)}:80", provider)
        for name, receiver in self.receivers.items():
            self.http.mount(f"{receiver_host(name)}:80", receiver)
        # Faults the HTTP paths apply (simulations/faults.py sets and clears them).
        self.provider_outages: set[tuple[str, str]] = set()  # (provider, region or "" for every region)
        self.receiver_outages: set[str] = set()
        self.intents: dict[str, JobIntent] = {}  # by idempotency key (see the module docstring)
        self.resubmitted: set[str] = set()  # idempotency keys whose submission was tried on more than one node
        self.crashes: list[tuple[float, str]] = []  # (virtual time, node) of every crash
        self._client = self.http.for_source(CLIENT_HOST)
        self._next_node = itertools.cycle(list(self.nodes))
        self._config = {name: self._node_config(node) for name, node in self.nodes.items()}

    def __repr__(self) -> str:
        up = sum(node.running is not None for node in self.nodes.values())
        return f"<World {self.scenario.name}: {up}/{len(self.nodes)} nodes up | {self.network!r}>"

    # -- nodes --------------------------------------------------------------------------------------------------

    def _node_cpu(self) -> NodeCpu | None:
        """A new node's CPU: a queue of its own, or the machine's that every node shares."""
        if self.calibration is None:
            return None
        spec = self.scenario.cpu
        if spec.machine_cores:
            if self._machine is None:
                self._machine = CpuQueue(spec.machine_cores)
            return NodeCpu(self._machine, self.calibration, shared=True)
        return NodeCpu(CpuQueue(spec.node_cores(self.calibration)), self.calibration, shared=False)

    @staticmethod
    async def _background(machine: CpuQueue, cores: float) -> None:
        """Other processes keeping `cores` of the machine busy (see BACKGROUND_TICK_S), until the run ends."""
        while True:
            now = trio.current_time()
            remaining_s = cores * BACKGROUND_TICK_S
            while remaining_s > 0:
                machine.charge(now, min(remaining_s, BACKGROUND_TICK_S))
                remaining_s -= BACKGROUND_TICK_S
            await trio.sleep(BACKGROUND_TICK_S)

    def cpu_of_host(self, host: str) -> NodeCpu | None:
        node = self._by_host.get(host)
        return None if node is None else node.cpu

    def running_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.running is not None]

    def region_of_host(self, host: str) -> str:
        return self._region_by_host.get(host, "")

    async def start_all(self) -> None:
        """Start every node at once (they find each other through their seeds) and wait until all are up; and the
        other processes of a shared machine, if it has any."""
        if self._machine is not None and self.scenario.cpu.background_cores:
            self._nursery.start_soon(self._background, self._machine, self.scenario.cpu.background_cores)
        async with trio.open_nursery() as starting:
            for name in self.nodes:
                starting.start_soon(self.start, name)

    async def start(self, name: str) -> None:
        """Boot `name` over its kept data; returns once it serves its API (after its bounded join wait), or once
        a crash stopped it while it was booting (a crash fault may come before a restart's join wait is over)."""
        node = self.nodes[name]
        if node.scope is not None:
            raise RuntimeError(f"{name} is already running")
        node.boots += 1
        node.scope = trio.CancelScope()
        self.simulation.trace.record(f"world start {name} boot {node.boots}")
        await self._nursery.start(self._run_node, node, node.scope)

    def lose_disk(self, name: str) -> None:
        """Empty the disk of `name`, which is down: its next start begins with nothing but its configuration."""
        node = self.nodes[name]
        if node.scope is not None:
            raise RuntimeError(f"{name} is running: crash it before its disk is lost")
        node.data = MemoryStoreData()
        self.simulation.trace.record(f"world disk lost {name}")

    def crash(self, name: str) -> None:
        """Stop `name` at once, without leaving: its API stops answering and its in-memory state is gone."""
        node = self.nodes[name]
        if node.scope is None:
            raise RuntimeError(f"{name} is not running")
        if node.running is not None:
            self.http.unmount(node.api_authority)
        node.scope.cancel()
        node.scope = None
        node.running = None
        if node.cpu is not None:
            node.cpu.reset()
        self.crashes.append((trio.current_time(), name))
        self.simulation.trace.record(f"world crash {name}")

    async def _run_node(
        self, node: SimNode, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        runtime = simulated_runtime(
            self.simulation,
            f"{node.name}/boot-{node.boots}",
            transport=self.http.for_source(node.host),
            cluster_transport=self.network.open_transport if self.clustered else None,
        )
        started = False
        with scope:
            async with (
                open_memory_store(node.data) as durable,
                self._wrap(durable) as store,
                trio.open_nursery() as server,
            ):
                running: Node = await server.start(
                    partial(run_node, self._config[node.name], runtime, store=store, serve_http=False)
                )
                if self._node_patch is not None:
                    self._node_patch(running)
                self.http.mount(node.api_authority, running.app, nursery=server)
                node.running = running
                task_status.started()
                started = True
        if not started:  # crashed while it was booting: `start` returns with the node down again
            task_status.started()

    def _wrap(self, store: Store) -> Any:
        return contextlib.nullcontext(store) if self._store_wrapper is None else self._store_wrapper(store)

    def _node_config(self, node: SimNode) -> Config:
        cluster = ClusterConfig()
        if self.clustered:
            cluster = ClusterConfig(
                bind=node.gossip_address,
                api_advertise=node.api_authority,
                region=node.region,
                seeds=tuple(other.gossip_address for other in self.nodes.values() if other is not node),
                keys=(bytes.fromhex(self.cluster_key),),
                profile=self.scenario.cluster.profile,
                replicas=self.scenario.cluster.replicas,
            )
        return Config(
            server=ServerConfig(listen=node.api_authority, data_dir=Path("simulated", node.name), node_id=node.name),
            security=SecurityConfig(allow_private_targets=True),
            webhooks=WebhooksConfig(schedule_s=WEBHOOK_SCHEDULE_S, repeat_every_s=WEBHOOK_REPEAT_S),
            cluster=cluster,
            accounts=tuple(
                AccountConfig(
                    id=tenant.name,
                    key_sha256=hashlib.sha256(account_key(tenant.name).encode()).digest(),
                    plan=tenant.plan_name,
                )
                for tenant in self.scenario.tenants
            ),
            plans=tuple(
                PlanConfig(
                    name=plan.name,
                    monthly_requests=plan.monthly_requests,
                    overage_requests_max=plan.overage_requests_max,
                )
                for plan in self.scenario.plans
            ),
            targets=tuple(_target(spec) for spec in self.scenario.providers),
        )

    # -- the outside world -----------------------------------------------------------------------------------------

    def _provider(self, spec: ProviderSpec) -> Provider:
        return Provider(
            name=spec.name,
            rate_limit_rps=spec.rate_limit_rps,
            burst=spec.burst,
            signal=spec.signal,
            latency=LognormalLatency(spec.latency_median_s, spec.latency_p99_s),
            error_rate=spec.error_rate,
            rng=self.simulation.rng_for(f"provider/{spec.name}"),
            region_of=self.region_of_host,
            latency_by_region={
                latency.region: LognormalLatency(latency.latency_median_s, latency.latency_p99_s)
                for latency in spec.region_latency
            },
        )

    def _delay_spike_s(self, source: str, destination: str) -> float:
        """Node to node, HTTP (forwarding, hand-offs) meets the same delay spikes as gossip: what a `delay` fault
        raised the network's delay ceiling by, above the scenario's own."""
        if source not in self._region_by_host or destination not in self._region_by_host:
            return 0.0
        return max(0.0, self.network.faults.delay_max_s - self.scenario.network.delay_max_s)

    def _path_state(self, source: str, destination: str) -> PathState:
        if (source, destination) in self.network.blocked:
            return PathState.BLACKHOLE
        if destination.endswith(".hooks.sim"):
            receiver = destination.removesuffix(".hooks.sim")
            return PathState.REFUSED if receiver in self.receiver_outages else PathState.OPEN
        if destination.endswith(".sim"):
            provider = destination.removesuffix(".sim")
            region = self.region_of_host(source)
            regions = self._provider_regions.get(provider, frozenset())
            if (regions and region not in regions) or (provider, "") in self.provider_outages:
                return PathState.REFUSED
            if (provider, region) in self.provider_outages:
                return PathState.REFUSED
        return PathState.OPEN

    # -- clients ---------------------------------------------------------------------------------------------------

    def job_body(self, tenant: TenantSpec, sequence: int, key_index: int) -> dict[str, Any]:
        """A job of `tenant` for its `key_index`-th credential; the fields a tenant leaves at their defaults are left
        out, so plain jobs are as they always were. Registers the job's intent (see the module docstring)."""
        key = f"{tenant.name}-{sequence}"
        body: dict[str, Any] = {
            "url": f"http://{provider_host(tenant.provider)}/v1/{tenant.name}",
            "method": "POST",
            "headers": {"Authorization": credential(tenant.name, key_index)},
            "body": f"job {sequence}",
            "idempotent_key": key,
            "metadata": {"tenant": tenant.name},
            "webhooks": [{"url": f"http://{receiver_host(name)}/{tenant.name}"} for name in tenant.receivers],
            "webhook_quorum": tenant.quorum,
        }
        if tenant.regions:
            body["regions"] = list(tenant.regions)
        if tenant.execution_mode != "race":
            body["execution_mode"] = tenant.execution_mode
        if tenant.region_policy != "fallback":
            body["region_policy"] = tenant.region_policy
        if tenant.send_idempotency_key:
            body["send_idempotency_key"] = True
        follow_ups = tuple(kind for kind in FOLLOW_UPS if getattr(tenant, kind))
        for kind in follow_ups:
            body[kind] = self._follow_up_body(tenant, sequence, key_index, kind)
            self.intents[f"{key}#{kind}"] = JobIntent(tenant.name, parent_key=key, kind=kind)
        self.intents[key] = JobIntent(
            tenant.name, tenant.regions, tenant.execution_mode, tenant.region_policy, follow_ups=follow_ups
        )
        return body

    def _follow_up_body(self, tenant: TenantSpec, sequence: int, key_index: int, kind: str) -> dict[str, Any]:
        """A follow-up: one more call with the same credential, its idempotency key the node's derived one."""
        body: dict[str, Any] = {
            "url": f"http://{provider_host(tenant.provider)}/v1/{tenant.name}/{kind}",
            "method": "POST",
            "headers": {"Authorization": credential(tenant.name, key_index)},
            "body": f"job {sequence} {kind}",
            "metadata": {"tenant": tenant.name, "follow_up": kind},
        }
        if tenant.send_idempotency_key:
            body["send_idempotency_key"] = True
        return body

    async def submit(self, tenant: TenantSpec, body: dict[str, Any]) -> Submission:
        """POST a job to the next node round-robin; on no answer (a node down, a cut request) the next one."""
        content = json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {account_key(tenant.name)}", "Content-Type": "application/json"}
        for try_index in range(min(SUBMIT_NODES_TRIED_MAX, len(self.nodes))):
            if try_index:
                self.resubmitted.add(str(body.get("idempotent_key")))
            node = self.nodes[next(self._next_node)]
            url = parsed_url(f"http://{node.api_authority}/api/v1/jobs")
            request = httpx.Request("POST", url, headers=headers, content=content)
            try:
                response = await self._client.handle_async_request(request)
            except httpx.TransportError:
                continue
            answer = json.loads(await response.aread())
            problem = answer.get("type")
            return Submission(
                response.status_code,
                answer.get("job_id"),
                node.name,
                problem=problem.removeprefix(PROBLEM_TYPE_BASE) if isinstance(problem, str) else None,
                retry_at_ms=answer.get("retry_at"),
            )
        return Submission(None, None, None)

    async def find_job(self, job_id: str, account: str) -> dict[str, Any] | None:
        """GET a job through the first running node that answers; None when no node knows it."""
        headers = {"Authorization": f"Bearer {account_key(account)}"}
        for node in self.running_nodes():
            request = httpx.Request("GET", f"http://{node.api_authority}/api/v1/jobs/{job_id}", headers=headers)
            try:
                response = await self._client.handle_async_request(request)
            except httpx.TransportError:
                continue
            body = await response.aread()
            if response.status_code == 200:
                return dict(json.loads(body))
            if response.status_code == 404:
                return None
        return None

    # -- what invariants read ------------------------------------------------------------------------------------

    def plan_of(self, tenant: TenantSpec) -> PlanConfig:
        """The plan the nodes enforce on the tenant's account (every node has the same configuration)."""
        return next(iter(self._config.values())).plan(tenant.plan_name)

    def durable_job(self, job_id: str) -> tuple[str, EncodedJob] | None:
        """(node, encoded job) for the latest copy of `job_id` on any node's disk: the highest revision (copies on
        a key's successors trail its owner's), a terminal one among equals."""
        copies = [(node.name, job) for node in self.nodes.values() if (job := node.data.jobs.get(job_id)) is not None]
        return max(copies, key=lambda copy: (copy[1].revision, copy[1].status in TERMINAL_STATUSES), default=None)

    def down_disks_hold(self, job_id: str) -> bool:
        """Whether the disk of a node that is down holds `job_id` (it may run it when it is back)."""
        return any(node.running is None and job_id in node.data.jobs for node in self.nodes.values())

    def disks(self) -> list[tuple[str, MemoryStoreData]]:
        """(node, durable data) of every node, up or down."""
        return [(node.name, node.data) for node in self.nodes.values()]

    def converged(self) -> bool:
        """Every running node sees exactly the running nodes as live members (trivially true unclustered)."""
        running = self.running_nodes()
        expected = {node.name for node in running}
        for node in running:
            assert node.running is not None
            member = node.running.membership
            if member is not None and {info.node for info in member.live_members()} != expected:
                return False
        return True


def _target(spec: ProviderSpec) -> TargetConfig:
    """A provider's origin as the operator configures it: its per-credential rate, and enough concurrency to
    keep that rate up at the provider's p99 latency (in its slowest region)."""
    concurrency = max(2, math.ceil(spec.rate_limit_rps * spec.latency_p99_max_s) + 1)
    origin = f"http://{provider_host(spec.name)}"
    return TargetConfig(origin=origin, rps=spec.rate_limit_rps, max_concurrent=concurrency)
