"""Key state is released when a key goes idle, so many distinct keys cannot grow memory without bound."""

from __future__ import annotations

from scheduler.admission import Refused
from scheduler.fair import Admitted, FairScheduler, KeyPolicy, Queued, SchedulerPolicy
from scheduler.tiers import Tier

FREE = KeyPolicy(tier=Tier.FREE)


def test_ten_thousand_passing_keys_leave_nothing_behind() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=16, queue_length_max=20_000))
    tickets = []
    for index in range(10_000):
        verdict = scheduler.submit(f"client-{index}", FREE, now=index * 1e-4)
        assert isinstance(verdict, Admitted | Queued)
        tickets.append(verdict.ticket)
    assert scheduler.statistics().keys_tracked == 10_000
    running = [t for t in tickets if t.admitted_at is not None]
    for _ in range(10_000):
        ticket = running.pop()
        running += [grant.ticket for grant in scheduler.complete(ticket, now=2.0)]
    assert running == []
    statistics = scheduler.statistics()
    assert (statistics.keys_tracked, statistics.inflight, statistics.queued) == (0, 0, 0)
    assert statistics.top_keys == ()


def test_rate_limited_keys_are_kept_only_until_their_burst_has_recovered() -> None:
    limited = KeyPolicy(tier=Tier.FREE, rate_per_s=2.0, burst=4)
    scheduler = FairScheduler(SchedulerPolicy(capacity=8))
    verdicts = [scheduler.submit("k", limited, now=0.0) for _ in range(4)]
    for verdict in verdicts:
        assert isinstance(verdict, Admitted)
        scheduler.complete(verdict.ticket, now=0.1)
    # Idle, but forgetting it now would hand it a fresh burst of 4: it is kept until 0.1 + 4 / 2 s.
    assert scheduler.statistics().keys_tracked == 1
    assert scheduler.next_deadline() == 2.1
    assert isinstance(scheduler.submit("k", limited, now=0.2), Refused)
    assert scheduler.expire(2.1) == []
    assert scheduler.statistics().keys_tracked == 0
    assert scheduler.next_deadline() is None
    # By then the GCRA had recovered anyway: the fresh state is exactly what the old one would say.
    assert [type(scheduler.submit("k", limited, now=2.1)) for _ in range(5)] == [Admitted] * 4 + [Refused]


def test_a_returning_idle_key_is_not_forgotten_under_it() -> None:
    limited = KeyPolicy(tier=Tier.FREE, rate_per_s=1.0, burst=2)
    scheduler = FairScheduler(SchedulerPolicy(capacity=1))
    first = scheduler.submit("k", limited, now=0.0)
    assert isinstance(first, Admitted)
    scheduler.complete(first.ticket, now=0.5)  # idle: would be forgotten at 2.5
    second = scheduler.submit("k", limited, now=1.0)
    assert isinstance(second, Admitted)
    scheduler.expire(3.0)
    assert scheduler.statistics().top_keys[0].inflight == 1
    scheduler.complete(second.ticket, now=3.0)
    assert scheduler.statistics().keys_tracked == 1  # idle again, until 5.0
    scheduler.expire(5.0)
    assert scheduler.statistics().keys_tracked == 0


def test_per_key_statistics_stay_bounded_and_show_the_busiest() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=4, queue_length_max=5_000))
    for index in range(1_000):
        for _ in range(1 + index % 7):
            scheduler.submit(f"k{index}", FREE, now=0.0)
    statistics = scheduler.statistics(top_keys=5)
    assert statistics.keys_tracked == 1_000
    assert len(statistics.top_keys) == 5
    assert all(k.queued + k.inflight == 7 for k in statistics.top_keys)
    assert repr(scheduler) == "<FairScheduler capacity=4: 4 in flight, 3993 queued, 1000 keys>"
