"""Adaptive concurrency: the AIMD limit alone, then a scheduler against an upstream that sheds load."""

from __future__ import annotations

import pytest

from scheduler.admission import Outcome
from scheduler.aimd import AimdLimit, AimdPolicy
from scheduler.fair import FairScheduler, KeyPolicy, SchedulerPolicy
from scheduler.tiers import Tier
from tests.scheduler.upstream import Flow, SimulatedUpstream


def busy_limit(policy: AimdPolicy, *, limit_max: int = 100) -> AimdLimit:
    return AimdLimit(policy, limit_max=limit_max)


def test_grows_by_one_slot_per_round_of_fast_successes() -> None:
    aimd = busy_limit(AimdPolicy(limit_initial=4, latency_tolerance=None))
    for _ in range(5):  # a round: about `limit` successes
        aimd.on_success(0.01, admitted_at=0.0, in_use=4, now=0.01)
    assert aimd.limit == 5
    for _ in range(50):
        aimd.on_success(0.01, admitted_at=0.0, in_use=aimd.limit, now=0.01)
    assert 10 <= aimd.limit <= 12  # ~sqrt(2 * 50) rounds' worth, not 50


def test_does_not_grow_while_mostly_idle_and_never_beyond_the_maximum() -> None:
    aimd = busy_limit(AimdPolicy(limit_initial=8, latency_tolerance=None), limit_max=9)
    for _ in range(100):
        aimd.on_success(0.01, admitted_at=0.0, in_use=3, now=0.01)
    assert aimd.limit == 8
    for _ in range(100):
        aimd.on_success(0.01, admitted_at=0.0, in_use=8, now=0.01)
    assert aimd.limit == 9


def test_halves_once_per_round_on_429_or_503() -> None:
    aimd = busy_limit(AimdPolicy(limit_initial=40))
    aimd.on_overload(admitted_at=0.0, now=1.0)
    assert aimd.limit == 20
    # Everything that was already in flight at the decrease reports the same congestion: ignored.
    for _ in range(30):
        aimd.on_overload(admitted_at=0.5, now=1.1)
    assert aimd.limit == 20
    # A request sent after the decrease that still meets congestion halves again, down to the floor.
    for step in range(10):
        aimd.on_overload(admitted_at=2.0 + step, now=2.5 + step)
    assert aimd.limit == 1


def test_latency_beyond_tolerance_of_the_baseline_counts_as_congestion() -> None:
    aimd = busy_limit(AimdPolicy(limit_initial=20, latency_tolerance=2.0))
    for _ in range(10):
        aimd.on_success(0.010, admitted_at=0.0, in_use=20, now=0.1)
    grown = aimd.limit
    aimd.on_success(0.019, admitted_at=0.0, in_use=20, now=0.2)  # under 2x the 10 ms baseline: fine
    assert aimd.limit == grown
    aimd.on_success(0.050, admitted_at=0.0, in_use=20, now=0.3)
    assert aimd.limit == grown // 2


def test_baseline_follows_an_upstream_that_really_became_slower() -> None:
    aimd = busy_limit(AimdPolicy(limit_initial=20, latency_tolerance=2.0, baseline_window=10))
    aimd.on_success(0.010, admitted_at=0.0, in_use=20, now=0.0)
    limits = []
    for step in range(60):
        aimd.on_success(0.100, admitted_at=float(step), in_use=20, now=step + 0.5)
        limits.append(aimd.limit)
    # 100 ms looks like congestion next to the old 10 ms baseline, but within two windows of samples it is
    # the new normal: the limit stops falling and grows again.
    last_decrease = max(i for i in range(1, 60) if limits[i] < limits[i - 1])
    assert last_decrease < 20
    assert limits[-1] > min(limits)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit_initial": 0},
        {"limit_min": 5, "limit_initial": 4},
        {"decrease_factor": 1.0},
        {"increase_per_round": 0.0},
        {"latency_tolerance": 1.0},
        {"baseline_window": 0},
    ],
)
def test_nonsensical_aimd_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        AimdPolicy(**kwargs)  # type: ignore[arg-type]


def test_the_initial_limit_is_clamped_to_the_maximum_and_the_minimum_must_fit() -> None:
    assert AimdLimit(AimdPolicy(limit_initial=4), limit_max=2).limit == 2
    with pytest.raises(ValueError, match="limit_min"):
        AimdLimit(AimdPolicy(limit_min=3, limit_initial=4), limit_max=2)


def test_scheduler_capacity_tracks_an_upstream_that_sheds_load_beyond_ten() -> None:
    scheduler = FairScheduler(
        SchedulerPolicy(capacity=64, key_concurrency_share_max=1.0, aimd=AimdPolicy(limit_initial=2))
    )
    assert scheduler.capacity == 2
    up = SimulatedUpstream(scheduler, service_s=0.02)
    up.outcome_for = lambda in_flight: Outcome.OVERLOADED if in_flight > 10 else Outcome.SUCCESS
    up.add_flow(Flow("flood", KeyPolicy(tier=Tier.PAID), outstanding=50))
    up.run_until(0.5)
    capacities = []
    for step in range(1, 201):
        up.run_until(0.5 + step * 0.05)
        capacities.append(scheduler.capacity)
    # A TCP-style sawtooth around the true capacity: never far above it, never stuck at the bottom.
    assert max(capacities) <= 12
    assert min(capacities) >= 4
    assert 7 <= sum(capacities) / len(capacities) <= 10


def test_adaptive_concurrency_is_off_by_default() -> None:
    scheduler = FairScheduler(SchedulerPolicy(capacity=8))
    up = SimulatedUpstream(scheduler, service_s=0.02)
    up.outcome_for = lambda in_flight: Outcome.OVERLOADED
    up.add_flow(Flow("flood", KeyPolicy(tier=Tier.PAID), outstanding=20))
    up.run_until(1.0)
    assert scheduler.capacity == 8
