"""The invariants hold on healthy and faulty runs of the real nodes, and the report's figures agree with each other.
A fixed set of seeds runs here (swarm faults included), so CI replays the same runs every time."""

from __future__ import annotations

import dataclasses

import pytest

from simulations.actors import DeliveryReport
from simulations.run import RunReport, run_scenario
from simulations.scenario import (
    ClusterSpec,
    FaultSpec,
    ProviderSpec,
    ReceiverSpec,
    Scenario,
    SwarmSpec,
    TenantSpec,
)
from simulations.workload import JobEntry, Ledger

TWO_TIERS = Scenario(
    name="two-tiers",
    duration_s=12,
    warmup_s=3,
    drain_s=15,
    cluster=ClusterSpec(nodes=3, regions=("iad", "lax")),
    providers=(
        ProviderSpec(name="api", rate_limit_rps=1, signal="ratelimit", error_rate=0.05),
        ProviderSpec(name="bare", rate_limit_rps=2, signal="none"),
    ),
    receivers=(ReceiverSpec(name="app", failure_rate=0.2), ReceiverSpec(name="audit")),
    tenants=(
        TenantSpec(name="big", tier="paid", provider="api", keys=6, rate_per_s=8, receivers=("app", "audit"), quorum=2),
        TenantSpec(name="small", tier="free", provider="bare", keys=2, rate_per_s=2, arrival="periodic", workers=2),
    ),
    swarm=SwarmSpec(kinds=("crash", "partition", "loss", "upstream_errors", "receiver_outage"), rate_per_min=12),
)


def consistent(report: RunReport) -> None:
    everyone = report.tiers["all"]
    assert everyone.acked == sum(stats.acked for tier, stats in report.tiers.items() if tier != "all")
    assert everyone.acked == everyone.succeeded + everyone.failed + everyone.pending
    assert everyone.acked + everyone.shed <= everyone.submitted
    assert sum(report.pending_reasons.values()) >= everyone.pending
    assert len(report.series["queue_depth"]) == pytest.approx(report.virtual_s, abs=2)
    assert report.upstream_requests >= everyone.succeeded


def test_a_healthy_run_passes_and_paces_every_credential() -> None:
    report = run_scenario(TWO_TIERS, seed=1)
    assert report.passed, report.violations
    consistent(report)
    assert set(report.tiers) == {"paid", "free", "all"}
    assert report.tiers["paid"].succeeded > 0 and report.tiers["free"].succeeded > 0
    assert report.fault_schedule == () and report.failover_s is None
    assert {"throughput/big", "throughput/small", "latency_p99_s/paid"} <= set(report.series)


def test_a_partition_and_a_crash_with_split_ownership_still_keep_every_invariant() -> None:
    faulty = dataclasses.replace(
        TWO_TIERS,
        faults=(
            FaultSpec(at_s=2, kind="partition", nodes=("n1",), duration_s=4),
            FaultSpec(at_s=7, kind="crash", nodes=("n2",), duration_s=3),
            FaultSpec(at_s=3, kind="receiver_outage", target="audit", duration_s=5),
        ),
    )
    report = run_scenario(faulty, seed=2)
    assert report.passed, report.violations
    consistent(report)
    assert report.fault_schedule == (
        "t=2s partition n1 <-/-> rest for 4s",
        "t=3s receiver_outage audit for 5s",
        "t=7s crash n2 for 3s",
    )


@pytest.mark.parametrize("seed", [5, 6])
def test_swarm_faults_drawn_from_fixed_seeds_keep_every_invariant(seed: int) -> None:
    scenario = TWO_TIERS.with_swarm_faults(seed)
    report = run_scenario(scenario, seed=seed)
    assert report.fault_schedule == tuple(fault.describe() for fault in scenario.faults)
    assert report.fault_schedule  # the swarm drew something to survive
    assert report.passed, (report.violations, report.fault_schedule)
    consistent(report)


def test_a_webhook_that_beats_the_acknowledgement_back_still_counts() -> None:
    # The owner may run a job and deliver its webhook while the 201 is still on its way back through the node that
    # forwarded it (the seed-502 partition swarm run, with a delay spike on that path, did exactly this).
    ledger = Ledger()
    ledger.on_delivery(DeliveryReport("app", 19.048, {"job_id": "job_1", "status": "success"}, True))
    ledger.on_delivery(DeliveryReport("app", 20.0, {"job_id": "job_never_acked", "status": "success"}, True))
    assert ledger.unknown_deliveries == 2
    entry = JobEntry(
        job_id="job_1", tenant="t", tier="paid", submitted_at=18.9, acked_at=19.08, node="n5", quorum=1, receivers=1
    )
    ledger.acknowledge(entry)
    assert entry.accepted_by == {"app"}
    assert (entry.status, entry.terminal_at) == ("success", 19.048)
    assert "job_1" not in ledger.open
    assert ledger.unknown_deliveries == 1  # only the job no client was ever told of
