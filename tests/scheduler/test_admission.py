"""Admission: bounded queues (newest refused), waits that time out, cancellation, GCRA rate limits, per-key
concurrency caps, and the figures a refusal carries for Retry-After and the IETF RateLimit fields."""

from __future__ import annotations

import pytest

from scheduler.admission import RateLimitStatus, RefusalReason, Refused, rate_limit_status
from scheduler.fair import Admitted, FairScheduler, KeyPolicy, Queued, SchedulerPolicy, Ticket, TicketState
from scheduler.gcra import Gcra
from scheduler.tiers import Tier

PAID = KeyPolicy(tier=Tier.PAID)


def admitted(verdict: object) -> Ticket:
    assert isinstance(verdict, Admitted), verdict
    return verdict.ticket


def queued(verdict: object) -> Ticket:
    assert isinstance(verdict, Queued), verdict
    return verdict.ticket


def refused(verdict: object) -> Refused:
    assert isinstance(verdict, Refused), verdict
    return verdict


def test_a_full_key_queue_refuses_the_newest_and_keeps_the_order_of_the_rest() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=1, key_queue_length_max=3))
    running = admitted(scheduler.submit("a", PAID, now=0.0))
    waiting = [queued(scheduler.submit("a", PAID, now=0.1 * i)) for i in range(1, 4)]
    refusal = refused(scheduler.submit("a", PAID, now=0.5))
    assert (refusal.reason, refusal.status_hint) == (RefusalReason.KEY_QUEUE_FULL, 429)
    assert 0.0 < refusal.retry_after_s <= 15.0
    # Another key still gets in line: the limit is per key.
    other = queued(scheduler.submit("b", PAID, now=0.5))

    granted = []
    current = running
    for step in range(1, 5):
        grants = scheduler.complete(current, now=1.0 + step)
        assert len(grants) == 1
        current = grants[0].ticket
        granted.append(current)
    assert [t for t in granted if t.key == "a"] == waiting
    assert other in granted


def test_a_full_global_queue_answers_503_and_leaves_no_trace_of_the_refused_key() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=2, key_queue_length_max=2, queue_length_max=3))
    for key in ("a", "b"):
        admitted(scheduler.submit(key, PAID, now=0.0))
        queued(scheduler.submit(key, PAID, now=0.0))
    queued(scheduler.submit("c", PAID, now=0.0))
    refusal = refused(scheduler.submit("d", PAID, now=0.0))
    assert (refusal.reason, refusal.status_hint) == (RefusalReason.QUEUE_FULL, 503)
    assert refusal.rate_limit is None
    statistics = scheduler.statistics()
    assert statistics.keys_tracked == 3
    assert statistics.queued == 3
    assert [t.refused_total for t in statistics.tiers] == [0, 1, 0]


def test_queued_requests_expire_after_the_configured_wait() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=1, queue_wait_s_max=2.0))
    running = admitted(scheduler.submit("a", PAID, now=0.0))
    early = queued(scheduler.submit("b", PAID, now=1.0))
    late = queued(scheduler.submit("c", PAID, now=1.5))
    assert scheduler.next_deadline() == 3.0
    assert scheduler.expire(2.99) == []
    expired = scheduler.expire(3.0)
    assert [(e.ticket, e.waited_s) for e in expired] == [(early, 2.0)]
    assert early.state is TicketState.FINISHED
    assert scheduler.next_deadline() == 3.5
    # The slot goes to the one still waiting, never to the expired one.
    assert [g.ticket for g in scheduler.complete(running, now=3.2)] == [late]
    assert scheduler.next_deadline() is None
    assert scheduler.statistics().tiers[1].expired_total == 1


def test_cancelled_requests_leave_the_queue_and_admitted_ones_must_be_completed() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=1))
    running = admitted(scheduler.submit("a", PAID, now=0.0))
    gone = queued(scheduler.submit("b", PAID, now=0.0))
    staying = queued(scheduler.submit("c", PAID, now=0.0))
    scheduler.cancel(gone, now=0.5)
    scheduler.cancel(gone, now=0.6)  # the client's disconnect and the shell's cleanup may both report it
    assert scheduler.statistics().keys_tracked == 2
    with pytest.raises(ValueError, match="complete"):
        scheduler.cancel(running, now=0.7)
    assert [g.ticket for g in scheduler.complete(running, now=1.0)] == [staying]
    with pytest.raises(ValueError, match="admitted"):
        scheduler.complete(running, now=1.1)


def test_gcra_rate_limit_refuses_with_its_own_retry_after_and_ratelimit_fields() -> None:
    limited = KeyPolicy(tier=Tier.PAID, rate_per_s=10.0, burst=2)
    scheduler = FairScheduler(SchedulerPolicy(capacity=100))
    assert scheduler.rate_limit_status("k", limited, now=0.0) == RateLimitStatus(
        quota=10, window_s=1, remaining=2, reset_s=0.0
    )
    for _ in range(2):
        admitted(scheduler.submit("k", limited, now=0.0))
    refusal = refused(scheduler.submit("k", limited, now=0.0))
    assert (refusal.reason, refusal.status_hint) == (RefusalReason.RATE_LIMITED, 429)
    assert refusal.retry_after_s == pytest.approx(0.1)
    assert refusal.rate_limit == RateLimitStatus(quota=10, window_s=1, remaining=0, reset_s=pytest.approx(0.2))
    # A refused request costs nothing: the key may send again exactly when told to.
    admitted(scheduler.submit("k", limited, now=0.1))
    assert isinstance(scheduler.submit("unlimited", PAID, now=0.1), Admitted)
    assert scheduler.rate_limit_status("unlimited", PAID, now=0.1) is None


@pytest.mark.parametrize(
    ("rate", "burst", "sends", "quota", "window_s", "remaining", "reset_s"),
    [
        (10.0, 1, 0, 10, 1, 1, 0.0),
        (10.0, 5, 3, 10, 1, 2, 0.3),
        (0.5, 1, 1, 1, 2, 0, 2.0),  # one per two seconds
        (1.0, 60, 60, 60, 60, 0, 60.0),  # a minute's burst, all spent
    ],
)
def test_ratelimit_figures_describe_the_gcra_state(
    rate: float, burst: int, sends: int, quota: int, window_s: int, remaining: int, reset_s: float
) -> None:
    gcra = Gcra(rate, burst)
    for _ in range(sends):
        gcra.consume(100.0)
    assert rate_limit_status(gcra, 100.0) == RateLimitStatus(
        quota=quota, window_s=window_s, remaining=remaining, reset_s=pytest.approx(reset_s)
    )


def test_one_key_holds_at_most_its_share_of_the_slots() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=10, key_concurrency_share_max=0.5))
    verdicts = [scheduler.submit("greedy", PAID, now=0.0) for _ in range(8)]
    running = [v.ticket for v in verdicts if isinstance(v, Admitted)]
    assert len(running) == 5
    assert isinstance(scheduler.submit("polite", PAID, now=0.0), Admitted)
    # Completing one of its own lets the next greedy request in, and no more.
    grants = scheduler.complete(running[0], now=1.0)
    assert [g.ticket.key for g in grants] == ["greedy"]
    assert grants[0].waited_s == 1.0
    assert scheduler.statistics().top_keys[0].inflight == 5


def test_a_lone_key_on_a_single_slot_is_not_capped_to_nothing() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=1, key_concurrency_share_max=0.1))
    admitted(scheduler.submit("a", PAID, now=0.0))


@pytest.mark.parametrize("cost", [0.0, -1.0, float("inf"), float("nan")])
def test_costs_must_be_positive_and_finite(cost: float) -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=1))
    with pytest.raises(ValueError, match="cost"):
        scheduler.submit("a", PAID, now=0.0, cost=cost)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": 4, "key_concurrency_share_max": 0.0},
        {"capacity": 4, "key_queue_length_max": 0},
        {"capacity": 4, "key_queue_length_max": 10, "queue_length_max": 5},
        {"capacity": 4, "queue_wait_s_max": 0.0},
    ],
)
def test_nonsensical_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        SchedulerPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"weight": 0.0}, {"rate_per_s": -1.0}, {"burst": 0}])
def test_nonsensical_key_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        KeyPolicy(**kwargs)  # type: ignore[arg-type]
