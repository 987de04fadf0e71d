"""A simulated upstream with a fixed number of slots and a fixed service time, on virtual time.

It drives a real `FairScheduler` in a plain event loop: no trio, no sleeping. Flows are closed loops that
keep a set number of requests outstanding (queued or in flight) by submitting a new one whenever one
finishes, so every flow stays backlogged and the scheduler is saturated: the setting in which shares are
meaningful.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.admission import Outcome, Refused
from scheduler.fair import Admitted, FairScheduler, Grant, KeyPolicy, Queued, Ticket


@dataclass(frozen=True, slots=True)
class Flow:
    key: str
    policy: KeyPolicy
    outstanding: int
    cost: float = 1.0


class SimulatedUpstream:
    """Completes each admitted ticket `service_s` after admission and feeds the grants back in.

    `service_s` is a fixed time, or a function of the ticket for upstreams where some requests are slower."""

    def __init__(self, scheduler: FairScheduler, *, service_s: float | Callable[[Ticket], float]) -> None:
        self.scheduler = scheduler
        self._service_s = service_s if callable(service_s) else lambda ticket: service_s
        self.now = 0.0
        self._in_service: list[tuple[float, int, Ticket]] = []
        self._sequence = 0
        self._flows: dict[str, Flow] = {}
        # Slot-seconds of service per key and per tier, counted only while `measuring` is on.
        self.measuring = True
        self.busy_s_by_key: Counter[str] = Counter()
        self.busy_s_by_tier: Counter[str] = Counter()
        self.refusals: list[Refused] = []
        # Decides each finished request's outcome; the default upstream never pushes back.
        self.outcome_for: Callable[[int], Outcome] = lambda in_flight: Outcome.SUCCESS

    def add_flow(self, flow: Flow) -> None:
        self._flows[flow.key] = flow
        for _ in range(flow.outstanding):
            self.submit(flow.key, flow.policy, cost=flow.cost)

    def remove_flow(self, key: str) -> None:
        """Stop topping the flow up; what it has outstanding still runs."""
        del self._flows[key]

    def submit(self, key: str, policy: KeyPolicy, *, cost: float = 1.0) -> Admitted | Queued | Refused:
        verdict = self.scheduler.submit(key, policy, now=self.now, cost=cost)
        if isinstance(verdict, Admitted):
            self._start(verdict.ticket)
        elif isinstance(verdict, Refused):
            self.refusals.append(verdict)
        return verdict

    def _start(self, ticket: Ticket) -> None:
        self._sequence += 1
        heapq.heappush(self._in_service, (self.now + self._service_s(ticket), self._sequence, ticket))

    def _start_all(self, grants: list[Grant]) -> None:
        for grant in grants:
            self._start(grant.ticket)

    def run_until(self, end: float) -> None:
        """Process completions (and the resubmissions they cause) up to virtual time `end`."""
        while self._in_service and self._in_service[0][0] <= end:
            done_at, _, ticket = heapq.heappop(self._in_service)
            self.now = done_at
            outcome = self.outcome_for(len(self._in_service) + 1)
            self._start_all(self.scheduler.complete(ticket, now=self.now, outcome=outcome))
            if self.measuring:
                assert ticket.admitted_at is not None
                self.busy_s_by_key[ticket.key] += done_at - ticket.admitted_at
                self.busy_s_by_tier[ticket.tier.value] += done_at - ticket.admitted_at
            flow = self._flows.get(ticket.key)
            if flow is not None:
                self.submit(flow.key, flow.policy, cost=flow.cost)
        self.now = end

    def measure(self, start: float, end: float) -> None:
        """Run to `start` unmeasured (warm-up), then to `end` counting who got the slots."""
        self.measuring = False
        self.run_until(start)
        self.busy_s_by_key.clear()
        self.busy_s_by_tier.clear()
        self.measuring = True
        self.run_until(end)

    def share_by_key(self) -> dict[str, float]:
        total = sum(self.busy_s_by_key.values())
        return {key: busy / total for key, busy in self.busy_s_by_key.items()}

    def share_by_tier(self) -> dict[str, float]:
        total = sum(self.busy_s_by_tier.values())
        return {tier: busy / total for tier, busy in self.busy_s_by_tier.items()}

    def utilisation(self, window_s: float) -> float:
        """Busy slot-seconds measured over the window, as a fraction of what the capacity could do."""
        return sum(self.busy_s_by_key.values()) / (self.scheduler.capacity * window_s)
