"""Webhook delivery decisions (edge/engine/delivery.py): the retry schedule, the outcome and quorum, the payload."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest

from edge.engine.delivery import (
    DeliverySchedule,
    advance,
    first_deliveries,
    outcome,
    quorum_reached,
    webhook_payload,
)
from edge.engine.records import Delivery, JobRecord
from edge.engine.spec import validate_job

FINISHED_MS = 1_700_000_000_000
S = 1000  # ms per second
HOUR_MS = 3600 * S
DEFAULT = DeliverySchedule()

HOOKS = [
    {"url": "https://hooks.example.com/a", "regions": ["iad", "lax"]},
    {"url": "https://hooks.example.com/b", "has_quorum_vote": False},
    {"url": "https://hooks.example.com/c"},
]


def make_record(*, webhooks: list[dict[str, Any]] | None = None, **changes: Any) -> JobRecord:
    spec = validate_job(
        {"url": "https://api.example.com/v1/x", "metadata": {"order": 42, "tags": ["a"]}, "webhooks": webhooks or []}
    )
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "account_id": "acme",
        "idempotent_key": "idem-1",
        "queue_key": "acme|https://api.example.com|-",
        "spec": spec,
        "created_at_ms": FINISHED_MS - 60 * S,
        "deadline_at_ms": FINISHED_MS + 86_400 * S,
        "status": "success",
        "finished_at_ms": FINISHED_MS,
        "updated_at_ms": FINISHED_MS,
        "response": {"status_code": 200, "headers": {}, "body": "ok"},
    }
    fields.update(changes)
    return JobRecord(**fields)


def failed_try(delivery: Delivery, wall_ms: int, schedule: DeliverySchedule = DEFAULT, **kw: Any) -> Delivery:
    return advance(
        delivery,
        accepted=False,
        status=kw.get("status", 502),
        error=kw.get("error"),
        wall_ms=wall_ms,
        finished_at_ms=FINISHED_MS,
        schedule=schedule,
    )


def walk(schedule: DeliverySchedule = DEFAULT) -> list[Delivery]:
    """Every state of one delivery that fails each try, each try made exactly when it was due."""
    first_s = schedule.schedule_s[0] if schedule.schedule_s else 0
    delivery = Delivery(url="https://hooks.example.com/a", next_at_ms=FINISHED_MS + int(first_s * S))
    states = []
    while delivery.state == "pending":
        assert delivery.next_at_ms is not None
        delivery = failed_try(delivery, delivery.next_at_ms, schedule)
        states.append(delivery)
        assert len(states) < 1000
    return states


# -- advance ------------------------------------------------------------------------------------------------

# tries made -> when the next is due (ms after the job finished; None: given up) and the state.
# The waits are 60 s, 300 s, 900 s, 3600 s, then every hour; the try that would fall past 24 h is not made.
SCHEDULE_TABLE = [
    (1, 60 * S, "pending"),
    (2, 360 * S, "pending"),
    (3, 1260 * S, "pending"),
    (4, 4860 * S, "pending"),
    (5, 4860 * S + HOUR_MS, "pending"),
    (6, 4860 * S + 2 * HOUR_MS, "pending"),
    (25, 4860 * S + 21 * HOUR_MS, "pending"),
    (26, 4860 * S + 22 * HOUR_MS, "pending"),  # 84,060 s: the last try inside 24 h
    (27, None, "failed"),  # the next would be at 87,660 s
]


@pytest.mark.parametrize(("tries", "next_at", "state"), SCHEDULE_TABLE)
def test_advance_follows_the_default_schedule_until_it_gives_up(tries: int, next_at: int | None, state: str):
    states = walk()
    delivery = states[tries - 1]
    assert delivery.tries == tries and delivery.state == state
    assert delivery.next_at_ms == (None if next_at is None else FINISHED_MS + next_at)
    assert delivery.last_status == 502


def test_the_whole_walk_gives_up_after_27_tries_within_24_hours():
    states = walk()
    assert len(states) == 27 and [d.state for d in states] == ["pending"] * 26 + ["failed"]
    due = [FINISHED_MS] + [d.next_at_ms for d in states[:-1]]
    gaps = [b - a for a, b in itertools.pairwise(due)]  # type: ignore[operator]
    assert gaps == [60 * S, 300 * S, 900 * S, 3600 * S] + [HOUR_MS] * 22
    assert all(at <= FINISHED_MS + 86_400 * S for at in due)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("schedule", "tries"),
    [
        pytest.param(DeliverySchedule(schedule_s=(0, 10), repeat_every_s=20, give_up_after_s=100), 6, id="short"),
        pytest.param(DeliverySchedule(schedule_s=(), repeat_every_s=30, give_up_after_s=90), 4, id="repeat only"),
        pytest.param(DeliverySchedule(schedule_s=(5,), repeat_every_s=60, give_up_after_s=10), 1, id="one try"),
    ],
)
def test_advance_with_other_schedules(schedule: DeliverySchedule, tries: int):
    states = walk(schedule)
    assert len(states) == tries and states[-1].state == "failed"
    assert all(d.next_at_ms is not None for d in states[:-1]) and states[-1].next_at_ms is None


def test_a_late_try_schedules_from_when_it_was_made():
    delivery = Delivery(url="https://hooks.example.com/a", tries=1, next_at_ms=FINISHED_MS + 60 * S)
    late = failed_try(delivery, FINISHED_MS + 600 * S)
    assert late.next_at_ms == FINISHED_MS + 900 * S  # 600 s + the 300 s step
    too_late = failed_try(dataclasses.replace(delivery, tries=4), FINISHED_MS + 85_000 * S)
    assert too_late.state == "failed" and too_late.next_at_ms is None and too_late.tries == 5


@pytest.mark.parametrize("tries_before", [0, 3, 26])
def test_an_accepted_try_is_delivered(tries_before: int):
    before = Delivery(
        url="https://hooks.example.com/a", tries=tries_before, next_at_ms=FINISHED_MS, last_status=502, last_error="x"
    )
    after = advance(
        before,
        accepted=True,
        status=204,
        error=None,
        wall_ms=FINISHED_MS + 100 * HOUR_MS,  # even past the give-up time: it was accepted
        finished_at_ms=FINISHED_MS,
        schedule=DEFAULT,
    )
    assert (after.state, after.tries, after.next_at_ms) == ("delivered", tries_before + 1, None)
    assert (after.last_status, after.last_error) == (204, None)
    assert before.state == "pending" and before.tries == tries_before  # advance returns a new Delivery


def test_a_failed_try_records_its_status_or_error():
    delivery = Delivery(url="https://hooks.example.com/a", next_at_ms=FINISHED_MS)
    answered = failed_try(delivery, FINISHED_MS, status=500, error=None)
    assert (answered.last_status, answered.last_error, answered.state) == (500, None, "pending")
    silent = failed_try(answered, answered.next_at_ms, status=None, error="connect timeout")  # type: ignore[arg-type]
    assert (silent.last_status, silent.last_error, silent.tries) == (None, "connect timeout", 2)
    assert delivery.tries == 0 and delivery.last_status is None


# -- outcome and quorum -------------------------------------------------------------------------------------


def d(state: str, vote: bool = True) -> Delivery:
    return Delivery(url=f"https://hooks.example.com/{state}", has_quorum_vote=vote, state=state)  # type: ignore[arg-type]


OUTCOME_TABLE = [
    # id, deliveries, quorum, outcome, quorum reached
    ("no webhooks", [], 1, "none", True),
    ("one pending", [d("pending")], 1, "pending", False),
    ("pending wins over delivered", [d("delivered"), d("pending")], 1, "pending", True),
    ("pending wins over failed", [d("failed"), d("pending")], 1, "pending", False),
    ("one delivered", [d("delivered")], 1, "delivered", True),
    ("one failed", [d("failed")], 1, "failed", False),
    ("one of two, quorum 1", [d("delivered"), d("failed")], 1, "delivered", True),
    ("one of two, quorum 2", [d("delivered"), d("failed")], 2, "failed", False),
    ("two of three, quorum 2", [d("delivered"), d("failed"), d("delivered")], 2, "delivered", True),
    ("a non-voter does not count", [d("delivered", vote=False), d("failed")], 1, "failed", False),
    ("the voter counts", [d("delivered"), d("failed", vote=False)], 1, "delivered", True),
    ("no voters: each counts, quorum 1", [d("delivered", False), d("failed", False)], 1, "delivered", True),
    ("no voters: each counts, quorum 2", [d("delivered", False), d("failed", False)], 2, "failed", False),
    ("no voters: all delivered, quorum 2", [d("delivered", False), d("delivered", False)], 2, "delivered", True),
    ("quorum above voters is capped", [d("delivered"), d("delivered"), d("failed", False)], 3, "delivered", True),
    ("capped quorum still needs every voter", [d("delivered"), d("failed")], 5, "failed", False),
    ("quorum 0 means 1", [d("failed"), d("delivered")], 0, "delivered", True),
    ("quorum 0, nothing delivered", [d("failed")], 0, "failed", False),
]


@pytest.mark.parametrize(
    ("deliveries", "quorum", "expected", "reached"), [pytest.param(*row[1:], id=row[0]) for row in OUTCOME_TABLE]
)
def test_outcome_and_quorum(deliveries: list[Delivery], quorum: int, expected: str, reached: bool):
    assert outcome(deliveries, quorum) == expected
    assert quorum_reached(deliveries, quorum) is reached


# -- payload ------------------------------------------------------------------------------------------------


def test_the_payload_is_the_contracts_and_stable():
    record = make_record()
    payload = webhook_payload(record)
    assert payload == (
        b'{"job_id":"job-1","idempotent_key":"idem-1","status":"success",'
        b'"response":{"status_code":200,"headers":{},"body":"ok"},"metadata":{"order":42,"tags":["a"]}}'
    )
    assert webhook_payload(record) == payload
    assert webhook_payload(JobRecord.from_wire(record.to_wire())) == payload
    # Every try of every webhook sends the same bytes, whatever the deliveries' state.
    with_deliveries = first_deliveries(make_record(webhooks=HOOKS), DEFAULT, FINISHED_MS)
    assert webhook_payload(with_deliveries) == webhook_payload(make_record(webhooks=HOOKS))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({}, None, id="success"),
        pytest.param(
            {"status": "failed", "error": "deadline reached after 429"}, "deadline reached after 429", id="set"
        ),
        pytest.param({"status": "failed", "error": None, "response": None}, None, id="failed without error"),
        pytest.param(
            {"status": "cancelled", "error": "cancelled by the client"}, "cancelled by the client", id="cancel"
        ),
    ],
)
def test_the_payload_has_an_error_only_when_set(changes: dict[str, Any], error: str | None):
    record = make_record(**changes)
    doc = json.loads(webhook_payload(record))
    assert list(doc)[:5] == ["job_id", "idempotent_key", "status", "response", "metadata"]
    assert doc["status"] == record.status and doc["response"] == record.response
    if error is None:
        assert "error" not in doc and len(doc) == 5
    else:
        assert doc["error"] == error and list(doc)[-1] == "error"


# -- first deliveries ---------------------------------------------------------------------------------------


def test_first_deliveries_one_pending_per_webhook_at_the_first_step():
    record = make_record(webhooks=HOOKS)
    before = record.to_wire()
    attached = first_deliveries(record, DEFAULT, FINISHED_MS + 5 * S)
    assert attached.webhook_outcome == "pending" and attached.has_pending_deliveries
    assert attached.deliveries == [
        Delivery(url="https://hooks.example.com/a", has_quorum_vote=True, next_at_ms=FINISHED_MS),
        Delivery(url="https://hooks.example.com/b", has_quorum_vote=False, next_at_ms=FINISHED_MS),
        Delivery(url="https://hooks.example.com/c", has_quorum_vote=True, next_at_ms=FINISHED_MS),
    ]
    assert all(d.state == "pending" and d.tries == 0 for d in attached.deliveries)
    assert record.to_wire() == before and record.deliveries == [] and record.webhook_outcome == "none"
    assert attached is not record


@pytest.mark.parametrize(
    ("schedule", "finished_at_ms", "wall_ms", "first_at"),
    [
        pytest.param(DEFAULT, FINISHED_MS, FINISHED_MS + 5 * S, FINISHED_MS, id="due when the job finished"),
        pytest.param(DeliverySchedule(schedule_s=(30, 60)), FINISHED_MS, FINISHED_MS, FINISHED_MS + 30 * S, id="30 s"),
        pytest.param(DEFAULT, None, FINISHED_MS + 7 * S, FINISHED_MS + 7 * S, id="no finish time: now"),
        pytest.param(DeliverySchedule(schedule_s=()), FINISHED_MS, FINISHED_MS + 9, FINISHED_MS, id="empty schedule"),
    ],
)
def test_first_deliveries_due_time(schedule: DeliverySchedule, finished_at_ms: int | None, wall_ms: int, first_at: int):
    attached = first_deliveries(make_record(webhooks=HOOKS, finished_at_ms=finished_at_ms), schedule, wall_ms)
    assert {d.next_at_ms for d in attached.deliveries} == {first_at}


def test_first_deliveries_without_webhooks_is_none():
    record = make_record()
    attached = first_deliveries(record, DEFAULT, FINISHED_MS)
    assert attached.deliveries == [] and attached.webhook_outcome == "none"
    assert not attached.has_pending_deliveries
    assert outcome(attached.deliveries, attached.spec.webhook_quorum) == "none"


def test_changing_an_attached_delivery_leaves_the_original_untouched():
    attached = first_deliveries(make_record(webhooks=HOOKS), DEFAULT, FINISHED_MS)
    copy = attached.evolve()
    copy.deliveries[0].state = "delivered"
    copy.deliveries.append(Delivery(url="https://hooks.example.com/z"))
    assert attached.deliveries[0].state == "pending" and len(attached.deliveries) == 3
