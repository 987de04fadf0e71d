"""The limits of one outbound queue, and how provider responses move them.

A queue has three brakes: the pacer (requests per second), the in-flight cap (enforced by the shell, which
only reads `max_concurrent`), and a queue-wide block (`blocked_until`) set when the provider says "stop": a
429 (or GitHub's rate-limit 403), a 503 with Retry-After, or a quota that is used up. Why block the whole
queue instead of delaying the one job: every job in the queue shares the same credential and the same
provider limit, so the next job would be refused too.

A block only ever extends: responses to requests already in flight arrive after the first 429, and a shorter
wait in a later one must not reopen a queue that an earlier answer closed.

There may be 100,000 of these objects, so the state is a handful of slots and a `Gcra` (under 600 bytes,
tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Any

from scheduler.backoff import full_jitter
from scheduler.gcra import Gcra
from scheduler.signals import LimitSignals, is_rate_limit_refusal

# A 429 with no hint of when to come back: full jitter from 1 s, doubling per consecutive 429, up to 5 min.
# ("429" here and below also covers a 403 that `is_rate_limit_refusal` recognises.)
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0

RPS_HEADER_SOURCE = "header:x-ezthrottle-rps"
POLICY_HEADER_SOURCE = "header:ratelimit-policy"
CONCURRENCY_HEADER_SOURCE = "header:x-ezthrottle-max-concurrent"
QUOTA_EXHAUSTED_REASON = "ratelimit-remaining=0"
RETRY_AFTER_REASON = "retry-after"
BACKOFF_REASON = "backoff"

_SERVICE_UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class QueueDelay:
    """A response blocked the whole queue for `delay_s` seconds; `reason`: the header used, or "backoff"."""

    delay_s: float
    reason: str


def _hinted_wait(signals: LimitSignals) -> QueueDelay | None:
    """The wait the provider named, if any; Retry-After wins over a quota reset (IETF ratelimit draft)."""
    if signals.retry_after_s is not None:
        return QueueDelay(signals.retry_after_s, RETRY_AFTER_REASON)
    if signals.reset_after_s is not None:
        return QueueDelay(signals.reset_after_s, signals.sources.get("reset_after_s", "ratelimit-reset"))
    return None


class QueueLimits:
    """Pacing, concurrency and blocking state of one queue; the shell asks `ready_at`, reports attempts."""

    __slots__ = (
        "_pacer",
        "account_queue",
        "blocked_reason",
        "blocked_until",
        "concurrency_source",
        "consecutive_429",
        "max_concurrent",
        "rps_source",
    )

    def __init__(
        self,
        rps: float,
        max_concurrent: int,
        *,
        rps_source: str = "default",
        concurrency_source: str = "default",
        account_queue: bool = True,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent!r}")
        self._pacer = Gcra(rps)
        self.rps_source = rps_source
        self.max_concurrent = max_concurrent
        self.concurrency_source = concurrency_source
        self.account_queue = account_queue
        self.blocked_until = 0.0  # monotonic seconds; 0.0 = not blocked
        self.blocked_reason: str | None = None
        self.consecutive_429 = 0

    @property
    def rps(self) -> float:
        return self._pacer.rate

    def ready_at(self, now: float) -> float:
        """Earliest time the next request may go (the pacer and any block both agree); `now` if right away."""
        return max(self._pacer.ready_at(now), self.blocked_until)

    def on_dispatch(self, now: float) -> None:
        """Record a send. A dispatch means any block has run out, so it is cleared for `snapshot()`."""
        if self.blocked_reason is not None and self.blocked_until <= now:
            self.blocked_until = 0.0
            self.blocked_reason = None
        self._pacer.consume(now)

    def on_response(self, now: float, status_code: int | None, signals: LimitSignals, rng: Random) -> QueueDelay | None:
        """Apply what one attempt's outcome says; returns the block it asked for, if any.

        A 429, or a 403 that `is_rate_limit_refusal` recognises, extends the 429 streak; any other status
        ends it. `status_code` None means no response (connection error, timeout) and does neither.
        The returned delay is what this response asked for; the queue's `blocked_until` is extended to it
        unless an earlier block already reaches further.
        """
        self._apply_live_limits(now, signals)
        refused = is_rate_limit_refusal(status_code, remaining=signals.remaining, retry_after_s=signals.retry_after_s)
        if status_code is not None and not refused:
            self.consecutive_429 = 0
        delay = self._delay_asked(refused, status_code, signals, rng)
        if delay is not None and now + delay.delay_s > self.blocked_until:
            self.blocked_until = now + delay.delay_s
            self.blocked_reason = delay.reason
        return delay

    def _apply_live_limits(self, now: float, signals: LimitSignals) -> None:
        if signals.rps is not None:
            self._pacer.set_rate(signals.rps, now)
            self.rps_source = RPS_HEADER_SOURCE
        elif signals.policy_rps is not None:
            self._pacer.set_rate(signals.policy_rps, now)
            self.rps_source = POLICY_HEADER_SOURCE
        if signals.max_concurrent is not None:
            self.max_concurrent = signals.max_concurrent
            self.concurrency_source = CONCURRENCY_HEADER_SOURCE
        if signals.account_queue is not None:
            self.account_queue = signals.account_queue

    def _delay_asked(
        self, refused: bool, status_code: int | None, signals: LimitSignals, rng: Random
    ) -> QueueDelay | None:
        if refused:
            streak = self.consecutive_429
            self.consecutive_429 += 1
            hinted = _hinted_wait(signals)
            if hinted is not None:
                return hinted
            jittered_s = full_jitter(streak, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, rng=rng)
            return QueueDelay(jittered_s, BACKOFF_REASON)
        if signals.remaining == 0 and signals.reset_after_s is not None:
            wait_s = signals.reset_after_s if signals.retry_after_s is None else signals.retry_after_s
            return QueueDelay(wait_s, QUOTA_EXHAUSTED_REASON)
        if status_code == _SERVICE_UNAVAILABLE and signals.retry_after_s is not None:
            return QueueDelay(signals.retry_after_s, RETRY_AFTER_REASON)
        return None

    def snapshot(self) -> dict[str, Any]:
        """The queue's limits for GET /api/v1/queues (`blocked_until` is monotonic; the shell converts it)."""
        return {
            "rps": self.rps,
            "rps_source": self.rps_source,
            "max_concurrent": self.max_concurrent,
            "concurrency_source": self.concurrency_source,
            "blocked_until": self.blocked_until,
            "blocked_reason": self.blocked_reason,
        }

    def __repr__(self) -> str:
        blocked = ""
        if self.blocked_reason is not None:
            blocked = f", blocked until {self.blocked_until:g} ({self.blocked_reason})"
        return (
            f"QueueLimits({self.rps:g}/s from {self.rps_source}, "
            f"{self.max_concurrent} in flight from {self.concurrency_source}{blocked})"
        )
