"""Region health (edge/engine/regions.py) driven directly: no trio, no clock.

`now` is monotonic seconds starting at NOW0; every rng is `Random(seed)`, so probes and simulated latencies are the
same on every run. Settings with `probe_fraction=0.0` (NO_PROBES) make `rank` deterministic where a test is about
the order by cost, not about probing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from random import Random

import pytest

from edge.engine.regions import (
    BASE_EJECTION_S,
    CONSECUTIVE_FAILURES_MAX,
    DECAY_S,
    MAX_EJECTION_S,
    ORIGIN_REGIONS_MAX,
    PROBE_AFTER_S,
    PROBE_FRACTION,
    SAMPLES_MAX,
    HealthSettings,
    RegionHealth,
    RegionStatus,
)

SEED = 20_240_611
NOW0 = 1000.0
ORIGIN = "https://api.example.com"
OTHER = "https://other.example.com"
NO_PROBES = HealthSettings(probe_fraction=0.0)


def status(health: RegionHealth, region: str, now: float, origin: str = ORIGIN) -> RegionStatus:
    return health.snapshot(origin, now=now)[origin][region]


def latency_s(health: RegionHealth, region: str, now: float) -> float:
    ms = status(health, region, now).latency_ms
    assert ms is not None
    return ms / 1000.0


def measured(estimates_s: Mapping[str, float], now: float = NOW0, settings: HealthSettings = NO_PROBES) -> RegionHealth:
    """A health table where each region of ORIGIN was measured once, at `now`, at the given latency."""
    health = RegionHealth(settings)
    for region, rtt_s in estimates_s.items():
        health.succeeded(ORIGIN, region, rtt_s, now)
    return health


def fail(health: RegionHealth, region: str, now: float, times: int = CONSECUTIVE_FAILURES_MAX) -> None:
    for _ in range(times):
        health.failed(ORIGIN, region, now)


def ejected_for_s(health: RegionHealth, region: str, now: float) -> float | None:
    until = status(health, region, now).ejected_until
    return None if until is None else until - now


# ---------------------------------------------------------------------------------------------------------------
# Peak EWMA


@pytest.mark.parametrize(
    ("first_s", "second_s", "elapsed_s", "expected_s"),
    [
        (0.05, 0.5, 1.0, 0.5),  # a spike is taken at once
        (0.05, 0.5, 0.0, 0.5),  # even in the same instant
        (0.5, 0.05, 0.0, 0.5),  # a lower sample in the same instant has no weight
        (0.5, 0.05, 1.0, 0.5 * math.exp(-0.1) + 0.05 * (1 - math.exp(-0.1))),
        (0.5, 0.05, DECAY_S, 0.5 * math.exp(-1.0) + 0.05 * (1 - math.exp(-1.0))),
        (0.5, 0.05, 100 * DECAY_S, 0.05),  # an old estimate is forgotten
        (0.2, 0.2, 5.0, 0.2),
    ],
)
def test_peak_ewma_takes_spikes_at_once_and_decays_by_elapsed_time(
    first_s: float, second_s: float, elapsed_s: float, expected_s: float
) -> None:
    health = RegionHealth(NO_PROBES)
    health.succeeded(ORIGIN, "iad", first_s, NOW0)
    health.succeeded(ORIGIN, "iad", second_s, NOW0 + elapsed_s)
    assert latency_s(health, "iad", NOW0 + elapsed_s) == pytest.approx(expected_s, rel=1e-12, abs=1e-12)


def test_decay_back_after_a_spike_follows_the_formula_step_by_step() -> None:
    health = RegionHealth(NO_PROBES)
    health.succeeded(ORIGIN, "iad", 0.05, NOW0)
    health.succeeded(ORIGIN, "iad", 1.0, NOW0 + 1.0)
    expected_s, now = 1.0, NOW0 + 1.0
    for _ in range(30):
        now += 2.0
        health.succeeded(ORIGIN, "iad", 0.05, now)
        weight = math.exp(-2.0 / DECAY_S)
        expected_s = expected_s * weight + 0.05 * (1 - weight)
        assert latency_s(health, "iad", now) == pytest.approx(expected_s, rel=1e-12)
    assert expected_s < 0.06  # 60 s later the spike is all but gone


@pytest.mark.parametrize(("in_flight", "expected_s"), [(0, 0.1), (1, 0.2), (2, 0.3), (9, 1.0)])
def test_cost_is_the_estimate_times_in_flight_plus_one(in_flight: int, expected_s: float) -> None:
    health = measured({"iad": 0.1})
    for _ in range(in_flight):
        health.started(ORIGIN, "iad", NOW0)
    assert health.cost(ORIGIN, "iad", NOW0) == pytest.approx(expected_s)
    assert status(health, "iad", NOW0).in_flight == in_flight


def test_each_verdict_and_finished_end_one_attempt() -> None:
    health = measured({"iad": 0.1})
    for _ in range(4):
        health.started(ORIGIN, "iad", NOW0)
    health.succeeded(ORIGIN, "iad", 0.1, NOW0 + 1)
    health.failed(ORIGIN, "iad", NOW0 + 1)
    health.finished(ORIGIN, "iad", NOW0 + 1)  # a race's loser: nothing learned
    assert status(health, "iad", NOW0 + 1).in_flight == 1
    health.finished(ORIGIN, "iad", NOW0 + 1)
    health.finished(ORIGIN, "iad", NOW0 + 1)  # one too many (the pair was forgotten meanwhile, say): stays at 0
    after = status(health, "iad", NOW0 + 1)
    assert (after.in_flight, after.samples) == (0, 2)


@pytest.mark.parametrize(
    ("rtt_s", "expected_s"),
    [
        (0.002, 0.05),  # a fast failure does not make the region look fast
        (0.05, 0.05),
        (2.0, 2.0),  # a timeout makes it look slow
        (None, 0.05),
    ],
)
def test_a_failures_latency_can_only_raise_the_estimate(rtt_s: float | None, expected_s: float) -> None:
    health = measured({"iad": 0.05})
    health.failed(ORIGIN, "iad", NOW0 + 1.0, rtt_s=rtt_s)
    assert latency_s(health, "iad", NOW0 + 1.0) == pytest.approx(expected_s)
    assert status(health, "iad", NOW0 + 1.0).samples == 1  # failures never enter the p95 window


def test_a_region_never_measured_costs_nothing_until_an_attempt_is_in_flight() -> None:
    health = measured({"iad": 0.05, "lax": 0.06, "ord": 0.10})
    assert health.cost(ORIGIN, "syd", NOW0) == 0.0
    assert health.rank(ORIGIN, ["iad", "syd"], NOW0, Random(SEED)) == ["syd", "iad"]  # it must get measured
    health.started(ORIGIN, "syd", NOW0)
    # Then it is costed as if it were a typical region (the median, 60 ms), with its attempt counted.
    assert health.cost(ORIGIN, "syd", NOW0) == pytest.approx(0.06 * 2)
    assert health.rank(ORIGIN, ["syd", "iad"], NOW0, Random(SEED)) == ["iad", "syd"]


def test_a_burst_to_a_fresh_origin_spreads_over_its_regions() -> None:
    health = RegionHealth(NO_PROBES)
    chosen = []
    for _ in range(6):
        region = health.rank(ORIGIN, ["iad", "lax", "ord"], NOW0, Random(SEED))[0]
        health.started(ORIGIN, region, NOW0)
        chosen.append(region)
    assert chosen == ["iad", "lax", "ord", "iad", "lax", "ord"]


@pytest.mark.parametrize("age_s", [0.0, 5.0, DECAY_S, 3 * DECAY_S])
def test_an_old_estimate_ages_toward_the_origins_best(age_s: float) -> None:
    health = measured({"iad": 0.05, "ord": 1.0})
    health.succeeded(ORIGIN, "iad", 0.05, NOW0 + age_s)  # iad stays fresh
    expected_s = 0.05 + (1.0 - 0.05) * math.exp(-age_s / DECAY_S)
    assert health.cost(ORIGIN, "ord", NOW0 + age_s) == pytest.approx(expected_s)
    assert latency_s(health, "ord", NOW0 + age_s) == 1.0  # the view shows what was measured


def test_the_error_rate_is_a_decayed_failure_fraction() -> None:
    health = RegionHealth(NO_PROBES)
    health.failed(ORIGIN, "iad", NOW0)
    assert status(health, "iad", NOW0).error_rate == 1.0
    health.succeeded(ORIGIN, "iad", 0.05, NOW0)  # same instant: both count fully
    assert status(health, "iad", NOW0).error_rate == pytest.approx(0.5)
    health.succeeded(ORIGIN, "iad", 0.05, NOW0 + DECAY_S)
    weight = math.exp(-1.0)
    assert status(health, "iad", NOW0 + DECAY_S).error_rate == pytest.approx(weight / (2 * weight + 1))
    assert status(measured({"lax": 0.05}), "lax", NOW0).error_rate == 0.0
    health.started(ORIGIN, "new", NOW0)
    assert status(health, "new", NOW0).error_rate is None


@pytest.mark.parametrize("rtt_s", [-0.001, math.nan, math.inf])
def test_a_latency_must_be_a_finite_number_of_seconds(rtt_s: float) -> None:
    health = RegionHealth()
    with pytest.raises(ValueError, match="rtt_s"):
        health.succeeded(ORIGIN, "iad", rtt_s, NOW0)
    with pytest.raises(ValueError, match="rtt_s"):
        health.failed(ORIGIN, "iad", NOW0, rtt_s=rtt_s)


# ---------------------------------------------------------------------------------------------------------------
# Ejection


@pytest.mark.parametrize(
    ("outcomes", "ejected"),
    [
        ("FFFFF", True),
        ("FFFF", False),
        ("FFFFS", False),  # a success resets the streak
        ("FFFFSFFFF", False),
        ("FFFFSFFFFF", True),
        ("SSFFFFFS", True),  # a success after the ejection does not end it
        ("FFFFFFFF", True),
    ],
)
def test_consecutive_failures_eject(outcomes: str, ejected: bool) -> None:
    health = measured({"iad": 0.05, "lax": 0.05})
    for outcome in outcomes:
        if outcome == "F":
            health.failed(ORIGIN, "iad", NOW0)
        else:
            health.succeeded(ORIGIN, "iad", 0.05, NOW0)
    assert (status(health, "iad", NOW0).ejected_until is not None) is ejected
    assert status(health, "lax", NOW0).ejected_until is None


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    health = measured({"iad": 0.05, "lax": 0.05})
    now, durations = NOW0, []
    for _ in range(13):
        fail(health, "iad", now)
        duration_s = ejected_for_s(health, "iad", now)
        assert duration_s is not None
        durations.append(duration_s)
        now += duration_s  # back at once, and failing again at once
    assert durations == [30.0, 60.0, 90.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0, 300.0, 300.0, 300.0]
    assert (BASE_EJECTION_S, MAX_EJECTION_S) == (30.0, 300.0)
    assert status(health, "iad", now).ejections_total == 13


@pytest.mark.parametrize(
    ("quiet_s", "times_ejected_after", "next_ejection_s"),
    [
        (0.0, 2, 90.0),  # two ejections (30 s, 60 s), failing again at once: the third lasts 90 s
        (59.0, 2, 90.0),
        (60.0, 1, 60.0),  # a quiet period as long as the last ejection takes one off
        (89.0, 1, 60.0),
        (90.0, 0, 30.0),  # then one as long as the ejection before it
        (10_000.0, 0, 30.0),
    ],
)
def test_the_ejection_multiplier_decays_after_quiet_periods(
    quiet_s: float, times_ejected_after: int, next_ejection_s: float
) -> None:
    health = measured({"iad": 0.05, "lax": 0.05})
    fail(health, "iad", NOW0)
    fail(health, "iad", NOW0 + 30.0)
    ended_at = NOW0 + 30.0 + 60.0
    assert status(health, "iad", ended_at - 1).times_ejected == 2
    back = status(health, "iad", ended_at + quiet_s)
    assert (back.ejected_until, back.times_ejected) == (None, times_ejected_after)
    fail(health, "iad", ended_at + quiet_s)
    assert ejected_for_s(health, "iad", ended_at + quiet_s) == next_ejection_s


def test_never_the_last_region_two_regions_both_failing() -> None:
    health = measured({"iad": 0.05, "lax": 0.05})
    fail(health, "iad", NOW0)
    fail(health, "lax", NOW0, times=20)
    assert ejected_for_s(health, "iad", NOW0) == 30.0
    assert status(health, "lax", NOW0).ejected_until is None
    assert status(health, "lax", NOW0).consecutive_failures == 20  # the streak stays: it tries again later
    assert health.statistics().ejections_refused_total == 16
    # iad comes back (with a fresh streak); lax's next failure ejects lax, and iad may not be ejected now.
    back_at = NOW0 + 30.0
    assert status(health, "iad", back_at).consecutive_failures == 0
    health.failed(ORIGIN, "lax", back_at)
    assert ejected_for_s(health, "lax", back_at) == 30.0
    fail(health, "iad", back_at)
    assert status(health, "iad", back_at).ejected_until is None


@pytest.mark.parametrize(
    ("regions", "ejected_max"),
    [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (10, 5)],
)
def test_at_most_half_of_an_origins_regions_and_never_all(regions: int, ejected_max: int) -> None:
    names = [f"r{i}" for i in range(regions)]
    health = measured(dict.fromkeys(names, 0.05))
    for name in names:
        fail(health, name, NOW0, times=10)
    assert health.statistics().ejected == ejected_max
    ranked = health.rank(ORIGIN, names, NOW0, Random(SEED))
    assert len(ranked) == regions and ranked[0] not in {n for n in names[:ejected_max]}


@pytest.mark.parametrize(("fraction", "regions", "ejected_max"), [(0.0, 3, 1), (1.0, 3, 2), (1.0, 1, 0)])
def test_the_ejected_fraction_is_at_least_one_region_and_never_all(
    fraction: float, regions: int, ejected_max: int
) -> None:
    names = [f"r{i}" for i in range(regions)]
    health = measured(dict.fromkeys(names, 0.05), settings=HealthSettings(max_ejected_fraction=fraction))
    for name in names:
        fail(health, name, NOW0)
    assert health.statistics().ejected == ejected_max


def test_an_ejected_region_returns_after_its_time_with_a_fresh_streak() -> None:
    health = measured({"iad": 0.05, "lax": 0.08})
    fail(health, "iad", NOW0)
    health.succeeded(ORIGIN, "lax", 0.08, NOW0 + 29.0)  # fresh: no staleness probe of lax at +30 s
    candidates = ["iad", "lax"]
    assert health.rank(ORIGIN, candidates, NOW0 + 29.999, Random(SEED)) == ["lax", "iad"]
    assert health.rank(ORIGIN, candidates, NOW0 + 30.0, Random(SEED)) == ["iad", "lax"]
    back = status(health, "iad", NOW0 + 30.0)
    assert (back.ejected_until, back.consecutive_failures, back.times_ejected) == (None, 0, 1)
    health.failed(ORIGIN, "iad", NOW0 + 30.0)  # one failure after coming back is one, not six
    assert status(health, "iad", NOW0 + 30.0).ejected_until is None


# ---------------------------------------------------------------------------------------------------------------
# Rank


@pytest.mark.parametrize(
    ("estimates_s", "candidates", "expected"),
    [
        ({"iad": 0.2, "lax": 0.05, "ord": 0.1}, ["iad", "lax", "ord"], ["lax", "ord", "iad"]),
        ({"iad": 0.2, "lax": 0.05, "ord": 0.1}, ["ord", "iad"], ["ord", "iad"]),
        ({"iad": 0.2, "lax": 0.05}, ["iad", "syd", "lax"], ["syd", "lax", "iad"]),  # never measured: first
        ({"iad": 0.2}, ["syd", "fra", "iad"], ["syd", "fra", "iad"]),  # unmeasured ones keep their order
        ({"iad": 0.2, "lax": 0.05}, ["lax", "iad", "lax"], ["lax", "iad"]),  # duplicates once
        ({"iad": 0.2}, [], []),
    ],
)
def test_rank_puts_the_lowest_cost_first(
    estimates_s: dict[str, float], candidates: list[str], expected: list[str]
) -> None:
    assert measured(estimates_s).rank(ORIGIN, candidates, NOW0, Random(SEED)) == expected


def test_rank_counts_requests_in_flight() -> None:
    health = measured({"iad": 0.05, "lax": 0.07})
    health.started(ORIGIN, "iad", NOW0)  # 0.10 against 0.07
    assert health.rank(ORIGIN, ["iad", "lax"], NOW0, Random(SEED)) == ["lax", "iad"]


def test_near_equal_regions_take_turns_least_recently_measured_first() -> None:
    health = RegionHealth(NO_PROBES)
    health.succeeded(ORIGIN, "lax", 0.055, NOW0)
    health.succeeded(ORIGIN, "iad", 0.050, NOW0 + 1)
    health.succeeded(ORIGIN, "ord", 0.200, NOW0 - 1)
    # lax is within 25 % of iad and was measured earlier; ord is far outside the band.
    assert health.rank(ORIGIN, ["iad", "lax", "ord"], NOW0 + 2, Random(SEED)) == ["lax", "iad", "ord"]
    turns = []
    now = NOW0 + 2
    for _ in range(4):
        region = health.rank(ORIGIN, ["iad", "lax", "ord"], now, Random(SEED))[0]
        health.succeeded(ORIGIN, region, {"iad": 0.050, "lax": 0.055}[region], now)
        turns.append(region)
        now += 1.0
    assert turns == ["lax", "iad", "lax", "iad"]


def test_ejected_regions_go_last_by_the_end_of_their_ejection() -> None:
    health = measured({"iad": 0.05, "lax": 0.06, "ord": 0.5, "fra": 0.9, "syd": 2.0})
    fail(health, "lax", NOW0)  # until NOW0 + 30
    fail(health, "iad", NOW0 + 10)  # until NOW0 + 40
    ranked = health.rank(ORIGIN, ["iad", "lax", "ord", "fra", "syd"], NOW0 + 20, Random(SEED))
    assert ranked == ["ord", "fra", "syd", "lax", "iad"]
    assert health.rank(ORIGIN, ["iad", "lax"], NOW0 + 20, Random(SEED)) == ["lax", "iad"]  # still ranked


def test_random_probes_move_a_slower_region_first_about_probe_fraction_of_the_time() -> None:
    health = measured({"iad": 0.05, "ord": 0.15}, settings=HealthSettings())
    rng = Random(SEED)
    draws = 10_000
    firsts = Counter(health.rank(ORIGIN, ["iad", "ord"], NOW0 + 1.0, rng)[0] for _ in range(draws))
    # Binomial(10,000, 0.05): mean 500, standard deviation 22; the band is about four of them either side.
    assert PROBE_FRACTION == 0.05
    assert 410 <= firsts["ord"] <= 590
    assert health.statistics().probes_total == firsts["ord"]


def test_a_random_probe_picks_among_the_other_regions_evenly() -> None:
    health = measured({"iad": 0.05, "lax": 0.12, "ord": 0.18}, settings=HealthSettings(probe_fraction=1.0))
    rng = Random(SEED)
    firsts = Counter(health.rank(ORIGIN, ["iad", "lax", "ord"], NOW0 + 1.0, rng)[0] for _ in range(2_000))
    assert firsts["iad"] == 0 and 900 <= firsts["lax"] <= 1100 and firsts["lax"] + firsts["ord"] == 2_000


def test_a_region_far_slower_than_the_best_is_never_probed_at_random_only_when_stale() -> None:
    """A partial outage (20x slower) would cost a job at 20x the latency per random probe: only the staleness
    probe re-measures it, once per probe_after_s; a region within the ratio is still sampled."""
    health = measured({"iad": 0.05, "lax": 0.15, "ord": 1.0}, settings=HealthSettings(probe_fraction=1.0))
    rng = Random(SEED)
    firsts = Counter(health.rank(ORIGIN, ["iad", "lax", "ord"], NOW0 + 1.0, rng)[0] for _ in range(1_000))
    assert firsts == {"lax": 1_000}
    assert health.rank(ORIGIN, ["iad", "ord"], NOW0 + 1.0, rng)[0] == "iad"
    # Stale (and aged toward the best) after probe_after_s: it is measured again.
    assert health.rank(ORIGIN, ["iad", "ord"], NOW0 + PROBE_AFTER_S + 1.0, rng)[0] == "ord"


@pytest.mark.parametrize("ratio", [0.5, math.nan])
def test_the_probe_cost_ratio_must_be_at_least_one(ratio: float) -> None:
    with pytest.raises(ValueError, match="probe_cost_ratio_max"):
        HealthSettings(probe_cost_ratio_max=ratio)


def test_the_same_seed_ranks_the_same_way() -> None:
    def run() -> list[str]:
        health = measured({"iad": 0.05, "lax": 0.5, "ord": 1.0}, settings=HealthSettings())
        rng = Random(SEED)
        return [health.rank(ORIGIN, ["iad", "lax", "ord"], NOW0 + 1.0, rng)[0] for _ in range(500)]

    assert run() == run()


def test_a_stale_region_is_probed_once_per_probe_after_s() -> None:
    # No random probes, and no tie band: ageing alone would bring ord back after ~43 s (the next test).
    health = measured({"iad": 0.05, "ord": 1.0}, settings=HealthSettings(probe_fraction=0.0, cost_tie_fraction=0.0))
    rng = Random(SEED)

    def first_at(at: float) -> str:
        health.succeeded(ORIGIN, "iad", 0.05, at)  # iad keeps being measured
        return health.rank(ORIGIN, ["iad", "ord"], at, rng)[0]

    assert first_at(NOW0 + PROBE_AFTER_S - 1) == "iad"
    assert first_at(NOW0 + PROBE_AFTER_S) == "ord"
    # Probed: not again until PROBE_AFTER_S later, even though its answer has not come.
    assert [first_at(NOW0 + PROBE_AFTER_S + s) for s in (1.0, 10.0, PROBE_AFTER_S - 1)] == ["iad"] * 3
    assert first_at(NOW0 + 2 * PROBE_AFTER_S) == "ord"
    # An attempt in flight is a measurement under way: no probe while it lasts.
    health.started(ORIGIN, "ord", NOW0 + 2 * PROBE_AFTER_S)
    assert first_at(NOW0 + 4 * PROBE_AFTER_S) == "iad"
    assert PROBE_AFTER_S == 30.0
    assert health.statistics().probes_total == 2


def test_ageing_alone_brings_a_region_back_into_the_rotation() -> None:
    """Ten decay times after its last (slow) sample, ord counts as nearly as good as iad: within the tie band, and
    measured longer ago, so it takes the next job and is measured again (no probe needed)."""
    health = measured({"iad": 0.05, "ord": 1.0}, settings=HealthSettings(probe_fraction=0.0, probe_after_s=1e9))
    now = NOW0 + 10 * DECAY_S
    health.succeeded(ORIGIN, "iad", 0.05, now)
    assert health.cost(ORIGIN, "ord", now) == pytest.approx(0.05 + 0.95 * math.exp(-10))
    assert health.rank(ORIGIN, ["iad", "ord"], now, Random(SEED)) == ["ord", "iad"]
    assert health.rank(ORIGIN, ["iad", "ord"], NOW0 + 2 * DECAY_S, Random(SEED)) == ["iad", "ord"]


def test_the_stalest_of_several_stale_regions_is_probed_and_ejected_ones_never() -> None:
    health = measured({"iad": 0.05, "lax": 1.0, "ord": 1.0, "fra": 1.0})
    health.succeeded(ORIGIN, "lax", 1.0, NOW0 + 5)
    fail(health, "fra", NOW0 + 6)  # ejected until NOW0 + 36
    health.succeeded(ORIGIN, "iad", 0.05, NOW0 + 35)
    ranked = health.rank(ORIGIN, ["iad", "lax", "ord", "fra"], NOW0 + 35, Random(SEED))
    assert ranked == ["ord", "iad", "lax", "fra"]


# ---------------------------------------------------------------------------------------------------------------
# The slow region: it loses its traffic within a few jobs and wins it back once it recovers


def run_jobs(
    health: RegionHealth,
    base_s: Mapping[str, float],
    jobs: int,
    *,
    start: float,
    interval_s: float,
    rng: Random,
    latency_rng: Random,
) -> tuple[list[str], float]:
    """Sequential jobs of one queue: one arrives every `interval_s` and starts when the previous one has ended; each
    goes to `rank()[0]` and takes the region's base latency with +-20 % jitter. Returns the regions and the time."""
    chosen: list[str] = []
    now = arrival = start
    for _ in range(jobs):
        now = max(now, arrival)
        arrival += interval_s
        region = health.rank(ORIGIN, list(base_s), now, rng)[0]
        rtt_s = base_s[region] * latency_rng.uniform(0.8, 1.2)
        health.started(ORIGIN, region, now)
        now += rtt_s
        health.succeeded(ORIGIN, region, rtt_s, now)
        chosen.append(region)
    return chosen, now


def slow_region_shares(seed: int, interval_s: float) -> tuple[float, float]:
    """(ord's share of jobs 21-200 while it is 1000 ms, its share of the 200 jobs after it recovers to 55 ms)."""
    health, rng, latency_rng = RegionHealth(), Random(seed), Random(seed + 1)
    base_s = {"iad": 0.050, "lax": 0.060, "ord": 1.000}
    slow, now = run_jobs(health, base_s, 200, start=NOW0, interval_s=interval_s, rng=rng, latency_rng=latency_rng)
    base_s["ord"] = 0.055
    recovered, _ = run_jobs(health, base_s, 200, start=now, interval_s=interval_s, rng=rng, latency_rng=latency_rng)
    return slow[20:].count("ord") / 180, recovered.count("ord") / 200


@pytest.mark.parametrize("interval_s", [0.5, 1.0])
@pytest.mark.parametrize("seed", range(10))
def test_a_slow_region_loses_traffic_and_wins_it_back(seed: int, interval_s: float) -> None:
    while_slow, after_recovery = slow_region_shares(SEED + seed, interval_s)
    assert while_slow <= 0.10
    assert after_recovery >= 0.15


def test_a_region_that_turns_slow_loses_traffic_after_one_job() -> None:
    health = RegionHealth(NO_PROBES)
    base_s = {"iad": 0.050, "lax": 0.055}
    rng, latency_rng = Random(SEED), Random(SEED + 1)
    before, now = run_jobs(health, base_s, 20, start=NOW0, interval_s=1.0, rng=rng, latency_rng=latency_rng)
    assert set(before) == {"iad", "lax"}
    base_s["lax"] = 1.0
    after, _ = run_jobs(health, base_s, 40, start=now, interval_s=1.0, rng=rng, latency_rng=latency_rng)
    # One job measures the slowdown; the next is the staleness probe PROBE_AFTER_S after it.
    assert after[:30].count("lax") == 1
    assert after.count("lax") == 2


def test_recovery_is_counted_in_time_not_in_jobs() -> None:
    """Back-to-back jobs: the 200 after the recovery take about 11 s, one decay time, which is too soon to trust a
    region measured at 1000 ms (by design: peak EWMA forgives over `decay_s`, whatever the number of samples). Given
    a minute of traffic at one job a second, it is back in the rotation."""
    health, rng, latency_rng = RegionHealth(), Random(SEED), Random(SEED + 1)
    base_s = {"iad": 0.050, "lax": 0.060, "ord": 1.000}
    _, now = run_jobs(health, base_s, 200, start=NOW0, interval_s=0.0, rng=rng, latency_rng=latency_rng)
    base_s["ord"] = 0.055
    burst, now = run_jobs(health, base_s, 200, start=now, interval_s=0.0, rng=rng, latency_rng=latency_rng)
    assert burst.count("ord") / 200 < 0.15
    minute, _ = run_jobs(health, base_s, 60, start=now, interval_s=1.0, rng=rng, latency_rng=latency_rng)
    assert minute[-20:].count("ord") >= 4


# ---------------------------------------------------------------------------------------------------------------
# Bounds


def test_pairs_are_bounded_and_the_least_recently_used_go_first() -> None:
    health = RegionHealth()
    for i in range(10_000):
        health.succeeded(f"https://o{i}.example.com", "iad", 0.05, NOW0 + i)
    assert len(health) == ORIGIN_REGIONS_MAX == 4096
    stats = health.statistics()
    assert (stats.pairs, stats.origins, stats.evicted_total) == (4096, 4096, 10_000 - 4096)
    assert health.snapshot("https://o0.example.com", now=NOW0 + 10_000) == {}
    assert health.p95_s("https://o9999.example.com", "iad") == 0.05


def test_using_a_pair_keeps_it() -> None:
    health = RegionHealth(HealthSettings(origin_regions_max=3))
    for region in ["iad", "lax", "ord"]:
        health.succeeded(ORIGIN, region, 0.05, NOW0)
    health.started(ORIGIN, "iad", NOW0 + 1)
    health.succeeded(OTHER, "iad", 0.05, NOW0 + 2)
    assert sorted(health.snapshot(ORIGIN, now=NOW0 + 2)[ORIGIN]) == ["iad", "ord"]


def test_the_p95_window_is_bounded() -> None:
    health = RegionHealth()
    for i in range(1_000):
        health.succeeded(ORIGIN, "iad", 10.0 if i < 900 else 0.001 * (i - 899), NOW0 + i)
    assert status(health, "iad", NOW0 + 1_000).samples == SAMPLES_MAX == 64
    # Only the last 64 samples (1 ms .. 100 ms, the last 64 of them: 37 ms .. 100 ms) count.
    assert health.p95_s(ORIGIN, "iad") == pytest.approx(0.097)


# ---------------------------------------------------------------------------------------------------------------
# p95


@pytest.mark.parametrize(
    ("samples_ms", "expected_ms"),
    [
        (list(range(1, 21)), 19),  # nearest rank: ceil(0.95 x 20) = 19th
        (list(range(64, 0, -1)), 61),  # ceil(0.95 x 64) = 61st, whatever the order of arrival
        ([7], 7),
        ([5, 1], 5),
        ([10] * 60 + [500, 600, 700, 800], 500),  # four outliers in 64: the 61st sample is the first of them
    ],
)
def test_p95_on_known_samples(samples_ms: list[int], expected_ms: int) -> None:
    health = RegionHealth()
    shuffled = list(samples_ms)
    for i, ms in enumerate(shuffled):
        health.succeeded(ORIGIN, "iad", ms / 1000.0, NOW0 + i)
    assert health.p95_s(ORIGIN, "iad") == pytest.approx(expected_ms / 1000.0)
    assert status(health, "iad", NOW0 + len(samples_ms)).p95_ms == pytest.approx(expected_ms)


def test_p95_without_samples_is_none() -> None:
    health = RegionHealth()
    assert health.p95_s(ORIGIN, "iad") is None
    health.failed(ORIGIN, "iad", NOW0, rtt_s=5.0)
    assert health.p95_s(ORIGIN, "iad") is None


# ---------------------------------------------------------------------------------------------------------------
# Views and settings


def test_snapshot_is_plain_data_per_origin_and_region() -> None:
    health = measured({"iad": 0.05, "lax": 0.08})
    health.succeeded(OTHER, "ord", 0.2, NOW0)
    health.started(ORIGIN, "lax", NOW0 + 1)
    fail(health, "iad", NOW0 + 2)
    view = health.snapshot(now=NOW0 + 4)
    assert list(view) == [ORIGIN, OTHER] and list(view[ORIGIN]) == ["iad", "lax"]
    assert view[ORIGIN]["iad"] == RegionStatus(
        latency_ms=50.0,
        p95_ms=50.0,
        error_rate=pytest.approx(5 / (5 + math.exp(-0.2))),  # one success at NOW0, five failures 2 s later
        in_flight=0,
        consecutive_failures=5,
        ejected_until=NOW0 + 2 + 30.0,
        times_ejected=1,
        ejections_total=1,
        samples=1,
        age_s=4.0,
    )
    assert view[ORIGIN]["lax"].to_wire()["in_flight"] == 1
    assert set(view[OTHER]["ord"].to_wire()) == {
        "latency_ms",
        "p95_ms",
        "error_rate",
        "in_flight",
        "consecutive_failures",
        "ejected_until",
        "times_ejected",
        "ejections_total",
        "samples",
        "age_s",
    }
    assert health.snapshot(OTHER, now=NOW0 + 4) == {OTHER: view[OTHER]}
    assert health.snapshot("https://never.example.com", now=NOW0) == {}


def test_repr_is_a_status_line() -> None:
    health = measured({"iad": 0.05, "lax": 0.08})
    health.started(ORIGIN, "lax", NOW0)
    fail(health, "iad", NOW0)
    assert repr(health) == (
        "<RegionHealth 2 pairs over 1 origins: 1 in flight, 1 ejected | 1 ejections (0 refused), 0 probes, 0 evicted>"
    )
    health.succeeded(ORIGIN, "lax", 0.08, NOW0 + 30.0)  # the latest `now` seen: iad's ejection is over
    assert "0 in flight, 0 ejected" in repr(health)


def test_the_default_settings_are_the_named_limits() -> None:
    settings = HealthSettings()
    assert (settings.decay_s, settings.consecutive_failures_max) == (DECAY_S, CONSECUTIVE_FAILURES_MAX) == (10.0, 5)
    assert (settings.origin_regions_max, settings.samples_max) == (ORIGIN_REGIONS_MAX, SAMPLES_MAX)
    assert settings.ejections_counted_max == 10


@pytest.mark.parametrize(
    "changes",
    [
        {"decay_s": 0.0},
        {"decay_s": math.inf},
        {"base_ejection_s": -1.0},
        {"max_ejection_s": 10.0},  # below the base
        {"probe_after_s": math.nan},
        {"max_ejected_fraction": 1.5},
        {"probe_fraction": -0.1},
        {"cost_tie_fraction": -0.1},
        {"consecutive_failures_max": 0},
        {"origin_regions_max": 0},
        {"samples_max": 0},
    ],
)
def test_settings_are_validated(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        HealthSettings(**changes)  # type: ignore[arg-type]
