"""Planted bugs prove the invariants catch real violations, and the same scenarios pass without them."""

from __future__ import annotations

import pytest

from simulations.run import run_scenario
from simulations.scenario import ClusterSpec, FaultSpec, ProviderSpec, Scenario, TenantSpec, load_scenario
from tests.simulations.test_scenarios_ci import CI_OVERRIDES

# Each key gets jobs four times faster than its provider allows, so every queue stays backlogged: one pacer per
# node is then visible upstream, and jobs wait in queues long enough for an uncommitted one to be lost.
BACKLOGGED = Scenario(
    name="backlogged",
    duration_s=20,
    warmup_s=3,
    drain_s=3,
    cluster=ClusterSpec(nodes=4, regions=("iad", "lax")),
    providers=(ProviderSpec(name="api", rate_limit_rps=0.5, burst=1, latency_median_s=0.05, latency_p99_s=0.2),),
    tenants=(TenantSpec(name="acme", provider="api", keys=5, rate_per_s=10),),
)
# Without replication: with a successor holding a copy of every job, a crash of the owner loses nothing even when
# the owner's own store acknowledged too early (the successor's store does not).
CRASHING = Scenario(
    name="backlogged-crash",
    duration_s=14,
    warmup_s=3,
    drain_s=12,
    cluster=ClusterSpec(nodes=4, regions=("iad", "lax"), replicas=1),
    providers=BACKLOGGED.providers,
    tenants=BACKLOGGED.tenants,
    faults=(FaultSpec(at_s=8, kind="crash", nodes=("n2",), duration_s=4),),
)


@pytest.mark.parametrize(
    ("scenario", "bug", "invariant"),
    [(BACKLOGGED, "queue-per-node", "upstream-limit"), (CRASHING, "ack-before-commit", "no-acked-job-lost")],
)
def test_a_planted_bug_trips_its_invariant_and_the_same_scenario_passes_without_it(
    scenario: Scenario, bug: str, invariant: str
) -> None:
    planted = run_scenario(scenario, seed=11, bugs=frozenset({bug}))
    assert not planted.passed
    (violation,) = planted.violations
    assert violation.invariant == invariant, violation
    assert planted.bugs == (bug,)
    assert planted.virtual_s < scenario.warmup_s + scenario.duration_s + scenario.drain_s  # stopped at once

    sound = run_scenario(scenario, seed=11)
    assert sound.passed, sound.violations
    assert sound.tiers["all"].acked > 0
    if bug == "ack-before-commit":
        # The crash happened after the workload began, and the jobs it caught are still owed, not lost.
        assert sound.fault_schedule == ("t=8s crash n2 for 4s",)
        assert violation.at_s >= scenario.warmup_s + 8
    else:
        # The provider saw one pacer per key: never more calls than its limit allows, give or take the tolerance.
        assert sound.upstream_requests <= 0.5 * 5 * (scenario.duration_s + scenario.drain_s + 5) + 5 * 2


# The bundled racing scenario, shortened: 6 nodes in three regions, jobs racing 2-3 regions whose provider latency
# differs (iad 50 ms, lax 150 ms, ord 400 ms median), so a race has losers still running when it is won.
RACING = load_scenario("racing").with_overrides({"duration": "8", "load": "0.5"})


def test_losers_left_running_trip_losers_cancelled_and_the_same_races_pass_with_them_cancelled() -> None:
    planted = run_scenario(RACING, seed=3, bugs=frozenset({"losers-not-cancelled"}))
    (violation,) = planted.violations
    assert violation.invariant == "losers-cancelled", violation
    assert "after the win (grace" in violation.detail, violation  # the provider answered a loser in full
    assert planted.bugs == ("losers-not-cancelled",)
    assert violation.at_s < RACING.warmup_s + 4  # caught at the first race judged, its bound just passed

    sound = run_scenario(RACING, seed=3)
    assert sound.passed, sound.violations
    assert sound.tiers["all"].succeeded > 0
    # Races ran: more calls than jobs (the losers' legs, the follow-ups), and most jobs had losers hang up.
    assert sound.upstream_requests > 2 * sound.tiers["all"].acked


def test_an_unknown_bug_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown planted bugs"):
        run_scenario(BACKLOGGED, seed=1, bugs=frozenset({"no-such-bug"}))


# The bundled quota scenario as CI runs it (test_scenarios_ci.py): a 200-job plan, about 1,000 submissions over
# 30 s, the cluster split 2|3 from t=1 s to t=11 s of the workload while the allowance is being spent.
QUOTA = load_scenario("quota").with_overrides({"duration": "30", "load": "0.7"})


def test_admitting_by_the_known_count_trips_quota_never_exceeded_and_escrow_keeps_the_same_run_within() -> None:
    planted = run_scenario(QUOTA, seed=1, bugs=frozenset({"quota-by-count"}))
    (violation,) = planted.violations
    assert violation.invariant == "quota-never-exceeded", violation
    assert "over its plan 'small''s allowance of 200 (160 + 40 overage)" in violation.detail, violation
    assert planted.bugs == ("quota-by-count",)
    split_at = QUOTA.warmup_s + QUOTA.faults[0].at_s
    # Each side admitted on its own: the excess is on the disks by the heal, or within the check after it (the
    # invariant is judged every virtual second).
    assert split_at < violation.at_s <= QUOTA.warmup_s + QUOTA.faults[0].end_s + 1.5

    sound = run_scenario(QUOTA, seed=1)
    assert sound.passed, sound.violations
    stats = sound.quotas["metered"]
    assert stats.counted == stats.allowance == 200 and stats.reached == "judged"


# The bundled disk-loss scenario as CI runs it: every key backlogged, n2 loses its disk at t=6 s, n4 for good at 20 s.
DISK_LOSS = load_scenario("disk-loss").with_overrides(CI_OVERRIDES["disk-loss"])


def test_acknowledging_before_the_successors_have_a_job_trips_no_acked_job_lost_when_the_owner_loses_its_disk() -> None:
    planted = run_scenario(DISK_LOSS, seed=1, bugs=frozenset({"ack-before-replicated"}))
    (violation,) = planted.violations
    assert violation.invariant == "no-acked-job-lost", violation
    assert planted.bugs == ("ack-before-replicated",)
    lost_at = DISK_LOSS.warmup_s + DISK_LOSS.faults[0].at_s
    assert lost_at < violation.at_s < lost_at + 2  # the jobs it acknowledged alone went with its disk

    sound = run_scenario(DISK_LOSS, seed=1)
    assert sound.passed, sound.violations
    assert sound.fault_schedule == ("t=6s disk_loss n2 for 12s", "t=20s disk_loss n4 never healed")
    assert sound.tiers["all"].succeeded > 0


# Five nodes split 2|3 for longer than failure detection plus the takeover wait, every key backlogged.
SPLIT = Scenario(
    name="backlogged-split",
    duration_s=45,
    warmup_s=3,
    drain_s=10,
    cluster=ClusterSpec(nodes=5, regions=("iad",)),
    providers=(ProviderSpec(name="api", rate_limit_rps=1, burst=1, latency_median_s=0.05, latency_p99_s=0.2),),
    tenants=(TenantSpec(name="acme", provider="api", keys=30, rate_per_s=60),),
    faults=(FaultSpec(at_s=5, kind="partition", nodes=("n1", "n2"), duration_s=30),),
)


def test_running_keys_without_the_majority_lease_trips_upstream_limit_under_a_split() -> None:
    planted = run_scenario(SPLIT, seed=11, bugs=frozenset({"minority-runs-keys"}))
    assert not planted.passed
    (violation,) = planted.violations
    assert violation.invariant == "upstream-limit", violation
    assert 5 < violation.at_s < 35  # during the split: both sides paced the key
    sound = run_scenario(SPLIT, seed=11)
    assert sound.passed, sound.violations
