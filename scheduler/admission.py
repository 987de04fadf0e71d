"""What the fair scheduler answers that needs no ticket: refusals, outcomes, and rate-limit figures.

The verdicts that carry a ticket (`Admitted`, `Queued`, `Grant`, `Expired`) live beside `Ticket` in
scheduler/fair.py, so this module needs none of the scheduler's own types (no import cycle, not even for type
hints). All of them are small immutable values so a shell can match on them and act after the scheduler has
already changed its state ("decide synchronously, then do the I/O"). Every refusal says whose problem it is through
a status hint: 429 when the caller's own key is over its rate or queue budget (slow down), 503 when the
upstream as a whole is saturated beyond the global queue budget (not the caller's fault; come back later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.gcra import Gcra

# Guards floor() against 2.9999999 when a remaining-count division should have been exactly 3.
_FLOAT_SLACK = 1e-9


class RefusalReason(StrEnum):
    """Why a new request was turned away; the value doubles as a problem+json `type` suffix."""

    RATE_LIMITED = "rate-limited"
    KEY_QUEUE_FULL = "key-queue-full"
    QUEUE_FULL = "queue-full"

    @property
    def status_hint(self) -> int:
        return 503 if self is RefusalReason.QUEUE_FULL else 429


class Outcome(StrEnum):
    """How an admitted request ended, as far as adaptive concurrency cares."""

    SUCCESS = "success"  # the upstream answered; its latency is a congestion signal
    OVERLOADED = "overloaded"  # the upstream pushed back (429 or 503): shrink
    FAILED = "failed"  # no usable signal (connection error, client left mid-flight): only frees the slot


@dataclass(frozen=True, slots=True)
class RateLimitStatus:
    """A key's GCRA state in the terms of the IETF RateLimit fields.

    `RateLimit-Policy: "name";q=quota;w=window_s` and `RateLimit: "name";r=remaining;t=ceil(reset_s)`.
    The policy is GCRA's own allowance stated as a window: `burst` back to back after an idle spell,
    refilled at `rate`, is about `quota` per `window_s` (at least one second: the field is whole seconds).
    """

    quota: int
    window_s: int
    remaining: int
    # Seconds until the full quota is back (0 when it already is).
    reset_s: float


def rate_limit_status(gcra: Gcra, now: float) -> RateLimitStatus:
    """Describe `gcra` at `now` for RateLimit headers."""
    interval_s = 1.0 / gcra.rate
    burst = gcra.burst
    window_s = max(1, math.ceil(burst * interval_s - _FLOAT_SLACK))
    quota = max(burst, math.floor(window_s / interval_s + _FLOAT_SLACK))
    # ready_at clamps to `now`; asked at -inf it returns the unclamped time from which a send conforms,
    # which is the GCRA state itself (-inf when the key has never sent).
    conforming_from = gcra.ready_at(-math.inf)
    if conforming_from == -math.inf:
        return RateLimitStatus(quota=quota, window_s=window_s, remaining=burst, reset_s=0.0)
    cells_free = math.floor((now - conforming_from) / interval_s + _FLOAT_SLACK) + 1
    full_at = conforming_from + (burst - 1) * interval_s
    return RateLimitStatus(
        quota=quota,
        window_s=window_s,
        remaining=min(burst, max(0, cells_free)),
        reset_s=max(0.0, full_at - now),
    )


@dataclass(frozen=True, slots=True)
class Refused:
    """Turned away before queuing; nothing is held, nothing needs to be completed."""

    reason: RefusalReason
    retry_after_s: float
    # The key's GCRA figures when it has a rate limit, for RateLimit / RateLimit-Policy headers.
    rate_limit: RateLimitStatus | None

    @property
    def status_hint(self) -> int:
        return self.reason.status_hint
