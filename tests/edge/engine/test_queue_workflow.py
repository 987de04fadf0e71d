"""The outbound queue core (edge/engine/queue.py) driving workflows the way its shell does, without trio: parked
roots, step reports, on_timeout and failure-timeout timers (`Conclude`, `Interrupt`), stopping step jobs, the
follow-ups a settlement spawns, abort and hand-over of parked roots.

`now` is monotonic seconds, wall time unix milliseconds; NOW0 and WALL0 are the same instant.
"""

from __future__ import annotations

from random import Random
from typing import Any

import pytest

from edge.engine import workflow
from edge.engine.legs import NO_REGION
from edge.engine.outcome import AttemptResult
from edge.engine.queue import (
    STORE_RETRY_S,
    Conclude,
    Dispatch,
    Interrupt,
    LegResult,
    OutboundQueue,
    Queues,
    RetrySettings,
    Settlement,
    WaitUntil,
)
from edge.engine.records import JobRecord
from edge.engine.spec import JobSpec, validate_job
from scheduler import QueueLimits

SEED = 7
WALL0 = 1_700_000_000_000
NOW0 = 1000.0
DAY_MS = 86_400_000
DEADLINE = WALL0 + DAY_MS
INF = float("inf")

ORIGIN = "https://api.example.com"
BACKUP = "https://backup.example.com"
KEY = f"acme|{ORIGIN}|-"


def later(ms: int) -> tuple[float, int]:
    """(now, wall_ms) `ms` after NOW0 / WALL0."""
    return NOW0 + ms / 1000, WALL0 + ms


def on_error(*codes: int) -> dict[str, Any]:
    return {"type": "on_error", "codes": list(codes)}


def on_timeout(timeout_ms: int) -> dict[str, Any]:
    return {"type": "on_timeout", "timeout_ms": timeout_ms}


def root_spec(trigger: dict[str, Any], **root: Any) -> JobSpec:
    return validate_job(
        {"url": f"{ORIGIN}/v1/charges", "fallback_job": {"url": f"{BACKUP}/v1/charges", "trigger": trigger}, **root}
    )


PLAIN = validate_job(
    {
        "url": f"{ORIGIN}/v1/charges",
        "on_failure_timeout_ms": 3000,
        "on_success": {"url": f"{ORIGIN}/receipt"},
        "on_failure": {"url": f"{ORIGIN}/alert"},
    }
)


def make_record(job_id: str = "root", *, spec: JobSpec, key: str = KEY, **changes: Any) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        account_id="acme",
        idempotent_key=f"idem-{job_id}",
        queue_key=key,
        spec=spec,
        created_at_ms=WALL0,
        deadline_at_ms=DEADLINE,
        updated_at_ms=WALL0,
        **changes,
    )


def make_queue() -> OutboundQueue:
    return OutboundQueue(KEY, ORIGIN, QueueLimits(100.0, 4), RetrySettings(base_s=0.5, cap_s=60.0))


def parked(spec: JobSpec, *, with_step: bool = False) -> tuple[OutboundQueue, JobRecord, JobRecord]:
    """A queue holding a root of `spec` begun at WALL0 (and, `with_step`, its step 0 job); the root, step 0."""
    queue = make_queue()
    move = workflow.begin(make_record(spec=spec), WALL0)
    (step0,) = move.spawn
    queue.push(move.record, NOW0)
    if with_step:
        queue.push(step0, NOW0)
    return queue, move.record, step0


def ended(step: JobRecord, status: str = "failed", code: int | None = None) -> JobRecord:
    response = None if code is None else {"status_code": code, "headers": {}, "body": ""}
    return step.evolve(status=status, response=response, finished_at_ms=WALL0 + 500)


def response(status: int) -> AttemptResult:
    return AttemptResult(0.25, status_code=status, headers=(), body=f"answer {status}")


def dispatch(queue: OutboundQueue, now: float = NOW0, wall_ms: int = WALL0) -> JobRecord:
    decision = queue.next(now, wall_ms)
    assert isinstance(decision, Dispatch), decision
    return decision.record


def assert_waits_until(decision: object, at: float) -> None:
    assert isinstance(decision, WaitUntil), decision
    assert decision.at == pytest.approx(at)


def reported(queue: OutboundQueue, step: JobRecord, wall_ms: int = WALL0 + 1000) -> Settlement:
    settlement = queue.step_finished("root", step, wall_ms)
    assert settlement is not None
    return settlement


# -- parked roots ---------------------------------------------------------------------------------------------


def test_a_parked_root_is_never_dispatched_but_holds_the_queue():
    queue, root, _step0 = parked(root_spec(on_error(500)))
    assert_waits_until(queue.next(NOW0, WALL0), NOW0 + DAY_MS / 1000)  # its only timer: the deadline
    assert queue.holds_jobs and not queue.is_idle
    assert (queue.depth, queue.in_flight) == (0, 0)
    assert queue.record("root") is root and list(queue.parked_roots()) == [root]


def test_only_the_step_job_of_a_parked_root_is_dispatched():
    queue, _root, step0 = parked(root_spec(on_error(500)), with_step=True)
    assert dispatch(queue).job_id == step0.job_id
    assert isinstance(queue.next(NOW0, WALL0), WaitUntil)
    assert queue.record("root").status == "running"  # type: ignore[union-attr]


def test_queues_keep_a_running_root_running_and_list_its_open_steps():
    queues = Queues(lambda origin: QueueLimits(100.0, 4), RetrySettings())
    move = workflow.begin(make_record(spec=root_spec(on_error(500))), WALL0)
    queue = queues.push(move.record, NOW0)
    live = queues.live_job("root")
    assert live is not None and live.status == "running" and live.steps == move.record.steps
    assert queues.backlog("acme") == 1
    assert queues.open_steps() == [(queue, "root", "root-step0")]

    settlement = reported(queue, ended(move.spawn[0], code=500))
    queue.commit(settlement)
    queues.settled(settlement)
    assert queues.open_steps() == [(queue, "root", "root-step1")]
    assert queues.backlog("acme") == 1


# -- step reports ---------------------------------------------------------------------------------------------


def test_a_failed_step_spawns_the_next_and_the_root_stays_parked():
    queue, root, step0 = parked(root_spec(on_error(500)))
    settlement = reported(queue, ended(step0, code=500))
    assert (settlement.next_step, settlement.label, settlement.is_terminal) == ("wait", "workflow", False)
    assert [job.job_id for job in settlement.spawn] == ["root-step1"]
    assert settlement.spawn[0].spec.url == f"{BACKUP}/v1/charges" and settlement.stop == ()
    # Saved first: until the commit, the live record is the old one, and the root is busy.
    assert queue.record("root") is root and queue.in_flight == 1
    assert queue.step_finished("root", ended(step0, code=500), WALL0 + 1100) is None

    queue.commit(settlement)
    live = queue.record("root")
    assert live is not None and [s.state for s in live.steps] == ["failed", "running"]
    assert queue.in_flight == 0 and list(queue.parked_roots()) == [live]
    assert isinstance(queue.next(*later(1000)), WaitUntil)
    assert queue.step_finished("root", ended(step0, code=500), WALL0 + 1200) is None  # accounted for already


def test_a_step_that_succeeds_ends_the_root_and_stops_the_other_steps():
    queue, _root, step0 = parked(root_spec(on_timeout(2000)))
    started = queue.next(*later(2000))
    assert isinstance(started, Conclude)
    queue.commit(started.settlement)

    settlement = reported(queue, ended(step0, "success", code=200), wall_ms=WALL0 + 2500)
    assert (settlement.next_step, settlement.is_terminal) == ("done", True)
    assert settlement.stop == ("root-step1",)
    assert settlement.record.status == "success" and settlement.record.won_step == 0
    queue.commit(settlement)
    assert "root" not in queue and not queue.holds_jobs


def test_a_report_for_an_unknown_root_is_none():
    queue, _root, step0 = parked(root_spec(on_error(500)))
    assert queue.step_finished("nobody", ended(step0, code=500), WALL0) is None


# -- workflow timers ---------------------------------------------------------------------------------------------


def test_an_on_timeout_timer_starts_the_next_step_when_due():
    queue, _root, _step0 = parked(root_spec(on_timeout(2000)))
    assert_waits_until(queue.next(NOW0, WALL0), NOW0 + 2.0)
    assert_waits_until(queue.next(*later(1500)), NOW0 + 2.0)

    decision = queue.next(*later(2000))
    assert isinstance(decision, Conclude)
    settlement = decision.settlement
    assert settlement.next_step == "wait" and settlement.label == "workflow"
    assert [(job.job_id, job.spec.origin) for job in settlement.spawn] == [("root-step1", BACKUP)]
    assert [s.state for s in settlement.record.steps] == ["running", "running"]
    queue.commit(settlement)
    assert_waits_until(queue.next(*later(2000)), NOW0 + DAY_MS / 1000)  # next: the deadline


def test_a_plain_jobs_failure_timeout_fails_it_in_line_and_spawns_on_failure():
    queue = make_queue()
    queue.push(make_record("job-1", spec=PLAIN), NOW0 + 100)  # waits in line past its failure timeout
    assert_waits_until(queue.next(NOW0, WALL0), NOW0 + 3.0)

    decision = queue.next(*later(3000))
    assert isinstance(decision, Conclude)
    settlement = decision.settlement
    record = settlement.record
    assert record.status == "failed" and settlement.is_terminal
    assert record.error is not None and "on_failure_timeout_ms" in record.error
    assert [job.job_id for job in settlement.spawn] == ["job-1-on_failure"]
    assert settlement.spawn[0].parent_id == "job-1"
    assert record.children == {"on_failure": "job-1-on_failure"}
    assert queue.depth == 0  # out of line while the failure is saved
    queue.commit(settlement)
    assert not queue.holds_jobs


def test_a_parked_roots_failure_timeout_fails_it_and_stops_its_steps():
    spec = root_spec(on_error(500), on_failure_timeout_ms=4000, on_failure={"url": f"{ORIGIN}/alert"})
    queue, _root, _step0 = parked(spec)
    assert_waits_until(queue.next(NOW0, WALL0), NOW0 + 4.0)
    decision = queue.next(*later(4000))
    assert isinstance(decision, Conclude)
    settlement = decision.settlement
    assert (settlement.next_step, settlement.label) == ("done", "workflow")
    assert settlement.record.status == "failed" and "on_failure_timeout_ms" in (settlement.record.error or "")
    assert settlement.stop == ("root-step0",)
    assert [job.job_id for job in settlement.spawn] == ["root-on_failure"]
    queue.commit(settlement)
    assert not queue.holds_jobs


def test_a_failure_timeout_during_a_save_ends_the_job_right_after_its_commit():
    queue = make_queue()
    queue.push(make_record("job-1", spec=PLAIN), NOW0)
    dispatch(queue)
    retry = queue.settle("job-1", response(503), *later(2900), Random(SEED))
    assert retry.next_step == "retry"
    assert queue.next(*later(3000)) == Interrupt("job-1")  # the attempt is over: the shell finds nothing to cancel
    queue.commit(retry)

    decision = queue.next(*later(3100))
    assert isinstance(decision, Conclude)
    record = decision.settlement.record
    assert record.status == "failed" and "on_failure_timeout_ms" in (record.error or "")
    assert [job.job_id for job in decision.settlement.spawn] == ["job-1-on_failure"]


@pytest.mark.parametrize(
    ("leg", "status", "outcome", "child"),
    [
        pytest.param(None, "failed", "cancelled", "job-1-on_failure", id="the attempt is cancelled"),
        pytest.param(response(200), "success", "won", "job-1-on_success", id="the attempt won first"),
        pytest.param(response(503), "failed", "failed", "job-1-on_failure", id="a retry is not made"),
    ],
)
def test_a_plain_jobs_failure_timeout_interrupts_its_attempt(
    leg: AttemptResult | None, status: str, outcome: str, child: str
):
    queue = make_queue()
    queue.push(make_record("job-1", spec=PLAIN), NOW0)
    dispatch(queue)
    assert queue.next(*later(3000)) == Interrupt("job-1")

    settlement = queue.settle_legs("job-1", [LegResult(NO_REGION, leg)], *later(3100), Random(SEED))
    record = settlement.record
    assert record.status == status and settlement.is_terminal
    assert [a.outcome for a in record.attempts] == [outcome]
    if status == "failed":
        assert record.error is not None and "on_failure_timeout_ms" in record.error
    assert [job.job_id for job in settlement.spawn] == [child]
    queue.commit(settlement)
    assert not queue.holds_jobs and queue.in_flight == 0


# -- stop -------------------------------------------------------------------------------------------------------


def test_stop_ends_a_waiting_step_job_at_once():
    queue, _root, step0 = parked(root_spec(on_error(500)), with_step=True)
    settlement = queue.stop(step0.job_id, WALL0 + 100)
    assert isinstance(settlement, Settlement)
    assert (settlement.record.status, settlement.label, settlement.is_terminal) == ("cancelled", "cancelled", True)
    assert settlement.spawn == () and settlement.record.finished_at_ms == WALL0 + 100
    assert queue.depth == 0 and queue.in_flight == 1  # out of line while it is saved
    queue.commit(settlement)
    assert step0.job_id not in queue and "root" in queue


def test_stop_interrupts_a_step_job_whose_attempt_is_out():
    queue, _root, step0 = parked(root_spec(on_error(500)), with_step=True)
    dispatch(queue)
    assert queue.stop(step0.job_id, WALL0 + 100) == Interrupt(step0.job_id)

    settlement = queue.settle_legs(step0.job_id, [LegResult(NO_REGION, None)], *later(200), Random(SEED))
    assert (settlement.record.status, settlement.label) == ("cancelled", "cancelled")
    assert [a.outcome for a in settlement.record.attempts] == ["cancelled"]
    assert settlement.spawn == ()


def test_a_stop_whose_save_failed_is_tried_again_store_retry_s_later():
    queue, _root, step0 = parked(root_spec(on_error(500)))
    queue.push(step0, NOW0 + 600)  # waits in line (a long backoff, say)
    assert isinstance(queue.next(NOW0, WALL0), WaitUntil)  # the queue's task sleeps from here
    stopped = queue.stop(step0.job_id, WALL0 + 30_000)
    assert isinstance(stopped, Settlement)
    queue.abort(stopped, NOW0 + 30)  # the store failed
    assert_waits_until(queue.next(*later(30_100)), NOW0 + 30 + STORE_RETRY_S)


def test_stop_of_a_parked_root_or_an_unknown_job_is_none():
    queue, _root, _step0 = parked(root_spec(on_error(500)))
    assert queue.stop("root", WALL0) is None
    assert queue.stop("nobody", WALL0) is None
    assert queue.record("root") is not None


# -- follow-ups of attempts -------------------------------------------------------------------------------------


def test_a_successful_attempt_spawns_on_success_and_a_retry_spawns_nothing():
    queue = make_queue()
    queue.push(make_record("job-1", spec=PLAIN), NOW0)
    dispatch(queue)
    retry = queue.settle("job-1", response(503), *later(500), Random(SEED))
    assert (retry.next_step, retry.is_terminal, retry.spawn) == ("retry", False, ())
    queue.commit(retry)

    dispatch(queue, *later(2000))
    settlement = queue.settle("job-1", response(200), *later(2500), Random(SEED))
    assert settlement.is_terminal and settlement.record.status == "success"
    (child,) = settlement.spawn
    assert (child.job_id, child.parent_id, child.spec.url) == ("job-1-on_success", "job-1", f"{ORIGIN}/receipt")
    assert settlement.record.children == {"on_success": "job-1-on_success"}


# -- abort, hand-over -----------------------------------------------------------------------------------------


def test_abort_of_a_parked_roots_move_keeps_it_parked_with_its_old_record():
    queue, root, step0 = parked(root_spec(on_error(500)))
    settlement = reported(queue, ended(step0, code=500))
    queue.abort(settlement, NOW0 + 1)
    assert queue.record("root") is root and queue.in_flight == 0
    assert list(queue.parked_roots()) == [root] and queue.depth == 0
    again = reported(queue, ended(step0, code=500), wall_ms=WALL0 + 2000)  # decided again
    assert [job.job_id for job in again.spawn] == ["root-step1"]


def test_abort_of_a_timer_move_decides_it_again_after_store_retry():
    queue, root, _step0 = parked(root_spec(on_timeout(2000)))
    decision = queue.next(*later(2000))
    assert isinstance(decision, Conclude)
    queue.abort(decision.settlement, NOW0 + 2)
    assert queue.record("root") is root
    retry_ms = 2000 + int(STORE_RETRY_S * 1000)
    assert_waits_until(queue.next(*later(2000)), NOW0 + retry_ms / 1000)
    assert isinstance(queue.next(*later(retry_ms)), Conclude)


def test_take_waiting_hands_over_a_parked_root_but_not_one_being_saved():
    queue, _root, step0 = parked(root_spec(on_error(500)), with_step=True)
    dispatch(queue)  # step 0 is in flight: it stays
    taken = queue.take_waiting()
    assert [r.job_id for r in taken] == ["root"]
    assert taken[0].status == "running" and taken[0].steps[0].job_id == step0.job_id
    assert "root" not in queue and step0.job_id in queue

    busy, _root, step0 = parked(root_spec(on_error(500)))
    reported(busy, ended(step0, code=500))  # its move is being saved
    assert busy.take_waiting() == []


def test_queues_take_waiting_releases_a_handed_over_root():
    queues = Queues(lambda origin: QueueLimits(100.0, 4), RetrySettings())
    move = workflow.begin(make_record(spec=root_spec(on_error(500))), WALL0)
    queues.push(move.record, NOW0)
    taken = queues.take_waiting(lambda key: key == KEY)
    assert [r.job_id for r in taken] == ["root"]
    assert queues.backlog("acme") == 0 and queues.live_job("root") is None and queues.open_steps() == []
