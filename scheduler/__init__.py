"""The pure scheduling core: decides when requests may go, never does any I/O.

General layout:
- gcra         the pacer (one float of state per queue)
- backoff      exponential backoff with full jitter
- signals      provider response headers -> LimitSignals
- limits       one queue's pacing, concurrency and queue-wide blocks, updated from LimitSignals
- ready_queue  waiting job ids ordered by eligibility, FIFO among equals
- retry        what happens to a job after one attempt

Nothing here imports trio, time, socket or the global random module (tests/scheduler/test_purity.py checks):
callers pass `now` (monotonic seconds), `wall_now` (unix seconds) and an injected `random.Random`, so the
simulator drives the same code on virtual time.
"""

from scheduler.backoff import backoff_ceiling as backoff_ceiling
from scheduler.backoff import full_jitter as full_jitter
from scheduler.gcra import Gcra as Gcra
from scheduler.limits import QueueDelay as QueueDelay
from scheduler.limits import QueueLimits as QueueLimits
from scheduler.ready_queue import ReadyQueue as ReadyQueue
from scheduler.retry import RetryDecision as RetryDecision
from scheduler.retry import decide_retry as decide_retry
from scheduler.signals import LimitSignals as LimitSignals
from scheduler.signals import is_rate_limit_refusal as is_rate_limit_refusal
from scheduler.signals import parse_limit_headers as parse_limit_headers

__all__ = [
    "Gcra",
    "LimitSignals",
    "QueueDelay",
    "QueueLimits",
    "ReadyQueue",
    "RetryDecision",
    "backoff_ceiling",
    "decide_retry",
    "full_jitter",
    "is_rate_limit_refusal",
    "parse_limit_headers",
]
