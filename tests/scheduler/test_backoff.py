"""Full-jitter backoff: the ceiling doubles up to a cap, draws stay under it, no overflow on huge attempts."""

from __future__ import annotations

import math
from random import Random

import pytest

from scheduler.backoff import backoff_ceiling, full_jitter


class HighestDraw(Random):
    """An rng whose uniform draws land on the top of the range, to read the ceiling through `full_jitter`."""

    def random(self) -> float:
        return 1.0


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s", "ceiling_s"),
    [
        (0, 0.5, 60.0, 0.5),
        (1, 0.5, 60.0, 1.0),
        (3, 0.5, 60.0, 4.0),
        (6, 0.5, 60.0, 32.0),
        (7, 0.5, 60.0, 60.0),  # 64 s capped
        (1_000, 0.5, 60.0, 60.0),  # 2**1000 * 0.5 is a finite float, still capped
        (5_000, 0.5, 60.0, 60.0),  # beyond float range: must not raise OverflowError
        (10**100, 1.0, 300.0, 300.0),  # beyond any C integer: likewise
        (10, 0.0, 60.0, 0.0),  # no base, no wait
        (4, 1.0, 0.0, 0.0),  # a zero cap wins
    ],
)
def test_ceiling_doubles_then_caps(attempt: int, base_s: float, cap_s: float, ceiling_s: float) -> None:
    assert backoff_ceiling(attempt, base_s=base_s, cap_s=cap_s) == ceiling_s
    assert full_jitter(attempt, base_s=base_s, cap_s=cap_s, rng=HighestDraw()) == ceiling_s


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 9, 40, 10_000])
def test_draws_stay_within_zero_and_the_ceiling_and_spread_over_it(attempt: int) -> None:
    rng = Random(attempt)
    ceiling_s = backoff_ceiling(attempt, base_s=1.0, cap_s=300.0)
    draws = [full_jitter(attempt, base_s=1.0, cap_s=300.0, rng=rng) for _ in range(400)]
    assert all(0.0 <= draw <= ceiling_s for draw in draws)
    # Full jitter, not equal jitter: draws reach both the bottom and the top fifth of the range.
    assert min(draws) < 0.2 * ceiling_s
    assert max(draws) > 0.8 * ceiling_s


def test_the_same_seed_gives_the_same_delays() -> None:
    first = [full_jitter(n, base_s=0.5, cap_s=60.0, rng=Random(7)) for n in range(10)]
    again = [full_jitter(n, base_s=0.5, cap_s=60.0, rng=Random(7)) for n in range(10)]
    assert first == again


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s"),
    [(-1, 1.0, 10.0), (0, -1.0, 10.0), (0, 1.0, -1.0), (0, 1.0, math.inf), (0, math.nan, 10.0)],
)
def test_rejects_nonsense_parameters(attempt: int, base_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError):
        full_jitter(attempt, base_s=base_s, cap_s=cap_s, rng=Random(0))
