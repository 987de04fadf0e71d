"""Fair sharing of an upstream's concurrency among keys, with tiers, bounded queues and per-key limits.

One `FairScheduler` guards one pool of slots: the inbound proxy's upstream (`max_concurrency`), or a node's
outbound concurrency shared among outbound queues. Keys are customers (API keys, client addresses, outbound
queue keys). The scheduler is pure: every verb takes `now`, changes state synchronously and returns what the
shell must do (wake these waiters, answer these with 503), in the style of httpcore's pool assigning
requests to connections before any I/O happens.

How a slot is given out, when one is free (`_dispatch`). Both levels are start-time fair queuing (Goyal et
al., 1996): each contender carries a finish tag, the smallest tag goes next, and its tag grows by what it
was charged divided by its weight. A contender that rejoins after being idle starts at the current virtual
time (the start tag of the last winner), so it neither banks credit while away nor pays for the past. Why
SFQ rather than deficit round robin: one sorted set of (start tag, key) makes every operation O(log n)
whatever the costs are, and a start tag is known the moment a key becomes eligible.

1. Tier. Tiers are charged in slot-seconds divided by their share (scheduler/tiers.py): at admission the
   average hold time so far, corrected by the real hold time at completion (as Kubernetes APF charges
   seat-seconds). Charging occupancy rather than requests is what makes a share a share of *capacity*: a
   tier of slow requests cannot hold most of the slots on 20 % of the grants. Counting grants in a virtual
   clock rather than comparing who holds how many slots right now is what lets 1.6 of 8 slots come out as 20
   % on average instead of locking into 2 and 1 (a static split has no memory). A tier with nothing eligible
   is skipped, so idle shares are borrowed; when it returns it starts at the current virtual time and gets
   its share of the grants from then on, taking its capacity back within about one service time, without
   preempting anyone.
2. Key, within the tier: charged the request's declared `cost` divided by the key's weight.

Eligibility: a key may hold at most `key_concurrency_share_max` of the capacity (at least one slot), so a
slot is usually free for a newcomer; a key at its cap leaves the sorted set until one of its own requests
completes.

Admission (`submit`), in order: the key's GCRA rate limit (429, retry after the GCRA's own wait); a free
slot the key may use (admitted at once); the key's queue budget (429); the global queue budget (503). A full
queue refuses the *newest* request, so whoever is already queued keeps their place. Queued requests expire
after `queue_wait_s_max`; since that wait is the same for everyone, deadlines are in submission order and an
ordered dict gives O(1) expiry and O(1) removal on grant or cancel.

Memory: a key's state exists while it has queued or in-flight requests. Without a rate limit it is dropped
the moment it goes idle; with one it is kept until its GCRA has fully recovered (`burst / rate` seconds),
because forgetting earlier would hand a fresh burst to a key that just spent one. An idle key's finish tag
is dropped too; that forgives at most one request's worth of `cost / weight`.

XX: the global queue budget is shared by all tiers, so a flood spread over many keys (more than
queue_length_max / key_queue_length_max of them) can fill it and get paid newcomers a 503; per-tier budgets
are the obvious next step if that shows up in practice.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from sortedcontainers import SortedList

from scheduler.admission import Outcome, RateLimitStatus, RefusalReason, Refused, rate_limit_status
from scheduler.aimd import AimdLimit, AimdPolicy
from scheduler.gcra import Gcra
from scheduler.tiers import TIERS_BY_PRIORITY, Tier, TierPolicy

# Until a tier's first request completes there is no measured hold time; its charges and Retry-After hints
# assume this (the charge is corrected at completion anyway).
_HOLD_S_GUESS: Final = 1.0
# Weight of the newest sample in a tier's average hold time (about the last 20 requests matter).
_HOLD_EWMA_ALPHA: Final = 0.05


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPolicy:
    """How one key is treated. Read when the key's state is created; a changed policy applies once the key has
    gone idle and been forgotten (a key is only ever in one tier's queues)."""

    tier: Tier = Tier.FREE
    # Share of its tier relative to other keys of the tier (SFQ weight).
    weight: float = 1.0
    # GCRA rate limit in requests per second; None means unlimited.
    rate_per_s: float | None = None
    burst: int = 1

    def __post_init__(self) -> None:
        _check_positive("weight", self.weight)
        if self.rate_per_s is not None:
            _check_positive("rate_per_s", self.rate_per_s)
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerPolicy:
    """Limits of one scheduler. Defaults follow Kubernetes API Priority and Fairness where it has a figure."""

    # Slots the upstream can serve at once (the proxy's max_concurrency); AIMD, when on, stays at or below it.
    capacity: int
    tiers: TierPolicy = field(default_factory=TierPolicy)
    # Most of the capacity one key may hold; 0.9 of 8 slots is 7, leaving one for whoever comes next. This is
    # the one place the scheduler is not work-conserving: a lone key gets 7 of 8. Set 1.0 to turn it off.
    key_concurrency_share_max: float = 0.9
    # Requests one key may have waiting (APF: 50 per queue) and all keys together.
    key_queue_length_max: int = 50
    queue_length_max: int = 1000
    # Longest a request waits for a slot before it is expired (APF: 15 s).
    queue_wait_s_max: float = 15.0
    # Adaptive concurrency; None (the default) keeps the capacity fixed.
    aimd: AimdPolicy | None = None

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity!r}")
        if not 0.0 < self.key_concurrency_share_max <= 1.0:
            raise ValueError(f"key_concurrency_share_max must be in (0, 1], got {self.key_concurrency_share_max!r}")
        if not 1 <= self.key_queue_length_max <= self.queue_length_max:
            raise ValueError(
                f"need 1 <= key_queue_length_max <= queue_length_max, got "
                f"{self.key_queue_length_max!r}, {self.queue_length_max!r}"
            )
        _check_positive("queue_wait_s_max", self.queue_wait_s_max)


class TicketState(Enum):
    QUEUED = "queued"
    ADMITTED = "admitted"
    FINISHED = "finished"


class Ticket:
    """One request's handle: callers read it and hand it back to `complete` / `cancel`, never change it."""

    __slots__ = ("_charged_s", "_key_state", "admitted_at", "cost", "key", "state", "submitted_at")

    def __init__(self, key_state: _KeyState, cost: float, submitted_at: float) -> None:
        self._key_state = key_state
        self.key = key_state.name
        self.cost = cost
        self.submitted_at = submitted_at
        self.admitted_at: float | None = None
        self.state = TicketState.QUEUED
        # Slot-seconds charged to the tier at admission, corrected at completion.
        self._charged_s = 0.0

    @property
    def tier(self) -> Tier:
        return self._key_state.tier_state.tier

    def __repr__(self) -> str:
        return f"<Ticket {self.key!r} {self.tier.value} {self.state.value} cost={self.cost:g}>"


@dataclass(frozen=True, slots=True)
class Admitted:
    """Go ahead now: the request holds a slot until `complete(ticket)`."""

    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Queued:
    """Wait: a later `complete` returns a `Grant` for this ticket, or `expire` an `Expired`."""

    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Grant:
    """A queued request that now holds a slot; the shell wakes its waiter."""

    ticket: Ticket
    waited_s: float


@dataclass(frozen=True, slots=True)
class Expired:
    """A queued request that waited `queue_wait_s_max` without a slot; the shell answers 503."""

    ticket: Ticket
    waited_s: float


Verdict = Admitted | Queued | Refused


class _TierState:
    __slots__ = (
        "admitted_total",
        "cancelled_total",
        "completed_total",
        "expired_total",
        "finish_tag",
        "hold_s_average",
        "hold_s_measured",
        "inflight",
        "inverse_share",
        "key_clock",
        "queued",
        "ready",
        "refused_total",
        "share",
        "tier",
    )

    def __init__(self, tier: Tier, share: float) -> None:
        self.tier = tier
        self.share = share
        self.inverse_share = 1.0 / share
        # Tier-level SFQ: slot-seconds / share charged so far. Charges use this tier's own average hold
        # time, so corrections average out to zero and the tag does not drift behind the virtual time
        # (rejoining after a pause moves it up to that time, which would erase credit systematically owed).
        self.finish_tag = 0.0
        self.hold_s_average = _HOLD_S_GUESS
        self.hold_s_measured = False
        # Key-level SFQ within the tier: eligible keys as (start tag, unique number, key); the number keeps
        # keys out of comparisons. `key_clock` is the start tag of the last key served.
        self.ready: SortedList[tuple[float, int, _KeyState]] = SortedList()
        self.key_clock = 0.0
        self.inflight = 0
        self.queued = 0
        self.admitted_total = 0
        self.refused_total = 0
        self.expired_total = 0
        self.cancelled_total = 0
        self.completed_total = 0


class _KeyState:
    __slots__ = (
        "finish_tag",
        "gcra",
        "idle_entry",
        "inflight",
        "inverse_weight",
        "name",
        "queue",
        "ready_entry",
        "tier_state",
    )

    def __init__(self, name: str, tier_state: _TierState, policy: KeyPolicy) -> None:
        self.name = name
        self.tier_state = tier_state
        self.inverse_weight = 1.0 / policy.weight
        self.gcra = None if policy.rate_per_s is None else Gcra(policy.rate_per_s, policy.burst)
        self.queue: deque[Ticket] = deque()
        self.inflight = 0
        self.finish_tag = 0.0
        self.ready_entry: tuple[float, int, _KeyState] | None = None
        self.idle_entry: tuple[float, int, str] | None = None


@dataclass(frozen=True, slots=True)
class TierStatistics:
    tier: Tier
    share: float
    queued: int
    inflight: int
    admitted_total: int
    refused_total: int
    expired_total: int
    cancelled_total: int
    completed_total: int


@dataclass(frozen=True, slots=True)
class KeyStatistics:
    key: str
    tier: Tier
    queued: int
    inflight: int


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    capacity: int
    inflight: int
    queued: int
    keys_tracked: int
    tiers: tuple[TierStatistics, ...]
    # The busiest keys (queued + in flight), at most `top_keys` of them: metric labels stay bounded.
    top_keys: tuple[KeyStatistics, ...]


class FairScheduler:
    """Weighted fair queuing of requests across keys and tiers over a fixed or adaptive number of slots."""

    def __init__(self, policy: SchedulerPolicy) -> None:
        self._policy = policy
        shares = policy.tiers.shares()
        self._tiers = {tier: _TierState(tier, shares[tier]) for tier in TIERS_BY_PRIORITY}
        self._tiers_by_priority = tuple(self._tiers.values())
        # Tier-level virtual time: the start tag of the last tier served.
        self._tier_clock = 0.0
        self._aimd = None if policy.aimd is None else AimdLimit(policy.aimd, limit_max=policy.capacity)
        self._capacity = policy.capacity if self._aimd is None else self._aimd.limit
        self._key_inflight_max = self._key_cap_for(self._capacity)
        self._keys: dict[str, _KeyState] = {}
        # Keys with requests queued that are at their concurrency cap (never more than `capacity` of them).
        self._blocked: dict[_KeyState, None] = {}
        # Queued tickets in submission order, which is also deadline order.
        self._deadlines: OrderedDict[Ticket, None] = OrderedDict()
        # Idle rate-limited keys as (forget at, unique number, key name).
        self._idle: SortedList[tuple[float, int, str]] = SortedList()
        self._inflight = 0
        # Unique numbers that keep sorted tuples from ever comparing their last element.
        self._sequence = itertools.count()

    # ----- verbs

    def submit(self, key: str, policy: KeyPolicy, *, now: float, cost: float = 1.0) -> Verdict:
        """Admit, queue or refuse a new request of `key` costing `cost` (in the key's fair share)."""
        if not 0.0 < cost < math.inf:
            raise ValueError(f"cost must be a positive finite number, got {cost!r}")
        if self._idle:
            self._forget_idle_keys(now)
        state = self._keys.get(key)
        tier_state = self._tiers[policy.tier] if state is None else state.tier_state
        if state is not None and state.gcra is not None:
            ready_at = state.gcra.ready_at(now)
            if ready_at > now:
                return self._refuse(tier_state, key, policy, RefusalReason.RATE_LIMITED, ready_at - now, now)
        fits_now = self._inflight < self._capacity and (state is None or state.inflight < self._key_inflight_max)
        if not fits_now:
            key_queued = 0 if state is None else len(state.queue)
            if key_queued >= self._policy.key_queue_length_max:
                estimate_s = self._wait_estimate_s(tier_state, key_queued, self._key_inflight_max)
                return self._refuse(tier_state, key, policy, RefusalReason.KEY_QUEUE_FULL, estimate_s, now)
            if len(self._deadlines) >= self._policy.queue_length_max:
                estimate_s = self._wait_estimate_s(tier_state, len(self._deadlines), self._capacity)
                return self._refuse(tier_state, key, policy, RefusalReason.QUEUE_FULL, estimate_s, now)
        # Accepted: only now may a key's state be created or woken, so refusals leave nothing behind.
        if state is None:
            state = self._new_key(key, policy)
        elif state.idle_entry is not None:
            self._idle.remove(state.idle_entry)
            state.idle_entry = None
        if state.gcra is not None:
            state.gcra.consume(now)
        ticket = Ticket(state, cost, now)
        if fits_now:
            # A free slot means nothing eligible is queued anywhere, so this tier and key rejoin the race.
            tier_state.finish_tag = max(tier_state.finish_tag, self._tier_clock)
            self._admit(ticket, max(tier_state.key_clock, state.finish_tag), now)
            return Admitted(ticket)
        state.queue.append(ticket)
        tier_state.queued += 1
        self._deadlines[ticket] = None
        if len(state.queue) == 1:
            self._make_eligible(state)
        return Queued(ticket)

    def complete(
        self,
        ticket: Ticket,
        *,
        now: float,
        outcome: Outcome = Outcome.SUCCESS,
        latency_s: float | None = None,
    ) -> list[Grant]:
        """Free an admitted ticket's slot; returns the queued requests that now hold slots.

        `latency_s` feeds adaptive concurrency and defaults to the time the slot was held; pass the upstream's
        own latency when the shell knows it better (without the client's upload time, say)."""
        if ticket.state is not TicketState.ADMITTED or ticket.admitted_at is None:
            raise ValueError(f"complete() needs an admitted ticket, got {ticket!r}")
        ticket.state = TicketState.FINISHED
        state = ticket._key_state
        tier_state = state.tier_state
        in_use = self._inflight
        self._inflight -= 1
        state.inflight -= 1
        tier_state.inflight -= 1
        tier_state.completed_total += 1
        hold_s = now - ticket.admitted_at
        tier_state.finish_tag += (hold_s - ticket._charged_s) * tier_state.inverse_share
        if tier_state.hold_s_measured:
            tier_state.hold_s_average += _HOLD_EWMA_ALPHA * (hold_s - tier_state.hold_s_average)
        else:
            tier_state.hold_s_average = hold_s
            tier_state.hold_s_measured = True
        if self._aimd is not None:
            latency_s = hold_s if latency_s is None else latency_s
            self._feed_aimd(self._aimd, outcome, latency_s, ticket.admitted_at, in_use, now)
        if state in self._blocked and state.inflight < self._key_inflight_max:
            del self._blocked[state]
            self._make_eligible(state)
        elif not state.queue and state.inflight == 0:
            self._release(state, now)
        return self._dispatch(now)

    def cancel(self, ticket: Ticket, *, now: float) -> None:
        """The client gave up while queued: drop the ticket. A no-op for a finished ticket."""
        if ticket.state is TicketState.ADMITTED:
            raise ValueError(f"cancel() is for queued tickets; complete() an admitted one: {ticket!r}")
        if ticket.state is TicketState.QUEUED:
            del self._deadlines[ticket]
            self._unqueue(ticket, now)
            ticket._key_state.tier_state.cancelled_total += 1

    def expire(self, now: float) -> list[Expired]:
        """Drop queued requests whose wait reached `queue_wait_s_max`; also forgets recovered idle keys."""
        self._forget_idle_keys(now)
        expired: list[Expired] = []
        wait_s_max = self._policy.queue_wait_s_max
        while self._deadlines:
            oldest = next(iter(self._deadlines))
            if oldest.submitted_at + wait_s_max > now:
                break
            self._deadlines.popitem(last=False)
            self._unqueue(oldest, now)
            oldest._key_state.tier_state.expired_total += 1
            expired.append(Expired(oldest, now - oldest.submitted_at))
        return expired

    def next_deadline(self) -> float | None:
        """When `expire` next has work: the oldest queued request's deadline or an idle key's forget time."""
        deadlines = []
        if self._deadlines:
            deadlines.append(next(iter(self._deadlines)).submitted_at + self._policy.queue_wait_s_max)
        if self._idle:
            deadlines.append(self._idle[0][0])
        return min(deadlines, default=None)

    def rate_limit_status(self, key: str, policy: KeyPolicy, *, now: float) -> RateLimitStatus | None:
        """The key's RateLimit figures (for successful responses too); None when it has no rate limit."""
        if policy.rate_per_s is None:
            return None
        state = self._keys.get(key)
        if state is not None and state.gcra is not None:
            return rate_limit_status(state.gcra, now)
        return rate_limit_status(Gcra(policy.rate_per_s, policy.burst), now)

    @property
    def capacity(self) -> int:
        """Slots currently given out at most (the AIMD limit when adaptive concurrency is on)."""
        return self._capacity

    def statistics(self, *, top_keys: int = 10) -> SchedulerStatistics:
        """A frozen snapshot; O(keys) for the top-keys list, so meant for metric scrapes, not per request."""
        busiest = heapq.nlargest(top_keys, self._keys.values(), key=lambda s: len(s.queue) + s.inflight)
        return SchedulerStatistics(
            capacity=self._capacity,
            inflight=self._inflight,
            queued=len(self._deadlines),
            keys_tracked=len(self._keys),
            tiers=tuple(
                TierStatistics(
                    tier=t.tier,
                    share=t.share,
                    queued=t.queued,
                    inflight=t.inflight,
                    admitted_total=t.admitted_total,
                    refused_total=t.refused_total,
                    expired_total=t.expired_total,
                    cancelled_total=t.cancelled_total,
                    completed_total=t.completed_total,
                )
                for t in self._tiers_by_priority
            ),
            top_keys=tuple(
                KeyStatistics(key=s.name, tier=s.tier_state.tier, queued=len(s.queue), inflight=s.inflight)
                for s in busiest
                if s.queue or s.inflight
            ),
        )

    def __repr__(self) -> str:
        return (
            f"<FairScheduler capacity={self._capacity}: {self._inflight} in flight, "
            f"{len(self._deadlines)} queued, {len(self._keys)} keys>"
        )

    # ----- internals

    def _key_cap_for(self, capacity: int) -> int:
        return max(1, math.floor(self._policy.key_concurrency_share_max * capacity))

    def _new_key(self, key: str, policy: KeyPolicy) -> _KeyState:
        state = _KeyState(key, self._tiers[policy.tier], policy)
        self._keys[key] = state
        return state

    def _refuse(
        self,
        tier_state: _TierState,
        key: str,
        policy: KeyPolicy,
        reason: RefusalReason,
        retry_after_s: float,
        now: float,
    ) -> Refused:
        tier_state.refused_total += 1
        return Refused(reason, retry_after_s, self.rate_limit_status(key, policy, now=now))

    def _wait_estimate_s(self, tier_state: _TierState, queued: int, slots: int) -> float:
        """Rough time for `queued` requests to drain through `slots`: a Retry-After hint, capped by the most a
        request would be left waiting anyway."""
        return min(self._policy.queue_wait_s_max, queued * tier_state.hold_s_average / slots)

    def _admit(self, ticket: Ticket, key_start: float, now: float) -> None:
        """Give `ticket` a slot and charge its key (declared cost) and its tier (estimated slot-seconds)."""
        state = ticket._key_state
        tier_state = state.tier_state
        tier_state.key_clock = key_start
        state.finish_tag = key_start + ticket.cost * state.inverse_weight
        if tier_state.finish_tag > self._tier_clock:
            self._tier_clock = tier_state.finish_tag
        charged_s = ticket._charged_s = tier_state.hold_s_average
        tier_state.finish_tag += charged_s * tier_state.inverse_share
        ticket.state = TicketState.ADMITTED
        ticket.admitted_at = now
        self._inflight += 1
        state.inflight += 1
        tier_state.inflight += 1
        tier_state.admitted_total += 1

    def _make_eligible(self, state: _KeyState) -> None:
        """Put a key with a queued head into its tier's sorted set, or park it if it is at its cap."""
        if state.inflight >= self._key_inflight_max:
            self._blocked[state] = None
            return
        tier_state = state.tier_state
        if not tier_state.ready and tier_state.finish_tag < self._tier_clock:
            # The tier rejoins the race between tiers: no credit for the time it had nothing eligible.
            tier_state.finish_tag = self._tier_clock
        start = state.finish_tag if state.finish_tag > tier_state.key_clock else tier_state.key_clock
        entry = (start, next(self._sequence), state)
        tier_state.ready.add(entry)
        state.ready_entry = entry

    def _dispatch(self, now: float) -> list[Grant]:
        """Fill free slots: the tier with the smallest finish tag among those with an eligible key (ties go
        by priority), then that tier's key with the smallest start tag."""
        grants: list[Grant] = []
        while self._inflight < self._capacity:
            tier_state: _TierState | None = None
            for candidate in self._tiers_by_priority:
                if candidate.ready and (tier_state is None or candidate.finish_tag < tier_state.finish_tag):
                    tier_state = candidate
            if tier_state is None:
                break
            key_start, _, state = tier_state.ready.pop(0)
            state.ready_entry = None
            if state.inflight >= self._key_inflight_max:
                # The cap shrank (AIMD) after this key became eligible.
                self._blocked[state] = None
                continue
            ticket = state.queue.popleft()
            tier_state.queued -= 1
            del self._deadlines[ticket]
            self._admit(ticket, key_start, now)
            grants.append(Grant(ticket, now - ticket.submitted_at))
            if state.queue:
                self._make_eligible(state)
        return grants

    def _unqueue(self, ticket: Ticket, now: float) -> None:
        """Take a queued ticket out of its key's queue (already out of `_deadlines`)."""
        state = ticket._key_state
        state.queue.remove(ticket)
        state.tier_state.queued -= 1
        ticket.state = TicketState.FINISHED
        if state.queue:
            return
        if state.ready_entry is not None:
            state.tier_state.ready.remove(state.ready_entry)
            state.ready_entry = None
        self._blocked.pop(state, None)
        if state.inflight == 0:
            self._release(state, now)

    def _release(self, state: _KeyState, now: float) -> None:
        """Forget an idle key now, or once its GCRA has recovered its full burst."""
        if state.gcra is None:
            del self._keys[state.name]
            return
        entry = (now + state.gcra.burst / state.gcra.rate, next(self._sequence), state.name)
        self._idle.add(entry)
        state.idle_entry = entry

    def _forget_idle_keys(self, now: float) -> None:
        idle = self._idle
        while idle and idle[0][0] <= now:
            _, _, name = idle.pop(0)
            del self._keys[name]

    def _feed_aimd(
        self, aimd: AimdLimit, outcome: Outcome, latency_s: float, admitted_at: float, in_use: int, now: float
    ) -> None:
        """Move the AIMD limit and apply it: a larger cap may unblock keys; a smaller one is applied lazily
        (no preemption: slots in use stay in use, `_dispatch` just stops handing out new ones)."""
        if outcome is Outcome.SUCCESS:
            aimd.on_success(latency_s, admitted_at=admitted_at, in_use=in_use, now=now)
        elif outcome is Outcome.OVERLOADED:
            aimd.on_overload(admitted_at=admitted_at, now=now)
        new_capacity = aimd.limit
        if new_capacity == self._capacity:
            return
        self._capacity = new_capacity
        self._key_inflight_max = self._key_cap_for(new_capacity)
        for state in [s for s in self._blocked if s.inflight < self._key_inflight_max]:
            del self._blocked[state]
            self._make_eligible(state)
