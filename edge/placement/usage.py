"""Plans and usage: each account's accepted jobs this month, counted cluster-wide, against its plan's quota.

Counting. Every accepted job counts once, on the node that made it durable (an idempotent duplicate does not
count): that node adds 1 to its own entry of the account's G-counter for the month (`usage|<account>|<YYYY-MM>`,
UTC), and the gossip carries the entries to every member (edge/placement/counters.py, cluster/counters.py): each
node increments only its own entry and merges others' by element-wise max, so every node converges on the
cluster-wide count without a coordinator, and a restarted node carries on from its saved entry.

Admission (`reserve`, then `settle`). A new submission is let in while the count this node knows, plus the
submissions it is saving right now, is under the plan's allowance (`monthly_requests` + `overage_requests_max`;
0 requests means unlimited). Past it the job is refused with QuotaExceeded, which the API answers 429 with
`Retry-After` until the month's end; jobs already accepted are never affected. A resubmission of a job still
unfinished on this node is answered with that job, quota or not.

The bound of this admission, stated plainly: each node sees the others' increments only as fast as the gossip
brings them (well under a second in a healthy cluster), and not at all across a partition. So the cluster-wide
total may pass the allowance by what the other nodes accept in that window: at most (nodes - 1) x (their
acceptance rate x the propagation delay) when healthy, and up to the allowance again on each side of a split.
Escrow (splitting the remainder into per-node allowances that nodes transfer over gossip, so that no split can
overshoot) is the open part of this work.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, final

from edge.config import Config, PlanConfig


class QuotaExceeded(Exception):
    """The account's plan allows no more jobs this month; it may submit again at `retry_at_ms` (unix ms)."""

    def __init__(self, account_id: str, limit: int, retry_at_ms: int) -> None:
        super().__init__(f"account {account_id} used its plan's {limit} jobs this month")
        self.account_id = account_id
        self.limit = limit
        self.retry_at_ms = retry_at_ms


class UsageReport(Protocol):
    """What the job API shows of an account's usage."""

    def breach_status(self, account_id: str) -> dict[str, Any]:
        """The SDK envelope's `breach_status`: {is_breached, current_usage, limit_value, limit_operator,
        breach_action}."""
        ...

    def usage(self, account_id: str) -> dict[str, Any]:
        """GET /api/v1/usage: this month's count, quota, remaining, overage, when it resets."""
        ...


class Counters(Protocol):
    """The cluster's G-counters as this node sees them (edge/placement/counters.py)."""

    def add_counter(self, name: str, amount: int) -> None: ...

    def counter_total(self, name: str) -> int: ...


def month_of(wall_ms: int) -> str:
    """The calendar month (UTC) of a unix-ms instant: "2026-12"."""
    return datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.UTC).strftime("%Y-%m")


def month_end_ms(wall_ms: int) -> int:
    """The first instant of the next calendar month (UTC), in unix ms: when this month's usage resets."""
    now = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return int(datetime.datetime(year, month, 1, tzinfo=datetime.UTC).timestamp() * 1000)


def counter_name(account_id: str, month: str) -> str:
    return f"usage|{account_id}|{month}"


@final
@dataclass(frozen=True, slots=True)
class Reservation:
    """A submission let in and being saved: it holds a place in the account's allowance until `settle`."""

    account_id: str
    month: str


@final
class UsageMeter:
    """Counts and admits jobs per account and month (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        counters: Counters,
        wall_ms: Callable[[], int],
        on_refused: Callable[[str], None] = lambda plan: None,
    ) -> None:
        self._plans = {account.id: config.plan(account.plan) for account in config.accounts}
        self._counters = counters
        self._wall_ms = wall_ms
        self._on_refused = on_refused
        self._pending: Counter[tuple[str, str]] = Counter()

    def plan_of(self, account_id: str) -> PlanConfig | None:
        return self._plans.get(account_id)

    def reserve(self, account_id: str) -> Reservation:
        """Let one new submission of the account in, or raise QuotaExceeded."""
        wall_ms = self._wall_ms()
        month = month_of(wall_ms)
        plan = self._plans.get(account_id)
        if plan is not None and not plan.unlimited:
            used = self._counters.counter_total(counter_name(account_id, month)) + self._pending[(account_id, month)]
            if used >= plan.allowance:
                self._on_refused(plan.name)
                raise QuotaExceeded(account_id, plan.allowance, month_end_ms(wall_ms))
        self._pending[(account_id, month)] += 1
        return Reservation(account_id, month)

    def settle(self, reservation: Reservation, *, created: bool) -> None:
        """The submission was saved (`created`: a new job, which counts) or turned out a duplicate or failed."""
        key = (reservation.account_id, reservation.month)
        self._pending[key] -= 1
        if self._pending[key] <= 0:
            del self._pending[key]
        if created:
            self._counters.add_counter(counter_name(*key), 1)

    def count(self, account_id: str) -> int:
        """The account's accepted jobs this month, cluster-wide as far as this node knows."""
        return self._counters.counter_total(counter_name(account_id, month_of(self._wall_ms())))

    def breach_status(self, account_id: str) -> dict[str, Any]:
        plan = self._plans.get(account_id)
        used = self.count(account_id)
        limit = 0 if plan is None or plan.unlimited else plan.monthly_requests
        return {
            "is_breached": bool(limit) and used >= limit,
            "current_usage": used,
            "limit_value": limit,
            "limit_operator": "gte",
            "breach_action": "deny",
        }

    def usage(self, account_id: str) -> dict[str, Any]:
        wall_ms = self._wall_ms()
        plan = self._plans.get(account_id)
        used = self.count(account_id)
        unlimited = plan is None or plan.unlimited
        quota = None if unlimited or plan is None else plan.monthly_requests
        return {
            "account_id": account_id,
            "plan": plan.name if plan is not None else None,
            "month": month_of(wall_ms),
            "count": used,
            "quota": quota,
            "overage_max": None if unlimited or plan is None else plan.overage_requests_max,
            "remaining": None if quota is None else max(0, quota - used),
            "overage": 0 if quota is None else max(0, used - quota),
            "resets_at_ms": month_end_ms(wall_ms),
        }
