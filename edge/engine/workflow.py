"""Workflows: fallback chains and follow-up jobs, decided from the root's record alone (no I/O, no clock).

A job with a `fallback_job` is a *workflow root*. It makes no attempt itself: its chain (its own request is step 0,
each nested `fallback_job` the next step) runs as *step jobs*, ordinary jobs in the queue of their own key, so a
fallback to another origin is paced by that origin's queue, on that key's owner. A step job has no webhooks; when
it ends, it reports to its root, which waits ("parked") in its own key's queue and decides:

- step i failed finally: the next step starts when its trigger says so. `on_error`: the failure's status code is
  one of `codes` (an empty list: any failure), or the step got no response at all (connection error, timeout:
  the fallback exists for exactly that). `on_timeout`: at once, since a step that failed is later than late.
  Otherwise the chain is over (also when the client cancelled the step job itself), and once no step runs the
  root fails with the last step's response.
- step i succeeded: the root succeeds with that step's response and records `won_step`; every other running step
  is stopped (cancelled where it is, also mid-attempt).
- the newest step is still running and the next one has an `on_timeout` trigger: the next one starts
  `timeout_ms` after the newest started, and races it.
- the root's `on_failure_timeout_ms` (counted from submission) or its deadline passes: it fails, and what still
  runs is stopped.

Follow-ups: a job that is not a step and ends `success` spawns its `on_success`, one that ends `failed` spawns its
`on_failure` (a client's cancel spawns nothing). The follow-up is built here and saved in the same commit as its
parent's terminal record, so it exists exactly once, crash or not. It is a job of its own (its own id, key and
webhooks), linked to its parent by `parent_id`.

Every decision returns a `Move`: the root's new record, the jobs to create in the same commit, and the step jobs
to stop. Ids are derived (`<root>-step1`, `<parent>-on_success`), so a decision replayed after a crash can never
create a second job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

from edge.engine.lifecycle import JobEvent, finished, transition
from edge.engine.records import JobRecord, StepState
from edge.engine.spec import JobSpec, queue_key

# Whether the provider gave an origin per-key queues (edge/placement/account_queues.py): a follow-up's queue key.
PerKeyQueues = Callable[[str], bool]

_STEP_STATE_OF_STATUS: Final = {"success": "succeeded", "failed": "failed", "cancelled": "cancelled"}


@final
@dataclass(frozen=True, slots=True)
class Move:
    """What a workflow decision changes: `record` (the root's or parent's new record), `spawn` (jobs to create in
    the same commit), `stop` (ids of step jobs that must end, wherever they run)."""

    record: JobRecord
    spawn: tuple[JobRecord, ...] = ()
    stop: tuple[str, ...] = ()


def is_workflow(spec: JobSpec) -> bool:
    return spec.fallback_job is not None


def chain(spec: JobSpec) -> list[JobSpec]:
    """The steps of a job's fallback chain: the job itself, then each nested `fallback_job`."""
    steps = [spec]
    while steps[-1].fallback_job is not None:
        steps.append(steps[-1].fallback_job)
    return steps


def begin(root: JobRecord, wall_ms: int) -> Move:
    """A new workflow root: running, with step 0 started."""
    started = transition(root, JobEvent.DISPATCH, steps=[StepState(0, _step_id(root, 0), started_at_ms=wall_ms)])
    started.updated_at_ms = wall_ms
    return Move(started, spawn=(_step_job(root, 0, wall_ms, root.queue_key),))


def step_finished(root: JobRecord, step: JobRecord, wall_ms: int, per_key: PerKeyQueues) -> Move | None:
    """The root's answer to a step job that ended; None when it has nothing to change (the step is unknown, not
    finished, or was already accounted for: reports may arrive twice)."""
    index = step.step
    if root.is_terminal or not step.is_terminal or index is None or index >= len(root.steps):
        return None
    if root.steps[index].job_id != step.job_id or root.steps[index].state != "running":
        return None
    record = root.evolve(updated_at_ms=wall_ms)
    state = record.steps[index]
    state.state = _STEP_STATE_OF_STATUS[step.status]  # type: ignore[assignment]
    state.finished_at_ms = wall_ms
    state.status_code = (step.response or {}).get("status_code")
    state.error = step.error
    state.attempts_total = step.attempts_total
    if step.status == "success":
        return _succeed(record, index, step, wall_ms, per_key)
    spawn: tuple[JobRecord, ...] = ()
    following = index + 1
    specs = chain(record.spec)
    if following == len(record.steps) and following < len(specs) and _fails_over(specs[following], state):
        spawn = _start_step(record, following, wall_ms, per_key)
    if spawn or any(s.state == "running" for s in record.steps):
        return Move(record, spawn)
    reason = f"step {index} failed: {state.error or f'status {state.status_code}'}"
    failed = transition(
        record,
        JobEvent.FAIL,
        **finished(wall_ms),
        response=step.response,
        error=f"every step of the fallback chain that ran failed (last: {reason})",
    )
    return conclude(failed, wall_ms, per_key)


def due_at_ms(record: JobRecord) -> int | None:
    """When `on_timer` has something to do for this job (wall ms), or None. For a job that is not a root: only its
    `on_failure_timeout_ms`."""
    if record.is_terminal or record.is_step:
        return None
    times: list[int] = []
    if record.spec.on_failure_timeout_ms is not None:
        times.append(record.created_at_ms + record.spec.on_failure_timeout_ms)
    if record.steps:
        times.append(record.deadline_at_ms)  # a root makes no attempt that would expire it
        newest = record.steps[-1]
        specs = chain(record.spec)
        if newest.state == "running" and len(record.steps) < len(specs):
            trigger = specs[len(record.steps)].trigger
            if trigger is not None and trigger.type == "on_timeout" and trigger.timeout_ms is not None:
                times.append(newest.started_at_ms + trigger.timeout_ms)
    return min(times) if times else None


def failure_timeout(record: JobRecord, wall_ms: int) -> str | None:
    """Why the job must fail now (its `on_failure_timeout_ms` or, for a root, its deadline passed), or None."""
    timeout = record.spec.on_failure_timeout_ms
    if timeout is not None and wall_ms >= record.created_at_ms + timeout and not record.is_step:
        return f"on_failure_timeout_ms ({timeout} ms) passed"
    if record.steps and wall_ms >= record.deadline_at_ms:
        return "deadline passed before any step of the fallback chain succeeded"
    return None


def on_timer(root: JobRecord, wall_ms: int, per_key: PerKeyQueues) -> Move | None:
    """A parked root's timer: fail it (failure timeout, deadline), or start the next step of an on_timeout
    trigger; None when nothing is due yet."""
    if root.is_terminal:
        return None
    reason = failure_timeout(root, wall_ms)
    if reason is not None:
        return fail_stopping(root, wall_ms, reason, per_key)
    due = due_at_ms(root)
    if due is None or wall_ms < due:
        return None
    record = root.evolve(updated_at_ms=wall_ms)
    return Move(record, _start_step(record, len(record.steps), wall_ms, per_key))


def fail_stopping(record: JobRecord, wall_ms: int, reason: str, per_key: PerKeyQueues) -> Move:
    """The job fails now (`reason`), whatever runs; its running steps are stopped and its on_failure spawned."""
    stop = _stop_running(record, wall_ms)
    failed = transition(record, JobEvent.FAIL, **finished(wall_ms), error=reason)
    move = conclude(failed, wall_ms, per_key)
    return dataclasses.replace(move, stop=stop)


def conclude(final: JobRecord, wall_ms: int, per_key: PerKeyQueues) -> Move:
    """A job that just ended, with the follow-up its outcome calls for (recorded in `children`)."""
    name = {"success": "on_success", "failed": "on_failure"}.get(final.status)
    follow_up: JobSpec | None = getattr(final.spec, name) if name is not None and not final.is_step else None
    if name is None or follow_up is None or name in final.children:
        return Move(final)
    child_key = follow_up.idempotent_key or f"{final.idempotent_key}#{name}"
    child = JobRecord(
        job_id=f"{final.job_id}-{name}",
        account_id=final.account_id,
        idempotent_key=child_key,
        queue_key=_sibling_key(final, follow_up, per_key),
        spec=dataclasses.replace(follow_up, idempotent_key=child_key),
        created_at_ms=wall_ms,
        updated_at_ms=wall_ms,
        # The follow-up gets as long as its parent had, unless it names its own deadline.
        deadline_at_ms=wall_ms + (follow_up.deadline_ms or final.deadline_at_ms - final.created_at_ms),
        parent_id=final.job_id,
    )
    final.children[name] = child.job_id
    if is_workflow(child.spec):
        started = begin(child, wall_ms)
        return Move(final, (started.record, *started.spawn))
    return Move(final, (child,))


def _succeed(record: JobRecord, index: int, step: JobRecord, wall_ms: int, per_key: PerKeyQueues) -> Move:
    stop = _stop_running(record, wall_ms)
    won = transition(record, JobEvent.SUCCEED, **finished(wall_ms), response=step.response, won_step=index)
    move = conclude(won, wall_ms, per_key)
    return dataclasses.replace(move, stop=stop)


def _stop_running(record: JobRecord, wall_ms: int) -> tuple[str, ...]:
    """Mark every running step of `record` (a fresh copy) cancelled; their job ids, to stop them."""
    stopped = []
    for state in record.steps:
        if state.state == "running":
            state.state, state.finished_at_ms = "cancelled", wall_ms
            stopped.append(state.job_id)
    return tuple(stopped)


def _fails_over(step: JobSpec, failed: StepState) -> bool:
    """Whether the next step starts after `failed` ended. A step the client cancelled is not a failure: no."""
    trigger = step.trigger
    if failed.state != "failed":
        return False
    if trigger is None or trigger.type == "on_timeout" or failed.status_code is None:
        return True
    return not trigger.codes or failed.status_code in trigger.codes


def _start_step(record: JobRecord, index: int, wall_ms: int, per_key: PerKeyQueues) -> tuple[JobRecord, ...]:
    """Add step `index` to `record` (a fresh copy), running from now; the step job to create."""
    record.steps.append(StepState(index, _step_id(record, index), started_at_ms=wall_ms))
    spec = chain(record.spec)[index]
    return (_step_job(record, index, wall_ms, _sibling_key(record, spec, per_key)),)


def _step_id(root: JobRecord, index: int) -> str:
    return f"{root.job_id}-step{index}"


def _step_job(root: JobRecord, index: int, wall_ms: int, key: str) -> JobRecord:
    idempotent_key = f"{root.idempotent_key}#step{index}"
    spec = chain(root.spec)[index]
    step_spec = dataclasses.replace(
        spec,
        webhooks=(),
        webhook_quorum=1,
        idempotent_key=idempotent_key,
        on_success=None,
        on_failure=None,
        on_failure_timeout_ms=None,
        fallback_job=None,
        trigger=None,
    )
    return JobRecord(
        job_id=_step_id(root, index),
        account_id=root.account_id,
        idempotent_key=idempotent_key,
        queue_key=key,
        spec=step_spec,
        created_at_ms=wall_ms,
        updated_at_ms=wall_ms,
        deadline_at_ms=root.deadline_at_ms,
        parent_id=root.job_id,
        parent_key=root.queue_key,
        step=index,
    )


def _sibling_key(record: JobRecord, spec: JobSpec, per_key: PerKeyQueues) -> str:
    """The queue key of a job the same account runs for `record` (a step, a follow-up): same plan, its own origin
    and credential."""
    plan = "free" if record.queue_key.startswith("free|") else "paid"
    return queue_key(account_id=record.account_id, plan=plan, job=spec, account_queue=per_key(spec.origin))
