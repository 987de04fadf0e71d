"""decide_retry: the table of what happens to a job after one attempt."""

from __future__ import annotations

from random import Random
from typing import Any

import pytest

from scheduler.backoff import backoff_ceiling
from scheduler.retry import RetryDecision, decide_retry

RETRY_CODES = frozenset({429, 503, 502})


class HighestDraw(Random):
    """Uniform draws land on the top of the range, so the jittered backoff shows its ceiling."""

    def random(self) -> float:
        return 1.0


def decide(
    status_code: int | None,
    *,
    error: str | None = None,
    retries_used: int = 0,
    max_retries: int = 3,
    retry_after_s: float | None = None,
    remaining: int | None = None,
) -> RetryDecision:
    return decide_retry(
        status_code=status_code,
        error=error,
        retry_codes=RETRY_CODES,
        retries_used=retries_used,
        max_retries=max_retries,
        retry_after_s=retry_after_s,
        rng=HighestDraw(),
        remaining=remaining,
    )


# (case, decide kwargs, expected decision) with the default base 0.5 s and cap 60 s
TABLE: list[tuple[str, dict[str, Any], RetryDecision]] = [
    ("200 succeeds", {"status_code": 200}, RetryDecision("success", 0.0, "status 200", False)),
    ("204 succeeds", {"status_code": 204}, RetryDecision("success", 0.0, "status 204", False)),
    ("302 is the job's result", {"status_code": 302}, RetryDecision("success", 0.0, "status 302", False)),
    ("429 retries without counting", {"status_code": 429}, RetryDecision("retry", 0.0, "429", False)),
    (
        "429 never runs out of retries",
        {"status_code": 429, "retries_used": 3, "max_retries": 3},
        RetryDecision("retry", 0.0, "429", False),
    ),
    (
        "429 retries even when not in retry_codes",
        {"status_code": 429, "max_retries": 0},
        RetryDecision("retry", 0.0, "429", False),
    ),
    ("503 first retry", {"status_code": 503}, RetryDecision("retry", 0.5, "status 503", True)),
    (
        "503 third retry backs off further",
        {"status_code": 503, "retries_used": 2},
        RetryDecision("retry", 2.0, "status 503", True),
    ),
    (
        "503 waits at least the provider's retry-after",
        {"status_code": 503, "retry_after_s": 30.0},
        RetryDecision("retry", 30.0, "status 503", True),
    ),
    (
        "backoff beats a shorter retry-after",
        {"status_code": 502, "retries_used": 2, "retry_after_s": 1.0},
        RetryDecision("retry", 2.0, "status 502", True),
    ),
    (
        "503 out of retries",
        {"status_code": 503, "retries_used": 3},
        RetryDecision("failed", 0.0, "retries exhausted: status 503", False),
    ),
    (
        "connection error retries",
        {"status_code": None, "error": "connect timeout"},
        RetryDecision("retry", 0.5, "connect timeout", True),
    ),
    (
        "connection error out of retries",
        {"status_code": None, "error": "connection refused", "retries_used": 5, "max_retries": 5},
        RetryDecision("failed", 0.0, "retries exhausted: connection refused", False),
    ),
    (
        "no retries allowed",
        {"status_code": 503, "max_retries": 0},
        RetryDecision("failed", 0.0, "retries exhausted: status 503", False),
    ),
    (
        "github 403 with the quota used up retries without counting",
        {"status_code": 403, "remaining": 0, "retries_used": 3},
        RetryDecision("retry", 0.0, "403 rate limited", False),
    ),
    (
        "github 403 secondary limit (retry-after) retries without counting",
        {"status_code": 403, "retry_after_s": 60.0},
        RetryDecision("retry", 0.0, "403 rate limited", False),
    ),
    (
        "403 with quota left is a plain refusal",
        {"status_code": 403, "remaining": 10},
        RetryDecision("failed", 0.0, "status 403 is not retryable", False),
    ),
    (
        "remaining 0 on a 404 is not a rate limit",
        {"status_code": 404, "remaining": 0},
        RetryDecision("failed", 0.0, "status 404 is not retryable", False),
    ),
    (
        "500 not in retry_codes",
        {"status_code": 500},
        RetryDecision("failed", 0.0, "status 500 is not retryable", False),
    ),
    ("404 fails", {"status_code": 404}, RetryDecision("failed", 0.0, "status 404 is not retryable", False)),
    (
        "101 is not a result",
        {"status_code": 101},
        RetryDecision("failed", 0.0, "status 101 is not retryable", False),
    ),
    (
        "a status wins over an error text",
        {"status_code": 200, "error": "body read timed out"},
        RetryDecision("success", 0.0, "status 200", False),
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), [c[1:] for c in TABLE], ids=[c[0] for c in TABLE])
def test_decision_table(kwargs: dict[str, Any], expected: RetryDecision) -> None:
    assert decide(**kwargs) == expected


@pytest.mark.parametrize("retries_used", [0, 1, 4, 9, 200])
def test_retry_delays_are_jittered_within_the_backoff_ceiling(retries_used: int) -> None:
    rng = Random(retries_used)
    ceiling_s = backoff_ceiling(retries_used, base_s=0.25, cap_s=10.0)
    delays = []
    for _ in range(50):
        decision = decide_retry(
            status_code=None,
            error="reset by peer",
            retry_codes=(),
            retries_used=retries_used,
            max_retries=1000,
            retry_after_s=None,
            rng=rng,
            base_s=0.25,
            cap_s=10.0,
        )
        assert decision.kind == "retry" and decision.counts_retry
        delays.append(decision.delay_s)
    assert all(0.0 <= delay <= ceiling_s for delay in delays)
    assert len(set(delays)) > 40


def test_needs_a_status_or_an_error() -> None:
    with pytest.raises(ValueError, match="status_code or an error"):
        decide(None)
