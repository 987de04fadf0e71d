"""Plans and usage: each account's accepted jobs this month, counted cluster-wide, and a quota no split overshoots.

Counting. Every accepted job counts once, on the node that made it durable (an idempotent duplicate does not
count): that node adds 1 to its own entry of the account's G-counter for the month (`usage|<account>|<YYYY-MM>`,
UTC), which the gossip carries to every member (cluster/counters.py), so every node converges on the cluster-wide
count without a coordinator, and a restarted node carries on from its saved entry.

Enforcing the quota: escrow (cluster/escrow.py explains the rules and their proof). The plan's allowance for the
month (`monthly_requests` + `overage_requests_max`; 0 requests: unlimited, not metered) exists as rights, and a node
accepts a job only by spending one of its own (`reserve`, then `settle` once the job was saved). Rights, gifts and
use are G-counter entries, each written by one node, so no partition can make the cluster spend more rights than
the allowance:

- the genesis: the month's first submission anywhere makes the account's rendezvous owner (among the live members)
  mint the allowance (`mint|<account>|<month>`) and give every other live member an equal share at once;
- a node whose rights run out borrows from the member its ledger shows richest, over the internal API (`lend`:
  the lender gives half of what it has spare, as a `give|<account>|<month>|<to>` entry, and answers with the
  ledger's entries so the borrower can spend at once);
- no rights reachable: 429 with `Retry-After` of a few seconds while a live member holds rights this node could
  not reach (each lender is asked with a short deadline, LEND_TIMEOUT_S, so a split costs a submission little),
  else until the month's end.

Durable before anything relies on it. A node's own entries are in its store before a job is accepted or a borrower
answered against them, so a node killed at any instant restarts with entries no lower than what it spent or gave:
- use: the job's own commit writes this node's usage entry (`Reservation.shared_state`, `Store.insert_job`), valued
  at the entry plus every submission of the quota being saved here, taken as the reservation is made, right before
  its commit is called. Every job whose commit was called earlier is then in the entry or still being saved, and
  rows land in call order (edge/store/base.py), so the row on disk is never below the jobs committed. It may be
  above: a submission saved alongside that turns out a duplicate or fails stays in the row until the next accepted
  job's commit writes it again, and a restart in between counts it as used. The counters' saver is told what the
  commit wrote and does not write the entry again: one store write per accepted job;
- mints and gifts: `lend` answers only once its gift, and a mint made on the way, are saved (awaited through the
  counters' saver, `CounterSaver.save_now`); when they cannot be, it fails and the borrower takes it as an
  unreachable lender. A genesis or top-up made for this node's own submission is saved before any submission spends
  a right against it. That is a store write awaited once per quota and month, where carrying the mint and every
  gift in each job's commit until one of them lands would cost every commit. Until saved, a mint or gift counts in
  this node's own ledger only: it reaches the counters, and so the gossip, after its save, so no peer can rely on a
  right that a crash would give back to this node.

What a crash can still cost: under-admission only, and little of it. The submissions saved alongside the node's
last accepted job that turned out duplicates or failed count as used until the month ends (the row above the
count, as said), and the node's rights wait while it is down.

What it costs: the first job of a month waits for the genesis (one internal call when the owner is another node,
one store write when it is this one); a node that runs out waits for one borrow; rights held by a node that is gone
for good are lost until the month ends (under-admission, never overshoot). Two geneses can only happen if the
cluster is split at the month's first submission; then the lowest node id's mint counts, and the other side's
spending before it learns so is the one overshoot this design allows. A resubmission of a job still unfinished on
its key's owner is answered with that job, quota or not (edge/engine/shell/queues.py).
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, final

import trio

from cluster import escrow
from cluster.messages import CounterEntry
from edge.config import Config, PlanConfig
from edge.metrics import NodeMetrics
from edge.placement.counters import Counters, CounterSaver, counter_row

log = logging.getLogger("ezthrottle.usage")


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


BORROW_WANTED = 1  # rights a borrower asks for; the lender gives half of its spare, at least this
BORROW_TRIES = 3  # members asked, richest first, before a submission is refused
UNREACHABLE_RETRY_S = 2  # Retry-After when the rights are on members this node cannot reach now

# Ask node `lender` for `wanted` rights of (account, month): its ledger entries (the internal API's `lend`); raises
# LendFailed when the lender cannot be asked.
Lend = Callable[[str, str, str, int], Awaitable[list[CounterEntry]]]


class LendFailed(Exception):
    """A member could not be asked for rights (unreachable, or it refused the call)."""


def month_of(wall_ms: int) -> str:
    """The calendar month (UTC) of a unix-ms instant: "2026-12"."""
    start, end, name = _current_month
    if start <= wall_ms < end:
        return name
    return _remember_month(wall_ms)


def _remember_month(wall_ms: int) -> str:
    """Work the month out (datetime: microseconds, on every submission otherwise) and keep its bounds."""
    global _current_month
    now = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.UTC)
    start = datetime.datetime(now.year, now.month, 1, tzinfo=datetime.UTC)
    name = now.strftime("%Y-%m")
    _current_month = (int(start.timestamp() * 1000), month_end_ms(wall_ms), name)
    return name


_current_month: tuple[int, int, str] = (0, 0, "")


def month_end_ms(wall_ms: int) -> int:
    """The first instant of the next calendar month (UTC), in unix ms: when this month's usage resets."""
    now = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return int(datetime.datetime(year, month, 1, tzinfo=datetime.UTC).timestamp() * 1000)


def usage_name(account_id: str, month: str) -> str:
    return f"usage|{account_id}|{month}"


def _mint_name(account_id: str, month: str) -> str:
    return f"mint|{account_id}|{month}"


def _gifts_prefix(account_id: str, month: str) -> str:
    return f"give|{account_id}|{month}|"


@final
@dataclass(frozen=True, slots=True)
class Reservation:
    """A submission let in and being saved: it holds one of this node's rights (when metered) until `settle`, and
    names the row its job's commit writes (`shared_state`)."""

    account_id: str
    month: str
    metered: bool
    usage: CounterEntry  # this node's usage entry as the job's commit writes it (see the module docstring)

    @property
    def shared_state(self) -> tuple[tuple[str, bytes], ...]:
        return (counter_row(self.usage),)


@final
class UsageMeter:
    """Counts and admits jobs per account and month (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        counters: Counters,
        wall_ms: Callable[[], int],
        *,
        node: str,
        saver: CounterSaver,
        members: Callable[[], list[str]] = list,
        genesis_owner: Callable[[str], str | None] = lambda account_id: None,
        lend: Lend | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._plans = {account.id: config.plan(account.plan) for account in config.accounts}
        self._counters = counters
        self._saver = saver  # the one saving `counters` to the store
        self._wall_ms = wall_ms
        self._node = node
        self._members = members  # the live members' node ids, this one included
        self._genesis_owner = genesis_owner  # None: this node (alone)
        self._lend = lend
        self._metrics = metrics
        # The usage_accepted child per plan name, made on first use (as labels() would) and kept: settle runs per job.
        self._accepted_metric: dict[str, Any] = {}
        self._pending: Counter[tuple[str, str]] = Counter()  # submissions being saved, metered or not
        # Per quota, this node's mints and gifts not saved yet, by entry name: counted in its own ledger at once, but
        # added to the counters (and so gossiped) only once saved, so no peer relies on a right a crash could undo.
        self._escrow_unsaved: dict[tuple[str, str], dict[str, int]] = {}
        self._escrow_saving: dict[tuple[str, str], trio.Lock] = {}
        self._borrowing: dict[tuple[str, str], trio.Lock] = {}
        # (account, month) -> (counters' version, this node's rights available, cluster-wide use) when last worked
        # out from the ledger; this node's own spends keep it current, anything else the counters learn redoes it.
        self._known: dict[tuple[str, str], tuple[int, int, int]] = {}

    # -- admission ------------------------------------------------------------------------------------------

    async def reserve(self, account_id: str) -> Reservation:
        """Let one new submission of the account in, spending one of this node's rights, or raise QuotaExceeded
        (StoreError when a mint of this node's, which it would spend, could not be saved).

        The job's commit must be called right away, with no await between: the usage row it writes counts on it
        (see the module docstring)."""
        wall_ms = self._wall_ms()
        month = month_of(wall_ms)
        plan = self._plans.get(account_id)
        metered = plan is not None and not plan.unlimited
        if plan is not None and metered:
            await self._hold_right(account_id, month, plan, wall_ms)
        key = (account_id, month)
        self._pending[key] += 1
        name = usage_name(account_id, month)
        usage = CounterEntry(name=name, node=self._node, value=self._counters.counter_own(name) + self._pending[key])
        return Reservation(account_id, month, metered, usage)

    def settle(self, reservation: Reservation, *, created: bool) -> None:
        """The submission was saved (`created`: a new job, which spends its right) or was a duplicate or failed."""
        key = (reservation.account_id, reservation.month)
        self._pending[key] -= 1
        if self._pending[key] <= 0:
            del self._pending[key]
        if not created:
            return
        self._saver.saved(reservation.usage)  # in the job's commit: the entry below needs no write of its own
        if not reservation.metered:
            self._counters.add_counter(reservation.usage.name, 1)
            return
        known = self._known.get(key)
        fresh = known is not None and known[0] == self._counters.counter_version
        self._counters.add_counter(reservation.usage.name, 1)
        if fresh and known is not None:  # the one change since: this spend
            self._known[key] = (self._counters.counter_version, known[1] - 1, known[2] + 1)
        if self._metrics is not None:
            plan_name = self._plans[reservation.account_id].name
            accepted = self._accepted_metric.get(plan_name)
            if accepted is None:
                accepted = self._accepted_metric[plan_name] = self._metrics.usage_accepted.labels(plan_name)
            accepted.inc()

    async def lend(self, account_id: str, month: str, wanted: int, borrower: str) -> list[CounterEntry]:
        """Another node ran out: give it rights if this node can spare some (minting first when this node is the
        account's genesis owner and nobody has minted yet); the ledger's entries, for the borrower to merge, once
        this node's own mints and gifts in them are saved (StoreError when they cannot be)."""
        plan = self._plans.get(account_id)
        if plan is not None and not plan.unlimited and borrower != self._node:
            ledger = self._ledger(account_id, month)
            if ledger.minter is None and self._is_genesis_owner(account_id):
                self._mint(account_id, month, plan)
                ledger = self._ledger(account_id, month)
            amount = escrow.gift(ledger, self._node, wanted, pending=self._pending[(account_id, month)])
            if amount:
                self._add_escrow(account_id, month, f"{_gifts_prefix(account_id, month)}{borrower}", amount)
        while (account_id, month) in self._escrow_unsaved:
            await self._save_escrow(account_id, month)
        return self._entries(account_id, month)

    # -- reports ------------------------------------------------------------------------------------------------

    def count(self, account_id: str) -> int:
        """The account's accepted jobs this month, cluster-wide as far as this node knows."""
        return self._counters.counter_total(usage_name(account_id, month_of(self._wall_ms())))

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
        month = month_of(wall_ms)
        plan = self._plans.get(account_id)
        used = self.count(account_id)
        metered = plan is not None and not plan.unlimited
        quota = plan.monthly_requests if plan is not None and metered else None
        ledger = self._ledger(account_id, month)
        return {
            "account_id": account_id,
            "plan": plan.name if plan is not None else None,
            "month": month,
            "count": used,
            "quota": quota,
            "overage_max": plan.overage_requests_max if plan is not None and metered else None,
            "remaining": None if quota is None else max(0, quota - used),
            "overage": 0 if quota is None else max(0, used - quota),
            "resets_at_ms": month_end_ms(wall_ms),
            # Escrow: the rights this node holds unspent, and every node's as this node knows them.
            "rights_here": ledger.available(self._node) if metered else None,
        }

    # -- escrow ------------------------------------------------------------------------------------------------

    def _ledger(self, account_id: str, month: str) -> escrow.Ledger:
        counters = self._counters
        minted = {e.node: e.value for e in counters.counter_entries(_mint_name(account_id, month))}
        prefix = _gifts_prefix(account_id, month)
        given = {(e.node, e.name[len(prefix) :]): e.value for e in counters.counter_entries(prefix)}
        used = {e.node: e.value for e in counters.counter_entries(usage_name(account_id, month))}
        for name, amount in self._escrow_unsaved.get((account_id, month), {}).items():
            if name.startswith(prefix):
                given[(self._node, name[len(prefix) :])] = given.get((self._node, name[len(prefix) :]), 0) + amount
            else:
                minted[self._node] = minted.get(self._node, 0) + amount
        return escrow.Ledger(minted=minted, given=given, used=used)

    def _entries(self, account_id: str, month: str) -> list[CounterEntry]:
        counters = self._counters
        return [
            *counters.counter_entries(_mint_name(account_id, month)),
            *counters.counter_entries(_gifts_prefix(account_id, month)),
            *counters.counter_entries(usage_name(account_id, month)),
        ]

    async def _hold_right(self, account_id: str, month: str, plan: PlanConfig, wall_ms: int) -> None:
        """Return once this node has a right to spend (borrowing one when it has none) and its own mints and gifts
        of the quota are saved; raise QuotaExceeded when no right can be had."""
        key = (account_id, month)
        if self._spare(account_id, month, plan) <= 0:
            lock = self._borrowing.setdefault(key, trio.Lock())
            async with lock:  # one borrow at a time per quota: the others wait for its rights
                if self._spare(account_id, month, plan) <= 0:
                    await self._borrow(account_id, month, plan)
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._borrowing.pop(key, None)
        while (spare := self._spare(account_id, month, plan)) > 0 and key in self._escrow_unsaved:
            await self._save_escrow(account_id, month)
        if spare <= 0:
            raise self._refusal(account_id, month, plan, wall_ms)

    def _spare(self, account_id: str, month: str, plan: PlanConfig) -> int:
        """Rights this node may spend now: its own, less the submissions being saved; and never past the known
        cluster-wide ceiling (a plan lowered mid-month cannot take back rights already spread)."""
        key = (account_id, month)
        known = self._known.get(key)
        if known is None or known[0] != self._counters.counter_version:
            ledger = self._ledger(account_id, month)
            if ledger.minter is None and self._is_genesis_owner(account_id):
                self._mint(account_id, month, plan)
                ledger = self._ledger(account_id, month)
            elif top_up := escrow.top_up(ledger, self._node, plan.allowance):
                self._add_escrow(account_id, month, _mint_name(account_id, month), top_up)
                ledger = self._ledger(account_id, month)
            known = (self._counters.counter_version, ledger.available(self._node), ledger.total_used)
            if ledger.minter is not None:  # before the genesis there is nothing to keep
                self._known[key] = known
        _version, available, used = known
        pending = self._pending[key]
        if used + pending >= plan.allowance:
            return 0
        return available - pending

    def _mint(self, account_id: str, month: str, plan: PlanConfig) -> None:
        self._add_escrow(account_id, month, _mint_name(account_id, month), plan.allowance)
        members = self._members() or [self._node]
        for receiver, share in escrow.genesis_gifts(plan.allowance, self._node, members).items():
            self._add_escrow(account_id, month, f"{_gifts_prefix(account_id, month)}{receiver}", share)

    def _add_escrow(self, account_id: str, month: str, name: str, amount: int) -> None:
        """Add to one of this node's own mint or gift entries of the quota: in this node's ledger at once, in the
        counters (which gossip it) once `_save_escrow` has saved it."""
        key = (account_id, month)
        unsaved = self._escrow_unsaved.setdefault(key, {})
        unsaved[name] = unsaved.get(name, 0) + amount
        self._known.pop(key, None)

    async def _save_escrow(self, account_id: str, month: str) -> None:
        """Save this node's unsaved mints and gifts of the quota (StoreError when the store fails), then publish
        them in the counters."""
        key = (account_id, month)
        lock = self._escrow_saving.setdefault(key, trio.Lock())
        async with lock:  # one save at a time per quota, so that no unsaved amount is published twice
            adding = dict(self._escrow_unsaved.get(key, {}))
            entries = [
                CounterEntry(name=name, node=self._node, value=self._counters.counter_own(name) + amount)
                for name, amount in adding.items()
            ]
            await self._saver.save_now(entries)
            unsaved = self._escrow_unsaved.get(key, {})
            for name, amount in adding.items():
                self._counters.add_counter(name, amount)
                unsaved[name] -= amount  # what was added meanwhile stays to be saved
                if not unsaved[name]:
                    del unsaved[name]
            if not unsaved:
                self._escrow_unsaved.pop(key, None)
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._escrow_saving.pop(key, None)

    def _is_genesis_owner(self, account_id: str) -> bool:
        owner = self._genesis_owner(account_id)
        return owner is None or owner == self._node

    async def _borrow(self, account_id: str, month: str, plan: PlanConfig) -> None:
        """Ask the richest members (or, before the genesis, the genesis owner) for rights, until some arrive."""
        if self._lend is None:
            return
        ledger = self._ledger(account_id, month)
        others = [node for node in self._members() if node != self._node]
        candidates = ledger.richest(others)
        if ledger.minter is None:
            owner = self._genesis_owner(account_id)
            candidates = [owner] if owner is not None and owner != self._node else []
        for lender in candidates[:BORROW_TRIES]:
            try:
                entries = await self._lend(lender, account_id, month, BORROW_WANTED)
            except LendFailed as exc:
                log.info("could not borrow quota of %s from %s (%s)", account_id, lender, exc)
                continue
            self._counters.merge_counters(entries)
            if self._spare(account_id, month, plan) > 0:
                return

    def _refusal(self, account_id: str, month: str, plan: PlanConfig, wall_ms: int) -> QuotaExceeded:
        ledger = self._ledger(account_id, month)
        # Rights on a live member this node could not reach come back soon; a dead member's may never.
        elsewhere = ledger.minter is None or any(
            ledger.available(node) > 0 for node in self._members() if node != self._node
        )
        spent = ledger.total_used >= plan.allowance
        if self._metrics is not None:
            self._metrics.quota_refused.labels(plan.name).inc()
        retry_at_ms = month_end_ms(wall_ms)
        if elsewhere and not spent:
            retry_at_ms = wall_ms + UNREACHABLE_RETRY_S * 1000
        return QuotaExceeded(account_id, plan.allowance, retry_at_ms)
