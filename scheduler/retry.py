"""What happens to one job after one attempt, decided without I/O so the shell only carries it out.

Why 429s (and GitHub's rate-limit 403s) never use up `max_retries`: a 429 says "not now", not "this request
is bad"; the queue-wide block in `QueueLimits` already makes the job wait, and spending the job's retries on
the provider's congestion would fail jobs that would have succeeded a moment later. The job's deadline
(enforced by the shell) bounds them instead.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from random import Random
from typing import Literal

from scheduler.backoff import full_jitter
from scheduler.signals import is_rate_limit_refusal

RetryKind = Literal["success", "failed", "retry"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """`delay_s`: how long this job waits before its next attempt (0 when the queue-wide block does the
    waiting); `counts_retry`: whether the attempt uses up one of the job's `max_retries`."""

    kind: RetryKind
    delay_s: float
    reason: str
    counts_retry: bool


def decide_retry(
    *,
    status_code: int | None,
    error: str | None,
    retry_codes: Collection[int],
    retries_used: int,
    max_retries: int,
    retry_after_s: float | None,
    rng: Random,
    base_s: float = 0.5,
    cap_s: float = 60.0,
    remaining: int | None = None,
) -> RetryDecision:
    """Classify one attempt: a response (`status_code`), or a transport failure (`status_code` None and
    `error` set).

    2xx/3xx succeed; a rate-limit refusal (429, or a 403 with `remaining` 0 or a Retry-After; pass
    `LimitSignals.remaining`) is always retried without counting; a status in `retry_codes` or a transport
    error is retried with jittered backoff (never sooner than the provider's Retry-After) while retries
    remain; anything else fails at once.
    """
    if status_code is None:
        if error is None:
            raise ValueError("decide_retry needs a status_code or an error")
        cause = error
    elif 200 <= status_code < 400:
        return RetryDecision("success", 0.0, f"status {status_code}", counts_retry=False)
    elif is_rate_limit_refusal(status_code, remaining=remaining, retry_after_s=retry_after_s):
        reason = "429" if status_code == 429 else f"{status_code} rate limited"
        return RetryDecision("retry", 0.0, reason, counts_retry=False)
    elif status_code in retry_codes:
        cause = f"status {status_code}"
    else:
        return RetryDecision("failed", 0.0, f"status {status_code} is not retryable", counts_retry=False)

    if retries_used >= max_retries:
        return RetryDecision("failed", 0.0, f"retries exhausted: {cause}", counts_retry=False)
    backoff_s = full_jitter(retries_used, base_s=base_s, cap_s=cap_s, rng=rng)
    return RetryDecision("retry", max(retry_after_s or 0.0, backoff_s), cause, counts_retry=True)
