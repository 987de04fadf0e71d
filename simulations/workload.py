"""Client workloads and the ledger of what clients saw: the ground truth the invariants and the report read.

A tenant submits jobs at the times its arrival process draws (simulations/actors.py `arrival_times`), each for
one of its `keys` credentials chosen at random, through `World.submit` (round-robin over the nodes, the real job
API). What a job asks beyond a plain call (regions, execution mode, region policy, the idempotency key sent
upstream, follow-ups) is the tenant's (simulations/scenario.py `TenantSpec`), and `World.job_body` writes it.
Open loop (`workers = 0`): every arrival is submitted at its time, whatever is still outstanding. Closed loop: at
most `workers` submissions are outstanding; an arrival waits for a free worker.

The ledger keeps, per acknowledged job (201/200): who submitted it when, and what its webhooks reported (each
receiver's report carries the job's status, so a terminal job is seen without asking any node). Refusals (429,
503) and submissions no node answered count as shed. Everything is keyed by job_id: a client that retried on
another node after a cut request may have created a second job under the same idempotency key, and only the one
it was told about is owed to it. A webhook may reach its receiver before the job's 201 reaches the client (the owner
runs the job while the answer is still on its way back through the node that forwarded it); such a report is kept
until the acknowledgement arrives, and counted as unknown only if none ever does.

Per tenant (`TenantLog`) the ledger also keeps when each submission the account's plan judged (acknowledged, or
refused with 429 "quota-exceeded") was made and answered, and each quota refusal's `retry_at`: what the quota
invariants read (simulations/invariants.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import final

import trio

from .actors import DeliveryReport, arrival_times
from .scenario import TenantSpec
from .world import World

TERMINAL = ("success", "failed")
# Outstanding open-loop submissions per tenant at most: a bound on tasks when a cluster stops answering.
OPEN_LOOP_OUTSTANDING_MAX = 10_000


@final
@dataclass(slots=True)
class JobEntry:
    """One acknowledged job, as its client and its webhook receivers saw it."""

    job_id: str
    tenant: str
    tier: str
    submitted_at: float
    acked_at: float
    node: str
    quorum: int
    receivers: int
    status: str | None = None  # terminal status once seen
    terminal_at: float | None = None
    accepted_by: set[str] = field(default_factory=set)
    idempotent_key: str | None = None  # as submitted: the key of its `JobIntent` (simulations/world.py)


@final
@dataclass(slots=True)
class TenantLog:
    """One tenant's submissions, as their clients saw them."""

    submitted: int = 0
    # (submitted at, answered at) of every submission the account's plan judged: acknowledged, or refused by
    # the quota. Refusals for other reasons (backlog, a node not answering) never reached the meter.
    judged: list[tuple[float, float]] = field(default_factory=list)
    quota_refusals: list[tuple[float, int | None]] = field(default_factory=list)  # (answered at, retry_at ms)


@final
@dataclass(slots=True)
class TierCounts:
    submitted: int = 0
    acked: int = 0
    shed: int = 0


@final
class Ledger:
    """Submissions, acknowledgements and webhook reports (see the module docstring)."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobEntry] = {}
        self.open: dict[str, JobEntry] = {}  # acknowledged, not yet seen terminal
        self.counts: dict[str, TierCounts] = {}
        self.tenants: dict[str, TenantLog] = {}
        self.terminal_events: list[JobEntry] = []  # in the order they became terminal
        # Reports about jobs no client has been told of yet, by job id.
        self._early: dict[str, list[DeliveryReport]] = {}

    @property
    def unknown_deliveries(self) -> int:
        """Reports about jobs no client was told were accepted (so far: an acknowledgement may still come)."""
        return sum(len(reports) for reports in self._early.values())

    def counts_for(self, tier: str) -> TierCounts:
        counts = self.counts.get(tier)
        if counts is None:
            counts = self.counts[tier] = TierCounts()
        return counts

    def tenant(self, name: str) -> TenantLog:
        log = self.tenants.get(name)
        if log is None:
            log = self.tenants[name] = TenantLog()
        return log

    def acknowledge(self, entry: JobEntry) -> None:
        self.jobs[entry.job_id] = entry
        self.open[entry.job_id] = entry
        self.counts_for(entry.tier).acked += 1
        for report in self._early.pop(entry.job_id, []):
            self._record(entry, report)

    def on_delivery(self, report: DeliveryReport) -> None:
        job_id = str(report.payload.get("job_id"))
        entry = self.jobs.get(job_id)
        if entry is None:
            self._early.setdefault(job_id, []).append(report)
            return
        self._record(entry, report)

    def _record(self, entry: JobEntry, report: DeliveryReport) -> None:
        if report.accepted:
            entry.accepted_by.add(report.receiver)
        self.mark_terminal(entry, str(report.payload["status"]), report.at)

    def mark_terminal(self, entry: JobEntry, status: str, at: float) -> None:
        if entry.status is not None or status not in TERMINAL:
            return
        entry.status, entry.terminal_at = status, at
        self.open.pop(entry.job_id, None)
        self.terminal_events.append(entry)


async def run_tenant(world: World, ledger: Ledger, tenant: TenantSpec, rng: random.Random) -> None:
    """Submit `tenant`'s jobs from now until cancelled (see the module docstring)."""
    outstanding = trio.Semaphore(tenant.workers or OPEN_LOOP_OUTSTANDING_MAX)
    times: Iterator[float] = arrival_times(tenant.arrival, tenant.rate_per_s, rng, start_s=trio.current_time())
    async with trio.open_nursery() as submissions:
        for sequence, at in enumerate(times):
            await trio.sleep_until(at)
            await outstanding.acquire()
            key_index = rng.randrange(tenant.keys)
            submissions.start_soon(_submit_one, world, ledger, tenant, sequence, key_index, outstanding)


async def _submit_one(
    world: World, ledger: Ledger, tenant: TenantSpec, sequence: int, key_index: int, outstanding: trio.Semaphore
) -> None:
    try:
        submitted_at = trio.current_time()
        counts = ledger.counts_for(tenant.tier)
        counts.submitted += 1
        log = ledger.tenant(tenant.name)
        log.submitted += 1
        body = world.job_body(tenant, sequence, key_index)
        answer = await world.submit(tenant, body)
        answered_at = trio.current_time()
        if answer.status == 429 and answer.problem == "quota-exceeded":
            log.quota_refusals.append((answered_at, answer.retry_at_ms))
            log.judged.append((submitted_at, answered_at))
        elif answer.status in (200, 201):
            log.judged.append((submitted_at, answered_at))
        if answer.status in (200, 201) and answer.job_id is not None and answer.node is not None:
            entry = JobEntry(
                job_id=answer.job_id,
                tenant=tenant.name,
                tier=tenant.tier,
                submitted_at=submitted_at,
                acked_at=trio.current_time(),
                node=answer.node,
                quorum=tenant.quorum,
                receivers=len(tenant.receivers),
                idempotent_key=body["idempotent_key"],
            )
            ledger.acknowledge(entry)
        elif answer.status in (None, 429, 503):
            counts.shed += 1
        else:
            raise AssertionError(f"the job API answered {answer.status} to a valid job of {tenant.name}")
    finally:
        outstanding.release()
