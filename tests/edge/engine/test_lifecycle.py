"""The job status table (edge/engine/lifecycle.py), tested as data: every (state, event) pair, no queue, no I/O."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest

from edge.engine.lifecycle import TRANSITIONS, IllegalTransition, JobEvent, is_terminal, next_status, transition
from edge.engine.records import TERMINAL_STATUSES, JobRecord, JobStatus
from edge.engine.spec import validate_job

WALL0 = 1_700_000_000_000
STATUSES: tuple[str, ...] = get_args(JobStatus)

# The table as the module's docstring draws it, written out again so that a change to TRANSITIONS is a visible
# change to this test too.
ALLOWED = {
    ("queued", JobEvent.DISPATCH): "running",
    ("queued", JobEvent.CANCEL): "cancelled",
    ("queued", JobEvent.EXPIRE): "failed",
    ("queued", JobEvent.RESUME): "queued",
    ("queued", JobEvent.STOP): "cancelled",
    ("running", JobEvent.RETRY): "queued",
    ("running", JobEvent.SUCCEED): "success",
    ("running", JobEvent.FAIL): "failed",
    ("running", JobEvent.EXPIRE): "failed",
    ("running", JobEvent.RESUME): "queued",
    ("running", JobEvent.STOP): "cancelled",
}
ALL_PAIRS = list(itertools.product(STATUSES, JobEvent))
FORBIDDEN = [pair for pair in ALL_PAIRS if pair not in ALLOWED]


def make_record(status: str = "queued") -> JobRecord:
    return JobRecord(
        job_id="job-7",
        account_id="acme",
        idempotent_key="key-7",
        queue_key="acme|https://api.example.com|-",
        spec=validate_job({"url": "https://api.example.com/v1/x"}),
        created_at_ms=WALL0,
        deadline_at_ms=WALL0 + 86_400_000,
        status=status,  # type: ignore[arg-type]
        updated_at_ms=WALL0,
    )


def pair_id(pair: tuple[str, JobEvent]) -> str:
    return f"{pair[0]}-{pair[1].value}"


def test_the_table_is_the_one_documented():
    assert TRANSITIONS == ALLOWED
    assert set(STATUSES) == {"queued", "running", "success", "failed", "cancelled"}
    assert len(ALL_PAIRS) == 40 and len(FORBIDDEN) == 29


@pytest.mark.parametrize(("state", "event"), list(ALLOWED), ids=[pair_id(p) for p in ALLOWED])
def test_allowed_pairs_give_the_next_state(state: JobStatus, event: JobEvent):
    expected = ALLOWED[(state, event)]
    assert next_status("job-7", state, event) == expected
    after = transition(make_record(state), event)
    assert after.status == expected


@pytest.mark.parametrize(("state", "event"), FORBIDDEN, ids=[pair_id(p) for p in FORBIDDEN])
def test_every_other_pair_raises_naming_job_state_and_event(state: JobStatus, event: JobEvent):
    with pytest.raises(IllegalTransition) as caught:
        next_status("job-7", state, event)
    error = caught.value
    assert (error.job_id, error.status, error.event) == ("job-7", state, event)
    message = str(error)
    assert "job-7" in message and state in message and event.value in message

    record = make_record(state)
    with pytest.raises(IllegalTransition):
        transition(record, event)
    assert record.status == state


@pytest.mark.parametrize("state", sorted(TERMINAL_STATUSES))
def test_terminal_states_accept_no_event(state: JobStatus):
    assert is_terminal(state) and make_record(state).is_terminal
    for event in JobEvent:
        with pytest.raises(IllegalTransition):
            next_status("job-7", state, event)


@pytest.mark.parametrize("state", ["queued", "running"])
def test_waiting_and_running_are_not_terminal(state: str):
    assert not is_terminal(state) and not make_record(state).is_terminal


def test_transition_copies_and_leaves_the_original_untouched():
    record = make_record("running")
    before = record.to_wire()
    after = transition(record, JobEvent.FAIL, error="boom", finished_at_ms=WALL0 + 5, response={"status_code": 500})
    assert after is not record
    assert (after.status, after.error, after.finished_at_ms) == ("failed", "boom", WALL0 + 5)
    assert after.response == {"status_code": 500}
    assert record.to_wire() == before
    assert record.status == "running" and record.error is None and record.finished_at_ms is None
    # The lists are the copy's own: changing them does not reach the original.
    assert after.attempts is not record.attempts and after.deliveries is not record.deliveries


def test_an_illegal_transition_does_not_apply_its_changes():
    record = make_record("success")
    with pytest.raises(IllegalTransition):
        transition(record, JobEvent.RETRY, retries_used=9)
    assert record.retries_used == 0 and record.status == "success"
