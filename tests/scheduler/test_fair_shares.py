"""Fair shares in saturated simulations: a fixed-capacity upstream (8 slots, 20 ms each) on virtual time.

Tolerance: shares are measured over 10-20 s of virtual time (4,000-8,000 requests) and must be within 1.5
percentage points of the configured figure. The scheduler is deterministic, so these are not statistical
bounds; the slack only covers the requests in flight at the edges of the measuring window.
"""

from __future__ import annotations

import pytest

from scheduler.fair import Admitted, FairScheduler, KeyPolicy, SchedulerPolicy
from scheduler.tiers import Tier, TierPolicy
from tests.scheduler.upstream import Flow, SimulatedUpstream

SERVICE_S = 0.02
TOLERANCE = 0.015
RESERVED = KeyPolicy(tier=Tier.RESERVED)
PAID = KeyPolicy(tier=Tier.PAID)
FREE = KeyPolicy(tier=Tier.FREE)


def upstream(capacity: int = 8, **policy: object) -> SimulatedUpstream:
    return SimulatedUpstream(FairScheduler(SchedulerPolicy(capacity=capacity, **policy)), service_s=SERVICE_S)


def test_key_weights_and_request_costs_set_shares_within_a_tier() -> None:
    up = upstream(key_concurrency_share_max=1.0)
    up.add_flow(Flow("light", KeyPolicy(tier=Tier.PAID, weight=1.0), outstanding=30))
    up.add_flow(Flow("triple", KeyPolicy(tier=Tier.PAID, weight=3.0), outstanding=30))
    up.add_flow(Flow("costly", KeyPolicy(tier=Tier.PAID, weight=1.0), outstanding=30, cost=2.0))
    up.measure(1.0, 11.0)
    shares = up.share_by_key()
    # 1 : 3 : (1 at double cost) = 1 : 3 : 0.5
    assert shares["light"] == pytest.approx(1 / 4.5, abs=TOLERANCE)
    assert shares["triple"] == pytest.approx(3 / 4.5, abs=TOLERANCE)
    assert shares["costly"] == pytest.approx(0.5 / 4.5, abs=TOLERANCE)
    assert up.refusals == []


@pytest.mark.parametrize("capacity", [8, 64])
def test_busy_tiers_get_their_configured_shares(capacity: int) -> None:
    up = upstream(capacity)
    for tier_policy in (RESERVED, PAID, FREE):
        for index in range(3):
            up.add_flow(Flow(f"{tier_policy.tier}-{index}", tier_policy, outstanding=40))
    up.measure(1.0, 11.0)
    shares = up.share_by_tier()
    # 1.6 / 5.12 / 1.28 of 8 slots: fractional shares come out on average, not locked to whole slots.
    assert shares["reserved"] == pytest.approx(0.20, abs=TOLERANCE)
    assert shares["paid"] == pytest.approx(0.64, abs=TOLERANCE)
    assert shares["free"] == pytest.approx(0.16, abs=TOLERANCE)
    assert up.utilisation(10.0) == pytest.approx(1.0, abs=0.01)


def test_idle_reserved_share_is_borrowed_and_given_back() -> None:
    up = upstream()
    up.add_flow(Flow("paid", PAID, outstanding=40))
    up.add_flow(Flow("free", FREE, outstanding=40))
    up.measure(1.0, 11.0)
    # Reserved idle: paid and free split everything 4:1 and no slot stays idle.
    assert up.share_by_tier() == pytest.approx({"paid": 0.8, "free": 0.2}, abs=TOLERANCE)
    assert up.utilisation(10.0) == pytest.approx(1.0, abs=0.01)

    up.add_flow(Flow("reserved", RESERVED, outstanding=40))
    returned_at = up.now
    # Within two service times the borrowed capacity is back (no preemption: it comes as slots free up).
    up.measure(returned_at + 2 * SERVICE_S, returned_at + 3 * SERVICE_S)
    assert up.share_by_tier()["reserved"] >= 0.125
    up.measure(returned_at + 3 * SERVICE_S, returned_at + 10.0)
    assert up.share_by_tier() == pytest.approx({"reserved": 0.2, "paid": 0.64, "free": 0.16}, abs=TOLERANCE)

    up.remove_flow("reserved")
    up.measure(up.now + 1.0, up.now + 10.0)
    assert up.share_by_tier() == pytest.approx({"paid": 0.8, "free": 0.2}, abs=TOLERANCE)


def test_free_keeps_its_minimum_share_under_a_paid_flood() -> None:
    # Weights skewed 100:1 would leave free under 1 %; the floor keeps 5 % of all capacity (with reserved
    # idle, paid and free borrow its 20 % in proportion: 0.75 : 0.05 of 0.8).
    up = upstream(tiers=TierPolicy(paid_weight=100.0, free_share_min=0.05))
    for index in range(20):
        up.add_flow(Flow(f"paid-{index}", PAID, outstanding=50))
    up.add_flow(Flow("free", FREE, outstanding=50))
    up.measure(1.0, 11.0)
    assert up.share_by_tier()["free"] == pytest.approx(0.05 / 0.8, abs=TOLERANCE)


def test_a_slow_tier_is_charged_for_the_slots_it_holds_not_for_its_request_count() -> None:
    # Free requests hold their slot 10x longer; counting requests would hand free 5/7 of the slots.
    scheduler = FairScheduler(SchedulerPolicy(capacity=8))
    up = SimulatedUpstream(scheduler, service_s=lambda t: 10 * SERVICE_S if t.tier is Tier.FREE else SERVICE_S)
    up.add_flow(Flow("paid", PAID, outstanding=40))
    up.add_flow(Flow("free", FREE, outstanding=40))
    up.measure(2.0, 22.0)
    assert up.share_by_tier() == pytest.approx({"paid": 0.8, "free": 0.2}, abs=TOLERANCE)


def test_a_heavy_key_leaves_a_slot_for_a_light_one() -> None:
    up = upstream()
    up.add_flow(Flow("heavy", PAID, outstanding=50))
    up.run_until(1.0)
    # 0.9 of 8 slots: the flood holds 7, and every request of the light tenant starts at once.
    assert up.scheduler.statistics().inflight == 7
    for _ in range(20):
        assert isinstance(up.submit("light", PAID), Admitted)
        up.run_until(up.now + 0.1)
