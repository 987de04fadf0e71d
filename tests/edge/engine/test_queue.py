"""The outbound queue core (edge/engine/queue.py) driven the way its shell drives it, without trio.

`now` is monotonic seconds (floats), wall time is unix milliseconds (ints), and every rng is `Random(SEED)`, so the
jittered delays are known in advance: each test that expects one draws it from a fresh `Random(SEED)`.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random
from typing import Any

import pytest

from edge.engine.lifecycle import IllegalTransition
from edge.engine.outcome import AttemptResult
from edge.engine.queue import (
    IDLE,
    STORE_RETRY_S,
    Conclude,
    Dispatch,
    OutboundQueue,
    Queues,
    RetrySettings,
    Settlement,
    WaitUntil,
)
from edge.engine.records import ATTEMPTS_FIRST_KEPT, ATTEMPTS_LAST_KEPT, JobRecord
from edge.engine.spec import JobSpec, validate_job
from scheduler import QueueLimits, parse_limit_headers

SEED = 20_240_607
WALL0 = 1_700_000_000_000  # unix ms when the job is dispatched
NOW0 = 1000.0  # monotonic seconds, same instant
NOW1, WALL1 = NOW0 + 1.0, WALL0 + 1000  # when its attempt is settled
DAY_MS = 86_400_000
INF = float("inf")

ORIGIN = "https://api.example.com"
OTHER_ORIGIN = "https://other.example.com"
KEY = f"acme|{ORIGIN}|-"
SPEC = validate_job({"url": f"{ORIGIN}/v1/charges", "method": "POST", "body": '{"amount": 1}'})
OTHER_SPEC = validate_job({"url": f"{OTHER_ORIGIN}/v1/x"})


def make_record(
    job_id: str = "job-1",
    *,
    account: str = "acme",
    key: str = KEY,
    spec: JobSpec = SPEC,
    deadline_at_ms: int = WALL0 + DAY_MS,
    **changes: Any,
) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        account_id=account,
        idempotent_key=f"idem-{job_id}",
        queue_key=key,
        spec=spec,
        created_at_ms=WALL0 - 5000,
        deadline_at_ms=deadline_at_ms,
        updated_at_ms=WALL0 - 5000,
        **changes,
    )


def with_policy(**policy: Any) -> JobSpec:
    return validate_job({"url": f"{ORIGIN}/v1/charges", "retry_policy": policy})


def make_queue(*, rps: float = 100.0, max_concurrent: int = 4) -> OutboundQueue:
    return OutboundQueue(KEY, ORIGIN, QueueLimits(rps, max_concurrent), RetrySettings(base_s=0.5, cap_s=60.0))


def dispatch(queue: OutboundQueue, now: float = NOW0, wall_ms: int = WALL0) -> JobRecord:
    decision = queue.next(now, wall_ms)
    assert isinstance(decision, Dispatch), decision
    return decision.record


def response(status: int | None, *headers: tuple[str, str], error: str | None = None, **kw: Any) -> AttemptResult:
    return AttemptResult(duration_s=0.25, status_code=status, headers=headers, error=error, **kw)


def settled_queue(
    result: AttemptResult, record: JobRecord | None = None, *, eligible_at: float = NOW0, rps: float = 100.0
) -> tuple[OutboundQueue, Settlement]:
    """A queue whose one job was dispatched at NOW0 and whose attempt is settled (not committed) at NOW1."""
    queue = make_queue(rps=rps)
    record = record or make_record()
    queue.push(record, eligible_at)
    dispatch(queue)
    return queue, queue.settle(record.job_id, result, NOW1, WALL1, Random(SEED))


def jitter(ceiling_s: float) -> float:
    """The first draw of full jitter up to `ceiling_s` from the tests' rng."""
    return Random(SEED).uniform(0.0, ceiling_s)


# -- next ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rps", "max_concurrent", "eligible", "dispatched", "may_dispatch", "expected"),
    [
        pytest.param(100.0, 4, [], 0, True, IDLE, id="empty"),
        pytest.param(100.0, 4, [NOW0], 0, False, WaitUntil(INF), id="owned elsewhere"),
        pytest.param(100.0, 1, [NOW0, NOW0], 1, True, WaitUntil(INF), id="at the concurrency limit"),
        pytest.param(100.0, 4, [NOW0], 1, True, WaitUntil(INF), id="only in flight"),
        pytest.param(2.0, 4, [NOW0, NOW0], 1, True, WaitUntil(NOW0 + 0.5), id="pacer's next slot"),
        pytest.param(100.0, 4, [NOW0 + 30], 0, True, WaitUntil(NOW0 + 30), id="job's eligible_at"),
        pytest.param(0.5, 4, [NOW0, NOW0 + 1], 1, True, WaitUntil(NOW0 + 2), id="pacer later than the job"),
        pytest.param(2.0, 4, [NOW0, NOW0 + 30], 1, True, WaitUntil(NOW0 + 30), id="job later than the pacer"),
    ],
)
def test_next_waits(
    rps: float, max_concurrent: int, eligible: list[float], dispatched: int, may_dispatch: bool, expected: object
):
    queue = make_queue(rps=rps, max_concurrent=max_concurrent)
    for i, at in enumerate(eligible):
        queue.push(make_record(f"job-{i}"), at)
    for _ in range(dispatched):
        dispatch(queue)
    assert queue.next(NOW0, WALL0, may_dispatch=may_dispatch) == expected
    assert queue.in_flight == dispatched


def test_dispatch_marks_the_job_running_and_counts_it_in_flight():
    queue = make_queue(rps=2.0)
    record = make_record()
    queue.push(record, NOW0)
    assert (queue.depth, queue.in_flight, queue.is_idle) == (1, 0, False)

    running = dispatch(queue)
    assert running.status == "running" and running.job_id == "job-1"
    assert queue.record("job-1") is running
    assert record.status == "queued"  # the pushed record itself is not changed
    assert (queue.depth, queue.in_flight) == (0, 1)
    assert queue.limits.ready_at(NOW0) == NOW0 + 0.5  # the send was paced
    assert repr(queue).startswith(f"<OutboundQueue {KEY}: 0 waiting, 1 in flight | QueueLimits(2/s")


def test_dispatch_order_is_by_eligible_at_then_fifo():
    queue = make_queue()
    for job_id, at in [("late", NOW0 - 1), ("first", NOW0 - 5), ("second", NOW0 - 5), ("third", NOW0 - 5)]:
        queue.push(make_record(job_id), at)
    # One second apart, so that the pacer (100/s) never holds a dispatch back.
    assert [dispatch(queue, NOW0 + i).job_id for i in range(4)] == ["first", "second", "third", "late"]


@pytest.mark.parametrize(
    ("deadline_at_ms", "expired"),
    [
        pytest.param(WALL0 - 1, True, id="deadline passed"),
        pytest.param(WALL0, True, id="deadline now"),
        pytest.param(WALL0 + 1, False, id="deadline ahead"),
    ],
)
def test_next_expires_a_job_past_its_deadline(deadline_at_ms: int, expired: bool):
    queue = make_queue()
    queue.push(make_record(deadline_at_ms=deadline_at_ms), NOW0)
    decision = queue.next(NOW0, WALL0)
    assert isinstance(decision, Conclude if expired else Dispatch)
    assert queue.in_flight == 1


def test_an_expiry_counts_in_flight_until_commit():
    queue = make_queue(rps=1.0, max_concurrent=1)
    queue.push(make_record("old", deadline_at_ms=WALL0 - 1), NOW0 - 1)
    queue.push(make_record("fresh"), NOW0)

    decision = queue.next(NOW0, WALL0)
    assert isinstance(decision, Conclude)
    settlement = decision.settlement
    assert (settlement.next_step, settlement.label, settlement.is_terminal) == ("done", "expired", True)
    expired = settlement.record
    assert expired.status == "failed" and "deadline passed" in (expired.error or "")
    assert (expired.finished_at_ms, expired.updated_at_ms, expired.next_attempt_at_ms) == (WALL0, WALL0, None)
    assert expired.attempts == [] and expired.attempts_total == 0
    assert queue.record("old").status == "queued"  # the live record changes at commit only

    assert queue.in_flight == 1
    assert queue.next(NOW0, WALL0) == WaitUntil(INF)  # the save of the expiry holds the only slot

    queue.commit(settlement)
    assert queue.in_flight == 0 and "old" not in queue
    # An expiry sends nothing, so it did not use the pacer's slot: the next job goes at once.
    assert dispatch(queue).job_id == "fresh"


# -- settle -------------------------------------------------------------------------------------------------

TERMINAL_CASES = [
    # id, result, record changes, status, label, record error, response status
    ("200", response(200, ("Content-Type", "text/plain"), body="ok"), {}, "success", "success", None, 200),
    ("201", response(201), {}, "success", "success", None, 201),
    ("302 is a success", response(302, ("Location", "/elsewhere")), {}, "success", "success", None, 302),
    ("304", response(304), {}, "success", "success", None, 304),
    ("400", response(400, body="bad"), {}, "failed", "failed", None, 400),
    ("404", response(404), {}, "failed", "failed", None, 404),
    ("403 without rate-limit evidence", response(403), {}, "failed", "failed", None, 403),
    ("500 is a reroute code, not a retry code", response(500), {}, "failed", "failed", None, 500),
    ("503 with retries exhausted", response(503), {"retries_used": 3}, "failed", "failed", None, 503),
    (
        "503 with max_retries 0",
        response(503),
        {"spec": with_policy(max_retries=0)},
        "failed",
        "failed",
        None,
        503,
    ),
    (
        "connection error with retries exhausted",
        response(None, error="connect: connection refused"),
        {"retries_used": 3},
        "failed",
        "failed",
        "connect: connection refused",
        None,
    ),
    (
        "target refused (retryable=False)",
        response(None, error="ssrf: 10.0.0.1 is a private address", retryable=False),
        {},
        "failed",
        "failed",
        "ssrf: 10.0.0.1 is a private address",
        None,
    ),
]


@pytest.mark.parametrize(
    ("result", "changes", "status", "label", "error", "response_status"),
    [pytest.param(*case[1:], id=case[0]) for case in TERMINAL_CASES],
)
def test_settle_terminal(
    result: AttemptResult,
    changes: dict[str, Any],
    status: str,
    label: str,
    error: str | None,
    response_status: int | None,
):
    record = make_record(**changes)
    queue, settlement = settled_queue(result, record)
    assert (settlement.next_step, settlement.is_terminal, settlement.label) == ("done", True, label)
    assert settlement.rate_limited is False
    final = settlement.record
    assert final.status == status and final.is_terminal
    assert final.error == error
    assert (final.finished_at_ms, final.updated_at_ms, final.next_attempt_at_ms) == (WALL1, WALL1, None)
    assert final.retries_used == record.retries_used  # a final outcome spends no retry
    if response_status is None:
        assert final.response is None
    else:
        assert final.response is not None and final.response["status_code"] == response_status
        assert final.response["headers"] == dict(result.headers) and final.response["body"] == result.body
    [attempt] = final.attempts
    assert final.attempts_total == 1
    assert (attempt.at_ms, attempt.duration_ms) == (WALL1 - 250, 250.0)
    assert (attempt.status_code, attempt.error) == (result.status_code, result.error)
    assert (attempt.delay_s, attempt.delay_reason) == (None, None)
    queue.commit(settlement)
    assert queue.is_idle and queue.next(NOW1, WALL1) is IDLE


RETRY_CASES = [
    # id, result, record changes, label, reason, retries used before
    ("503, first retry", response(503), {}, "retry", "status 503", 0),
    ("503, third retry", response(503), {"retries_used": 2}, "retry", "status 503", 2),
    ("connection error", response(None, error="read timeout"), {}, "error", "read timeout", 0),
    ("connection error, second retry", response(None, error="reset"), {"retries_used": 1}, "error", "reset", 1),
    ("500 in custom retry_codes", response(500), {"spec": with_policy(retry_codes=[500])}, "retry", "status 500", 0),
]


@pytest.mark.parametrize(
    ("result", "changes", "label", "reason", "used"),
    [pytest.param(*case[1:], id=case[0]) for case in RETRY_CASES],
)
def test_settle_retry_with_backoff(result: AttemptResult, changes: dict[str, Any], label: str, reason: str, used: int):
    queue, settlement = settled_queue(result, make_record(**changes))
    delay = jitter(min(60.0, 0.5 * 2**used))  # RetrySettings(base_s=0.5, cap_s=60.0), full jitter
    assert 0.0 <= delay <= 0.5 * 2**used
    assert (settlement.next_step, settlement.is_terminal, settlement.label) == ("retry", False, label)
    assert settlement.eligible_at == NOW1 + delay
    assert settlement.rate_limited is False
    retried = settlement.record
    assert retried.status == "queued" and retried.retries_used == used + 1
    assert retried.next_attempt_at_ms == WALL1 + int(delay * 1000)
    assert (retried.updated_at_ms, retried.finished_at_ms, retried.response, retried.error) == (WALL1, None, None, None)
    [attempt] = retried.attempts
    assert (attempt.delay_s, attempt.delay_reason) == (round(delay, 3), reason)
    assert attempt.status_code == result.status_code and attempt.error == result.error
    assert queue.limits.ready_at(NOW1) == NOW1  # a counted retry does not block the queue


def test_backoff_grows_with_retries_used_up_to_the_cap():
    eligible = []
    for used in range(10):
        _queue, settlement = settled_queue(
            response(503), make_record(retries_used=used, spec=with_policy(max_retries=10))
        )
        eligible.append(settlement.eligible_at)
    assert eligible == [NOW1 + jitter(min(60.0, 0.5 * 2**used)) for used in range(10)]


def test_429_with_retry_after_blocks_the_queue_and_keeps_the_jobs_place():
    queue = make_queue()
    queue.push(make_record("a"), NOW0 - 10)  # waiting since NOW0 - 10
    dispatch(queue)
    queue.push(make_record("b"), NOW0 - 5)  # arrived later, eligible before "a" is settled
    settlement = queue.settle("a", response(429, ("Retry-After", "30")), NOW1, WALL1, Random(SEED))

    assert (settlement.next_step, settlement.label, settlement.rate_limited) == ("retry", "rate_limited", True)
    assert settlement.eligible_at == NOW0 - 10  # its place in line
    assert queue.limits.ready_at(NOW1) == NOW1 + 30  # the whole queue waits
    assert queue.limits.blocked_reason == "retry-after"
    retried = settlement.record
    assert retried.status == "queued" and retried.retries_used == 0
    assert retried.next_attempt_at_ms == WALL1 + 30_000
    [attempt] = retried.attempts
    assert (attempt.status_code, attempt.delay_s, attempt.delay_reason) == (429, 30.0, "retry-after")

    queue.commit(settlement)
    assert queue.next(NOW1, WALL1) == WaitUntil(NOW1 + 30)
    assert queue.next(NOW1 + 29.9, WALL1 + 29_900) == WaitUntil(NOW1 + 30)
    assert dispatch(queue, NOW1 + 30, WALL1 + 30_000).job_id == "a"  # still ahead of "b"


def test_a_counted_retry_goes_behind_the_jobs_already_waiting():
    queue = make_queue()
    queue.push(make_record("a"), NOW0 - 10)
    dispatch(queue)
    queue.push(make_record("b"), NOW0 - 5)
    settlement = queue.settle("a", response(503), NOW1, WALL1, Random(SEED))
    queue.commit(settlement)
    assert dispatch(queue, NOW1 + 100, WALL1 + 100_000).job_id == "b"


def test_429_without_hints_backs_off_with_jitter_that_grows_per_consecutive_429():
    rng = Random(SEED)
    expected = Random(SEED)
    queue = make_queue()
    queue.push(make_record(), NOW0)
    now, wall = NOW0, WALL0
    for streak in range(4):
        dispatch(queue, now, wall)
        settlement = queue.settle("job-1", response(429), now + 0.1, wall + 100, rng)
        delay = expected.uniform(0.0, 2.0**streak)  # QueueLimits: base 1 s, doubling per consecutive 429
        assert settlement.label == "rate_limited" and settlement.record.retries_used == 0
        assert settlement.eligible_at == NOW0
        attempt = settlement.record.attempts[-1]
        assert (attempt.delay_s, attempt.delay_reason) == (round(delay, 3), "backoff")
        assert queue.limits.ready_at(now + 0.1) == now + 0.1 + delay
        assert queue.limits.consecutive_429 == streak + 1
        queue.commit(settlement)
        now, wall = now + 10, wall + 10_000


def test_a_rate_limit_403_waits_like_a_429_without_spending_a_retry():
    headers = (("x-ratelimit-remaining", "0"), ("Retry-After", "20"))
    queue, settlement = settled_queue(response(403, *headers), eligible_at=NOW0 - 3)
    assert settlement.next_step == "retry" and settlement.record.retries_used == 0
    assert settlement.eligible_at == NOW0 - 3
    assert queue.limits.ready_at(NOW1) == NOW1 + 20


def test_a_rate_limit_403_is_labelled_rate_limited():
    headers = (("x-ratelimit-remaining", "0"), ("Retry-After", "20"))
    _queue, settlement = settled_queue(response(403, *headers))
    assert (settlement.label, settlement.rate_limited) == ("rate_limited", True)


@pytest.mark.parametrize(
    ("result", "label", "error"),
    [
        pytest.param(
            response(429, ("Retry-After", "60")), "rate_limited", "deadline reached after retry-after", id="429"
        ),
        pytest.param(response(503, ("Retry-After", "60")), "retry", "deadline reached after status 503", id="503"),
        pytest.param(
            response(429, ("Retry-After", "10")), "rate_limited", "deadline reached after retry-after", id="at deadline"
        ),
    ],
)
def test_a_retry_past_the_deadline_fails(result: AttemptResult, label: str, error: str):
    record = make_record(deadline_at_ms=WALL1 + 10_000)
    queue, settlement = settled_queue(result, record)
    assert (settlement.next_step, settlement.label, settlement.is_terminal) == ("done", label, True)
    final = settlement.record
    assert final.status == "failed" and final.error == error
    assert (final.finished_at_ms, final.next_attempt_at_ms) == (WALL1, None)
    assert final.response is not None and final.response["status_code"] == result.status_code
    assert final.attempts[-1].delay_reason.endswith("; deadline reached")  # type: ignore[union-attr]
    queue.commit(settlement)
    assert "job-1" not in queue and queue.is_idle


def test_a_retry_just_before_the_deadline_still_retries():
    record = make_record(deadline_at_ms=WALL1 + 10_001)
    _queue, settlement = settled_queue(response(429, ("Retry-After", "10")), record)
    assert settlement.next_step == "retry" and settlement.record.next_attempt_at_ms == WALL1 + 10_000


@pytest.mark.parametrize(
    ("headers", "account_queue"),
    [
        pytest.param((), None, id="absent"),
        pytest.param((("X-EZTHROTTLE-ACCOUNT-QUEUE", "enabled"),), True, id="enabled"),
        pytest.param((("X-EZTHROTTLE-ACCOUNT-QUEUE", "disabled"),), False, id="disabled"),
        pytest.param((("x-ezthrottle-account-queue", "false"),), False, id="lower case, false"),
    ],
)
def test_account_queue_header_reaches_the_settlement(headers: tuple[tuple[str, str], ...], account_queue: bool | None):
    queue, settlement = settled_queue(response(200, *headers))
    assert settlement.account_queue is account_queue
    assert queue.limits.account_queue is (True if account_queue is None else account_queue)


@pytest.mark.parametrize("status", [200, 429, 503])
def test_rps_header_changes_the_queues_rate(status: int):
    queue, _settlement = settled_queue(response(status, ("X-EZTHROTTLE-RPS", "5")), rps=1.0)
    assert queue.limits.rps == 5.0
    assert queue.limits.rps_source == "header:x-ezthrottle-rps"


@pytest.mark.parametrize(
    ("headers", "malformed"),
    [
        pytest.param((), 0, id="none"),
        pytest.param((("Retry-After", "30"),), 0, id="well formed"),
        pytest.param((("Retry-After", "soon"),), 1, id="retry-after"),
        pytest.param((("Retry-After", "soon"), ("X-EZTHROTTLE-RPS", "fast")), 2, id="two headers"),
    ],
)
def test_malformed_rate_limit_headers_are_counted(headers: tuple[tuple[str, str], ...], malformed: int):
    _queue, settlement = settled_queue(response(429, *headers))
    assert settlement.malformed_headers == malformed


# -- settle, commit and abort -------------------------------------------------------------------------------

SETTLE_KINDS = [
    pytest.param(response(200), "done", id="success"),
    pytest.param(response(404), "done", id="failed"),
    pytest.param(response(503), "retry", id="retry"),
    pytest.param(response(429, ("Retry-After", "2")), "retry", id="rate limited"),
    pytest.param(response(None, error="timeout"), "retry", id="error"),
    pytest.param(response(None, error="refused", retryable=False), "done", id="refused"),
]


@pytest.mark.parametrize(("result", "next_step"), SETTLE_KINDS)
def test_settle_never_changes_the_live_record_and_commit_does(result: AttemptResult, next_step: str):
    queue = make_queue()
    queue.push(make_record(), NOW0)
    running = dispatch(queue)
    before = running.to_wire()

    settlement = queue.settle("job-1", result, NOW1, WALL1, Random(SEED))
    assert settlement.next_step == next_step
    assert queue.record("job-1") is running and running.to_wire() == before
    assert running.status == "running" and running.attempts == []
    assert (queue.in_flight, queue.depth) == (1, 0)

    queue.commit(settlement)
    assert queue.in_flight == 0
    if next_step == "retry":
        assert queue.record("job-1") is settlement.record
        assert settlement.record.status == "queued" and queue.depth == 1
    else:
        assert queue.record("job-1") is None and "job-1" not in queue
        assert queue.depth == 0 and queue.is_idle and queue.next(NOW1, WALL1) is IDLE


@pytest.mark.parametrize(("result", "next_step"), SETTLE_KINDS)
def test_abort_of_an_attempt_keeps_the_last_committed_record(result: AttemptResult, next_step: str):
    queue = make_queue()
    committed = make_record(retries_used=1)
    queue.push(committed, NOW0 - 3)
    dispatch(queue)
    settlement = queue.settle("job-1", result, NOW1, WALL1, Random(SEED))

    queue.abort(settlement, NOW1)
    assert queue.in_flight == 0 and queue.depth == 1
    live = queue.record("job-1")
    assert live is not None and live.to_wire() == committed.to_wire()
    assert live.status == "queued"
    assert queue.next(NOW1, WALL1) == WaitUntil(NOW1 + STORE_RETRY_S)
    again = dispatch(queue, NOW1 + STORE_RETRY_S, WALL1 + int(STORE_RETRY_S * 1000))
    assert again.job_id == "job-1" and again.retries_used == 1


def test_abort_of_an_expiry_waits_store_retry_s_then_expires_again():
    queue = make_queue()
    record = make_record(deadline_at_ms=WALL0 - 1)
    queue.push(record, NOW0)
    decision = queue.next(NOW0, WALL0)
    assert isinstance(decision, Conclude)

    queue.abort(decision.settlement, NOW0)
    assert queue.in_flight == 0 and queue.record("job-1") == record
    assert queue.next(NOW0, WALL0) == WaitUntil(NOW0 + STORE_RETRY_S)
    assert isinstance(queue.next(NOW0 + STORE_RETRY_S, WALL0 + 5000), Conclude)


def test_abort_of_a_cancel_gives_the_job_its_place_back():
    queue = make_queue()
    queue.push(make_record("a"), NOW0 - 10)
    queue.push(make_record("b"), NOW0 - 5)
    settlement = queue.cancel("a", WALL0)
    assert settlement is not None and queue.in_flight == 1

    queue.abort(settlement, NOW0)
    assert queue.in_flight == 0 and queue.depth == 2
    assert queue.record("a").status == "queued"  # type: ignore[union-attr]
    assert dispatch(queue).job_id == "a"  # no STORE_RETRY_S wait, and still ahead of "b"


# -- cancel -------------------------------------------------------------------------------------------------


def test_cancel_takes_a_waiting_job_out_of_line_at_once():
    queue = make_queue()
    queue.push(make_record("a"), NOW0 - 10)
    queue.push(make_record("b"), NOW0 - 5)

    settlement = queue.cancel("a", WALL0)
    assert settlement is not None
    assert (settlement.next_step, settlement.label, settlement.is_terminal) == ("done", "cancelled", True)
    cancelled = settlement.record
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled by the client"
    assert (cancelled.finished_at_ms, cancelled.updated_at_ms, cancelled.next_attempt_at_ms) == (WALL0, WALL0, None)
    assert queue.record("a").status == "queued"  # type: ignore[union-attr]  # live until commit
    assert (queue.depth, queue.in_flight) == (1, 1)

    assert dispatch(queue).job_id == "b"  # "a" cannot start while its cancel is saved
    assert queue.next(NOW0, WALL0) == WaitUntil(INF)
    assert queue.cancel("a", WALL0) is None  # already being cancelled

    queue.commit(settlement)
    assert "a" not in queue and queue.in_flight == 1


def test_cancel_of_a_running_unknown_or_expiring_job_is_none():
    queue = make_queue()
    queue.push(make_record("running"), NOW0 - 1)
    queue.push(make_record("expiring", deadline_at_ms=WALL0), NOW0)
    dispatch(queue)
    assert isinstance(queue.next(NOW0 + 1, WALL0), Conclude)
    in_flight = queue.in_flight

    for job_id in ("running", "unknown", "expiring"):
        assert queue.cancel(job_id, WALL0) is None
    assert queue.in_flight == in_flight == 2
    assert queue.record("running").status == "running"  # type: ignore[union-attr]


# -- bounded attempts ---------------------------------------------------------------------------------------


def test_a_thousand_429s_keep_the_first_and_last_attempts():
    queue = make_queue()
    queue.push(make_record(), NOW0)
    rng = Random(SEED)
    now, wall = NOW0, WALL0
    settles = 1000
    for _ in range(settles):
        dispatch(queue, now, wall)
        result = AttemptResult(duration_s=0.0, status_code=429, headers=(("Retry-After", "1"),))
        settlement = queue.settle("job-1", result, now, wall, rng)
        assert settlement.next_step == "retry"
        queue.commit(settlement)
        now, wall = now + 2, wall + 2000

    record = queue.record("job-1")
    assert record is not None
    kept = ATTEMPTS_FIRST_KEPT + ATTEMPTS_LAST_KEPT
    assert len(record.attempts) == kept
    assert record.attempts_total == settles
    assert record.attempts_dropped == settles - kept
    assert record.retries_used == 0
    expected = [*range(ATTEMPTS_FIRST_KEPT), *range(settles - ATTEMPTS_LAST_KEPT, settles)]
    assert [a.at_ms for a in record.attempts] == [WALL0 + 2000 * i for i in expected]
    assert all(a.status_code == 429 and a.delay_reason == "retry-after" for a in record.attempts)
    assert JobRecord.from_wire(record.to_wire()).attempts_total == settles


# -- Queues -------------------------------------------------------------------------------------------------


def make_queues(*, busy: Callable[[OutboundQueue], bool] = lambda queue: False, keys_max: int = 1000) -> Queues:
    return Queues(lambda origin: QueueLimits(100.0, 4), RetrySettings(), busy=busy, keys_max=keys_max)


def finish(queues: Queues, job_id: str, key: str, *, spec: JobSpec = SPEC) -> OutboundQueue:
    """Push one job to `key`, run it to success and commit it: the key is left idle."""
    queue = queues.push(make_record(job_id, key=key, spec=spec), NOW0)
    dispatch(queue)
    settlement = queue.settle(job_id, response(200), NOW1, WALL1, Random(SEED))
    queue.commit(settlement)
    queues.settled(settlement)
    assert queue.is_idle
    return queue


def test_push_counts_each_job_once_per_account():
    queues = make_queues()
    queues.push(make_record("a"), NOW0)
    queues.push(make_record("b"), NOW0)
    queues.push(make_record("c", account="other", key=f"other|{ORIGIN}|-"), NOW0)
    queues.push(make_record("a"), NOW0 + 1)  # the same job again: rescheduled, not counted twice
    assert (queues.backlog("acme"), queues.backlog("other"), queues.backlog("nobody")) == (2, 1, 0)
    assert queues.jobs == 3 and len(queues) == 2
    queue = queues.get(KEY)
    assert queue is not None and queue.depth == 2 and queue.origin == ORIGIN
    assert queues.queue_of("a") is queue and queues.live_job("a") == make_record("a")


def test_a_pushed_running_record_waits_again_as_queued():
    queues = make_queues()
    crashed = make_record(status="running", retries_used=2)
    queue = queues.push(crashed, NOW0)
    live = queues.live_job("job-1")
    assert live is not None and live.status == "queued" and live.retries_used == 2
    assert crashed.status == "running"
    assert dispatch(queue).job_id == "job-1"


def test_pushing_a_finished_record_is_refused_without_counting_it():
    queues = make_queues()
    with pytest.raises(IllegalTransition):
        queues.push(make_record(status="success"), NOW0)
    assert queues.jobs == 0
    assert queues.backlog("acme") == 0


@pytest.mark.parametrize(("result", "released"), [(response(200), True), (response(404), True), (response(503), False)])
def test_settled_releases_the_backlog_of_finished_jobs_only(result: AttemptResult, released: bool):
    queues = make_queues()
    queue = queues.push(make_record("a"), NOW0)
    queues.push(make_record("b"), NOW0)
    dispatch(queue)
    settlement = queue.settle("a", result, NOW1, WALL1, Random(SEED))
    queue.commit(settlement)
    queues.settled(settlement)
    assert queues.backlog("acme") == (1 if released else 2)
    assert (queues.live_job("a") is None) is released
    assert (queues.queue_of("a") is None) is released


def test_cancelled_and_expired_jobs_are_released_when_settled():
    queues = make_queues()
    queue = queues.push(make_record("a"), NOW0)
    queues.push(make_record("b", deadline_at_ms=WALL0), NOW0)
    cancel = queue.cancel("a", WALL0)
    expiry = queue.next(NOW0, WALL0)
    assert cancel is not None and isinstance(expiry, Conclude)
    for settlement in (cancel, expiry.settlement):
        queue.commit(settlement)
        queues.settled(settlement)
    assert queues.backlog("acme") == 0 and queues.jobs == 0 and queue.is_idle


def test_take_waiting_moves_only_waiting_jobs_of_foreign_keys():
    queues = make_queues()
    foreign = f"acme|{ORIGIN}|fp-foreign"
    queue = queues.push(make_record("a", key=foreign), NOW0)
    queues.push(make_record("b", key=foreign), NOW0 + 1)
    queues.push(make_record("mine", key=KEY), NOW0)
    running = dispatch(queue)
    assert running.job_id == "a"

    taken = queues.take_waiting(lambda key: key == foreign)
    assert [r.job_id for r in taken] == ["b"]
    assert taken[0].status == "queued"
    assert queues.backlog("acme") == 2 and queues.jobs == 2
    assert queues.live_job("b") is None and queues.live_job("mine") is not None
    assert queues.queue_of("a") is queue and queue.in_flight == 1 and queue.depth == 0

    # The in-flight job finishes here and is released then.
    settlement = queue.settle("a", response(200), NOW1, WALL1, Random(SEED))
    queue.commit(settlement)
    queues.settled(settlement)
    assert queues.backlog("acme") == 1 and queues.take_waiting(lambda key: True)[0].job_id == "mine"
    assert queues.backlog("acme") == 0


def test_take_rekeyed_moves_only_waiting_jobs_of_the_origin_whose_key_changed():
    queues = make_queues()
    per_key = f"acme|{ORIGIN}|fp-1"
    shared = f"acme|{ORIGIN}|-"
    other = f"acme|{OTHER_ORIGIN}|fp-1"
    queue = queues.push(make_record("running", key=per_key), NOW0 - 1)
    queues.push(make_record("moves", key=per_key), NOW0)
    queues.push(make_record("stays", key=per_key), NOW0)
    queues.push(make_record("other origin", key=other, spec=OTHER_SPEC), NOW0)
    dispatch(queue)

    def key_of(record: JobRecord) -> str:
        return record.queue_key if record.job_id == "stays" else record.queue_key.rsplit("|", 1)[0] + "|-"

    moved = queues.take_rekeyed(ORIGIN, key_of)
    assert [(r.job_id, key) for r, key in moved] == [("moves", shared)]
    assert queues.backlog("acme") == 3
    assert queues.live_job("moves") is None
    assert queues.live_job("stays") is not None and queues.live_job("other origin") is not None
    assert queues.live_job("running").status == "running"  # type: ignore[union-attr]


def test_forget_idle_drops_only_idle_keys_older_than_the_cutoff_and_not_running():
    queues = make_queues(busy=lambda q: q.key == "k-running")
    finish(queues, "old", "k-old").idle_since = 10.0
    finish(queues, "edge", "k-edge").idle_since = 50.0
    finish(queues, "recent", "k-recent").idle_since = 90.0
    finish(queues, "running", "k-running").idle_since = 10.0
    queues.push(make_record("waiting", key="k-waiting"), NOW0)
    in_flight = queues.push(make_record("in-flight", key="k-in-flight"), NOW0)
    dispatch(in_flight)
    for key in ("k-waiting", "k-in-flight"):
        queues.get(key).idle_since = 0.0  # type: ignore[union-attr]

    dropped = queues.forget_idle(100.0, 50.0)
    assert dropped == 2
    assert sorted(q.key for q in queues) == ["k-in-flight", "k-recent", "k-running", "k-waiting"]
    assert queues.get("k-old") is None and queues.get("k-edge") is None
    assert queues.jobs == 2 and queues.backlog("acme") == 2


def test_a_forgotten_key_starts_afresh():
    queues = make_queues()
    queue = finish(queues, "a", KEY)
    queue.limits.on_response(NOW1, 200, _rps_signals(7.0), Random(SEED))
    assert queues.forget_idle(NOW1, 0.0) == 1
    fresh = queues.push(make_record("b"), NOW1)
    assert fresh is not queue and fresh.limits.rps == 100.0


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param([("k1", 30.0), ("k2", 10.0), ("k3", 20.0)], ["k1", "k3", "new"], id="longest idle goes"),
        pytest.param([("k1", 30.0), ("k2", "busy"), ("k3", 20.0)], ["k1", "k2", "new"], id="busy is kept"),
        pytest.param([("k1", "waiting"), ("k2", 10.0), ("k3", 20.0)], ["k1", "k3", "new"], id="waiting is kept"),
        pytest.param(
            [("k1", "waiting"), ("k2", "busy"), ("k3", "waiting")], ["k1", "k2", "k3", "new"], id="none forgettable"
        ),
    ],
)
def test_a_new_key_past_keys_max_forgets_the_longest_idle(keys: list[tuple[str, Any]], expected: list[str]):
    busy_keys = {key for key, state in keys if state == "busy"}
    queues = make_queues(busy=lambda q: q.key in busy_keys, keys_max=3)
    for key, state in keys:
        if state == "waiting":
            queues.push(make_record(f"job-{key}", key=key), NOW0)
        else:
            finish(queues, f"job-{key}", key).idle_since = 0.0 if state == "busy" else state
    assert len(queues) == 3
    queues.push(make_record("job-new", key="new"), NOW0)
    assert sorted(q.key for q in queues) == expected
    assert queues.live_job("job-new") is not None


def test_an_existing_key_past_keys_max_forgets_nothing():
    queues = make_queues(keys_max=2)
    finish(queues, "a", "k1").idle_since = 1.0
    finish(queues, "b", "k2").idle_since = 2.0
    queues.push(make_record("c", key="k1"), NOW0)
    assert sorted(q.key for q in queues) == ["k1", "k2"]


def _rps_signals(rps: float) -> Any:
    return parse_limit_headers([("X-EZTHROTTLE-RPS", str(rps))], wall_now=WALL1 / 1000)


# -- jobs out of line: a cancel or an expiry is being saved -------------------------------------------------


def out_of_line(pending: str) -> tuple[Queues, OutboundQueue, Settlement]:
    """Jobs "a" and "b" wait on KEY; "a" is then taken out of line by its cancel, or its expiry, being saved."""
    queues = make_queues()
    deadline_at_ms = WALL0 if pending == "expire" else WALL0 + DAY_MS
    queue = queues.push(make_record("a", deadline_at_ms=deadline_at_ms), NOW0 - 1)
    queues.push(make_record("b"), NOW0)
    if pending == "cancel":
        settlement = queue.cancel("a", WALL0)
        assert settlement is not None
    else:
        decision = queue.next(NOW0, WALL0)
        assert isinstance(decision, Conclude)
        settlement = decision.settlement
    assert queue.record("a").status == "queued" and queue.depth == 1  # type: ignore[union-attr]
    return queues, queue, settlement


@pytest.mark.parametrize("pending", ["cancel", "expire"])
def test_take_waiting_does_not_return_a_job_whose_save_is_in_flight(pending: str):
    _queues, queue, _settlement = out_of_line(pending)
    taken = queue.take_waiting()
    assert [r.job_id for r in taken] == ["b"]
    assert "a" in queue


@pytest.mark.parametrize("pending", ["cancel", "expire"])
def test_a_job_whose_save_is_in_flight_is_not_handed_over(pending: str):
    queues, queue, settlement = out_of_line(pending)
    taken = queues.take_waiting(lambda key: True)
    assert [r.job_id for r in taken] == ["b"]
    assert queues.backlog("acme") == 1
    queue.commit(settlement)
    queues.settled(settlement)
    assert queues.backlog("acme") == 0 and queues.jobs == 0


def test_a_job_whose_cancel_is_being_saved_is_not_rekeyed():
    queues, _queue, _settlement = out_of_line("cancel")
    moved = queues.take_rekeyed(ORIGIN, lambda record: "acme|https://api.example.com|fp-new")
    assert [r.job_id for r, _key in moved] == ["b"]


# -- known bugs ---------------------------------------------------------------------------------------------


def test_a_429_keeps_its_place_among_jobs_eligible_at_the_same_instant():
    queue = make_queue()
    for job_id in ("a", "b", "c"):
        queue.push(make_record(job_id), NOW0)
    dispatch(queue)
    settlement = queue.settle("a", response(429, ("Retry-After", "1")), NOW0 + 0.1, WALL0 + 100, Random(SEED))
    queue.commit(settlement)
    assert dispatch(queue, NOW0 + 2, WALL0 + 2000).job_id == "a"
