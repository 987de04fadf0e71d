"""The pure scheduling core: decides when requests may go, never does any I/O.

General layout:
- gcra         the pacer (one float of state per queue)
- backoff      exponential backoff with full jitter
- signals      provider response headers -> LimitSignals
- limits       one queue's pacing, concurrency and queue-wide blocks, updated from LimitSignals
- ready_queue  waiting job ids ordered by eligibility, FIFO among equals
- retry        what happens to a job after one attempt
- fair         FairScheduler: start-time fair queuing across keys and tiers, bounded queues, timeouts; its
               tickets and the verdicts that carry one (Admitted, Queued, Grant, Expired)
- tiers        reserved > paid > free shares, with borrowing and a free minimum
- admission    the answers without a ticket: Refused, Outcome, and RateLimit figures for refusals
- aimd         adaptive concurrency for upstreams of unknown capacity

Nothing here imports trio, time, socket or the global random module (tests/test_layering.py checks):
callers pass `now` (monotonic seconds), `wall_now` (unix seconds) and an injected `random.Random`, so the
simulator drives the same code on virtual time.
"""

from scheduler.admission import Outcome as Outcome
from scheduler.admission import RateLimitStatus as RateLimitStatus
from scheduler.admission import RefusalReason as RefusalReason
from scheduler.admission import Refused as Refused
from scheduler.aimd import AimdLimit as AimdLimit
from scheduler.aimd import AimdPolicy as AimdPolicy
from scheduler.backoff import backoff_ceiling as backoff_ceiling
from scheduler.backoff import full_jitter as full_jitter
from scheduler.fair import Admitted as Admitted
from scheduler.fair import Expired as Expired
from scheduler.fair import FairScheduler as FairScheduler
from scheduler.fair import Grant as Grant
from scheduler.fair import KeyPolicy as KeyPolicy
from scheduler.fair import Queued as Queued
from scheduler.fair import SchedulerPolicy as SchedulerPolicy
from scheduler.gcra import Gcra as Gcra
from scheduler.limits import QueueDelay as QueueDelay
from scheduler.limits import QueueLimits as QueueLimits
from scheduler.ready_queue import ReadyQueue as ReadyQueue
from scheduler.retry import RetryDecision as RetryDecision
from scheduler.retry import decide_retry as decide_retry
from scheduler.signals import LimitSignals as LimitSignals
from scheduler.signals import is_rate_limit_refusal as is_rate_limit_refusal
from scheduler.signals import parse_limit_headers as parse_limit_headers
from scheduler.tiers import Tier as Tier
from scheduler.tiers import TierPolicy as TierPolicy

__all__ = [
    "Admitted",
    "AimdLimit",
    "AimdPolicy",
    "Expired",
    "FairScheduler",
    "Gcra",
    "Grant",
    "KeyPolicy",
    "LimitSignals",
    "Outcome",
    "QueueDelay",
    "QueueLimits",
    "Queued",
    "RateLimitStatus",
    "ReadyQueue",
    "RefusalReason",
    "Refused",
    "RetryDecision",
    "SchedulerPolicy",
    "Tier",
    "TierPolicy",
    "backoff_ceiling",
    "decide_retry",
    "full_jitter",
    "is_rate_limit_refusal",
    "parse_limit_headers",
]
