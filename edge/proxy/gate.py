"""The Trio shell around one `FairScheduler`: it turns verdicts into waits, wake-ups and refusals.

The scheduler is pure and synchronous (scheduler/fair.py); this module is the only place it meets time and
tasks. A request calls `enter`: admitted at once, refused at once (a `Problem` carrying Retry-After and the
key's RateLimit fields), or queued, in which case its task sleeps on a `trio.Event` until a `complete`
elsewhere hands it a `Grant`, the timer task expires it, or its client leaves (then `cancel` gives its place
back). `leave` frees the slot and wakes whoever the scheduler granted it to. One timer task (`run`) sleeps
until `next_deadline()` and calls `expire`; it is re-armed whenever a verb brings that deadline forward.

Fairness off (`fairness = false`) is a plain FIFO baseline for benchmarks: every request is submitted under
one key, so one queue in arrival order, with the same queue bounds and wait limit; tiers, weights, per-key
rate limits and per-key caps do not apply, and a full queue is the upstream's saturation (503), never 429.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Final

import trio

from edge.http.asgi import DisconnectWatch
from edge.problems import Problem
from edge.proxy.body import ClientGone
from edge.proxy.callers import Caller
from edge.proxy.headers import rate_limit_headers, retry_after_header
from edge.proxy.metrics import ListenerMetrics
from scheduler import (
    Admitted,
    FairScheduler,
    KeyPolicy,
    Outcome,
    RateLimitStatus,
    RefusalReason,
    Refused,
    SchedulerPolicy,
)
from scheduler.fair import Ticket, TicketState

FIFO_KEY: Final = "fifo"
_FIFO_POLICY: Final = KeyPolicy()
QUEUE_TIMEOUT_REASON: Final = "queue-timeout"

_REFUSAL_TEXT: Final = {
    RefusalReason.RATE_LIMITED: ("Rate limited", "this key is over its rate limit"),
    RefusalReason.KEY_QUEUE_FULL: ("Too many queued requests", "this key already has a full queue"),
    RefusalReason.QUEUE_FULL: ("Upstream saturated", "the upstream is saturated and its queue is full"),
}


@dataclass(frozen=True, slots=True)
class Pass:
    """An admitted request's hold on one upstream slot; give it back with `Gate.leave`."""

    ticket: Ticket
    caller: Caller


class _Waiter:
    __slots__ = ("caller", "event", "expired")

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.event = trio.Event()
        self.expired = False


def _problem_headers(retry_after_s: float, refused: Refused | None) -> dict[str, str]:
    pairs = [retry_after_header(retry_after_s)]
    if refused is not None and refused.rate_limit is not None:
        pairs += rate_limit_headers(refused.rate_limit)
    return {name.decode(): value.decode() for name, value in pairs}


class Gate:
    """Admission to one upstream's slots for one listener."""

    def __init__(self, policy: SchedulerPolicy, *, fairness: bool, metrics: ListenerMetrics) -> None:
        if not fairness:
            policy = dataclasses.replace(
                policy, key_concurrency_share_max=1.0, key_queue_length_max=policy.queue_length_max
            )
        self._fifo = not fairness
        self._policy = policy
        self._scheduler = FairScheduler(policy)
        self._metrics = metrics
        self._waiters: dict[Ticket, _Waiter] = {}
        self._rearm = trio.Event()
        self._armed_for = math.inf
        metrics.on_capacity(self._scheduler.capacity)

    @property
    def scheduler(self) -> FairScheduler:
        """For statistics and tests; the gate alone drives it."""
        return self._scheduler

    async def enter(self, caller: Caller, *, client: DisconnectWatch | None = None) -> Pass:
        """Wait for a slot. Raises a 429/503 `Problem` when refused or expired, and `ClientGone` when the `client`
        leaves first (while queued: its place is given back)."""
        key, policy = (FIFO_KEY, _FIFO_POLICY) if self._fifo else (caller.key, caller.policy)
        verdict = self._scheduler.submit(key, policy, now=trio.current_time())
        if isinstance(verdict, Refused):
            raise self._refusal(caller, verdict)
        if isinstance(verdict, Admitted):
            self._metrics.on_admitted(caller, 0.0)
            return Pass(verdict.ticket, caller)
        ticket = verdict.ticket
        waiter = self._waiters[ticket] = _Waiter(caller)
        self._metrics.on_queued(caller)
        self._rearm_if_sooner()
        try:
            with trio.CancelScope() as waiting:
                if client is not None:
                    client.cancel_on_disconnect(waiting)
                await waiter.event.wait()
        except BaseException:
            self._abandon(ticket, caller)
            raise
        if waiter.expired:
            raise Problem(
                503,
                "Queue timeout",
                f"no upstream slot came free within {self._policy.queue_wait_s_max:g} s",
                kind=QUEUE_TIMEOUT_REASON,
                headers=_problem_headers(self._policy.queue_wait_s_max, None),
            )
        if ticket.state is TicketState.QUEUED:
            self._abandon(ticket, caller)
            raise ClientGone
        return Pass(ticket, caller)

    def rate_limit_status(self, caller: Caller) -> RateLimitStatus | None:
        """The caller's RateLimit figures for a successful response; None without a rate (or in FIFO mode,
        which does not enforce one)."""
        if self._fifo:
            return None
        return self._scheduler.rate_limit_status(caller.key, caller.policy, now=trio.current_time())

    def leave(self, hold: Pass, outcome: Outcome, *, latency_s: float | None = None) -> None:
        """Free the slot; `outcome` and `latency_s` feed adaptive concurrency when it is on."""
        grants = self._scheduler.complete(hold.ticket, now=trio.current_time(), outcome=outcome, latency_s=latency_s)
        self._metrics.on_released(hold.caller)
        for grant in grants:
            waiter = self._waiters.pop(grant.ticket)
            self._metrics.on_dequeued(waiter.caller)
            self._metrics.on_admitted(waiter.caller, grant.waited_s)
            waiter.event.set()
        self._metrics.on_capacity(self._scheduler.capacity)
        self._rearm_if_sooner()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timer task: expire queued requests at their deadline (and let idle rate-limited keys go)."""
        task_status.started()
        while True:
            deadline = self._scheduler.next_deadline()
            self._armed_for = math.inf if deadline is None else deadline
            self._rearm = trio.Event()
            with trio.move_on_at(self._armed_for):
                await self._rearm.wait()
            for expired in self._scheduler.expire(trio.current_time()):
                waiter = self._waiters.pop(expired.ticket)
                waiter.expired = True
                self._metrics.on_dequeued(waiter.caller)
                self._metrics.on_refused(waiter.caller, QUEUE_TIMEOUT_REASON)
                waiter.event.set()

    def _abandon(self, ticket: Ticket, caller: Caller) -> None:
        """Undo a wait that ended early: give back the queued place, or the slot granted in the meantime."""
        if ticket.state is TicketState.QUEUED:
            del self._waiters[ticket]
            self._scheduler.cancel(ticket, now=trio.current_time())
            self._metrics.on_dequeued(caller)
        elif ticket.state is TicketState.ADMITTED:
            self.leave(Pass(ticket, caller), Outcome.FAILED)

    def _refusal(self, caller: Caller, refused: Refused) -> Problem:
        reason = refused.reason
        if self._fifo and reason is RefusalReason.KEY_QUEUE_FULL:
            reason = RefusalReason.QUEUE_FULL  # the one queue is the whole queue
        self._metrics.on_refused(caller, reason.value)
        title, detail = _REFUSAL_TEXT[reason]
        return Problem(
            reason.status_hint,
            title,
            detail,
            kind=reason.value,
            headers=_problem_headers(refused.retry_after_s, refused),
        )

    def _rearm_if_sooner(self) -> None:
        deadline = self._scheduler.next_deadline()
        if deadline is not None and deadline < self._armed_for:
            self._rearm.set()

    def __repr__(self) -> str:
        return f"<Gate {'fifo' if self._fifo else 'fair'} {self._scheduler!r}, {len(self._waiters)} waiting>"
