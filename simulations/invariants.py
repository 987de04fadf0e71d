"""Invariants: what must hold in every run, checked every virtual second (safety) and at the end (liveness).

Safety, throughout (the first violation stops the run):
- "no-acked-job-lost": every job a node acknowledged is, at every check, on some node's disk (its `MemoryStoreData`)
  or in a running node's queues, unless its webhooks already reported it terminal. Only a planted bug or a real
  durability bug can break it: the design acknowledges after `insert_job` (with `cluster.replicas` >= 2, once the
  key's successors have it too), and a hand-off deletes after the receiver made the job durable. A disk loss
  empties one node's disk, so the job must be on another's: that holds while fewer than `replicas` of its holders
  lost their disks before the cluster copied it again, and unless it was acknowledged by a node that saw no other
  member (which the design allows); scenarios keep to that (swarm mode by `DISK_LOSS_CLEARANCE_S`).
- "upstream-limit": over every window of LIMIT_WINDOW_S seconds, partitions and membership changes included, the
  calls a provider saw for one credential are at most `rate × W + 2 + 2 × (senders − 1)`. Why that tolerance:
  one owner paces a key with GCRA at the provider's rate and burst 1, so it sends at most `1 + rate × W` in any
  window (scheduler/gcra.py); arrivals add at most one more, since the request leg's jitter (a few ms) can pull
  one send into the window; and each other node that sent for the key in the window (a hand-over finishing its
  in-flight attempts, a node that took the key over after a split or a crash, and gave it back) brings a fresh
  pacer, at most one send each time, two times at most in a window. A split is judged too: the partition rule
  (cluster/lease.py) lets at most one side run a key, and the planted bug "minority-runs-keys" shows the check
  catches two pacers.
- "one-active-queue": once membership has been settled for SETTLE_S (two hand-off sweeps, edge/placement/routing.py),
  each queue key has a running queue task on at most one node (each node's `QueueManager`). Unclustered nodes have no
  membership to settle, so this applies to clustered worlds only.
Membership is "settled" at a check when every running node sees exactly the running nodes as live, no partition
is in place, and no node's membership view changed since the previous check.

Jobs' provider calls (`CallChecks`). A call is attributed to a job by the `Idempotency-Key` the node sends when the
job has `send_idempotency_key` (the workload's tenants say so), looked up in the world's `JobIntent`s (what the
client asked); calls without a known key are not judged, nor are keys whose submission the client had to retry on
another node (two jobs may share such a key). Times are the provider's (simulations/actors.py `UpstreamCall`): when
the call's request left its node (`sent_at`), when it arrived, and when it ended, answered or hung up on.
- "no-attempt-after-terminal": no call for a job leaves a node after the job became terminal. The job's terminal
  time is the earliest `finished_at_ms` of its terminal record on any node's disk (whole ms, so a call sent up to
  TERMINAL_TOLERANCE_S later is still the one that ended it). The record is saved once the attempt's legs have all
  ended, so every leg of the deciding attempt was sent before; a leg forwarded to a region's node is sent by that
  node when the forward arrives, which is before the owner cancels it.
- "losers-cancelled": a race's losers hang up. A job's race is won at W, the first answer < 400 (a success: what
  wins a race, edge/engine/queue.py `wins`) the provider gave to any of its calls. Every other call of that job
  still in progress at W (arrived at or before W, not yet ended at W) must end by W + LOSER_BOUND_S, and not with
  an answer given after W + LOSER_ANSWER_GRACE_S: the grace is the time the win takes to reach the key's owner and
  its cancellation to reach the loser (a few network legs of at most 5 ms), so only a loser the node failed to
  cancel is answered after it. Both bounds grow by three times the largest node-to-node delay spike a `delay`
  fault of the scenario can add. Fanout jobs are not judged (every leg runs to its end), nor races during which
  a node crashed (from W to the end of the bound): a winner's answer may have died with its node, and then the
  race rightly goes on. Judged once the bound has passed.
- "strict-stays-in-regions": a call for a job with `region_policy` strict comes from a node in one of the job's
  regions. Clustered worlds only: a node that knows no regions runs every job itself, by design.
- "children-once" (scenarios whose jobs carry follow-ups, `FollowUpChecks`): every follow-up record on any disk
  (a job id `<parent>-on_success` / `-on_failure`, or an idempotency key `<key>#on_success` / `#on_failure`) names
  its parent, has the id its parent derives for that kind, and its parent's record is on a disk, terminal with the
  matching status (success for on_success, failed for on_failure), naming this child, and no other follow-up.
  At the end, every acknowledged job that ended with a status its follow-ups ask for has that child on a disk.
- "quota-never-exceeded" (scenarios whose `[[plans]]` give a tenant a finite allowance, `QuotaChecks`): for each
  such account and calendar month (UTC), the jobs counted are the distinct job ids of the account that were on
  any node's disk at any check so far, created that month (`created_at_ms`) and submitted by a client (follow-ups
  and workflow steps, which the node spawns unmetered, name a `parent_id` and are not counted), together with
  those acknowledged (201, or 200 for a job already there) to one of its clients that month; at every check and at
  the end that count is at most the plan's allowance, `monthly_requests + overage_requests_max`. The one exception
  is the design's stated one (edge/placement/usage.py, cluster/escrow.py): a month whose allowance was minted by
  more than one node (only a cluster split at the month's first submission can do that) is held to the sum of the
  mints instead, since every node spends and gives only what it was minted or given. Mints are read from every
  running node's counters and every disk's saved ones.

Liveness, at the end of the drain:
- every acknowledged job is terminal, or pending with a reason (queued on a running node, or on the disk of a node
  that is down or has yet to hand it over); one that no disk, no queue and no GET through any node knows is lost.
  A job's state is its latest copy (the highest revision on any disk: a key's successors trail its owner).
- "no-acked-job-stranded": a job unfinished on running nodes' disks only, in no queue, once membership has been
  settled for SETTLE_S, is stranded: no hand-off or takeover is still to come (copies on a key's successors are not
  queued there, so "has yet to hand it over" no longer explains them).
- "webhook-quorum": every terminal job with webhooks was accepted by at least its quorum of receivers, or its
  record says deliveries are still being retried;
- "membership-converges": unless a fault is never healed, every running node sees the same live members.
- "quota-reached" (accounts "quota-never-exceeded" judges): the allowance is not left unused when the demand was
  there on a healthy cluster. Judged when the month had one mint and the account's last judged submission of the
  month (acknowledged, or refused for the quota; other refusals never reached the meter) was answered within a
  stretch of consecutive checks at which membership was settled, from its first check T to a check at or after
  that answer. Let L be the allowance less the jobs counted at T: if the account's clients made more than L
  judged submissions from T on (by when they were made), the month's count at the end must equal the allowance
  less the rights held by the nodes that are down at the end. Escrow loses no right, but rights on a node that is
  down cannot be spent until it is back (a node that restarts gets its own back from its disk and its peers); the
  rights are read from the ledger of every node's entries at their greatest, as the running nodes and the disks
  know them. Without such demand (or with a second mint, or membership unsettled at the last answer) the count
  only has to stay within the allowance; `QuotaStats.reached` says which.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol, final

import trio

from cluster import escrow
from cluster.messages import CounterEntry
from edge.config import PlanConfig
from edge.engine.records import TERMINAL_STATUSES, JobRecord
from edge.placement.counters import decode_counter_entries
from edge.placement.routing import HANDOFF_SWEEP_S
from edge.placement.usage import month_end_ms, month_of, usage_name
from edge.store import MemoryStoreData
from edge.store.base import EncodedJob

from .actors import Provider, UpstreamCall
from .runtime import SIMULATED_EPOCH_S
from .scenario import FaultSpec, NetworkSpec
from .workload import TERMINAL, JobEntry, Ledger, TenantLog
from .world import FOLLOW_UPS, JobIntent, SimNode, World

LIMIT_WINDOW_S = 10.0
SETTLE_S = 2 * HANDOFF_SWEEP_S
TERMINAL_TOLERANCE_S = 0.002  # a record's finished_at_ms is whole (floored) ms
LOSER_BOUND_S = 1.0  # a race's loser has hung up this long after the win
LOSER_ANSWER_GRACE_S = 0.05  # ... and is not answered later than this after it
# The pending reason of a job that only running nodes' disks hold, none queues, and membership has settled:
# copies on a key's successors that its owner never got back (no hand-off or takeover is still to come).
STRANDED = "stranded on running nodes' disks"
# The status of a parent whose follow-up of each kind may exist.
FOLLOW_UP_STATUS = {"on_success": "success", "on_failure": "failed"}

Fail = Callable[[str, str], NoReturn]  # (invariant, detail): raises InvariantViolated


@final
@dataclass(frozen=True, kw_only=True)
class Violation:
    """An invariant that did not hold: which, when (virtual seconds), and the evidence."""

    invariant: str
    at_s: float
    detail: str


class InvariantViolated(Exception):
    def __init__(self, violation: Violation) -> None:
        super().__init__(f"{violation.invariant} at t={violation.at_s:.3f}: {violation.detail}")
        self.violation = violation


@final
class Invariants:
    """The checks of the module docstring, over one world and its clients' ledger."""

    def __init__(self, world: World, ledger: Ledger) -> None:
        self._world = world
        self._ledger = ledger
        self._versions: dict[str, int] = {}
        self.settled_since = 0.0
        self.pending_reasons: Counter[str] = Counter()
        scenario = world.scenario
        self._calls = CallChecks(world, self._fail, allowance_s=spike_allowance_s(scenario.faults, scenario.network))
        asks_follow_ups = any(tenant.on_success or tenant.on_failure for tenant in scenario.tenants)
        self._follow_ups = FollowUpChecks(world, self._fail) if asks_follow_ups else None
        self.quotas = QuotaChecks.of(world, ledger, self._fail)

    def __repr__(self) -> str:
        return f"<Invariants settled since {self.settled_since:.1f} | {len(self._ledger.open)} open jobs>"

    def _fail(self, invariant: str, detail: str) -> NoReturn:
        violation = Violation(invariant=invariant, at_s=trio.current_time(), detail=detail)
        self._world.simulation.trace.record(f"violation {invariant}: {detail}")
        raise InvariantViolated(violation)

    # -- throughout --------------------------------------------------------------------------------------------

    def check(self) -> None:
        """The safety checks, once; raises InvariantViolated."""
        now = trio.current_time()
        self._observe_membership(now)
        self._no_acked_job_lost()
        self._upstream_limits(now)
        if self._world.clustered and now - self.settled_since >= SETTLE_S:
            self._one_active_queue()
        self._calls.check(now)
        if self._follow_ups is not None:
            self._follow_ups.check()
        if self.quotas is not None:
            self.quotas.check(now, settled=now > self.settled_since)

    def _observe_membership(self, now: float) -> None:
        versions = {}
        for node in self._world.running_nodes():
            assert node.running is not None
            if node.running.membership is not None:
                versions[node.name] = node.running.membership.version
        changed = versions != self._versions
        self._versions = versions
        if changed or self._world.network.blocked or not self._world.converged():
            self.settled_since = now

    def _no_acked_job_lost(self) -> None:
        for job_id, entry in self._ledger.open.items():
            if not self._held(job_id):
                self._fail("no-acked-job-lost", _lost(entry))

    def _held(self, job_id: str) -> bool:
        if self._world.durable_job(job_id) is not None:
            return True
        return any(node.running.manager.live_job(job_id) for node in self._world.running_nodes() if node.running)

    def _upstream_limits(self, now: float) -> None:
        window_start = now - LIMIT_WINDOW_S
        for provider in self._world.providers.values():
            for credential, arrivals in provider.arrivals.items():
                first = bisect.bisect_left(arrivals, window_start, key=lambda arrival: arrival.at)
                calls = len(arrivals) - first
                senders = {arrival.source for arrival in arrivals[first:]}
                allowed = provider.rate_limit_rps * LIMIT_WINDOW_S + 2 + 2 * (len(senders) - 1)
                if calls > allowed:
                    self._fail(
                        "upstream-limit",
                        f"{provider.name} saw {calls} calls for {credential!r} in {LIMIT_WINDOW_S:g} s (limit "
                        f"{provider.rate_limit_rps:g}/s, tolerance {allowed:g}) from {', '.join(sorted(senders))}",
                    )

    def _one_active_queue(self) -> None:
        running_on: dict[str, list[str]] = {}
        for node in self._world.running_nodes():
            assert node.running is not None
            for queue in node.running.manager.queues_with_prefix(""):
                if queue["active"]:
                    running_on.setdefault(queue["queue_key"], []).append(node.name)
        for key, nodes in running_on.items():
            if len(nodes) > 1:
                self._fail("one-active-queue", f"queue {key} runs on {', '.join(nodes)} with membership settled")

    # -- at the end -------------------------------------------------------------------------------------------

    async def final(self, *, faults_never_healed: list[str]) -> None:
        """The liveness checks, after the drain; records why each unfinished job is still pending."""
        self._settle_from_disks()
        settled_s = trio.current_time() - self.settled_since
        for entry in list(self._ledger.open.values()):
            reason = self._pending_reason(entry.job_id, settled=settled_s >= SETTLE_S)
            if reason == STRANDED:
                self._fail(
                    "no-acked-job-stranded",
                    f"job {entry.job_id} of {entry.tenant}, acknowledged by {entry.node} at t={entry.acked_at:.3f}, is "
                    f"unfinished on the disks of running nodes only, and in no node's queues, with membership "
                    f"settled for {settled_s:.1f} s",
                )
            if reason is None and await self._world.find_job(entry.job_id, entry.tenant) is None:
                self._fail("no-acked-job-lost", _lost(entry))
            self.pending_reasons[reason or "found through the API only"] += 1
        self._webhook_quorum()
        if self._follow_ups is not None:
            self._follow_ups.final(self._ledger.jobs.values())
        if self.quotas is not None:
            self.quotas.final(trio.current_time())
        if not faults_never_healed and not self._world.converged():
            views = {
                node.name: sorted(info.node for info in node.running.membership.live_members())
                for node in self._world.running_nodes()
                if node.running is not None and node.running.membership is not None
            }
            self._fail("membership-converges", f"views still differ after the drain: {views}")

    def _settle_from_disks(self) -> None:
        """Jobs whose webhooks never reported (none configured, or all refused) but whose record is terminal."""
        for entry in list(self._ledger.open.values()):
            found = self._world.durable_job(entry.job_id)
            if found is not None and found[1].status in TERMINAL and found[1].finished_at_ms is not None:
                self._ledger.mark_terminal(entry, found[1].status, found[1].finished_at_ms / 1000 - SIMULATED_EPOCH_S)

    def _pending_reason(self, job_id: str, *, settled: bool) -> str | None:
        """Why an unfinished job may still be unfinished; STRANDED when nothing will ever run it, None when no disk
        and no queue knows it."""
        for node in self._world.running_nodes():
            assert node.running is not None
            if node.running.manager.live_job(job_id) is not None:
                return "queued on a running node"
        if self._world.durable_job(job_id) is None:
            return None
        if self._world.down_disks_hold(job_id):
            return "on the disk of a node that is down"
        return STRANDED if settled else "on a disk, awaiting hand-off"

    def _webhook_quorum(self) -> None:
        for entry in self._ledger.jobs.values():
            if entry.status is None or entry.receivers == 0:
                continue
            if len(entry.accepted_by) >= min(entry.quorum, entry.receivers):
                continue
            found = self._world.durable_job(entry.job_id)
            if found is not None and found[1].webhook_outcome == "pending":
                self.pending_reasons["webhooks still being retried"] += 1
                continue
            outcome = found[1].webhook_outcome if found else "no record"
            self._fail(
                "webhook-quorum",
                f"job {entry.job_id} ({entry.status}) was accepted by {sorted(entry.accepted_by)}, quorum "
                f"{entry.quorum} of {entry.receivers}; its record says {outcome!r}",
            )


def _lost(entry: JobEntry) -> str:
    return (
        f"job {entry.job_id} of {entry.tenant}, acknowledged by {entry.node} at t={entry.acked_at:.3f}, is on no "
        "node's disk and in no node's queues"
    )


# -- jobs' provider calls and follow-ups (see the module docstring) ---------------------------------------------


class Observed(Protocol):
    """What the call and follow-up checks read of the world (`World` is one; unit tests build small ones)."""

    @property
    def providers(self) -> Mapping[str, Provider]: ...

    @property
    def intents(self) -> Mapping[str, JobIntent]: ...

    @property
    def resubmitted(self) -> Collection[str]: ...

    @property
    def crashes(self) -> Sequence[tuple[float, str]]: ...

    @property
    def clustered(self) -> bool: ...

    def region_of_host(self, host: str) -> str: ...

    def disks(self) -> Iterable[tuple[str, MemoryStoreData]]: ...


def spike_allowance_s(faults: Iterable[FaultSpec], network: NetworkSpec) -> float:
    """Three times the largest node-to-node delay spike a `delay` fault can add (simulations/world.py
    `_delay_spike_s`): the win's way back to the owner and the cancellation's way to a loser cross such legs."""
    spikes = [fault.rate - network.delay_max_s for fault in faults if fault.kind == "delay"]
    return 3 * max([0.0, *spikes])


def _wall_s(at_ms: int) -> float:
    """A record's wall-clock ms as virtual seconds."""
    return at_ms / 1000 - SIMULATED_EPOCH_S


def _jobs_with_key(world: Observed, account: str, idempotent_key: str) -> list[tuple[str, EncodedJob]]:
    """(node, encoded job) for every disk that holds a job of `account` under `idempotent_key`."""
    found = []
    for node, data in world.disks():
        job_id = data.job_id_by_idempotency.get((account, idempotent_key))
        job = data.jobs.get(job_id) if job_id is not None else None
        if job is not None:
            found.append((node, job))
    return found


@final
@dataclass(slots=True)
class _JobCalls:
    """The calls providers saw under one idempotency key, and what the checks learnt of its job so far."""

    intent: JobIntent
    calls: list[UpstreamCall] = field(default_factory=list)
    last_sent: UpstreamCall | None = None  # the call whose request left its node last
    job_id: str | None = None
    terminal_at: float | None = None
    won: UpstreamCall | None = None


@final
class CallChecks:
    """The checks "no-attempt-after-terminal", "losers-cancelled" and "strict-stays-in-regions" over every
    provider's calls, read incrementally at each check (see the module docstring)."""

    def __init__(self, world: Observed, fail: Fail, *, allowance_s: float = 0.0) -> None:
        self._world = world
        self._fail = fail
        self.answer_grace_s = LOSER_ANSWER_GRACE_S + allowance_s
        self.loser_bound_s = LOSER_BOUND_S + allowance_s
        self._seen: dict[str, tuple[int, int]] = {}  # provider -> (calls read, ended calls read)
        self._jobs: dict[str, _JobCalls] = {}  # by idempotency key
        self._open: dict[str, None] = {}  # keys with calls whose job is not known terminal yet (in order)
        self._races: deque[str] = deque()  # keys of races won and not judged yet, in the order they were won
        self.judged_races = 0

    def __repr__(self) -> str:
        return f"<CallChecks {len(self._jobs)} jobs, {len(self._races)} races to judge, {self.judged_races} judged>"

    def check(self, now: float) -> None:
        for name, provider in self._world.providers.items():
            calls_read, ended_read = self._seen.get(name, (0, 0))
            arrived, ended = provider.calls[calls_read:], provider.ended[ended_read:]
            self._seen[name] = (len(provider.calls), len(provider.ended))
            for call in arrived:
                self._arrived(call)
            for call in ended:
                self._ended(call)
        self._learn_terminal()
        while self._races:
            state = self._jobs[self._races[0]]
            assert state.won is not None and state.won.answered_at is not None
            if now < state.won.answered_at + self.loser_bound_s:
                break
            self._judge_race(self._races.popleft(), state, state.won.answered_at)

    def _ambiguous(self, key: str, intent: JobIntent) -> bool:
        resubmitted = self._world.resubmitted
        return key in resubmitted or (intent.parent_key is not None and intent.parent_key in resubmitted)

    def _arrived(self, call: UpstreamCall) -> None:
        key = call.idempotency_key
        intent = self._world.intents.get(key) if key else None
        if intent is None:
            return
        state = self._jobs.get(key)
        if state is None:
            state = self._jobs[key] = _JobCalls(intent)
        state.calls.append(call)
        if state.last_sent is None or call.sent_at > state.last_sent.sent_at:
            state.last_sent = call
        if intent.region_policy == "strict" and self._world.clustered:
            region = self._world.region_of_host(call.source)
            if region not in intent.regions:
                self._fail(
                    "strict-stays-in-regions",
                    f"{key} (strict, regions {', '.join(intent.regions)}) was called from {call.source} in "
                    f"{region or 'no region'} at t={call.at:.3f}",
                )
        if state.terminal_at is not None:
            self._after_terminal(key, state)
        else:
            self._open[key] = None

    def _ended(self, call: UpstreamCall) -> None:
        state = self._jobs.get(call.idempotency_key)
        if state is None or state.won is not None or state.intent.execution_mode == "fanout":
            return
        if call.status is not None and call.status < 400:
            state.won = call
            self._races.append(call.idempotency_key)

    def _learn_terminal(self) -> None:
        for key in list(self._open):
            state = self._jobs[key]
            if self._ambiguous(key, state.intent):
                del self._open[key]
                continue
            found = _jobs_with_key(self._world, state.intent.tenant, key)
            if len({job.job_id for _node, job in found}) > 1:
                del self._open[key]  # two jobs under one key: their calls cannot be told apart
                continue
            finished = [
                job.finished_at_ms
                for _node, job in found
                if job.status in TERMINAL_STATUSES and job.finished_at_ms is not None
            ]
            if not finished:
                continue
            state.job_id, state.terminal_at = found[0][1].job_id, _wall_s(min(finished))
            del self._open[key]
            self._after_terminal(key, state)

    def _after_terminal(self, key: str, state: _JobCalls) -> None:
        last, terminal_at = state.last_sent, state.terminal_at
        assert last is not None and terminal_at is not None
        if last.sent_at > terminal_at + TERMINAL_TOLERANCE_S:
            self._fail(
                "no-attempt-after-terminal",
                f"job {state.job_id} ({key}) became terminal at t={terminal_at:.3f}, and {last.source} sent a call "
                f"for it at t={last.sent_at:.3f} (arrived t={last.at:.3f})",
            )

    def _judge_race(self, key: str, state: _JobCalls, won_at: float) -> None:
        if self._ambiguous(key, state.intent):
            return
        until = won_at + self.loser_bound_s
        if any(won_at <= at <= until for at, _node in self._world.crashes):
            return
        self.judged_races += 1
        winner = state.won
        assert winner is not None
        for call in state.calls:
            ended_at = call.ended_at
            if call is winner or call.at > won_at or (ended_at is not None and ended_at <= won_at):
                continue
            lost = (
                f"{key}: the race was won at t={won_at:.3f} (a {winner.status} to {winner.source}), and the call "
                f"from {call.source} (arrived t={call.at:.3f})"
            )
            if call.answered_at is not None and call.answered_at > won_at + self.answer_grace_s:
                self._fail(
                    "losers-cancelled",
                    f"{lost} was answered {call.status} at t={call.answered_at:.3f}, "
                    f"{call.answered_at - won_at:.3f} s after the win (grace {self.answer_grace_s:g} s)",
                )
            if ended_at is None or ended_at > until:
                ended = "is still open" if ended_at is None else f"hung up only at t={ended_at:.3f}"
                self._fail("losers-cancelled", f"{lost} {ended}, over {self.loser_bound_s:g} s after the win")


def follow_up_kind(job: EncodedJob) -> str | None:
    """The follow-up kind a record's id or idempotency key says it is, if any."""
    for kind in FOLLOW_UPS:
        if job.job_id.endswith(f"-{kind}") or job.idempotent_key.endswith(f"#{kind}"):
            return kind
    return None


@final
class FollowUpChecks:
    """The check "children-once" over every node's disk (see the module docstring)."""

    def __init__(self, world: Observed, fail: Fail) -> None:
        self._world = world
        self._fail = fail
        self._verified: set[tuple[str, str]] = set()  # (node, child job id): its parent is terminal, and fits
        self.children = 0

    def __repr__(self) -> str:
        return f"<FollowUpChecks {len(self._verified)} follow-up records verified>"

    def _copies(self, job_id: str) -> list[JobRecord]:
        return [data.decode(job) for _node, data in self._world.disks() if (job := data.jobs.get(job_id))]

    def check(self) -> None:
        for node, data in self._world.disks():
            for job in data.jobs.values():
                kind = follow_up_kind(job)
                if kind is not None and (node, job.job_id) not in self._verified:
                    self._judge(node, data.decode(job), kind)

    def _judge(self, node: str, child: JobRecord, kind: str) -> None:
        where = f"follow-up {child.job_id} ({kind}, on {node})"
        parent_id = child.parent_id
        if parent_id is None:
            self._fail("children-once", f"{where} names no parent")
            return
        expected = f"{parent_id}-{kind}"
        if child.job_id != expected:
            self._fail("children-once", f"{where} is a second {kind} of {parent_id}, whose own is {expected}")
        parents = self._copies(parent_id)
        if not parents:
            self._fail("children-once", f"{where}: its parent {parent_id} is on no node's disk")
        ended = [parent for parent in parents if parent.is_terminal]
        if not ended:
            statuses = ", ".join(sorted({parent.status for parent in parents}))
            self._fail("children-once", f"{where} exists while its parent {parent_id} is still {statuses}")
        parent = ended[0]
        if parent.status != FOLLOW_UP_STATUS[kind]:
            self._fail("children-once", f"{where} exists, but its parent {parent_id} ended {parent.status}")
        if parent.children.get(kind) != child.job_id or len(parent.children) > 1:
            self._fail(
                "children-once", f"{where}: its parent {parent_id} names {dict(parent.children)} as its follow-ups"
            )
        self._verified.add((node, child.job_id))
        self.children = len({job_id for _node, job_id in self._verified})

    def final(self, entries: Iterable[JobEntry]) -> None:
        """Every acknowledged job that ended with the status one of its follow-ups waits for has that child."""
        for entry in entries:
            key = entry.idempotent_key
            intent = self._world.intents.get(key) if key else None
            if intent is None or not intent.follow_ups or key in self._world.resubmitted:
                continue
            parent = next((record for record in self._copies(entry.job_id) if record.is_terminal), None)
            if parent is None:
                continue
            kind = next((k for k in intent.follow_ups if FOLLOW_UP_STATUS[k] == parent.status), None)
            if kind is None:
                continue
            child_id = parent.children.get(kind)
            if child_id is None or not self._copies(child_id):
                self._fail(
                    "children-once",
                    f"job {entry.job_id} ended {parent.status}, and its {kind} follow-up "
                    f"{'was never created' if child_id is None else f'{child_id} is on no disk'}",
                )


# -- plans' quotas (see the module docstring) ----------------------------------------------------------------------


def _month_at(at_s: float) -> str:
    """The calendar month (UTC) of a virtual instant, on the simulated wall clock."""
    return month_of(round((SIMULATED_EPOCH_S + at_s) * 1000))


class QuotaObserved(Protocol):
    """What the quota checks read of the world (`World` is one; unit tests build small ones)."""

    @property
    def nodes(self) -> Mapping[str, SimNode]: ...

    def running_nodes(self) -> list[SimNode]: ...

    def disks(self) -> Iterable[tuple[str, MemoryStoreData]]: ...


@final
@dataclass(slots=True)
class _Stretch:
    """Consecutive checks at which membership was settled: the first (`base_at`, with the jobs counted then) and
    the last so far."""

    base_at: float
    counted: dict[tuple[str, str], int]  # (account, month) -> jobs counted at base_at
    last_at: float
    ended: bool = False


@final
@dataclass(frozen=True, kw_only=True)
class QuotaStats:
    """One metered account at the end of a run, for the month the run ended in."""

    plan: str
    allowance: int
    counted: int  # its jobs (the invariant's count)
    used: int  # the usage counter's total, every node's entry at its greatest
    submitted: int  # every submission of the run, whatever its answer
    refused: int  # answered 429 quota-exceeded
    refused_until_month_end: int  # ... with `retry_at` the month's end (spent, as far as the refusing node knew)
    minters: tuple[str, ...]  # the nodes that minted the month's allowance
    stranded: int  # rights held by nodes that are down at the end
    reached: str  # what "quota-reached" concluded: "judged", or why it was not judged


@final
class QuotaChecks:
    """The checks "quota-never-exceeded" and "quota-reached" over every disk, the clients' ledger and the nodes'
    counters (see the module docstring)."""

    def __init__(self, world: QuotaObserved, ledger: Ledger, fail: Fail, plans: Mapping[str, PlanConfig]) -> None:
        self._world = world
        self._ledger = ledger
        self._fail = fail
        self.plans = dict(plans)  # metered account -> its plan (finite)
        self._seen: set[str] = set()  # job ids looked at once already (counted or not)
        self._acked_read = 0  # ledger.jobs entries read
        self.counted: dict[tuple[str, str], dict[str, str]] = {}  # (account, month) -> {job id: where first seen}
        self._stretches: list[_Stretch] = []
        self.stats: dict[str, QuotaStats] = {}

    def __repr__(self) -> str:
        counts = {f"{account}/{month}": len(jobs) for (account, month), jobs in self.counted.items()}
        return f"<QuotaChecks {counts} | {len(self._stretches)} settled stretches>"

    @classmethod
    def of(cls, world: World, ledger: Ledger, fail: Fail) -> QuotaChecks | None:
        """The checks for the scenario's tenants on a finite plan of its own `[[plans]]`; None when there are none
        (the built-in plans' allowances, a million jobs a month and more, are beyond any run)."""
        scenario = world.scenario
        plans = {
            tenant.name: world.plan_of(tenant)
            for tenant in scenario.tenants
            if scenario.plan_spec(tenant) is not None and not world.plan_of(tenant).unlimited
        }
        return cls(world, ledger, fail, plans) if plans else None

    # -- throughout --------------------------------------------------------------------------------------------

    def check(self, now: float, *, settled: bool) -> None:
        self._count()
        self._within_allowance()
        if not settled:
            if self._stretches:
                self._stretches[-1].ended = True
            return
        if not self._stretches or self._stretches[-1].ended:
            counted = {key: len(jobs) for key, jobs in self.counted.items()}
            self._stretches.append(_Stretch(base_at=now, counted=counted, last_at=now))
        else:
            self._stretches[-1].last_at = now

    def _count(self) -> None:
        for node, data in self._world.disks():
            for job_id, job in data.jobs.items():
                if job_id in self._seen:
                    continue
                self._seen.add(job_id)
                if job.account_id in self.plans and data.decode(job).parent_id is None:
                    month = month_of(job.created_at_ms)
                    self.counted.setdefault((job.account_id, month), {}).setdefault(job_id, f"disk of {node}")
        jobs = self._ledger.jobs
        for entry in itertools.islice(jobs.values(), self._acked_read, None):
            if entry.tenant in self.plans:
                where = f"acknowledged by {entry.node}"
                self.counted.setdefault((entry.tenant, _month_at(entry.acked_at)), {}).setdefault(entry.job_id, where)
        self._acked_read = len(jobs)

    def _within_allowance(self) -> None:
        for (account, month), jobs in self.counted.items():
            plan = self.plans[account]
            if len(jobs) <= plan.allowance:
                continue
            mints = self.ledger(account, month).minted
            bound = sum(mints.values()) if len(mints) > 1 else plan.allowance
            if len(jobs) <= bound:
                continue
            first_seen = Counter(jobs.values())
            self._fail(
                "quota-never-exceeded",
                f"{account} has {len(jobs)} jobs in {month}, over its plan {plan.name!r}'s allowance of "
                f"{plan.allowance} ({plan.monthly_requests} + {plan.overage_requests_max} overage)"
                + (f", bound {bound} by {len(mints)} mints" if len(mints) > 1 else "")
                + f"; first seen: {dict(sorted(first_seen.items()))}; {self._describe(account, month)}",
            )

    # -- the ledger, as every node's entries at their greatest -----------------------------------------------------

    def _entries(self, prefix: str) -> dict[tuple[str, str], int]:
        """Every entry of the counters named `prefix`..., at the greatest value any running node or disk holds."""
        views: list[Iterable[CounterEntry]] = []
        for node in self._world.running_nodes():
            if node.running is not None and node.running.counters is not None:
                views.append(node.running.counters.counter_entries(prefix))
        for _name, data in self._world.disks():
            views.append(entry for entry in decode_counter_entries(data.shared_state) if entry.name.startswith(prefix))
        greatest: dict[tuple[str, str], int] = {}
        for view in views:
            for entry in view:
                key = (entry.name, entry.node)
                greatest[key] = max(greatest.get(key, 0), entry.value)
        return greatest

    def ledger(self, account: str, month: str) -> escrow.Ledger:
        """The quota's escrow ledger (edge/placement/usage.py's counters: mint|, give|, usage|<account>|<month>)."""
        mint, gifts, usage = f"mint|{account}|{month}", f"give|{account}|{month}|", usage_name(account, month)
        return escrow.Ledger(
            minted={node: value for (name, node), value in self._entries(mint).items() if name == mint and value},
            given={(node, name[len(gifts) :]): value for (name, node), value in self._entries(gifts).items()},
            used={node: value for (name, node), value in self._entries(usage).items() if name == usage},
        )

    def _describe(self, account: str, month: str) -> str:
        ledger = self.ledger(account, month)
        available = {node: ledger.available(node) for node in sorted(ledger.nodes())}
        used = dict(sorted(ledger.used.items()))
        return f"ledger: minted {dict(ledger.minted)}, used {used} (total {ledger.total_used}), available {available}"

    # -- at the end -------------------------------------------------------------------------------------------

    def final(self, now: float) -> None:
        self._count()
        self._within_allowance()
        month = _month_at(now)
        for account, plan in self.plans.items():
            log = self._ledger.tenants.get(account, TenantLog())
            ledger = self.ledger(account, month)
            down = [node.name for node in self._world.nodes.values() if node.running is None]
            stranded = sum(max(0, ledger.available(node)) for node in down)
            counted = len(self.counted.get((account, month), {}))
            reached = self._reached(account, month, plan, log, ledger, counted, stranded)
            month_end = month_end_ms(round((SIMULATED_EPOCH_S + now) * 1000))
            self.stats[account] = QuotaStats(
                plan=plan.name,
                allowance=plan.allowance,
                counted=counted,
                used=ledger.total_used,
                submitted=log.submitted,
                refused=len(log.quota_refusals),
                refused_until_month_end=sum(retry_at == month_end for _at, retry_at in log.quota_refusals),
                minters=tuple(sorted(ledger.minted)),
                stranded=stranded,
                reached=reached,
            )

    def _reached(
        self,
        account: str,
        month: str,
        plan: PlanConfig,
        log: TenantLog,
        ledger: escrow.Ledger,
        counted: int,
        stranded: int,
    ) -> str:
        """Judge "quota-reached" for one account's month; what was concluded, or why it was not judged."""
        if len(ledger.minted) > 1:
            return f"not judged: {len(ledger.minted)} mints"
        judged = [(at, answered) for at, answered in log.judged if _month_at(at) == month]
        if not judged:
            return "not judged: no submission judged this month"
        last_answer = max(answered for _at, answered in judged)
        stretch = next((s for s in self._stretches if s.base_at <= last_answer <= s.last_at), None)
        if stretch is None:
            return "not judged: membership unsettled at the last answer"
        left = plan.allowance - stretch.counted.get((account, month), 0)
        demand = sum(at >= stretch.base_at for at, _answered in judged)
        if demand <= left:
            return f"not judged: {demand} submissions from t={stretch.base_at:g} for {left} rights left"
        if counted != plan.allowance - stranded:
            self._fail(
                "quota-reached",
                f"{account} had {counted} jobs in {month} at the end, not its allowance {plan.allowance}"
                + (f" less {stranded} rights on nodes down" if stranded else "")
                + f", although its clients made {demand} judged submissions from t={stretch.base_at:g} (membership "
                f"settled from then until t={stretch.last_at:g}, after its last answer at t={last_answer:.3f}) "
                f"with {left} left; {len(log.quota_refusals)} refused in all; {self._describe(account, month)}",
            )
        return "judged"
