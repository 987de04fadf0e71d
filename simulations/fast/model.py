"""The fast model: a scenario's cluster as the pure cores on one discrete-event loop, with each node's CPU modelled.

What runs for real, as the node runs it: the job engine's queue core (`edge.engine.queue.Queues` and its
`OutboundQueue`s, so GCRA pacing, the concurrency cap, 429 blocks, backoff and retries, the account backlog),
rendezvous ownership (`cluster.ownership.Rendezvous`), the webhook retry schedule (`edge.engine.delivery.advance`),
the takeover wait (`cluster.lease.takeover_wait`) and the providers' answers (`simulations.upstream.UpstreamCore`,
the same object the full model serves over HTTP). The tenants', providers' and receivers' random streams are the
full model's (`_rng`), so on one seed both models see the same arrivals, keys and latencies.
What is modelled instead of run:
- the network: every leg (client to node, node to node, node to provider or receiver) takes the full model's
  one-way delay (`simulations.http.Latency`, uniform), plus a `delay` fault's spike on node-to-node legs;
- a job's path, leg by leg as the node takes it: the client's node, a forward to the key's owner, the owner's save
  and its copy on the key's first successor that is up (a round trip the 201 waits for, `cluster.replicas` >= 2),
  the queue, the attempt, the terminal save's copy (which the webhooks wait for), each webhook try (a try not
  handled within `[webhooks] timeout_s` failed), and the copy of the final webhook outcome. A key with a copy nobody
  waits for that is late by STALL_S dispatches nothing until its copies are in (edge/placement/replication.py);
- CPU (simulations/cpu.py): the operations cost what the scenario's calibration says (`cost_at`, by the node's
  operations in flight), booked where the full model's `NodeCpu` (simulations/world.py) books them: REFUSAL when
  a submission reaches its node, the rest of SUBMIT or FORWARD before its 201 leaves, ACCEPT on the owner of a
  forwarded one, REPLICATE on a successor per copy, ATTEMPT and WEBHOOK once their answer is back; GOSSIP for a
  SWIM probe each way per probe interval, and for a gossip round while the usage counters a node changed are
  retransmitted; and a shared machine's `background_cores`;
- membership: no SWIM core runs. Every node sees the same member list. A crashed node leaves it after a typical
  failure detection (`_detection_s`); its keys go to their next owner by rendezvous, which runs the copies of their
  unfinished jobs once the takeover wait is over; while no majority of the members is up, no key runs (the
  majority lease). A restarted node is back in the list at once and the waiting jobs of its keys are handed back
  to it; one that restarts before it was declared dead keeps its keys.
Not modelled (`unsupported` names them, and the model refuses them): partitions, datagram loss and duplication
(their effect is on membership, which is not simulated), jobs with regions or follow-ups, plans with a monthly
allowance, and the invariants (a fast run checks none: its report's `violations` is always empty). Nor are the
deadlines of forwards and replication (`cluster.forward_deadline_s`) or of attempts: they bite only on a node
saturated for many seconds, where the full model's figures are the ones to trust.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, final

from cluster.broadcast import retransmit_limit
from cluster.config import SwimConfig
from cluster.lease import takeover_wait
from cluster.ownership import Rendezvous
from cluster.suspicion import suspicion_timeout_bounds
from edge.config import DefaultsConfig, ServerConfig, WebhooksConfig
from edge.engine.delivery import DeliverySchedule, advance
from edge.engine.outcome import AttemptResult
from edge.engine.queue import (
    BacklogFull,
    Conclude,
    Dispatch,
    OutboundQueue,
    Queues,
    RetrySettings,
    Settlement,
    WaitUntil,
)
from edge.engine.records import Delivery, JobRecord
from edge.engine.spec import JobSpec, queue_key, validate_job
from edge.placement.replication import STALL_S
from scheduler import QueueLimits

from ..actors import DeliveryReport
from ..cpu import Calibration, CpuQueue, Operation
from ..determinism import derive_seed
from ..http import Latency
from ..invariants import LIMIT_WINDOW_S
from ..report import CPU_SERIES_PREFIX
from ..run import SAMPLE_INTERVAL_S, RunReport, _tier_stats, sample_outcomes
from ..runtime import SIMULATED_EPOCH_S
from ..scenario import NODE_FAULTS, FaultSpec, Scenario, TenantSpec
from ..upstream import LognormalLatency, UpstreamCore, arrival_times
from ..workload import OPEN_LOOP_OUTSTANDING_MAX, JobEntry, Ledger
from ..world import (
    BACKGROUND_TICK_S,
    SUBMIT_NODES_TRIED_MAX,
    WEBHOOK_REPEAT_S,
    WEBHOOK_SCHEDULE_S,
    _target,
    credential,
    provider_host,
)
from .loop import EventLoop

# The faults whose effect the fast model cannot show (see the module docstring).
UNSUPPORTED_FAULTS: Final = ("partition", "loss", "duplication")
# Datagrams one node sends or receives per SWIM probe interval when nothing fails: its probe's ping and ack, and
# the ping it is probed with and its ack (one probe per member per interval, memberlist's round robin).
GOSSIP_DATAGRAMS_PER_PROBE: Final = 4
PROGRESS_STEPS: Final = 100
# Successors of a key known to its owner: a save's copy goes to the first that is up.
SUCCESSORS_KNOWN: Final = 2
SWIM_PROFILES: Final = {"lan": SwimConfig.lan, "wan": SwimConfig.wan, "local": SwimConfig.local}


class UnsupportedScenario(ValueError):
    """The scenario asks for something the fast model does not model; the message lists what."""


def unsupported(scenario: Scenario) -> list[str]:
    """What in `scenario` the fast model cannot run (empty: it can), one readable line each."""
    problems = [
        f"faults[{index}]: {fault.kind} (membership is not simulated; use --model full)"
        for index, fault in enumerate(scenario.faults)
        if fault.kind in UNSUPPORTED_FAULTS
    ]
    for index, tenant in enumerate(scenario.tenants):
        if tenant.regions or tenant.on_success or tenant.on_failure:
            problems.append(f"tenants[{index}] ({tenant.name}): jobs with regions or follow-ups")
    problems += [
        f"plans: {plan.name} has a monthly allowance (quotas are not metered)"
        for plan in scenario.plans
        if plan.allowance is not None
    ]
    return problems


@final
@dataclass(slots=True, eq=False)
class _Node:
    name: str
    region: str
    cpu: CpuQueue
    queues: Queues
    rng: random.Random
    up: bool = True
    boot: int = 0  # bumped by every crash and restart: callbacks booked for an earlier boot do nothing
    in_view: bool = True  # the other members count it (not yet declared dead)
    held: list[JobRecord] = field(default_factory=list)  # unfinished jobs on its disk while it is down
    wake_at: dict[str, float] = field(default_factory=dict)  # queue key -> the wake-up booked for it
    busy_s: float = 0.0  # CPU it booked (its own share of a shared machine's)
    busy_sampled_s: float = 0.0
    busy_at_workload_s: tuple[float, float] = (0.0, 0.0)  # busy_s when the workload started and ended
    counted_at: float = -math.inf  # when it last took a job (and so changed a usage counter)
    booked: list[float] = field(default_factory=list)  # a heap: when each operation it booked is done


@final
@dataclass(slots=True, eq=False)
class _Tenant:
    spec: TenantSpec
    rng: random.Random
    times: Iterator[float]
    outstanding_max: int
    sequence: int = 0
    outstanding: int = 0
    blocked: bool = False  # an arrival waits for a free worker (closed loop)


@final
@dataclass(slots=True, eq=False)
class _Webhook:
    """One webhook of a finished job, from its first try to its last, run by the job's owner in one boot."""

    node: _Node
    boot: int
    job: _Job
    status: str
    finished_ms: int
    delivery: Delivery
    started: float  # when its current try left the node


@final
@dataclass(slots=True, eq=False)
class _Job:
    tenant: _Tenant
    job_id: str
    key_index: int
    queue_key: str
    spec: JobSpec
    submitted_at: float
    entry: JobEntry | None = None  # once its acknowledgement reached the client
    finished: tuple[str, float] | None = None  # (status, at) once terminal, for a job without webhooks
    deliveries_open: int = 0  # its webhooks not yet delivered nor given up


@final
class FastModel:
    """One run of a scenario on the fast model (see the module docstring); `run()` gives its RunReport."""

    def __init__(self, scenario: Scenario, *, seed: int) -> None:
        problems = unsupported(scenario)
        if problems:
            raise UnsupportedScenario("the fast model cannot run this scenario: " + "; ".join(problems))
        self.scenario = scenario
        self.seed = seed
        self.loop = EventLoop()
        self.ledger = Ledger()
        self._calibration, self._cores, self._machine = _cpu_model(scenario)
        self._swim = SWIM_PROFILES[scenario.cluster.profile]()
        self._latency = Latency()
        self._net_rng = self._rng("fast/network")
        self._spike_s = 0.0
        self._workload_start = scenario.warmup_s
        self._workload_end = self._workload_start + scenario.duration_s
        self._end = self._workload_end + scenario.drain_s
        defaults, server = DefaultsConfig(), ServerConfig()
        self._retry = RetrySettings(defaults.backoff_base_s, defaults.backoff_cap_s)
        self._deadline_ms = int(defaults.job_deadline_s * 1000)
        self._backlog_max = server.account_backlog_max
        self._webhook_schedule = DeliverySchedule(schedule_s=WEBHOOK_SCHEDULE_S, repeat_every_s=WEBHOOK_REPEAT_S)
        # Each provider's origin as the full model's operator configures it (rps and concurrency both set).
        targets = [_target(spec) for spec in scenario.providers]
        self._limits = {target.origin: (target.rps or defaults.rps, target.max_concurrent or 1) for target in targets}
        self._nodes = {
            name: _Node(
                name,
                scenario.cluster.region_of(name),
                self._machine or CpuQueue(self._cores),
                self._new_queues(),
                self._rng(f"fast/node/{name}"),
            )
            for name in scenario.cluster.node_names
        }
        self._round_robin = itertools.cycle(list(self._nodes.values()))
        self._ring = Rendezvous(self._nodes)
        self._members = len(self._nodes)  # in the view (`_ring`)
        self._up = len(self._nodes)  # running
        self._owners: dict[str, list[_Node]] = {}  # queue key -> `_ranked`
        self._providers = {
            spec.name: UpstreamCore(
                rate_limit_rps=spec.rate_limit_rps,
                burst=spec.burst,
                signal=spec.signal,
                latency=LognormalLatency(spec.latency_median_s, spec.latency_p99_s),
                error_rate=spec.error_rate,
                rng=self._rng(f"provider/{spec.name}"),
                latency_by_region={
                    latency.region: LognormalLatency(latency.latency_median_s, latency.latency_p99_s)
                    for latency in spec.region_latency
                },
            )
            for spec in scenario.providers
        }
        self._provider_regions = {spec.name: frozenset(spec.regions) for spec in scenario.providers}
        self._receivers = {
            spec.name: (LognormalLatency(spec.latency_median_s, spec.latency_p99_s), spec.failure_rate)
            for spec in scenario.receivers
        }
        self._receiver_rng = {spec.name: self._rng(f"receiver/{spec.name}") for spec in scenario.receivers}
        self._provider_outages: set[tuple[str, str]] = set()
        self._receiver_outages: set[str] = set()
        self._specs: dict[tuple[str, int], tuple[JobSpec, str]] = {}
        self._jobs: dict[str, _Job] = {}
        # (the view before, the fallen member, until when) of each takeover wait in progress.
        self._takeovers: list[tuple[Rendezvous, str, float]] = []
        self._unconfirmed: dict[str, list[tuple[float, float]]] = {}  # key -> (sent, confirmed at) of late copies
        self._webhook_timeout_s = WebhooksConfig().timeout_s
        self._tenants = [self._tenant(spec) for spec in scenario.tenants]
        self.upstream_requests = 0
        self.upstream_429s = 0
        self.crashes: list[tuple[float, str]] = []
        self.fault_schedule: list[str] = []
        # (at, node) of every provider call by credential; kept only when a crash needs it for the failover time.
        self._calls: dict[str, list[tuple[float, str]]] | None = (
            {} if any(fault.kind in NODE_FAULTS for fault in scenario.faults) else None
        )
        self.series: dict[str, list[tuple[float, float]]] = {"queue_depth": []}
        for tier in sorted({tenant.tier for tenant in scenario.tenants}):
            self.series[f"latency_p99_s/{tier}"] = []
        for tenant in scenario.tenants:
            self.series[f"throughput/{tenant.name}"] = []
        for name in self._nodes:
            self.series[f"{CPU_SERIES_PREFIX}{name}"] = []
        self._seen_terminal = 0

    def _rng(self, label: str) -> random.Random:
        """The stream the full model draws under `label` (simulations/determinism.py `rng_for`): the same seed gives
        the same arrivals, keys, provider and receiver draws in both models, so their figures differ by what each
        models, not by luck. The fast model's own streams (network legs, nodes) are labelled "fast/..."."""
        return random.Random(derive_seed(self.seed, label))

    def _new_queues(self) -> Queues:
        def limits_for(origin: str) -> QueueLimits:
            rps, concurrency = self._limits[origin]
            return QueueLimits(rps, concurrency, rps_source="config", concurrency_source="config")

        return Queues(limits_for, self._retry)

    def _tenant(self, spec: TenantSpec) -> _Tenant:
        rng = self._rng(f"tenant/{spec.name}")
        times = arrival_times(spec.arrival, spec.rate_per_s, rng, start_s=self._workload_start)
        return _Tenant(spec, rng, times, spec.workers or OPEN_LOOP_OUTSTANDING_MAX)

    # -- the run ----------------------------------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> RunReport:
        wall_started = time.perf_counter()
        loop = self.loop
        for tenant in self._tenants:
            self._next_arrival(tenant)
        for node in self._nodes.values():
            self._start_gossip(node)
        if self._machine is not None and self.scenario.cpu.background_cores:
            loop.at(0.0, self._background, self._machine, self.scenario.cpu.background_cores)
        loop.at(self._workload_start, self._mark_workload, 0)
        loop.at(self._workload_end, self._mark_workload, 1)
        for fault in self.scenario.faults:
            loop.at(self._workload_start + fault.at_s, self._apply, fault)
            if fault.duration_s is not None:
                loop.at(self._workload_start + fault.end_s, self._heal, fault)
        reported = -1
        now = 0.0
        while now < self._end:
            now = min(self._end, now + SAMPLE_INTERVAL_S)
            loop.run_until(now)
            self._sample(now)
            step = int(PROGRESS_STEPS * now / self._end)
            if progress is not None and step > reported:
                reported = step
                progress(step / PROGRESS_STEPS)
        return self._report(time.perf_counter() - wall_started)

    # -- clients ----------------------------------------------------------------------------------------------------

    def _next_arrival(self, tenant: _Tenant) -> None:
        at = next(tenant.times, math.inf)
        if at < self._workload_end:
            self.loop.at(at, self._arrive, tenant)

    def _arrive(self, tenant: _Tenant) -> None:
        """As workload.py's `run_tenant`: a submitter that waits for a free worker draws no later arrival until
        it has one, then submits at once; the key is drawn as the submission starts, before the next arrival."""
        if tenant.outstanding >= tenant.outstanding_max:
            tenant.blocked = True
            return
        self._submit(tenant)
        self._next_arrival(tenant)

    def _submit(self, tenant: _Tenant) -> None:
        spec = tenant.spec
        sequence, tenant.sequence = tenant.sequence, tenant.sequence + 1
        key_index = tenant.rng.randrange(spec.keys)
        job_spec, key = self._spec(spec, key_index)
        self.ledger.counts_for(spec.tier).submitted += 1
        self.ledger.tenant(spec.name).submitted += 1
        tenant.outstanding += 1
        job = _Job(tenant, f"{spec.name}-{sequence}", key_index, key, job_spec, self.loop.now)
        self._try_node(job, 0)

    def _spec(self, tenant: TenantSpec, key_index: int) -> tuple[JobSpec, str]:
        """The job (and queue key) a tenant's `key_index`-th credential submits, validated once per credential."""
        cached = self._specs.get((tenant.name, key_index))
        if cached is None:
            body = {
                "url": f"http://{provider_host(tenant.provider)}/v1/{tenant.name}",
                "method": "POST",
                "headers": {"Authorization": credential(tenant.name, key_index)},
                "webhooks": [{"url": f"http://{name}.hooks.sim/{tenant.name}"} for name in tenant.receivers],
                "webhook_quorum": tenant.quorum,
            }
            spec = validate_job(body)
            key = queue_key(account_id=tenant.name, plan=tenant.plan_name, job=spec, account_queue=True)
            cached = self._specs[(tenant.name, key_index)] = (spec, key)
        return cached

    def _answered(self, job: _Job, at: float, *, accepted: bool, owner: _Node | None = None) -> None:
        """The client hears back at `at`: acknowledged by `owner`'s queue, or refused (shed)."""
        self.loop.at(at, self._client_hears, job, accepted, owner)

    def _client_hears(self, job: _Job, accepted: bool, owner: _Node | None) -> None:
        tenant = job.tenant
        spec = tenant.spec
        if accepted:
            assert owner is not None
            self.ledger.tenant(spec.name).judged.append((job.submitted_at, self.loop.now))
            job.entry = JobEntry(
                job_id=job.job_id,
                tenant=spec.name,
                tier=spec.tier,
                submitted_at=job.submitted_at,
                acked_at=self.loop.now,
                node=owner.name,
                quorum=spec.quorum,
                receivers=len(spec.receivers),
                idempotent_key=job.job_id,
            )
            self.ledger.acknowledge(job.entry)
            if job.finished is not None:
                self.ledger.mark_terminal(job.entry, *job.finished)
        else:
            self.ledger.counts_for(spec.tier).shed += 1
        tenant.outstanding -= 1
        if tenant.blocked:
            tenant.blocked = False
            self._arrive(tenant)

    # -- a submission's path ----------------------------------------------------------------------------------------

    def _leg(self) -> float:
        return self._net_rng.uniform(self._latency.min_s, self._latency.max_s)

    def _node_leg(self) -> float:
        leg = self._leg()
        return leg + self._net_rng.uniform(0.0, self._spike_s) if self._spike_s > 0.0 else leg

    def _try_node(self, job: _Job, tries: int) -> None:
        self.loop.at(self.loop.now + self._leg(), self._at_entry, job, next(self._round_robin), tries)

    def _at_entry(self, job: _Job, node: _Node, tries: int) -> None:
        if not node.up:  # refused: the client tries the next node
            if tries + 1 < min(SUBMIT_NODES_TRIED_MAX, len(self._nodes)):
                self._try_node(job, tries + 1)
            else:
                self._answered(job, self.loop.now + self._leg(), accepted=False)
            return
        done = self._spend(node, self.loop.now, Operation.REFUSAL)  # every submission is judged first
        owner = self._owner(job.queue_key)
        if owner is node:
            self.loop.at(done, self._admit, job, node, node, node.boot)
        else:
            self.loop.at(done + self._node_leg(), self._forwarded, job, node, node.boot, owner)

    def _forwarded(self, job: _Job, entry: _Node, entry_boot: int, owner: _Node) -> None:
        if entry.boot != entry_boot:  # it crashed with the request: the client tries the next node
            self._try_node(job, 0)
        elif not owner.up:  # the forward is refused: the client's node answers 503
            self._answered(job, self.loop.now + self._node_leg() + self._leg(), accepted=False)
        else:
            done = self._spend(owner, self.loop.now, Operation.ACCEPT)
            self.loop.at(done, self._admit, job, owner, entry, owner.boot)

    def _admit(self, job: _Job, owner: _Node, entry: _Node, boot: int) -> None:
        if owner.boot != boot:  # it crashed with the request: the client tries the next node
            self._try_node(job, 0)
            return
        account = job.tenant.spec.name
        try:
            owner.queues.admit(account, self._backlog_max)
        except BacklogFull:  # 429: nothing more is charged for a refusal
            back_s = (0.0 if owner is entry else self._node_leg()) + self._leg()
            self._answered(job, self.loop.now + back_s, accepted=False)
            return
        owner.queues.admitted(account)  # saved (a memory store saves at once), as the node's submit does
        owner.counted_at = self.loop.now  # the account's usage counter changed: gossip carries it
        wall_ms = self._wall_ms()
        record = JobRecord(
            job_id=job.job_id,
            account_id=account,
            idempotent_key=job.job_id,
            queue_key=job.queue_key,
            spec=job.spec,
            created_at_ms=wall_ms,
            updated_at_ms=wall_ms,
            deadline_at_ms=wall_ms + self._deadline_ms,
        )
        self._jobs[job.job_id] = job
        copied_at = self.loop.now + self._copy_s(job.queue_key)
        self.loop.at(copied_at, self._enqueue, job, owner, owner.boot, record, entry)

    def _spend(
        self, node: _Node, at: float, operation: Operation, times: float = 1.0, *, less: Operation | None = None
    ) -> float:
        """As `NodeCpu.spend` (simulations/world.py): book `times` `operation` from `at`, less one `less`, at its
        cost with the node's operations then in flight (booked, not yet done; this one included); when it is
        done. Without the CPU model, nothing."""
        if self._calibration is None:
            return at
        booked = node.booked
        while booked and booked[0] <= at:
            heapq.heappop(booked)
        in_flight = len(booked) + 1
        cost_s = times * self._calibration.cost_at(operation, in_flight)
        if less is not None:
            cost_s = max(0.0, cost_s - self._calibration.cost_at(less, in_flight))
        node.busy_s += cost_s
        done = node.cpu.charge(at, cost_s)
        heapq.heappush(booked, done)
        return done

    def _copy_s(self, key: str, *, unconfirmed: bool = False) -> float:
        """How long the save's copy takes to be on the key's first successor that is up (REPLICATE on it): none
        with one replica or one member. The successor's CPU is booked for the time the copy reaches it, possibly
        ahead of work booked later for earlier times (at most one leg early: a few ms). `unconfirmed`: a copy
        nobody waits for (`replicate_soon`), which holds the key's dispatches back once it is late (`_stalled`)."""
        if self.scenario.cluster.replicas < 2 or self._members < 2:
            return 0.0
        successor = next((node for node in self._ranked(key)[1:] if node.up), None)
        if successor is None:
            return 0.0
        arrive = self.loop.now + self._node_leg()
        copied_s = self._spend(successor, arrive, Operation.REPLICATE) + self._node_leg() - self.loop.now
        if unconfirmed:
            self._unconfirmed.setdefault(key, []).append((self.loop.now, self.loop.now + copied_s))
        return copied_s

    def _stalled_until(self, key: str) -> float | None:
        """As edge/placement/replication.py's `may_dispatch`: while the oldest of a key's unconfirmed copies is
        older than STALL_S the key dispatches nothing, until they are all confirmed. When that is, or None."""
        copies = self._unconfirmed.get(key)
        if copies is None:
            return None
        now = self.loop.now
        copies = [copy for copy in copies if copy[1] > now]
        if not copies:
            del self._unconfirmed[key]
            return None
        self._unconfirmed[key] = copies
        oldest = min(sent for sent, _confirmed in copies)
        return max(confirmed for _sent, confirmed in copies) if now - oldest > STALL_S else None

    def _enqueue(self, job: _Job, owner: _Node, boot: int, record: JobRecord, entry: _Node) -> None:
        if owner.boot != boot:  # it crashed before answering: the client was told nothing
            self._answered(job, self.loop.now, accepted=False)
            return
        queue = owner.queues.push(record, self.loop.now)
        self._drive(owner, queue)
        if owner is entry:
            self._taken(job, entry, entry.boot, owner, Operation.SUBMIT)
        else:
            answer_at = self.loop.now + self._node_leg()
            self.loop.at(answer_at, self._taken, job, entry, entry.boot, owner, Operation.FORWARD)

    def _taken(self, job: _Job, entry: _Node, boot: int, owner: _Node, operation: Operation) -> None:
        """The entry's app answered 201: the rest of `operation` (what REFUSAL did not cover) before it leaves."""
        if entry.boot != boot:  # the answer was lost with the entry: the client was told nothing
            self._answered(job, self.loop.now, accepted=False)
            return
        done = self._spend(entry, self.loop.now, operation, less=Operation.REFUSAL)
        self._answered(job, done + self._leg(), accepted=True, owner=owner)

    # -- the owner's queues -----------------------------------------------------------------------------------------

    def _wall_ms(self) -> int:
        return int((SIMULATED_EPOCH_S + self.loop.now) * 1000)

    def _drive(self, node: _Node, queue: OutboundQueue) -> None:
        """What the node's task for the key does when woken: ask the core until it says wait."""
        now = self.loop.now
        wall_ms = self._wall_ms()
        stalled_until = self._held_until(queue.key)
        while True:
            decision = queue.next(now, wall_ms, may_dispatch=stalled_until is None)
            if isinstance(decision, Dispatch):
                self._dispatch(node, queue, decision.record)
            elif isinstance(decision, Conclude):
                self._commit(node, queue, decision.settlement)
            elif isinstance(decision, WaitUntil):
                at = decision.at if stalled_until is None else min(decision.at, stalled_until)
                if at < math.inf and node.wake_at.get(queue.key, math.inf) > at:
                    node.wake_at[queue.key] = at
                    self.loop.at(at, self._wake, node, queue, at)
                return
            else:  # IDLE (an Interrupt needs a workflow, which the fast model refuses)
                return

    def _wake(self, node: _Node, queue: OutboundQueue, at: float) -> None:
        if node.wake_at.get(queue.key) != at or node.queues.get(queue.key) is not queue:
            return  # a later wake-up replaced it, or the node lost this queue in a crash
        del node.wake_at[queue.key]
        self._drive(node, queue)

    def _dispatch(self, node: _Node, queue: OutboundQueue, record: JobRecord) -> None:
        self.loop.at(self.loop.now + self._leg(), self._call, node, node.boot, queue, record, self.loop.now)

    def _call(self, node: _Node, boot: int, queue: OutboundQueue, record: JobRecord, started: float) -> None:
        if node.boot != boot:
            return
        job = self._jobs[record.job_id]
        provider_name = job.tenant.spec.provider
        regions = self._provider_regions[provider_name]
        refused = (
            (regions and node.region not in regions)
            or (provider_name, "") in self._provider_outages
            or (provider_name, node.region) in self._provider_outages
        )
        if refused:  # the connection is refused after the request's leg: no answer to handle
            result = AttemptResult(self.loop.now - started, error="ConnectError: connection refused")
            self._settle(node, boot, queue, record, result)
            return
        provider = self._providers[provider_name]
        status, headers = provider.answer(self.loop.now, credential(job.tenant.spec.name, job.key_index), node.region)
        self.upstream_requests += 1
        self.upstream_429s += status == 429
        if self._calls is not None:
            self._calls.setdefault(job.queue_key, []).append((self.loop.now, node.name))
        back = self.loop.now + provider.draw_latency(node.region) + self._leg()
        self.loop.at(back, self._handle_answer, node, boot, queue, record, started, status, tuple(headers))

    def _handle_answer(
        self,
        node: _Node,
        boot: int,
        queue: OutboundQueue,
        record: JobRecord,
        started: float,
        status: int,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        """The answer is back: ATTEMPT (handling it, saving the outcome) before the queue core judges it."""
        if node.boot != boot:
            return
        result = AttemptResult(self.loop.now - started, status_code=status, headers=headers)
        done = self._spend(node, self.loop.now, Operation.ATTEMPT)
        self.loop.at(done, self._settle, node, boot, queue, record, result)

    def _settle(self, node: _Node, boot: int, queue: OutboundQueue, record: JobRecord, result: AttemptResult) -> None:
        if node.boot != boot:
            return
        settlement = queue.settle(record.job_id, result, self.loop.now, self._wall_ms(), node.rng)
        self._commit(node, queue, settlement)
        self._drive(node, queue)

    def _commit(self, node: _Node, queue: OutboundQueue, settlement: Settlement) -> None:
        queue.commit(settlement)
        node.queues.settled(settlement)
        # Every save is copied to the key's successor; the webhooks of a job that ended wait for its copy.
        record = settlement.record
        copied_at = self.loop.now + self._copy_s(record.queue_key, unconfirmed=True)
        if settlement.is_terminal:
            self.loop.at(copied_at, self._finished, node, node.boot, record.job_id, record.status)

    # -- the end of a job: webhooks ---------------------------------------------------------------------------------

    def _finished(self, node: _Node, boot: int, job_id: str, status: str) -> None:
        if node.boot != boot:
            return
        job = self._jobs.pop(job_id)
        receivers = job.tenant.spec.receivers
        if not receivers:
            job.finished = (status, self.loop.now)
            if job.entry is not None:
                self.ledger.mark_terminal(job.entry, status, self.loop.now)
            return
        job.deliveries_open = len(receivers)
        first_at = self.loop.now + (WEBHOOK_SCHEDULE_S[0] if WEBHOOK_SCHEDULE_S else 0.0)
        for receiver in receivers:
            webhook = _Webhook(node, boot, job, status, self._wall_ms(), Delivery(url=receiver), first_at)
            self.loop.at(first_at + self._leg(), self._at_receiver, webhook)

    def _at_receiver(self, webhook: _Webhook) -> None:
        receiver = webhook.delivery.url
        if receiver in self._receiver_outages:  # refused: no answer to handle, the next try as scheduled
            self._delivery_failed(webhook, self.loop.now + self._leg())
            return
        latency, failure_rate = self._receivers[receiver]
        rng = self._receiver_rng[receiver]
        at = self.loop.now + latency.draw(rng)
        accepted = rng.random() >= failure_rate
        payload = {"job_id": webhook.job.job_id, "status": webhook.status}
        self.loop.at(at, self.ledger.on_delivery, DeliveryReport(receiver, at, payload, accepted))
        self.loop.at(at + self._leg(), self._handle_delivery, webhook, accepted)

    def _handle_delivery(self, webhook: _Webhook, accepted: bool) -> None:
        """The receiver's answer is back: WEBHOOK (handling it), then the next try or the end of this webhook. A try
        not handled within the deliverer's timeout failed (the CPU it booked is spent all the same)."""
        if webhook.node.boot != webhook.boot:
            return
        done = self._spend(webhook.node, self.loop.now, Operation.WEBHOOK)
        timeout_at = webhook.started + self._webhook_timeout_s
        if done > timeout_at:
            self._delivery_failed(webhook, timeout_at)
        elif accepted:
            self._webhook_done(webhook.job, done)
        else:
            self._delivery_failed(webhook, done)

    def _delivery_failed(self, webhook: _Webhook, at: float) -> None:
        webhook.delivery = advance(
            webhook.delivery,
            accepted=False,
            status=None,
            error="refused",
            wall_ms=int((SIMULATED_EPOCH_S + at) * 1000),
            finished_at_ms=webhook.finished_ms,
            schedule=self._webhook_schedule,
        )
        if webhook.delivery.next_at_ms is None:  # given up
            self._webhook_done(webhook.job, at)
        else:
            webhook.started = webhook.delivery.next_at_ms / 1000 - SIMULATED_EPOCH_S
            self.loop.at(webhook.started + self._leg(), self._at_receiver, webhook)

    def _webhook_done(self, job: _Job, at: float) -> None:
        """One webhook delivered or given up; once none is pending the job's webhook outcome is final, and the
        owner saves it and sends it to the key's successor (REPLICATE there; nobody waits for it)."""
        job.deliveries_open -= 1
        if job.deliveries_open == 0:
            self.loop.at(at, self._replicate, job.queue_key)

    def _replicate(self, key: str) -> None:
        self._copy_s(key, unconfirmed=True)

    # -- membership, gossip and faults ------------------------------------------------------------------------------

    def _owner(self, key: str) -> _Node:
        return self._ranked(key)[0]

    def _ranked(self, key: str) -> list[_Node]:
        """The key's owner and its next SUCCESSORS_KNOWN members in the view, cached until the view changes."""
        ranked = self._owners.get(key)
        if ranked is None:
            names = self._ring.ranked(key, SUCCESSORS_KNOWN + 1)
            assert names, "a cluster always has a member in its own view"
            ranked = self._owners[key] = [self._nodes[name] for name in names]
        return ranked

    def _set_view(self) -> None:
        self._ring = Rendezvous(name for name, node in self._nodes.items() if node.in_view)
        self._members = len(self._ring.members)
        self._owners.clear()

    def _probe(self, node: _Node, boot: int) -> None:
        if node.boot != boot:
            return
        self._spend(node, self.loop.now, Operation.GOSSIP, GOSSIP_DATAGRAMS_PER_PROBE)
        self.loop.at(self.loop.now + self._swim.probe_interval, self._probe, node, boot)

    def _gossip_round(self, node: _Node, boot: int) -> None:
        """A gossip round sends `gossip_nodes` datagrams while an update is being retransmitted: here the usage
        counters of the accounts whose jobs the node took; as many come in from the others' rounds."""
        if node.boot != boot:
            return
        members = self._members
        retransmitting_s = retransmit_limit(self._swim.retransmit_mult, members) * self._swim.gossip_interval
        if self.loop.now - node.counted_at <= retransmitting_s:
            datagrams = 2 * min(self._swim.gossip_nodes, members - 1)
            self._spend(node, self.loop.now, Operation.GOSSIP, datagrams)
        self.loop.at(self.loop.now + self._swim.gossip_interval, self._gossip_round, node, boot)

    def _background(self, machine: CpuQueue, cores: float) -> None:
        """As the full model's `World._background`: other processes on the shared machine keep `cores` of it busy,
        booked every BACKGROUND_TICK_S in slices of one core's tick."""
        remaining_s = cores * BACKGROUND_TICK_S
        while remaining_s > 0:
            machine.charge(self.loop.now, min(remaining_s, BACKGROUND_TICK_S))
            remaining_s -= BACKGROUND_TICK_S
        self.loop.at(self.loop.now + BACKGROUND_TICK_S, self._background, machine, cores)

    def _start_gossip(self, node: _Node) -> None:
        """Its SWIM timers, from a random phase (members start apart)."""
        now, swim = self.loop.now, self._swim
        self.loop.at(now + node.rng.uniform(0, swim.probe_interval), self._probe, node, node.boot)
        self.loop.at(now + node.rng.uniform(0, swim.gossip_interval), self._gossip_round, node, node.boot)

    def _apply(self, fault: FaultSpec) -> None:
        self.fault_schedule.append(fault.describe())
        if fault.kind in NODE_FAULTS:
            for name in fault.nodes:
                self._crash(self._nodes[name], disk_lost=fault.kind == "disk_loss")
        elif fault.kind == "delay":
            self._spike_s = max(0.0, fault.rate - self.scenario.network.delay_max_s)
        elif fault.kind == "upstream_outage":
            self._provider_outages.add((fault.target, fault.region))
        elif fault.kind == "upstream_errors":
            self._providers[fault.target].error_bursts[fault.region] = fault.rate
        elif fault.kind == "receiver_outage":
            self._receiver_outages.add(fault.target)

    def _heal(self, fault: FaultSpec) -> None:
        if fault.kind in NODE_FAULTS:
            for name in fault.nodes:
                self._restart(self._nodes[name])
        elif fault.kind == "delay":
            self._spike_s = 0.0
        elif fault.kind == "upstream_outage":
            self._provider_outages.discard((fault.target, fault.region))
        elif fault.kind == "upstream_errors":
            self._providers[fault.target].error_bursts.pop(fault.region, None)
        elif fault.kind == "receiver_outage":
            self._receiver_outages.discard(fault.target)

    def _crash(self, node: _Node, *, disk_lost: bool) -> None:
        if not node.up:
            return
        # Its unfinished jobs stay on its disk (and on their keys' successors' disks), in flight ones included.
        node.held = [] if disk_lost else [record for queue in node.queues for record in queue.records()]
        copies = [record for queue in node.queues for record in queue.records()]
        node.up = False
        self._up -= 1
        node.boot += 1
        node.queues = self._new_queues()
        node.wake_at.clear()
        if node.cpu is not self._machine:  # a shared machine runs on without it
            node.cpu.reset(self.loop.now)
        self.crashes.append((self.loop.now, node.name))
        self.loop.at(self.loop.now + self._detection_s(), self._declared_dead, node, node.boot, copies)

    def _detection_s(self) -> float:
        """A typical failure detection, not `SwimConfig.detection_bound`'s worst case: some member probes it within
        one probe interval, the probe times out, the suspicion ends at its minimum timeout (the other members
        confirm it at once) and one gossip round spreads the news."""
        swim = self._swim
        min_timeout_s, _max_timeout_s = suspicion_timeout_bounds(
            suspicion_mult=swim.suspicion_mult,
            max_timeout_mult=swim.suspicion_max_timeout_mult,
            member_count=self._members,
            probe_interval=swim.probe_interval,
        )
        return swim.probe_interval + swim.probe_timeout + min_timeout_s + swim.gossip_interval

    def _declared_dead(self, node: _Node, boot: int, copies: list[JobRecord]) -> None:
        """Failure detection is over: its keys move to their next owners, which run the copies of their jobs after
        the takeover wait (cluster/lease.py: the fallen member's lease must have run out)."""
        if node.boot != boot:
            return  # back before anyone noticed: it kept its keys
        swim = self._swim
        wait_s = takeover_wait(swim.probe_interval, swim.probe_timeout, self._members)
        self._takeovers.append((self._ring, node.name, self.loop.now + wait_s))
        node.in_view = False
        self._set_view()
        if self.scenario.cluster.replicas >= 2 and self._members:
            node.held = []  # its successors run the copies; its own disk is reconciled when it is back
            self._push_all(copies)

    def _held_until(self, key: str) -> float | None:
        """When the key may run again, if something holds it now: a takeover wait, no majority of the members up
        (cluster/lease.py: no side without one runs any key; the fast model has no partitions, so this is crashes
        only), or a late copy (`_stalled_until`)."""
        now = self.loop.now
        if self._takeovers:
            self._takeovers = [takeover for takeover in self._takeovers if takeover[2] > now]
            for ring, fallen, until in self._takeovers:
                if ring.owner(key) == fallen:
                    return until
        if 2 * self._up <= len(self._nodes):
            return math.inf  # until a restart pushes its jobs again
        return self._stalled_until(key)

    def _restart(self, node: _Node) -> None:
        if node.up:
            return
        node.up = True
        self._up += 1
        node.boot += 1
        self._start_gossip(node)
        held, node.held = node.held, []
        if not node.in_view:
            # Back in everyone's view: the keys it owns again come back with their waiting jobs.
            node.in_view = True
            self._set_view()
            for other in self._nodes.values():
                if other is not node and other.up:
                    self._push_all(other.queues.take_waiting(lambda key: self._owner(key) is node))
        self._push_all(held)
        if 2 * (self._up - 1) <= len(self._nodes):
            # The cluster had no majority up, so every key waited: they may all run again.
            for other in self._nodes.values():
                for queue in other.queues if other.up else ():
                    self._drive(other, queue)

    def _push_all(self, records: list[JobRecord]) -> None:
        touched: dict[str, tuple[_Node, OutboundQueue]] = {}
        for record in records:
            if record.job_id not in self._jobs:
                continue  # finished elsewhere meanwhile
            owner = self._owner(record.queue_key)
            if owner.queues.live_job(record.job_id) is None:
                touched[record.queue_key] = (owner, owner.queues.push(record, self.loop.now))
        for owner, queue in touched.values():
            self._drive(owner, queue)

    # -- sampling and the report ------------------------------------------------------------------------------------

    def _sample(self, now: float) -> None:
        self.series["queue_depth"].append((now, float(sum(node.queues.jobs for node in self._nodes.values()))))
        fresh = self.ledger.terminal_events[self._seen_terminal :]
        self._seen_terminal = len(self.ledger.terminal_events)
        sample_outcomes(self.series, fresh, now)
        for node in self._nodes.values():
            busy = node.busy_s - node.busy_sampled_s
            node.busy_sampled_s = node.busy_s
            # Booked over the cores' time: work booked in the sample that runs past its end counts in it, so a
            # saturated node reads above 1.
            self.series[f"{CPU_SERIES_PREFIX}{node.name}"].append((now, busy / (SAMPLE_INTERVAL_S * node.cpu.cores)))

    def _mark_workload(self, end: int) -> None:
        for node in self._nodes.values():
            start = node.busy_s if not end else node.busy_at_workload_s[0]
            node.busy_at_workload_s = (start, node.busy_s)

    def _report(self, wall_s: float) -> RunReport:
        ledger = self.ledger
        counts = ledger.counts.values()
        submitted = sum(count.submitted for count in counts)
        successes = sum(entry.status == "success" for entry in ledger.jobs.values())
        tiers = _tier_stats(ledger)
        digest = hashlib.sha256(
            repr(
                (self.loop.events, submitted, successes, sorted((t, s.latency_p99_s) for t, s in tiers.items()))
            ).encode()
        ).hexdigest()
        return RunReport(
            scenario=self.scenario.name,
            seed=self.seed,
            bugs=(),
            virtual_s=self._end,
            wall_s=wall_s,
            trace_digest=digest,
            trace_events=self.loop.events,
            fault_schedule=tuple(self.fault_schedule),
            violations=(),
            tiers=tiers,
            throughput_per_s=successes / self.scenario.duration_s,
            shed_rate=sum(count.shed for count in counts) / submitted if submitted else 0.0,
            upstream_429s=self.upstream_429s,
            upstream_requests=self.upstream_requests,
            max_queue_depth=int(max((depth for _t, depth in self.series["queue_depth"]), default=0)),
            failover_s=self._failover_s(),
            series={name: tuple(points) for name, points in self.series.items()},
            cpu_utilisation={
                name: (node.busy_at_workload_s[1] - node.busy_at_workload_s[0])
                / (node.cpu.cores * self.scenario.duration_s)
                for name, node in self._nodes.items()
            }
            if self._calibration is not None
            else {},
            calibration=""
            if self._calibration is None
            else f"{self._calibration.machine}, measured {self._calibration.measured_at}",
        )

    def _failover_s(self) -> float | None:
        """As the full model's (simulations/run.py `_failover_s`): from the first crash until every key the crashed
        node was calling for in the LIMIT_WINDOW_S before is called again."""
        if not self.crashes or self._calls is None:
            return None
        crashed_at, name = self.crashes[0]
        resumed = []
        for calls in self._calls.values():
            before = [at for at, node in calls if crashed_at - LIMIT_WINDOW_S <= at < crashed_at and node == name]
            after = next((at for at, _node in calls if at >= crashed_at), None)
            if before and after is not None:
                resumed.append(after - crashed_at)
        return max(resumed) if resumed else None


def _cpu_model(scenario: Scenario) -> tuple[Calibration | None, int, CpuQueue | None]:
    """The calibration (None: the CPU model is off), the cores of each node, and the one machine every node shares
    if the scenario's `[cpu]` puts them on one."""
    cpu = scenario.cpu
    if not cpu.enabled:
        return None, 1, None
    calibration = cpu.load()
    machine = CpuQueue(cpu.machine_cores) if cpu.machine_cores else None
    return calibration, cpu.node_cores(calibration), machine


def run_fast(scenario: Scenario, *, seed: int, progress: Callable[[float], None] | None = None) -> RunReport:
    """Run `scenario` once on the fast model (see the module docstring), its CPU as its `[cpu]` section says."""
    return FastModel(scenario, seed=seed).run(progress)
