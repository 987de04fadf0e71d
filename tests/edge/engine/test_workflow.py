"""The workflow core (edge/engine/workflow.py) as pure decisions on records: fallback chains (begin, step reports,
timers, failure timeouts) and follow-up jobs (on_success, on_failure), without trio or I/O.

Wall time is unix milliseconds; every record is built here and every spec comes from `validate_job`.
"""

from __future__ import annotations

from typing import Any

import pytest

from edge.engine import workflow
from edge.engine.lifecycle import IllegalTransition
from edge.engine.records import JobRecord, StepState
from edge.engine.spec import JobSpec, credential_fingerprint, validate_job

WALL0 = 1_700_000_000_000  # unix ms: when the root is submitted and begun
DAY_MS = 86_400_000
DEADLINE = WALL0 + DAY_MS

ORIGIN = "https://api.example.com"
BACKUP = "https://backup.example.com"
THIRD = "https://third.example.com"
KEY = f"acme|{ORIGIN}|-"
HOOK = {"url": "https://hooks.example.com/done"}
AUTH = {"Authorization": "Bearer sk_backup"}


def per_key(origin: str) -> bool:
    return True


def on_error(*codes: int) -> dict[str, Any]:
    return {"type": "on_error", "codes": list(codes)}


def on_timeout(timeout_ms: int) -> dict[str, Any]:
    return {"type": "on_timeout", "timeout_ms": timeout_ms}


def chain_spec(*triggers: dict[str, Any], **root: Any) -> JobSpec:
    """A root on ORIGIN with webhooks and one nested fallback per trigger (on BACKUP, then THIRD, ...)."""
    urls = [f"{BACKUP}/v1/charges", f"{THIRD}/v1/charges", "https://fourth.example.com/v1/charges"]
    fallback: dict[str, Any] | None = None
    for url, trigger in reversed(list(zip(urls, triggers, strict=False))):
        fallback = {"url": url, "trigger": trigger, **({"fallback_job": fallback} if fallback else {})}
    job: dict[str, Any] = {"url": f"{ORIGIN}/v1/charges", "method": "POST", "webhooks": [HOOK], **root}
    if fallback is not None:
        job["fallback_job"] = fallback
    return validate_job(job)


def make_record(
    job_id: str = "root",
    *,
    spec: JobSpec,
    account: str = "acme",
    key: str = KEY,
    created_at_ms: int = WALL0,
    deadline_at_ms: int = DEADLINE,
    **changes: Any,
) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        account_id=account,
        idempotent_key=f"idem-{job_id}",
        queue_key=key,
        spec=spec,
        created_at_ms=created_at_ms,
        deadline_at_ms=deadline_at_ms,
        updated_at_ms=created_at_ms,
        **changes,
    )


def begun(spec: JobSpec, **changes: Any) -> tuple[JobRecord, JobRecord]:
    """A root begun at WALL0, and its step 0 job."""
    move = workflow.begin(make_record(spec=spec, **changes), WALL0)
    (step0,) = move.spawn
    return move.record, step0


def ended(step: JobRecord, status: str = "failed", code: int | None = None, error: str | None = None) -> JobRecord:
    """`step` as it ends: with a response of `code`, or none (a connection error: `error`)."""
    response = None if code is None else {"status_code": code, "headers": {}, "body": f"answer {code}"}
    return step.evolve(status=status, response=response, error=error, attempts_total=2, finished_at_ms=WALL0 + 900)


def step_move(root: JobRecord, step: JobRecord, wall_ms: int = WALL0 + 1000) -> workflow.Move:
    move = workflow.step_finished(root, step, wall_ms, per_key)
    assert move is not None
    return move


# -- chain, begin -----------------------------------------------------------------------------------------------


def test_chain_is_the_job_then_each_nested_fallback_in_order():
    spec = chain_spec(on_error(500), on_timeout(2000))
    steps = workflow.chain(spec)
    assert [s.origin for s in steps] == [ORIGIN, BACKUP, THIRD]
    assert [s.trigger.type if s.trigger else None for s in steps] == [None, "on_error", "on_timeout"]
    assert workflow.is_workflow(spec) and not workflow.is_workflow(steps[-1])
    assert workflow.chain(steps[-1]) == [steps[-1]]


def test_begin_runs_the_root_with_step_0_and_spawns_its_job():
    spec = chain_spec(
        on_error(500),
        on_success={"url": f"{ORIGIN}/ok"},
        on_failure={"url": f"{ORIGIN}/ko"},
        on_failure_timeout_ms=60_000,
    )
    queued = make_record(spec=spec, created_at_ms=WALL0 - 10)
    move = workflow.begin(queued, WALL0)

    root = move.record
    assert root.status == "running" and root.updated_at_ms == WALL0
    assert root.steps == [StepState(0, "root-step0", "running", started_at_ms=WALL0)]
    assert queued.status == "queued" and queued.steps == []  # a copy: the queued record is left as it was
    assert move.stop == ()

    (step,) = move.spawn
    assert (step.job_id, step.idempotent_key, step.queue_key) == ("root-step0", "idem-root#step0", KEY)
    assert (step.parent_id, step.parent_key, step.step, step.is_step) == ("root", KEY, 0, True)
    assert step.deadline_at_ms == root.deadline_at_ms == DEADLINE
    assert (step.status, step.created_at_ms, step.account_id) == ("queued", WALL0, "acme")
    assert step.spec.url == spec.url and step.spec.method == "POST"
    assert step.spec.webhooks == () and step.spec.idempotent_key == "idem-root#step0"
    assert (step.spec.fallback_job, step.spec.on_success, step.spec.on_failure, step.spec.trigger) == (None,) * 4
    assert step.spec.on_failure_timeout_ms is None


def test_begin_of_a_root_that_is_not_queued_is_refused():
    root, _step0 = begun(chain_spec(on_error(500)))
    with pytest.raises(IllegalTransition):
        workflow.begin(root, WALL0 + 1)


# -- step_finished: a step failed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "code", "error", "fails_over"),
    [
        pytest.param(on_error(500), 500, None, True, id="on_error: listed code"),
        pytest.param(on_error(500, 502), 502, None, True, id="on_error: another listed code"),
        pytest.param(on_error(500), 404, None, False, id="on_error: code not listed"),
        pytest.param(on_error(502, 503), 500, None, False, id="on_error: none of the codes"),
        pytest.param(on_error(), 404, None, True, id="on_error without codes: any failure"),
        pytest.param(on_error(500), None, "connect timeout", True, id="on_error: no response at all"),
        pytest.param(on_timeout(60_000), 404, None, True, id="on_timeout: a failure is later than late"),
        pytest.param(on_timeout(60_000), None, "connection refused", True, id="on_timeout: connection error"),
    ],
)
def test_a_failed_step_starts_the_next_one_when_its_trigger_says_so(
    trigger: dict[str, Any], code: int | None, error: str | None, fails_over: bool
):
    root, step0 = begun(chain_spec(trigger))
    move = step_move(root, ended(step0, code=code, error=error))
    assert move.stop == ()
    assert move.record.steps[0].state == "failed"
    if fails_over:
        assert [job.job_id for job in move.spawn] == ["root-step1"]
        assert move.record.status == "running"
        assert [s.job_id for s in move.record.steps] == ["root-step0", "root-step1"]
    else:
        assert move.spawn == ()
        assert move.record.status == "failed"
        assert len(move.record.steps) == 1


def test_the_next_step_runs_the_fallback_request_on_its_own_key():
    root, step0 = begun(chain_spec(on_error(500)))
    move = step_move(root, ended(step0, code=500), wall_ms=WALL0 + 1000)
    (step1,) = move.spawn
    assert step1.spec.url == f"{BACKUP}/v1/charges" and step1.spec.origin == BACKUP
    assert step1.queue_key == f"acme|{BACKUP}|-"
    assert (step1.job_id, step1.idempotent_key, step1.step) == ("root-step1", "idem-root#step1", 1)
    assert (step1.parent_id, step1.parent_key) == ("root", KEY)
    assert (step1.created_at_ms, step1.deadline_at_ms) == (WALL0 + 1000, DEADLINE)
    assert step1.spec.webhooks == () and step1.spec.trigger is None

    failed, started = move.record.steps
    assert failed == StepState(0, "root-step0", "failed", WALL0, WALL0 + 1000, 500, None, 2)
    assert started == StepState(1, "root-step1", "running", started_at_ms=WALL0 + 1000)
    assert move.record.updated_at_ms == WALL0 + 1000
    assert root.steps[0].state == "running"  # the decision is built on a copy


def test_a_step_of_a_free_plan_root_goes_to_the_shared_free_queue_of_its_origin():
    root, step0 = begun(chain_spec(on_error(500)), key=f"free|{ORIGIN}")
    (step1,) = step_move(root, ended(step0, code=500)).spawn
    assert step1.queue_key == f"free|{BACKUP}"
    assert step1.parent_key == f"free|{ORIGIN}"


def test_the_end_of_the_chain_fails_the_root_with_the_last_steps_response():
    root, step0 = begun(chain_spec(on_error(500)))
    last = ended(step0, code=404)
    move = step_move(root, last, wall_ms=WALL0 + 1000)
    failed = move.record
    assert failed.status == "failed" and failed.finished_at_ms == WALL0 + 1000
    assert failed.response == last.response
    assert failed.error is not None and "fallback chain" in failed.error and "status 404" in failed.error
    assert failed.won_step is None and failed.children == {}
    assert move.spawn == () and move.stop == ()


def test_the_end_of_the_chain_after_a_connection_error_names_it():
    root, step0 = begun(chain_spec(on_error(500)))
    after_0 = step_move(root, ended(step0, code=500))
    (step1,) = after_0.spawn
    move = step_move(after_0.record, ended(step1, error="connect timeout"))
    assert move.record.status == "failed" and move.record.response is None
    assert move.record.error is not None and "step 1 failed: connect timeout" in move.record.error


def test_a_chain_that_ends_failed_spawns_the_roots_on_failure():
    spec = chain_spec(on_error(500), on_failure={"url": f"{ORIGIN}/alert", "method": "POST"})
    root, step0 = begun(spec)
    move = step_move(root, ended(step0, code=404), wall_ms=WALL0 + 1000)
    (child,) = move.spawn
    assert child.job_id == "root-on_failure" and child.spec.url == f"{ORIGIN}/alert"
    assert child.parent_id == "root" and child.step is None
    assert move.record.children == {"on_failure": "root-on_failure"}


def test_a_cancelled_step_does_not_start_an_on_error_step_with_codes():
    root, step0 = begun(chain_spec(on_error(500)))
    cancelled = step0.evolve(status="cancelled", error="cancelled by the client", finished_at_ms=WALL0 + 500)
    move = step_move(root, cancelled)
    assert move.record.steps[0].state == "cancelled"
    assert move.spawn == ()  # not a failure with code 500, nor a connection error or timeout
    assert move.record.status == "failed"


def test_a_failed_step_waits_while_another_step_still_runs():
    root, step0 = begun(chain_spec(on_timeout(2000), on_error(500)))
    racing = workflow.on_timer(root, WALL0 + 2000, per_key)
    assert racing is not None
    move = step_move(racing.record, ended(step0, code=404), wall_ms=WALL0 + 3000)
    # Step 1 started already, and still runs: nothing to start, nothing to end yet.
    assert move.spawn == () and move.stop == ()
    assert move.record.status == "running"
    assert [s.state for s in move.record.steps] == ["failed", "running"]


# -- step_finished: a step succeeded ------------------------------------------------------------------------------


def racing_root(spec: JobSpec) -> tuple[JobRecord, JobRecord, JobRecord]:
    """A root of `spec` (step 1 on_timeout 2000) whose steps 0 and 1 both run."""
    root, step0 = begun(spec)
    move = workflow.on_timer(root, WALL0 + 2000, per_key)
    assert move is not None
    (step1,) = move.spawn
    return move.record, step0, step1


@pytest.mark.parametrize(("winner", "loser"), [(0, 1), (1, 0)])
def test_a_step_that_succeeds_wins_and_every_other_running_step_is_stopped(winner: int, loser: int):
    root, *steps = racing_root(chain_spec(on_timeout(2000)))
    won = ended(steps[winner], "success", code=201)
    move = step_move(root, won, wall_ms=WALL0 + 5000)
    record = move.record
    assert record.status == "success" and record.won_step == winner
    assert record.response == won.response and record.finished_at_ms == WALL0 + 5000
    assert move.stop == (f"root-step{loser}",)
    assert record.steps[winner].state == "succeeded" and record.steps[winner].status_code == 201
    assert record.steps[loser].state == "cancelled" and record.steps[loser].finished_at_ms == WALL0 + 5000
    assert move.spawn == ()
    assert root.steps[loser].state == "running"  # built on a copy


def test_a_step_that_succeeds_spawns_the_roots_on_success_and_stops_nothing_finished():
    spec = chain_spec(on_error(500), on_success={"url": f"{ORIGIN}/receipt"})
    root, step0 = begun(spec)
    after_0 = step_move(root, ended(step0, code=500))
    step1 = after_0.spawn[0]
    move = step_move(after_0.record, ended(step1, "success", code=200), wall_ms=WALL0 + 2000)
    assert move.record.won_step == 1 and move.stop == ()  # step 0 had failed: nothing to stop
    assert [s.state for s in move.record.steps] == ["failed", "succeeded"]
    assert [job.job_id for job in move.spawn] == ["root-on_success"]


# -- step_finished: reports that change nothing --------------------------------------------------------------------


def test_a_report_that_arrives_twice_is_accounted_for_once():
    root, step0 = begun(chain_spec(on_error(500), on_error(500)))
    report = ended(step0, code=500)
    first = step_move(root, report)
    assert workflow.step_finished(first.record, report, WALL0 + 2000, per_key) is None


def _report_cases() -> list[Any]:
    root, step0 = begun(chain_spec(on_error(500)))
    failed = ended(step0, code=404)
    finished_root = step_move(root, failed).record
    return [
        pytest.param(root, failed.evolve(job_id="root-step9"), id="unknown step job"),
        pytest.param(root, failed.evolve(step=5), id="step index past the steps"),
        pytest.param(root, failed.evolve(step=None), id="not a step"),
        pytest.param(root, step0, id="step still queued"),
        pytest.param(root, step0.evolve(status="running"), id="step still running"),
        pytest.param(finished_root, ended(step0, "success", code=200), id="root already terminal"),
    ]


@pytest.mark.parametrize(("root", "step"), _report_cases())
def test_a_report_with_nothing_to_change_is_none(root: JobRecord, step: JobRecord):
    assert workflow.step_finished(root, step, WALL0 + 2000, per_key) is None


# -- due_at_ms, on_timer -----------------------------------------------------------------------------------------


def test_an_on_timeout_step_is_due_its_timeout_after_the_newest_step_started():
    root, _step0 = begun(chain_spec(on_timeout(2000), on_timeout(3000)))
    assert workflow.due_at_ms(root) == WALL0 + 2000
    assert workflow.on_timer(root, WALL0 + 1999, per_key) is None

    move = workflow.on_timer(root, WALL0 + 2000, per_key)
    assert move is not None and move.stop == ()
    (step1,) = move.spawn
    assert step1.job_id == "root-step1" and step1.spec.origin == BACKUP
    # It races the earlier step, which still runs.
    assert [(s.state, s.started_at_ms) for s in move.record.steps] == [("running", WALL0), ("running", WALL0 + 2000)]
    assert move.record.status == "running"
    # The next on_timeout counts from the newest step's start.
    assert workflow.due_at_ms(move.record) == WALL0 + 2000 + 3000


def test_a_root_with_no_on_timeout_step_to_start_is_due_at_its_deadline():
    racing, _step0, _step1 = racing_root(chain_spec(on_timeout(2000)))
    assert workflow.due_at_ms(racing) == DEADLINE  # the chain has no step left to start
    assert workflow.on_timer(racing, WALL0 + 60_000, per_key) is None
    on_error_root, _step0 = begun(chain_spec(on_error(500)))
    assert workflow.due_at_ms(on_error_root) == DEADLINE


def test_the_on_timeout_clock_counts_from_the_newest_steps_start():
    root, step0 = begun(chain_spec(on_error(404), on_timeout(1000)))
    after = step_move(root, ended(step0, code=404), wall_ms=WALL0 + 1000).record
    assert workflow.due_at_ms(after) == WALL0 + 1000 + 1000


def test_a_roots_failure_timeout_fails_it_stops_its_steps_and_spawns_on_failure():
    spec = chain_spec(on_timeout(2000), on_failure_timeout_ms=5000, on_failure={"url": f"{ORIGIN}/alert"})
    root, _step0 = begun(spec)
    racing = workflow.on_timer(root, WALL0 + 2000, per_key)
    assert racing is not None
    assert workflow.due_at_ms(racing.record) == WALL0 + 5000
    assert workflow.on_timer(racing.record, WALL0 + 4999, per_key) is None

    move = workflow.on_timer(racing.record, WALL0 + 5000, per_key)
    assert move is not None
    failed = move.record
    assert failed.status == "failed" and failed.finished_at_ms == WALL0 + 5000
    assert failed.error is not None and "on_failure_timeout_ms" in failed.error
    assert move.stop == ("root-step0", "root-step1")
    assert [s.state for s in failed.steps] == ["cancelled", "cancelled"]
    assert [job.job_id for job in move.spawn] == ["root-on_failure"]
    assert failed.children == {"on_failure": "root-on_failure"}


def test_a_root_past_its_deadline_fails():
    root, _step0 = begun(chain_spec(on_error(500)), deadline_at_ms=WALL0 + 60_000)
    assert workflow.due_at_ms(root) == WALL0 + 60_000
    assert workflow.on_timer(root, WALL0 + 59_999, per_key) is None
    move = workflow.on_timer(root, WALL0 + 60_000, per_key)
    assert move is not None
    assert move.record.status == "failed" and move.record.error is not None
    assert "deadline" in move.record.error
    assert move.stop == ("root-step0",) and move.spawn == ()


def test_the_earliest_of_a_roots_timers_is_due():
    spec = chain_spec(on_timeout(9000), on_failure_timeout_ms=4000)
    root, _ = begun(spec, deadline_at_ms=WALL0 + 3000)
    assert workflow.due_at_ms(root) == WALL0 + 3000
    root, _ = begun(spec, deadline_at_ms=WALL0 + 8000)
    assert workflow.due_at_ms(root) == WALL0 + 4000
    root, _ = begun(chain_spec(on_timeout(1000), on_failure_timeout_ms=4000))
    assert workflow.due_at_ms(root) == WALL0 + 1000


@pytest.mark.parametrize(
    ("record", "due"),
    [
        pytest.param(make_record("plain", spec=validate_job({"url": f"{ORIGIN}/x"})), None, id="plain job"),
        pytest.param(
            make_record("plain", spec=validate_job({"url": f"{ORIGIN}/x", "on_failure_timeout_ms": 3000})),
            WALL0 + 3000,
            id="plain job with on_failure_timeout_ms",
        ),
        pytest.param(
            make_record("plain", spec=validate_job({"url": f"{ORIGIN}/x", "on_failure_timeout_ms": 3000})).evolve(
                status="failed"
            ),
            None,
            id="finished plain job",
        ),
        pytest.param(begun(chain_spec(on_timeout(2000)))[1], None, id="step job"),
        pytest.param(
            make_record("s", spec=validate_job({"url": f"{ORIGIN}/x", "on_failure_timeout_ms": 3000}), step=0),
            None,
            id="step job whose spec names a failure timeout",
        ),
    ],
)
def test_due_at_of_jobs_that_are_not_running_roots(record: JobRecord, due: int | None):
    assert workflow.due_at_ms(record) == due


def test_a_terminal_root_has_no_timer():
    root, _ = begun(chain_spec(on_timeout(2000), on_failure_timeout_ms=100))
    done = root.evolve(status="success")
    assert workflow.due_at_ms(done) is None
    assert workflow.on_timer(done, DEADLINE + 1, per_key) is None


# -- failure_timeout -------------------------------------------------------------------------------------------

TIMEOUT_SPEC = validate_job({"url": f"{ORIGIN}/x", "on_failure_timeout_ms": 3000})


@pytest.mark.parametrize(
    ("record", "wall_ms", "reason"),
    [
        pytest.param(make_record(spec=TIMEOUT_SPEC), WALL0 + 2999, None, id="before the failure timeout"),
        pytest.param(
            make_record(spec=TIMEOUT_SPEC), WALL0 + 3000, "on_failure_timeout_ms (3000 ms) passed", id="at it"
        ),
        pytest.param(make_record(spec=TIMEOUT_SPEC, step=1), WALL0 + 3000, None, id="a step job: never"),
        pytest.param(
            make_record(spec=validate_job({"url": f"{ORIGIN}/x"})), DEADLINE + 1, None, id="plain job past deadline"
        ),
        pytest.param(begun(chain_spec(on_error(500)))[0], DEADLINE - 1, None, id="root before its deadline"),
        pytest.param(
            begun(chain_spec(on_error(500)))[0],
            DEADLINE,
            "deadline passed before any step of the fallback chain succeeded",
            id="root at its deadline",
        ),
        pytest.param(
            begun(chain_spec(on_error(500), on_failure_timeout_ms=3000))[0],
            DEADLINE,
            "on_failure_timeout_ms (3000 ms) passed",
            id="root: the failure timeout is named first",
        ),
    ],
)
def test_failure_timeout_reasons(record: JobRecord, wall_ms: int, reason: str | None):
    assert workflow.failure_timeout(record, wall_ms) == reason


# -- conclude: follow-ups ------------------------------------------------------------------------------------------

FOLLOW_UPS = validate_job(
    {
        "url": f"{ORIGIN}/v1/charges",
        "on_success": {"url": f"{BACKUP}/receipts", "method": "POST", "webhooks": [HOOK]},
        "on_failure": {"url": f"{BACKUP}/alerts", "idempotent_key": "alert-1"},
    }
)


def finished_job(status: str, spec: JobSpec = FOLLOW_UPS, **changes: Any) -> JobRecord:
    return make_record("job", spec=spec, deadline_at_ms=WALL0 + 60_000, **changes).evolve(
        status=status, finished_at_ms=WALL0 + 1000
    )


@pytest.mark.parametrize(
    ("status", "name", "url", "idempotent_key"),
    [
        pytest.param("success", "on_success", f"{BACKUP}/receipts", "idem-job#on_success", id="success"),
        pytest.param("failed", "on_failure", f"{BACKUP}/alerts", "alert-1", id="failed: the child's own key"),
    ],
)
def test_a_finished_job_spawns_the_follow_up_its_outcome_calls_for(
    status: str, name: str, url: str, idempotent_key: str
):
    final = finished_job(status)
    move = workflow.conclude(final, WALL0 + 2000, per_key)
    assert move.record is final and move.stop == ()
    (child,) = move.spawn
    assert child.job_id == f"job-{name}" and child.parent_id == "job"
    assert (child.parent_key, child.step, child.steps) == (None, None, [])
    assert child.spec.url == url
    assert child.idempotent_key == child.spec.idempotent_key == idempotent_key
    assert (child.status, child.account_id, child.created_at_ms, child.updated_at_ms) == (
        "queued",
        "acme",
        WALL0 + 2000,
        WALL0 + 2000,
    )
    assert child.deadline_at_ms == WALL0 + 2000 + 60_000  # as long as its parent had
    assert move.record.children == {name: child.job_id}


def test_a_follow_up_with_its_own_deadline_keeps_it():
    spec = validate_job({"url": f"{ORIGIN}/x", "on_success": {"url": f"{ORIGIN}/y", "deadline_ms": 5000}})
    (child,) = workflow.conclude(finished_job("success", spec), WALL0 + 2000, per_key).spawn
    assert child.deadline_at_ms == WALL0 + 2000 + 5000


@pytest.mark.parametrize(
    "final",
    [
        pytest.param(finished_job("cancelled"), id="cancelled by the client"),
        pytest.param(finished_job("success", step=0), id="a step job"),
        pytest.param(finished_job("failed", step=2), id="a failed step job"),
        pytest.param(finished_job("success", validate_job({"url": f"{ORIGIN}/x"})), id="no follow-up"),
        pytest.param(
            finished_job("failed", validate_job({"url": f"{ORIGIN}/x", "on_success": {"url": f"{ORIGIN}/y"}})),
            id="only the other follow-up",
        ),
    ],
)
def test_a_finished_job_that_calls_for_no_follow_up_spawns_nothing(final: JobRecord):
    move = workflow.conclude(final, WALL0 + 2000, per_key)
    assert move.spawn == () and move.stop == ()
    assert move.record.children == {}


def test_concluding_twice_spawns_the_follow_up_once():
    first = workflow.conclude(finished_job("success"), WALL0 + 2000, per_key)
    assert len(first.spawn) == 1
    again = workflow.conclude(first.record, WALL0 + 3000, per_key)
    assert again.spawn == ()
    assert again.record.children == {"on_success": "job-on_success"}


def test_a_follow_up_with_a_fallback_chain_is_spawned_begun_with_its_step_0():
    spec = validate_job(
        {
            "url": f"{ORIGIN}/x",
            "on_failure": {
                "url": f"{BACKUP}/alert",
                "webhooks": [HOOK],
                "fallback_job": {"url": f"{THIRD}/alert", "trigger": on_error(500)},
            },
        }
    )
    move = workflow.conclude(finished_job("failed", spec), WALL0 + 2000, per_key)
    child, step0 = move.spawn
    assert child.job_id == "job-on_failure" and child.parent_id == "job"
    assert child.status == "running"
    assert child.steps == [StepState(0, "job-on_failure-step0", "running", started_at_ms=WALL0 + 2000)]
    assert (step0.job_id, step0.parent_id, step0.parent_key, step0.step) == (
        "job-on_failure-step0",
        "job-on_failure",
        child.queue_key,
        0,
    )
    assert step0.spec.url == f"{BACKUP}/alert" and step0.spec.webhooks == ()
    assert step0.idempotent_key == "idem-job#on_failure#step0"
    assert move.record.children == {"on_failure": "job-on_failure"}


@pytest.mark.parametrize(
    ("parent_key", "headers", "per_key_on", "child_key"),
    [
        pytest.param(KEY, {}, True, f"acme|{BACKUP}|-", id="no credential"),
        pytest.param(KEY, AUTH, True, f"acme|{BACKUP}|{credential_fingerprint(AUTH)}", id="per-key queue"),
        pytest.param(KEY, AUTH, False, f"acme|{BACKUP}|-", id="per-key queues off for the origin"),
        pytest.param(f"acme|{ORIGIN}|fp-parent", {}, True, f"acme|{BACKUP}|-", id="not the parent's credential"),
        pytest.param(f"free|{ORIGIN}", AUTH, True, f"free|{BACKUP}", id="free plan"),
    ],
)
def test_a_follow_ups_queue_key_is_the_same_accounts_on_its_own_origin(
    parent_key: str, headers: dict[str, str], per_key_on: bool, child_key: str
):
    spec = validate_job({"url": f"{ORIGIN}/x", "on_success": {"url": f"{BACKUP}/y", "headers": headers}})
    asked: list[str] = []

    def per_key_of(origin: str) -> bool:
        asked.append(origin)
        return per_key_on

    (child,) = workflow.conclude(finished_job("success", spec, key=parent_key), WALL0, per_key_of).spawn
    assert child.queue_key == child_key
    assert child.account_id == "acme"
    assert asked == [BACKUP]  # about the child's origin, not the parent's
