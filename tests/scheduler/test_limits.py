"""QueueLimits: live limits from headers, queue-wide blocks, 429 backoff that grows then resets, footprint."""

from __future__ import annotations

import sys
from random import Random
from typing import Any

import pytest

from scheduler.gcra import Gcra
from scheduler.limits import QueueDelay, QueueLimits
from scheduler.signals import LimitSignals, parse_limit_headers

WALL_NOW = 1_700_000_000.0
NO_SIGNALS = LimitSignals()


class HighestDraw(Random):
    """Uniform draws land on the top of the range, so a jittered backoff shows its ceiling."""

    def random(self) -> float:
        return 1.0


def signals_from(*headers: tuple[str, str]) -> LimitSignals:
    return parse_limit_headers(headers, wall_now=WALL_NOW)


def test_starts_unblocked_with_the_given_limits_and_sources() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=3, rps_source="config", account_queue=False)
    assert limits.ready_at(50.0) == 50.0
    assert (limits.rps, limits.max_concurrent, limits.account_queue, limits.consecutive_429) == (
        2.0,
        3,
        False,
        0,
    )
    assert limits.snapshot() == {
        "rps": 2.0,
        "rps_source": "config",
        "max_concurrent": 3,
        "concurrency_source": "default",
        "blocked_until": 0.0,
        "blocked_reason": None,
    }


def test_dispatches_are_paced_at_the_rate() -> None:
    limits = QueueLimits(rps=4.0, max_concurrent=2)
    limits.on_dispatch(10.0)
    assert limits.ready_at(10.0) == pytest.approx(10.25)
    assert limits.ready_at(10.25) == 10.25


def test_rejects_a_concurrency_below_one() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        QueueLimits(rps=1.0, max_concurrent=0)


@pytest.mark.parametrize(
    ("headers", "rps", "rps_source"),
    [
        ([("X-EZTHROTTLE-RPS", "10")], 10.0, "header:x-ezthrottle-rps"),
        ([("RateLimit-Policy", '"burst";q=30;w=60')], 0.5, "header:ratelimit-policy"),
        ([("X-EZTHROTTLE-RPS", "3"), ("RateLimit-Policy", '"b";q=1;w=1')], 3.0, "header:x-ezthrottle-rps"),
        ([("X-EZTHROTTLE-RPS", "0.01")], 0.5, "header:x-ezthrottle-rps"),  # the contract's floor
        ([("X-EZTHROTTLE-RPS", "soon")], 2.0, "default"),  # malformed: unchanged
    ],
)
def test_rate_follows_live_headers(headers: list[tuple[str, str]], rps: float, rps_source: str) -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    assert limits.on_response(1.0, 200, signals_from(*headers), Random(0)) is None
    assert limits.rps == pytest.approx(rps)
    assert limits.rps_source == rps_source


def test_a_lower_live_rate_slows_the_very_next_dispatch() -> None:
    limits = QueueLimits(rps=10.0, max_concurrent=1)
    limits.on_dispatch(0.0)
    limits.on_response(0.0, 200, signals_from(("X-EZTHROTTLE-RPS", "1")), Random(0))
    assert limits.ready_at(0.0) == pytest.approx(1.0)


def test_concurrency_and_account_queue_follow_live_headers() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    signals = signals_from(("X-EZTHROTTLE-MAX-CONCURRENT", "7"), ("X-EZTHROTTLE-ACCOUNT-QUEUE", "disabled"))
    limits.on_response(1.0, 200, signals, Random(0))
    assert (limits.max_concurrent, limits.concurrency_source) == (7, "header:x-ezthrottle-max-concurrent")
    assert limits.account_queue is False


def test_429_backoff_grows_to_the_cap_then_a_success_resets_it() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    rng = HighestDraw()
    now = 0.0
    delays = []
    for _ in range(11):
        delay = limits.on_response(now, 429, NO_SIGNALS, rng)
        assert delay is not None and delay.reason == "backoff"
        assert limits.blocked_until == pytest.approx(now + delay.delay_s)
        delays.append(delay.delay_s)
        now = limits.ready_at(now)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    assert limits.consecutive_429 == 11

    assert limits.on_response(now, 200, NO_SIGNALS, rng) is None
    assert limits.consecutive_429 == 0
    again = limits.on_response(now, 429, NO_SIGNALS, rng)
    assert again == QueueDelay(1.0, "backoff")


def test_429_backoff_is_jittered_below_its_ceiling() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    rng = Random(3)
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    draws = [limits.on_response(0.0, 429, NO_SIGNALS, rng) for _ in ceilings]
    assert all(d is not None and 0.0 <= d.delay_s <= ceiling for d, ceiling in zip(draws, ceilings, strict=True))
    assert len({d.delay_s for d in draws if d is not None}) == len(ceilings)


def test_connection_errors_neither_reset_the_429_streak_nor_block() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    limits.on_response(0.0, 429, NO_SIGNALS, HighestDraw())
    assert limits.on_response(5.0, None, NO_SIGNALS, HighestDraw()) is None
    assert limits.consecutive_429 == 1


# (case, status, headers, expected delay or None)
BLOCKS: list[tuple[str, int, list[tuple[str, str]], QueueDelay | None]] = [
    ("429 with retry-after", 429, [("Retry-After", "30")], QueueDelay(30.0, "retry-after")),
    (
        "429 with an http-date",
        429,
        [("Retry-After", "Tue, 14 Nov 2023 22:14:50 GMT")],
        QueueDelay(90.0, "retry-after"),
    ),
    (
        "429 with an openai reset",
        429,
        [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "6m0s")],
        QueueDelay(360.0, "x-ratelimit-reset-requests"),
    ),
    (
        "429 with an ietf reset",
        429,
        [("RateLimit", '"burst";r=0;t=12')],
        QueueDelay(12.0, "ratelimit"),
    ),
    (
        "429: retry-after wins over the ietf t",
        429,
        [("RateLimit", '"burst";r=0;t=12'), ("Retry-After", "40")],
        QueueDelay(40.0, "retry-after"),
    ),
    (
        "github 403, quota used up: a rate-limit refusal",
        403,
        [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000060")],
        QueueDelay(60.0, "x-ratelimit-reset"),
    ),
    (
        "github 403, secondary limit with retry-after",
        403,
        [("Retry-After", "60"), ("x-ratelimit-remaining", "4000")],
        QueueDelay(60.0, "retry-after"),
    ),
    (
        "github 403, secondary limit without any hint: backoff",
        403,
        [("x-ratelimit-remaining", "0")],
        QueueDelay(1.0, "backoff"),
    ),
    ("403 without rate-limit headers is a plain refusal", 403, [("x-ratelimit-remaining", "12")], None),
    (
        "github 200 that used the last of the quota",
        200,
        [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000030")],
        QueueDelay(30.0, "ratelimit-remaining=0"),
    ),
    (
        "200 that used the last of the quota",
        200,
        [("RateLimit", '"burst";r=0;t=5')],
        QueueDelay(5.0, "ratelimit-remaining=0"),
    ),
    (
        "quota used up: retry-after still wins for the wait",
        200,
        [("RateLimit", '"burst";r=0;t=5'), ("Retry-After", "8")],
        QueueDelay(8.0, "ratelimit-remaining=0"),
    ),
    ("200 with quota left", 200, [("RateLimit", '"burst";r=1;t=5')], None),
    ("quota used up but no reset given", 200, [("x-ratelimit-remaining", "0")], None),
    ("503 with retry-after", 503, [("Retry-After", "20")], QueueDelay(20.0, "retry-after")),
    ("503 without retry-after", 503, [], None),
    ("500 with retry-after: the job's business, not the queue's", 500, [("Retry-After", "20")], None),
    ("stripe plain 200", 200, [("Request-Id", "req_1")], None),
]


@pytest.mark.parametrize(("status", "headers", "expected"), [c[1:] for c in BLOCKS], ids=[c[0] for c in BLOCKS])
def test_which_responses_block_the_queue(
    status: int, headers: list[tuple[str, str]], expected: QueueDelay | None
) -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    delay = limits.on_response(100.0, status, signals_from(*headers), HighestDraw())
    assert delay == expected
    if expected is None:
        assert (limits.blocked_until, limits.blocked_reason) == (0.0, None)
        assert limits.ready_at(100.0) == 100.0
    else:
        assert limits.blocked_until == pytest.approx(100.0 + expected.delay_s)
        assert limits.blocked_reason == expected.reason
        assert limits.ready_at(100.0) == pytest.approx(100.0 + expected.delay_s)


def test_a_block_only_ever_extends() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    limits.on_response(0.0, 429, signals_from(("Retry-After", "60")), Random(0))
    # A response to a request that was already in flight asks for less: the queue stays closed.
    shorter = limits.on_response(1.0, 503, signals_from(("Retry-After", "5")), Random(0))
    assert shorter == QueueDelay(5.0, "retry-after")
    assert (limits.blocked_until, limits.blocked_reason) == (60.0, "retry-after")
    limits.on_response(2.0, 200, signals_from(("RateLimit", '"b";r=0;t=100')), Random(0))
    assert (limits.blocked_until, limits.blocked_reason) == (102.0, "ratelimit-remaining=0")


def test_ready_at_is_the_later_of_pacer_and_block() -> None:
    limits = QueueLimits(rps=0.5, max_concurrent=1)
    limits.on_dispatch(0.0)
    limits.on_response(0.0, 503, signals_from(("Retry-After", "1")), Random(0))
    assert limits.ready_at(0.0) == pytest.approx(2.0)  # the pacer's 2 s beats the 1 s block
    limits.on_response(0.5, 429, signals_from(("Retry-After", "10")), Random(0))
    assert limits.ready_at(0.5) == pytest.approx(10.5)


def test_a_dispatch_after_the_block_clears_it_from_the_snapshot() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    limits.on_response(0.0, 429, signals_from(("Retry-After", "3")), Random(0))
    assert limits.snapshot()["blocked_reason"] == "retry-after"
    limits.on_dispatch(limits.ready_at(0.0))
    assert (limits.snapshot()["blocked_until"], limits.snapshot()["blocked_reason"]) == (0.0, None)


def test_repr_is_a_status_line() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    assert repr(limits) == "QueueLimits(2/s from default, 2 in flight from default)"
    limits.on_response(1.0, 429, signals_from(("Retry-After", "4")), Random(0))
    assert repr(limits) == "QueueLimits(2/s from default, 2 in flight from default, blocked until 5 (retry-after))"


def footprint_bytes(obj: Any) -> int:
    """The object plus everything its slots hold, counted per object (shared strings and ints included,
    so this overestimates)."""
    total = sys.getsizeof(obj)
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            value = getattr(obj, name)
            if type(value).__module__.startswith("scheduler."):
                total += footprint_bytes(value)
            elif value is not None:
                total += sys.getsizeof(value)
    return total


def test_a_queue_stays_a_few_hundred_bytes() -> None:
    limits = QueueLimits(rps=2.0, max_concurrent=2)
    limits.on_dispatch(1.0)
    limits.on_response(
        1.0, 429, signals_from(("X-EZTHROTTLE-RPS", "3"), ("X-EZTHROTTLE-MAX-CONCURRENT", "4")), Random(0)
    )
    assert not hasattr(limits, "__dict__")
    slot_values = [getattr(limits, name) for name in QueueLimits.__slots__]
    pacers = [value for value in slot_values if isinstance(value, Gcra)]
    assert len(pacers) == 1
    assert sys.getsizeof(limits) + sys.getsizeof(pacers[0]) < 600
    assert footprint_bytes(limits) < 600
