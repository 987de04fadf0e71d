"""The tier split formula, as a table (no scheduler involved)."""

from __future__ import annotations

import pytest

from scheduler.tiers import TIERS_BY_PRIORITY, Tier, TierPolicy


@pytest.mark.parametrize(
    ("policy", "reserved", "paid", "free"),
    [
        (TierPolicy(), 0.20, 0.64, 0.16),
        (TierPolicy(reserved_share=0.5), 0.50, 0.40, 0.10),
        (TierPolicy(paid_weight=1.0, free_weight=1.0), 0.20, 0.40, 0.40),
        # Skewed weights: 0.8 / 101 would leave free 0.8 %, the floor lifts it to 5 %.
        (TierPolicy(paid_weight=100.0), 0.20, 0.75, 0.05),
        # Above the floor the weights rule.
        (TierPolicy(paid_weight=50.0, free_share_min=0.01), 0.20, 0.80 * 50 / 51, 0.80 / 51),
    ],
)
def test_shares_follow_the_formula_and_sum_to_one(
    policy: TierPolicy, reserved: float, paid: float, free: float
) -> None:
    shares = policy.shares()
    assert shares[Tier.RESERVED] == pytest.approx(reserved)
    assert shares[Tier.PAID] == pytest.approx(paid)
    assert shares[Tier.FREE] == pytest.approx(free)
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reserved_share": 0.0},  # a zero share is starvation by configuration
        {"reserved_share": 1.0},
        {"free_share_min": 0.0},
        {"reserved_share": 0.6, "free_share_min": 0.4},  # nothing left for paid
        {"paid_weight": 0.0},
        {"free_weight": float("nan")},
    ],
)
def test_policies_that_would_starve_a_tier_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        TierPolicy(**kwargs)


def test_priority_order_is_reserved_paid_free() -> None:
    assert TIERS_BY_PRIORITY == (Tier.RESERVED, Tier.PAID, Tier.FREE)
    assert [tier.value for tier in TIERS_BY_PRIORITY] == ["reserved", "paid", "free"]
