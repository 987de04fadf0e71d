"""The outbound queue's decisions: which job goes next and when, and what one attempt's outcome means.

Decide synchronously, then do the I/O (httpcore's connection pool works this way): the shell
(edge/engine/shell/queues.py) asks, carries out the answer, and reports back. It never judges anything itself.

    queue.push(record, eligible_at)             a job waits in line (new, resumed, retried, handed over)
    queue.next(now, wall_ms, regions=...)       -> Dispatch (its legs: regions, race or fanout) | Conclude | WaitUntil
                                                   | IDLE
    queue.settle_legs(job_id, legs, now, ...)   -> Settlement: the job's new record and what happens next
                                                   (`settle` for a dispatch of one leg)
    queue.cancel(job_id, wall_ms)               -> Settlement | None
    queue.commit(settlement)                    the store saved `settlement.record`: make it the live record
    queue.abort(settlement, now)                the save failed: the job stays as it was, and waits again

A dispatched job counts as in flight from `next` until `commit` or `abort`, so the concurrency limit also covers
the save of its outcome. Every new record is built on a copy (`JobRecord.evolve`, through the status table in
edge/engine/lifecycle.py) and replaces the live one only at `commit`: a failed save can never leave terminal fields
on a job that is still queued.

One settlement folds both judgements of an attempt that used to be made apart: the queue-wide one
(`scheduler.QueueLimits.on_response`: the provider's live limits, a 429 or quota block for every job of the key)
and the job's own (`scheduler.decide_retry`: success, final failure, or a retry and its backoff). A 429 keeps the
job's place in line and waits for the queue's block; another retry goes behind the jobs already waiting.

The settlement's `next_step` names what happens after it: "retry" (here, or in another region after a reroute:
the record's `regions_tried` steer the next plan) or "done". Workflows (fallback chains, child jobs) are meant to
come as further steps without changing the shell's loop.

`Queues` holds every key of a node: the jobs index, the per-account backlog and its admission check, and the limits
each key learned, bounded by `forget_idle` and QUEUE_KEYS_MAX.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, Final, Literal, final

from edge.engine import workflow
from edge.engine.legs import NO_REGION, SINGLE, LegPlan, RegionView, plan_legs
from edge.engine.lifecycle import JobEvent, finished, transition
from edge.engine.outcome import AttemptResult
from edge.engine.records import Attempt, JobRecord
from edge.engine.workflow import Move, PerKeyQueues
from scheduler import (
    LimitSignals,
    QueueDelay,
    QueueLimits,
    ReadyQueue,
    RetryDecision,
    decide_retry,
    parse_limit_headers,
)

# How long a job waits before it is tried again when the store could not save its outcome (disk full, I/O error).
STORE_RETRY_S: Final = 5.0
STORE_RETRY_MS: Final = int(STORE_RETRY_S * 1000)
# Queue keys a node remembers. Keys are client-controlled (account, origin, credential), and an idle key keeps only
# the limits its provider taught it (under 600 bytes, scheduler/limits.py), so 100,000 cost tens of MB. Past the
# bound the longest-idle tenth is forgotten at once: one scan per 10,000 new keys, not one per key.
QUEUE_KEYS_MAX: Final = 100_000

AttemptLabel = Literal[
    "success",
    "failed",
    "rate_limited",
    "error",
    "retry",
    "rerouted",
    "cancelled",
    "expired",
    "unplaceable",
    "workflow",
]


class BacklogFull(Exception):
    """The account already has `limit` unfinished jobs on this key owner; the job is refused (429)."""

    def __init__(self, account_id: str, limit: int) -> None:
        super().__init__(f"account {account_id} has {limit} unfinished jobs")
        self.account_id = account_id
        self.limit = limit


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """The backoff of retries that count against `max_retries` (the node's `defaults.backoff_*_s`)."""

    base_s: float = 0.5
    cap_s: float = 60.0


@final
@dataclass(frozen=True, slots=True)
class Dispatch:
    """Start an attempt of `record` (already marked running) now, in the regions `legs` names (edge/engine/legs.py):
    one leg, a race (the first success wins; cancel the others) or a fanout (every leg runs to its end)."""

    record: JobRecord
    legs: LegPlan = SINGLE


@final
@dataclass(frozen=True, slots=True)
class Conclude:
    """An outcome decided without an attempt (the deadline passed before the job could run; no region can take
    it): save `settlement`, then commit it."""

    settlement: Settlement


@final
@dataclass(frozen=True, slots=True)
class LegResult:
    """What one leg of a dispatch produced: its region, and its result (None: cancelled, a race's loser)."""

    region: str
    result: AttemptResult | None


@final
@dataclass(frozen=True, slots=True)
class Interrupt:
    """Cancel the attempt of `job_id` that is out now (its workflow stopped it, or its failure timeout passed);
    the attempt's settlement then says how the job ended."""

    job_id: str


@final
@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing can go before `at` (monotonic seconds; infinity: until something is pushed or settled)."""

    at: float


@final
class _Idle:
    """Nothing waits and nothing is in flight: the shell may end the queue's task."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IDLE"


IDLE: Final = _Idle()
Decision = Dispatch | Conclude | Interrupt | WaitUntil | _Idle


@final
@dataclass(frozen=True, slots=True)
class Settlement:
    """What an attempt (or a cancel, or an expiry) means: the job's new record and where it goes next.

    `next_step` is "retry" (the record waits again, eligible at `eligible_at`), "wait" (a workflow root waits for
    its steps, edge/engine/workflow.py) or "done" (the record is terminal). `spawn` are jobs to create in the same
    commit (steps, follow-ups), `stop` the step jobs to end wherever they run. The remaining fields are for the
    shell's metrics and for limits shared beyond this queue.
    """

    record: JobRecord
    next_step: Literal["retry", "wait", "done"]
    label: AttemptLabel
    eligible_at: float = 0.0
    keeps_place: bool = False  # a rate-limited job goes back where it was in line, ahead of later arrivals
    # Set from the response's X-EZTHROTTLE-ACCOUNT-QUEUE: the provider says whether keys of the origin share a queue.
    account_queue: bool | None = None
    malformed_headers: int = 0
    rate_limited: bool = False
    spawn: tuple[JobRecord, ...] = ()
    stop: tuple[str, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.next_step == "done"

    @classmethod
    def of_move(cls, move: Move, label: AttemptLabel) -> Settlement:
        return cls(move.record, "done" if move.record.is_terminal else "wait", label, spawn=move.spawn, stop=move.stop)


@dataclass(slots=True)
class _Waiting:
    """A job this queue holds: its live record, and its place in line (when it may go, in monotonic seconds, and
    its order among jobs that may go at the same instant)."""

    record: JobRecord
    eligible_at: float
    seq: int = 0
    legs: int = 0  # attempts of this job in flight (a race or fanout has several), released at commit or abort
    parked: bool = False  # a workflow root: never in line, it waits for its steps and its timers
    # Why the attempt out must end (set with an Interrupt): the event and the reason it is recorded with.
    interrupt: tuple[JobEvent, str] | None = None


class OutboundQueue:
    """One queue key: its jobs, its pacing and blocking state (`limits`), and the attempts in flight."""

    __slots__ = (
        "_jobs",
        "_last_wall_ms",
        "_ready",
        "_timer_at",
        "_timers",
        "idle_since",
        "in_flight",
        "key",
        "limits",
        "origin",
        "per_key",
        "retry",
    )

    def __init__(
        self,
        key: str,
        origin: str,
        limits: QueueLimits,
        retry: RetrySettings,
        per_key: PerKeyQueues = lambda origin: True,
    ) -> None:
        self.key = key
        self.origin = origin
        self.limits = limits
        self.retry = retry
        self.per_key = per_key
        self.in_flight = 0
        self.idle_since = 0.0
        self._jobs: dict[str, _Waiting] = {}
        self._ready = ReadyQueue()
        # Workflow timers (edge/engine/workflow.py `due_at_ms`): a heap of (wall ms, job id), an entry valid while
        # `_timer_at` still names that time for the job.
        self._timers: list[tuple[int, str]] = []
        self._timer_at: dict[str, int] = {}
        self._last_wall_ms = 0

    @property
    def depth(self) -> int:
        """Jobs waiting in line (not in flight)."""
        return len(self._ready)

    @property
    def is_idle(self) -> bool:
        return not self._jobs and self.in_flight == 0

    @property
    def holds_jobs(self) -> bool:
        """Whether any job is here: waiting, in flight, or a parked workflow root."""
        return bool(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def record(self, job_id: str) -> JobRecord | None:
        waiting = self._jobs.get(job_id)
        return waiting.record if waiting else None

    def records(self) -> Iterator[JobRecord]:
        return (waiting.record for waiting in self._jobs.values())

    def push(self, record: JobRecord, eligible_at: float) -> None:
        """Put a queued job in line; it may go at `eligible_at` at the earliest. A workflow root is parked."""
        if record.steps:
            self._jobs[record.job_id] = _Waiting(record, float("inf"), parked=True)
        else:
            self._jobs[record.job_id] = _Waiting(record, eligible_at, self._ready.push(record.job_id, eligible_at))
        self._arm(record)

    def next(
        self, now: float, wall_ms: int, *, may_dispatch: bool = True, regions: RegionView | None = None
    ) -> Decision:
        """The next thing to do. `may_dispatch` False (the key is owned elsewhere for now) holds every job.
        `regions` is what the owner knows of regions (a node alone: only its own)."""
        if self.is_idle:
            return IDLE
        self._last_wall_ms = wall_ms
        timer_at = float("inf")
        if may_dispatch:
            due = self._due_timer(now, wall_ms)
            if isinstance(due, float):
                timer_at = due
            elif due is not None:
                return due
        if not len(self._ready) or not may_dispatch or self.in_flight >= self.limits.max_concurrent:
            return WaitUntil(timer_at)
        head_at = self._ready.next_eligible_at()
        assert head_at is not None
        go_at = max(self.limits.ready_at(now), head_at)
        if go_at > now:
            return WaitUntil(min(go_at, timer_at))
        job_id = self._ready.pop_ready(now)
        assert job_id is not None
        waiting = self._jobs[job_id]
        record = waiting.record
        if wall_ms >= record.deadline_at_ms:
            waiting.legs = 1
            self.in_flight += 1
            expired = transition(
                record, JobEvent.EXPIRE, **finished(wall_ms), error="deadline passed before the job could run"
            )
            return Conclude(self._concluded(Settlement(expired, "done", "expired"), wall_ms))
        view = regions or RegionView.single()
        plan = plan_legs(
            record.spec,
            record.regions_tried,
            view,
            slots=self.limits.max_concurrent - self.in_flight,
            done=record.region_responses,
        )
        waiting.legs = max(1, len(plan.regions)) + (plan.hedge is not None)
        self.in_flight += waiting.legs
        waiting.record = transition(record, JobEvent.DISPATCH)
        if plan.unavailable is not None:
            # No region can take it now: an attempt that failed at once, retried like a connection error.
            unplaceable = AttemptResult(0.0, error=plan.unavailable)
            leg = [LegResult(NO_REGION, unplaceable)]
            return Conclude(self.settle_legs(job_id, leg, now, wall_ms, rng=None, regions=view))
        for _leg in (*plan.regions, *((plan.hedge,) if plan.hedge else ())):
            self.limits.on_dispatch(now)  # every leg is a request the provider sees (a hedge: reserved)
        return Dispatch(waiting.record, plan)

    def settle(
        self,
        job_id: str,
        result: AttemptResult,
        now: float,
        wall_ms: int,
        rng: Random,
        *,
        region: str = NO_REGION,
        regions: RegionView | None = None,
    ) -> Settlement:
        """Judge a single attempt's outcome (a dispatch of one leg)."""
        return self.settle_legs(job_id, [LegResult(region, result)], now, wall_ms, rng, regions=regions)

    def settle_legs(
        self,
        job_id: str,
        legs: Sequence[LegResult],
        now: float,
        wall_ms: int,
        rng: Random | None,
        *,
        regions: RegionView | None = None,
        mode: str = "single",
    ) -> Settlement:
        """Judge what the legs of one dispatch produced, for the queue (limits, blocks) and for the job (its next
        step): a success wins (a race: the first; a fanout: only when every region succeeded), a rate limit makes
        the whole queue wait, a reroute code moves the job to another region, a retry code retries in place.

        An attempt that was interrupted (`Interrupt`) and did not win ends the job as the interrupt said. A job
        that ends spawns its follow-up (on_success, on_failure) in the same settlement."""
        waiting = self._jobs[job_id]
        judged = [self._judge_leg(leg, now, wall_ms, rng or _NO_JITTER, waiting.record) for leg in legs]
        settlement = self._decide(waiting, judged, now, wall_ms, regions, mode)
        if waiting.interrupt is not None and settlement.label != "success":
            event, reason = waiting.interrupt
            # The legs still out were cancelled; one that ended first keeps its outcome, and the response stays.
            attempts = [j.attempt("cancelled" if j.result is None else "failed") for j in judged]
            stopped = transition(
                waiting.record,
                event,
                **waiting.record.attempts_with(attempts),
                **finished(wall_ms),
                response=next((j.response for j in judged if j.result is not None), None),
                error=reason,
            )
            label: AttemptLabel = "cancelled" if event is JobEvent.STOP else "failed"
            settlement = dataclasses.replace(
                settlement, record=stopped, next_step="done", label=label, eligible_at=0.0, keeps_place=False
            )
        return self._concluded(settlement, wall_ms)

    def _decide(
        self,
        waiting: _Waiting,
        judged: Sequence[_Judged],
        now: float,
        wall_ms: int,
        regions: RegionView | None,
        mode: str,
    ) -> Settlement:
        record = waiting.record
        account_queue = next((j.signals.account_queue for j in judged if j.signals.account_queue is not None), None)
        common: dict[str, Any] = {
            "account_queue": account_queue,
            "malformed_headers": sum(len(j.signals.malformed) for j in judged),
            "rate_limited": any(j.rate_limited for j in judged),
        }
        if mode == "fanout":
            return self._settle_fanout(waiting, judged, now, wall_ms, common)
        winner = next((j for j in judged if j.decision.kind == "success"), None)
        if winner is not None:
            attempts = [
                j.attempt("won" if j is winner else "cancelled" if j.result is None else "failed") for j in judged
            ]
            final = transition(
                record,
                JobEvent.SUCCEED,
                **record.attempts_with(attempts),
                **finished(wall_ms),
                response=winner.response,
            )
            return Settlement(final, "done", "success", **common)
        ran = [j for j in judged if j.result is not None] or judged
        limited = next((j for j in ran if j.rate_limited), None)
        if limited is None and record.spec.regions:
            rerouted = self._reroute(waiting, ran, now, wall_ms, regions, common)
            if rerouted is not None:
                return rerouted
        decisive = limited or ran[0]
        others = [j.attempt("failed") for j in ran if j is not decisive]
        return self._settle_one(waiting, decisive, others, now, wall_ms, common)

    def _judge_leg(self, leg: LegResult, now: float, wall_ms: int, rng: Random, record: JobRecord) -> _Judged:
        result = leg.result or AttemptResult(0.0, error="cancelled: another region won")
        signals = parse_limit_headers(result.headers, wall_now=wall_ms / 1000)
        queue_delay = None
        if leg.result is not None and result.status_code is not None:
            queue_delay = self.limits.on_response(now, result.status_code, signals, rng)
        policy = record.spec.retry_policy
        decision = decide_retry(
            status_code=result.status_code,
            error=result.error,
            retry_codes=policy.retry_codes,
            retries_used=record.retries_used,
            max_retries=policy.max_retries if result.retryable else 0,
            retry_after_s=signals.retry_after_s,
            rng=rng,
            base_s=self.retry.base_s,
            cap_s=self.retry.cap_s,
            remaining=signals.remaining,
        )
        return _Judged(leg, result if leg.result is not None else None, signals, queue_delay, decision, wall_ms)

    def _reroute(
        self,
        waiting: _Waiting,
        ran: Sequence[_Judged],
        now: float,
        wall_ms: int,
        regions: RegionView | None,
        common: dict[str, Any],
    ) -> Settlement | None:
        """Move the job to another region at once when its legs failed with a reroute code, a connection error or a
        timeout, it has reroutes left and some region can take it; None otherwise (the caller retries or fails)."""
        record = waiting.record
        policy = record.spec.retry_policy
        reroutable = [j for j in ran if j.result is not None and _reroutable(j.result, policy.reroute_codes)]
        if not reroutable or record.reroutes_used >= policy.max_reroutes:
            return None
        tried = [*record.regions_tried, *(j.leg.region for j in reroutable if j.leg.region)]
        view = regions or RegionView.single()
        plan = plan_legs(record.spec, tried, view, slots=1)
        if plan.unavailable is not None or plan.regions == SINGLE.regions:
            return None  # no other region can take it: a retry in place, or the end
        attempts = [j.attempt("rerouted" if j in reroutable else "failed") for j in ran]
        attempts[-1].delay_reason = "rerouted to another region"
        moved = transition(
            record,
            JobEvent.RETRY,
            **record.attempts_with(attempts),
            reroutes_used=record.reroutes_used + 1,
            regions_tried=list(dict.fromkeys(tried)),
            next_attempt_at_ms=wall_ms,
            updated_at_ms=wall_ms,
        )
        # At once, and in the job's place in line: a reroute is the same attempt, elsewhere.
        return Settlement(moved, "retry", "rerouted", eligible_at=waiting.eligible_at, keeps_place=True, **common)

    def _settle_one(
        self,
        waiting: _Waiting,
        judged: _Judged,
        others: list[Attempt],
        now: float,
        wall_ms: int,
        common: dict[str, Any],
    ) -> Settlement:
        """The job's next step decided by one leg's outcome (the others are recorded as they ended)."""
        record = waiting.record
        result, decision = judged.result_or_error, judged.decision
        delay_s, reason = decision.delay_s, decision.reason
        if decision.kind == "retry" and not decision.counts_retry and judged.queue_delay is not None:
            # The job waits for the queue's block, which an earlier answer may have set further out than this one.
            delay_s = max(judged.queue_delay.delay_s, self.limits.blocked_until - now)
            reason = judged.queue_delay.reason
        response = judged.response
        if decision.kind != "retry":
            event = JobEvent.SUCCEED if decision.kind == "success" else JobEvent.FAIL
            attempts = [*others, judged.attempt("won" if decision.kind == "success" else "failed")]
            final = transition(
                record,
                event,
                **record.attempts_with(attempts),
                **finished(wall_ms),
                response=response,
                error=None if response else result.error,
            )
            return Settlement(final, "done", decision.kind, **common)
        label: AttemptLabel = (
            "rate_limited" if judged.rate_limited else "error" if result.status_code is None else "retry"
        )
        retry_wall_ms = wall_ms + int(delay_s * 1000)
        attempt = judged.attempt("rate_limited" if judged.rate_limited else "retried")
        if retry_wall_ms >= record.deadline_at_ms:
            attempt.outcome, attempt.delay_reason = "failed", f"{reason}; deadline reached"
            final = transition(
                record,
                JobEvent.FAIL,
                **record.attempts_with([*others, attempt]),
                **finished(wall_ms),
                response=response,
                error=f"deadline reached after {reason}",
            )
            return Settlement(final, "done", label, **common)
        attempt.delay_s, attempt.delay_reason = round(delay_s, 3), reason
        # A 429 keeps the job's place in line (the queue-wide block does the waiting); other retries go behind.
        eligible_at = now + delay_s if decision.counts_retry else waiting.eligible_at
        retried = transition(
            record,
            JobEvent.RETRY,
            **record.attempts_with([*others, attempt]),
            retries_used=record.retries_used + decision.counts_retry,
            next_attempt_at_ms=retry_wall_ms,
            updated_at_ms=wall_ms,
        )
        return Settlement(retried, "retry", label, eligible_at=eligible_at, keeps_place=judged.rate_limited, **common)

    def _settle_fanout(
        self, waiting: _Waiting, judged: Sequence[_Judged], now: float, wall_ms: int, common: dict[str, Any]
    ) -> Settlement:
        """A fanout succeeds once every region it ran in succeeded; the first failure decides otherwise."""
        record = waiting.record
        responses = dict(record.region_responses)
        for j in judged:
            if j.decision.kind == "success":
                responses[j.leg.region] = j.response
        failed = [j for j in judged if j.decision.kind != "success"]
        if not failed:
            attempts = [j.attempt("succeeded") for j in judged]
            first = next((responses[r] for r in record.spec.regions if r in responses), None)
            final = transition(
                record,
                JobEvent.SUCCEED,
                **record.attempts_with(attempts),
                **finished(wall_ms),
                response=first,
                region_responses=responses,
            )
            return Settlement(final, "done", "success", **common)
        others = [j.attempt("succeeded") for j in judged if j.decision.kind == "success"]
        settlement = self._settle_one(waiting, failed[0], others, now, wall_ms, common)
        settlement.record.region_responses = responses
        return settlement

    # -- workflows (edge/engine/workflow.py) ------------------------------------------------------------------------

    def parked_roots(self) -> Iterator[JobRecord]:
        """The workflow roots parked here, waiting for their steps."""
        return (w.record for w in self._jobs.values() if w.parked)

    def step_finished(self, root_id: str, step: JobRecord, wall_ms: int) -> Settlement | None:
        """A step job of the root `root_id` (parked here) ended: the root's next move, or None when it has none or
        is busy saving its last one (the shell's periodic check of open steps reports it again)."""
        self._last_wall_ms = wall_ms
        waiting = self._jobs.get(root_id)
        if waiting is None or not waiting.parked or waiting.legs:
            return None
        move = workflow.step_finished(waiting.record, step, wall_ms, self.per_key)
        if move is None:
            return None
        return self._begin_save(waiting, Settlement.of_move(move, "workflow"))

    def stop(self, job_id: str, wall_ms: int) -> Settlement | Interrupt | None:
        """End a step job its workflow no longer needs: a Settlement when it was waiting, an Interrupt when an
        attempt of it is out (the attempt's settlement ends it), None when it is not here. A job whose outcome is
        being saved ends right after that save."""
        self._last_wall_ms = wall_ms
        waiting = self._jobs.get(job_id)
        if waiting is None or waiting.parked:
            return None
        if waiting.interrupt is None:
            waiting.interrupt = (JobEvent.STOP, "stopped: its workflow no longer needs it")
        decision = self._interrupt(waiting, wall_ms)
        return decision.settlement if isinstance(decision, Conclude) else decision

    def _due_timer(self, now: float, wall_ms: int) -> Conclude | Interrupt | float | None:
        """The workflow timer due now, as a decision; otherwise when the next one is due (monotonic), or None."""
        while self._timers:
            at_ms, job_id = self._timers[0]
            waiting = self._jobs.get(job_id)
            if waiting is None or self._timer_at.get(job_id) != at_ms:
                heapq.heappop(self._timers)
                continue
            if at_ms > wall_ms:
                return now + (at_ms - wall_ms) / 1000
            heapq.heappop(self._timers)
            del self._timer_at[job_id]
            decision = self._on_timer(waiting, wall_ms)
            if decision is not None:
                return decision
        return None

    def _on_timer(self, waiting: _Waiting, wall_ms: int) -> Conclude | Interrupt | None:
        record = waiting.record
        if waiting.parked:
            if waiting.legs:
                return None  # its last move is being saved; the commit arms the timer again
            move = workflow.on_timer(record, wall_ms, self.per_key)
            if move is None:
                self._arm(record)
                return None
            return Conclude(self._begin_save(waiting, Settlement.of_move(move, "workflow")))
        if waiting.interrupt is None:
            reason = workflow.failure_timeout(record, wall_ms)
            if reason is None:
                return None
            waiting.interrupt = (JobEvent.FAIL, reason)
        return self._interrupt(waiting, wall_ms)

    def _interrupt(self, waiting: _Waiting, wall_ms: int) -> Conclude | Interrupt | None:
        """End a job as `waiting.interrupt` says: at once when it waits in line; by cancelling its attempt when one
        is out; after its save when one is in flight (the commit arms its timer again)."""
        assert waiting.interrupt is not None
        record = waiting.record
        event, reason = waiting.interrupt
        if self._ready.remove(record.job_id):
            if event is JobEvent.FAIL and record.status == "queued":
                event = JobEvent.EXPIRE
            ended = transition(record, event, **finished(wall_ms), error=reason)
            label: AttemptLabel = "cancelled" if event is JobEvent.STOP else "failed"
            return Conclude(self._begin_save(waiting, self._concluded(Settlement(ended, "done", label), wall_ms)))
        if waiting.legs and record.status == "running":
            return Interrupt(record.job_id)
        return None

    def _concluded(self, settlement: Settlement, wall_ms: int) -> Settlement:
        """A settlement that ends its job, with the job's follow-up (on_success, on_failure) to create with it."""
        if not settlement.is_terminal:
            return settlement
        move = workflow.conclude(settlement.record, wall_ms, self.per_key)
        return dataclasses.replace(settlement, record=move.record, spawn=(*settlement.spawn, *move.spawn))

    def _begin_save(self, waiting: _Waiting, settlement: Settlement) -> Settlement:
        """`settlement` is to be saved: the job counts as in flight until its commit or abort, like an attempt."""
        waiting.legs = 1
        self.in_flight += 1
        return settlement

    def _arm(self, record: JobRecord, at_ms: int | None = None) -> None:
        """(Re)schedule the job's workflow timer: at `at_ms`, or when `workflow.due_at_ms` says."""
        due = workflow.due_at_ms(record) if at_ms is None else at_ms
        if due is None:
            self._timer_at.pop(record.job_id, None)
            return
        self._timer_at[record.job_id] = due
        heapq.heappush(self._timers, (due, record.job_id))

    # -- cancel, commit, abort -----------------------------------------------------------------------------------

    def cancel(self, job_id: str, wall_ms: int) -> Settlement | None:
        """Take a waiting job out of line to cancel it; None when it is not waiting here (in flight, or unknown).

        The job is out of line at once, so it cannot start while the cancel is saved; `abort` puts it back."""
        waiting = self._jobs.get(job_id)
        if waiting is None or waiting.record.status != "queued" or not self._ready.remove(job_id):
            return None
        waiting.legs = 1
        self.in_flight += 1  # the save is in flight, like an attempt's
        cancelled = transition(waiting.record, JobEvent.CANCEL, **finished(wall_ms), error="cancelled by the client")
        return Settlement(cancelled, "done", "cancelled")

    def commit(self, settlement: Settlement) -> None:
        """The store holds `settlement.record` now: it becomes the live record (or leaves, when terminal)."""
        job_id = settlement.record.job_id
        waiting = self._jobs[job_id]
        self._release_legs(waiting)
        if settlement.is_terminal:
            del self._jobs[job_id]
            self._timer_at.pop(job_id, None)
            return
        waiting.record = settlement.record
        if settlement.next_step == "retry":
            place = waiting.seq if settlement.keeps_place else None
            waiting.eligible_at = settlement.eligible_at
            waiting.seq = self._ready.push(job_id, settlement.eligible_at, seq=place)
        # An interrupt that came while the outcome was saved ends the job at once now.
        self._arm(waiting.record, 0 if waiting.interrupt is not None else None)

    def abort(self, settlement: Settlement, now: float) -> None:
        """The store could not save `settlement.record`: the job keeps its last saved state and waits again.

        The store still holds that state, so at worst the attempt is repeated (at-least-once). A job whose cancel
        failed gets its place in line back; any other waits STORE_RETRY_S, so a failing store is not hammered."""
        job_id = settlement.record.job_id
        waiting = self._jobs[job_id]
        self._release_legs(waiting)
        if waiting.parked:
            # A root's move is decided again: its timer after the pause, a step's report when it is checked again.
            due = workflow.due_at_ms(waiting.record)
            self._arm(waiting.record, None if due is None else max(due, self._last_wall_ms + STORE_RETRY_MS))
            return
        if waiting.interrupt is not None:
            self._arm(waiting.record, self._last_wall_ms + STORE_RETRY_MS)
        if waiting.record.status == "running":
            waiting.record = transition(waiting.record, JobEvent.RESUME)
        if settlement.label == "cancelled":
            waiting.seq = self._ready.push(job_id, waiting.eligible_at, seq=waiting.seq)
        else:
            waiting.eligible_at = now + STORE_RETRY_S
            waiting.seq = self._ready.push(job_id, waiting.eligible_at)

    def take_waiting(self, wanted: Callable[[JobRecord], bool] = lambda record: True) -> list[JobRecord]:
        """The jobs waiting in line that `wanted` names, taken out (for another queue or owner); in-flight ones
        stay."""
        # Only jobs in line: one whose attempt, cancel or expiry is being saved is not this queue's to give away.
        # Parked workflow roots go too (with their steps' state; their timers are armed again where they land).
        taken = [
            w.record
            for job_id, w in self._jobs.items()
            if (job_id in self._ready or (w.parked and not w.legs)) and wanted(w.record)
        ]
        for record in taken:
            self._ready.remove(record.job_id)
            del self._jobs[record.job_id]
            self._timer_at.pop(record.job_id, None)
        return taken

    def _release_legs(self, waiting: _Waiting) -> None:
        self.in_flight -= waiting.legs
        waiting.legs = 0

    def __repr__(self) -> str:
        return f"<OutboundQueue {self.key}: {self.depth} waiting, {self.in_flight} in flight | {self.limits!r}>"


def wins(result: AttemptResult) -> bool:
    """Whether a leg's result decides a race: a success (2xx, 3xx) wins, and the other legs are cancelled."""
    return result.status_code is not None and 200 <= result.status_code < 400


def _reroutable(result: AttemptResult, reroute_codes: tuple[int, ...]) -> bool:
    """A reroute code, or no answer at all (a connection error or a timeout) that another region may not have."""
    if result.status_code is None:
        return result.retryable
    return result.status_code in reroute_codes


# Only an unplaceable job is judged without an rng, and it has no response to jitter a backoff for a 429 from.
_NO_JITTER: Final = Random(0)


@dataclass(slots=True)
class _Judged:
    """One leg judged: its result (None if it was cancelled), the provider's signals, and the retry decision."""

    leg: LegResult
    result: AttemptResult | None
    signals: LimitSignals
    queue_delay: QueueDelay | None
    decision: RetryDecision
    wall_ms: int

    @property
    def result_or_error(self) -> AttemptResult:
        return self.result or AttemptResult(0.0, error="cancelled")

    @property
    def rate_limited(self) -> bool:
        # A rate-limit refusal (a 429, or a 403 that says it is one) is retried without counting: that is how
        # decide_retry tells it from every other retry.
        return self.result is not None and self.decision.kind == "retry" and not self.decision.counts_retry

    @property
    def response(self) -> dict[str, Any] | None:
        result = self.result
        return result.response_dict() if result is not None and result.status_code is not None else None

    def attempt(self, outcome: str) -> Attempt:
        result = self.result_or_error
        duration_ms = result.duration_s * 1000
        return Attempt(
            at_ms=self.wall_ms - int(duration_ms),
            duration_ms=round(duration_ms, 3),
            status_code=result.status_code,
            error=result.error,
            region=self.leg.region or None,
            outcome=outcome,
        )


class Queues:
    """Every queue key of a node, the jobs they hold, and each account's backlog of unfinished jobs.

    Keys stay after their jobs are gone, so the limits a provider's headers taught them survive between bursts;
    `forget_idle` bounds how many distinct keys (a client-controlled number) are remembered.
    """

    def __init__(
        self,
        limits_for: Callable[[str], QueueLimits],
        retry: RetrySettings,
        *,
        busy: Callable[[OutboundQueue], bool] = lambda queue: False,
        keys_max: int = QUEUE_KEYS_MAX,
        per_key: PerKeyQueues = lambda origin: True,
    ) -> None:
        self._limits_for = limits_for
        self._retry = retry
        self._per_key = per_key  # the queue key of the steps and follow-ups a workflow creates
        self._busy = busy  # the shell still runs a task for the queue: never forget it then
        self._keys_max = keys_max
        self._queues: dict[str, OutboundQueue] = {}
        self._queue_of_job: dict[str, OutboundQueue] = {}
        self._backlog: Counter[str] = Counter()
        self._admitting: Counter[str] = Counter()
        self._by_idempotency: dict[tuple[str, str], str] = {}  # the unfinished jobs here, by (account, key)

    def __len__(self) -> int:
        return len(self._queues)

    def __iter__(self) -> Iterator[OutboundQueue]:
        return iter(list(self._queues.values()))

    def get(self, key: str) -> OutboundQueue | None:
        return self._queues.get(key)

    def queue_of(self, job_id: str) -> OutboundQueue | None:
        return self._queue_of_job.get(job_id)

    def live_job(self, job_id: str) -> JobRecord | None:
        queue = self._queue_of_job.get(job_id)
        return queue.record(job_id) if queue else None

    @property
    def jobs(self) -> int:
        return len(self._queue_of_job)

    def backlog(self, account_id: str) -> int:
        """The account's unfinished jobs here, counting submissions still being saved."""
        return self._backlog[account_id] + self._admitting[account_id]

    def admit(self, account_id: str, limit: int | None) -> None:
        """Take a submission in, to be saved; BacklogFull when the account already has `limit` unfinished jobs
        (None: never refused, a job handed over from another node that was acknowledged there already).

        Counted from here until `admitted`, so concurrent submissions see each other while they are saved."""
        if limit is not None and self.backlog(account_id) >= limit:
            raise BacklogFull(account_id, limit)
        self._admitting[account_id] += 1

    def live_duplicate(self, account_id: str, idempotent_key: str) -> JobRecord | None:
        """The unfinished job here that the account submitted under `idempotent_key`, if any: a resubmission of
        it is answered with it, even when the backlog is full."""
        job_id = self._by_idempotency.get((account_id, idempotent_key))
        return self.live_job(job_id) if job_id is not None else None

    def admitted(self, account_id: str) -> None:
        """The submission `admit` took in was saved (and pushed) or refused by the store."""
        self._admitting[account_id] -= 1
        if self._admitting[account_id] <= 0:
            del self._admitting[account_id]

    def push(self, record: JobRecord, eligible_at: float) -> OutboundQueue:
        """Queue a job that is durable and unfinished; returns its key's queue."""
        queue = self._queues.get(record.queue_key)
        if queue is None:
            if len(self._queues) >= self._keys_max:
                self._forget_longest_idle(max(1, self._keys_max // 10))
            origin = record.spec.origin
            queue = OutboundQueue(record.queue_key, origin, self._limits_for(origin), self._retry, self._per_key)
            self._queues[record.queue_key] = queue
        if record.status != "queued" and not (record.steps and record.status == "running"):
            # A finished record is refused here, before any counting; a running workflow root stays as it is.
            record = transition(record, JobEvent.RESUME)
        if record.job_id not in self._queue_of_job:
            self._backlog[record.account_id] += 1
            self._by_idempotency[(record.account_id, record.idempotent_key)] = record.job_id
        queue.push(record, eligible_at)
        self._queue_of_job[record.job_id] = queue
        return queue

    def open_steps(self) -> list[tuple[OutboundQueue, str, str]]:
        """(queue, root id, step job id) for every running step of the workflow roots parked here."""
        return [
            (queue, root.job_id, state.job_id)
            for queue in self._queues.values()
            for root in queue.parked_roots()
            for state in root.steps
            if state.state == "running"
        ]

    def settled(self, settlement: Settlement) -> None:
        """Bookkeeping after a terminal settlement was committed: the job leaves the index and its backlog."""
        if settlement.is_terminal:
            self._release(settlement.record)

    def take_waiting(self, is_foreign: Callable[[str], bool]) -> list[JobRecord]:
        """The waiting jobs of keys `is_foreign` names, taken out (to hand them to their owner)."""
        taken: list[JobRecord] = []
        for queue in self._queues.values():
            if queue.holds_jobs and is_foreign(queue.key):
                for record in queue.take_waiting():
                    self._release(record)
                    taken.append(record)
        return taken

    def take_rekeyed(self, origin: str, key_of: Callable[[JobRecord], str]) -> list[tuple[JobRecord, str]]:
        """The waiting jobs of `origin` whose queue key is no longer `key_of(record)`, taken out, with their new key
        (the provider switched per-credential queues on or off)."""
        moved: list[tuple[JobRecord, str]] = []
        for queue in self._queues.values():
            if queue.origin == origin and queue.depth:
                # A parked workflow root keeps its key: it makes no attempt, so no queue paces it.
                for record in queue.take_waiting(lambda r: not r.steps and key_of(r) != r.queue_key):
                    self._release(record)
                    moved.append((record, key_of(record)))
        return moved

    def forget_idle(self, now: float, idle_for_s: float) -> int:
        """Drop keys idle for `idle_for_s` (and the limits they learned); returns how many were dropped."""
        cutoff = now - idle_for_s
        stale = [key for key, queue in self._queues.items() if self._forgettable(queue) and queue.idle_since <= cutoff]
        for key in stale:
            del self._queues[key]
        return len(stale)

    def _forget_longest_idle(self, count: int) -> None:
        idle = sorted((q for q in self._queues.values() if self._forgettable(q)), key=lambda q: q.idle_since)
        for queue in idle[:count]:
            del self._queues[queue.key]

    def _forgettable(self, queue: OutboundQueue) -> bool:
        return queue.is_idle and not self._busy(queue)

    def _release(self, record: JobRecord) -> None:
        del self._queue_of_job[record.job_id]
        self._by_idempotency.pop((record.account_id, record.idempotent_key), None)
        self._backlog[record.account_id] -= 1
        if self._backlog[record.account_id] <= 0:
            del self._backlog[record.account_id]
