"""Where attempts run and what several legs mean (edge/engine/legs.py, OutboundQueue.settle_legs), without trio."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import Any

import pytest

from edge.engine.legs import NO_REGION, SINGLE, RegionView, plan_legs
from edge.engine.outcome import AttemptResult
from edge.engine.queue import Conclude, Dispatch, LegResult, OutboundQueue, RetrySettings, wins
from edge.engine.records import JobRecord
from edge.engine.spec import JobSpec, validate_job
from scheduler import QueueLimits

ORIGIN = "https://api.example.com"
KEY = f"acme|{ORIGIN}|-"
WALL0, NOW0 = 1_700_000_000_000, 1000.0
ALL = frozenset({"iad", "lax", "ord", "fra"})


def spec(**fields: Any) -> JobSpec:
    return validate_job({"url": f"{ORIGIN}/x", **fields})


def view(up: frozenset[str] = ALL, order: Sequence[str] = ("lax", "iad", "ord", "fra")) -> RegionView:
    """Health ranks by a fixed order, so a test can say which region is healthiest."""
    return RegionView(up=up, local="iad", rank=lambda origin, c: sorted(c, key=list(order).index))


@pytest.mark.parametrize(
    ("fields", "up", "tried", "slots", "expected"),
    [
        ({}, ALL, (), 4, ((NO_REGION,), "single", None)),
        ({"regions": ["iad", "lax"]}, frozenset(), (), 4, ((NO_REGION,), "single", None)),
        ({"regions": ["iad", "lax", "ord"]}, ALL, (), 4, (("lax", "iad", "ord"), "race", None)),
        ({"regions": ["iad", "lax", "ord"]}, ALL, (), 2, (("lax", "iad"), "race", None)),
        ({"regions": ["iad", "lax", "ord"]}, ALL, (), 1, (("lax",), "single", None)),
        ({"regions": ["iad", "lax", "ord"]}, ALL, ("lax",), 4, (("iad", "ord"), "race", None)),
        ({"regions": ["iad"]}, ALL, (), 4, (("iad",), "single", None)),
        # fallback: the named region is down, the healthiest other one runs it
        ({"regions": ["ord"]}, frozenset({"iad", "fra"}), (), 4, (("iad",), "single", None)),
        ({"regions": ["iad"]}, ALL, ("iad",), 4, (("lax",), "single", None)),
        # strict never leaves its regions
        ({"regions": ["ord"], "region_policy": "strict"}, frozenset({"iad"}), (), 4, ((), "single", "none")),
        ({"regions": ["iad"], "region_policy": "strict"}, ALL, ("iad",), 4, ((), "single", "none")),
        # fanout: every named region that is up, once
        ({"regions": ["iad", "ord"], "execution_mode": "fanout"}, ALL, (), 1, (("iad", "ord"), "fanout", None)),
        (
            {"regions": ["iad", "ord"], "execution_mode": "fanout"},
            frozenset({"ord", "lax"}),
            (),
            4,
            (("ord",), "fanout", None),
        ),
    ],
)
def test_plan_legs(fields: dict[str, Any], up: frozenset[str], tried: tuple[str, ...], slots: int, expected) -> None:
    plan = plan_legs(spec(**fields), tried, view(up), slots=slots)
    regions, mode, unavailable = expected
    assert (plan.regions, plan.mode) == (regions, mode)
    assert (plan.unavailable is None) == (unavailable is None)
    if unavailable:
        assert "none of the job's regions" in (plan.unavailable or "")


def test_a_job_without_regions_is_the_single_owner_leg() -> None:
    assert plan_legs(spec(), (), view(), slots=3) is SINGLE


def record(job_spec: JobSpec, **changes: Any) -> JobRecord:
    return JobRecord(
        job_id="job-1",
        account_id="acme",
        idempotent_key="k",
        queue_key=KEY,
        spec=job_spec,
        created_at_ms=WALL0,
        deadline_at_ms=WALL0 + 86_400_000,
        **changes,
    )


def queue_with(job_spec: JobSpec, *, max_concurrent: int = 4) -> OutboundQueue:
    queue = OutboundQueue(KEY, ORIGIN, QueueLimits(1000.0, max_concurrent), RetrySettings())
    queue.push(record(job_spec), NOW0)
    return queue


def ok(status: int = 200, duration_s: float = 0.05) -> AttemptResult:
    return AttemptResult(duration_s, status_code=status, body=f"{status}")


def test_a_race_dispatches_every_leg_charges_the_pacer_and_counts_each_in_flight() -> None:
    queue = queue_with(spec(regions=["iad", "lax", "ord"]))
    decision = queue.next(NOW0, WALL0, regions=view())
    assert isinstance(decision, Dispatch) and decision.legs.mode == "race"
    assert decision.legs.regions == ("lax", "iad", "ord") and queue.in_flight == 3


def test_the_first_success_wins_and_the_losers_are_recorded_cancelled() -> None:
    queue = queue_with(spec(regions=["iad", "lax", "ord"]))
    queue.next(NOW0, WALL0, regions=view())
    legs = [LegResult("lax", None), LegResult("iad", ok(201)), LegResult("ord", None)]
    settlement = queue.settle_legs("job-1", legs, NOW0 + 1, WALL0 + 1000, Random(1), regions=view(), mode="race")
    assert settlement.is_terminal and settlement.record.status == "success"
    assert settlement.record.response is not None and settlement.record.response["status_code"] == 201
    outcomes = [(a.region, a.outcome) for a in settlement.record.attempts]
    assert outcomes == [("lax", "cancelled"), ("iad", "won"), ("ord", "cancelled")]
    queue.commit(settlement)
    assert queue.in_flight == 0 and queue.is_idle


def test_a_reroute_code_moves_the_job_to_another_region_at_once_until_reroutes_run_out() -> None:
    queue = queue_with(spec(regions=["iad"], retry_policy={"max_reroutes": 2, "max_retries": 0}))
    seen = []
    for step in range(3):
        now, wall_ms = NOW0 + step, WALL0 + 1000 * step
        decision = queue.next(now, wall_ms, regions=view())
        assert isinstance(decision, Dispatch)
        region = decision.legs.regions[0]
        seen.append(region)
        settlement = queue.settle("job-1", ok(500), now, wall_ms, Random(1), region=region, regions=view())
        queue.commit(settlement)
    # named iad first, then the healthiest others (lax, then ord); the third 500 is final: no reroutes left
    assert seen == ["iad", "lax", "ord"]
    assert settlement.is_terminal and settlement.record.status == "failed"
    assert settlement.record.reroutes_used == 2 and settlement.record.regions_tried == ["iad", "lax"]
    assert [a.outcome for a in settlement.record.attempts] == ["rerouted", "rerouted", "failed"]


def test_strict_fails_when_its_only_region_answers_a_reroute_code() -> None:
    queue = queue_with(spec(regions=["iad"], region_policy="strict", retry_policy={"max_retries": 0}))
    decision = queue.next(NOW0, WALL0, regions=view())
    assert isinstance(decision, Dispatch) and decision.legs.regions == ("iad",)
    settlement = queue.settle("job-1", ok(502), NOW0, WALL0, Random(1), region="iad", regions=view())
    assert settlement.is_terminal and settlement.record.status == "failed"
    assert [a.region for a in settlement.record.attempts] == ["iad"]


def test_a_strict_job_whose_regions_are_down_fails_after_its_retries_without_running() -> None:
    queue = queue_with(spec(regions=["ord"], region_policy="strict", retry_policy={"max_retries": 1}))
    down = view(frozenset({"iad"}))
    first = queue.next(NOW0, WALL0, regions=down)
    assert isinstance(first, Conclude) and first.settlement.next_step == "retry"
    queue.commit(first.settlement)
    second = queue.next(NOW0 + 3600, WALL0 + 3_600_000, regions=down)
    assert isinstance(second, Conclude) and second.settlement.is_terminal
    assert second.settlement.record.status == "failed"
    assert "none of the job's regions" in (second.settlement.record.attempts[-1].error or "")


def test_a_rate_limited_leg_blocks_the_queue_and_keeps_the_place_instead_of_rerouting() -> None:
    queue = queue_with(spec(regions=["iad", "lax"]))
    queue.next(NOW0, WALL0, regions=view())
    limited = AttemptResult(0.01, status_code=429, headers=(("Retry-After", "7"),))
    legs = [LegResult("lax", limited), LegResult("iad", ok(500))]
    settlement = queue.settle_legs("job-1", legs, NOW0, WALL0, Random(1), regions=view(), mode="race")
    assert settlement.next_step == "retry" and settlement.keeps_place and settlement.rate_limited
    assert settlement.record.reroutes_used == 0 and queue.limits.ready_at(NOW0) == pytest.approx(NOW0 + 7)


def test_a_fanout_succeeds_only_when_every_region_did_and_keeps_each_response() -> None:
    queue = queue_with(spec(regions=["iad", "ord"], execution_mode="fanout"))
    decision = queue.next(NOW0, WALL0, regions=view())
    assert isinstance(decision, Dispatch) and decision.legs.mode == "fanout"
    legs = [LegResult("iad", ok(200)), LegResult("ord", ok(202))]
    settlement = queue.settle_legs("job-1", legs, NOW0, WALL0, Random(1), regions=view(), mode="fanout")
    assert settlement.record.status == "success"
    assert {r: v["status_code"] for r, v in settlement.record.region_responses.items()} == {"iad": 200, "ord": 202}
    assert settlement.record.response is not None and settlement.record.response["status_code"] == 200


def test_a_fanout_with_a_failed_region_retries_and_keeps_the_successes() -> None:
    queue = queue_with(spec(regions=["iad", "ord"], execution_mode="fanout"))
    queue.next(NOW0, WALL0, regions=view())
    legs = [LegResult("iad", ok(200)), LegResult("ord", ok(503))]
    settlement = queue.settle_legs("job-1", legs, NOW0, WALL0, Random(1), regions=view(), mode="fanout")
    assert settlement.next_step == "retry" and set(settlement.record.region_responses) == {"iad"}


@pytest.mark.parametrize(("status", "won"), [(200, True), (302, True), (404, False), (500, False), (None, False)])
def test_wins(status: int | None, won: bool) -> None:
    result = AttemptResult(0.1, status_code=status, error=None if status else "ConnectError")
    assert wins(result) is won


def test_a_fanout_runs_again_only_in_the_regions_that_have_not_succeeded() -> None:
    job = spec(regions=["iad", "ord"], execution_mode="fanout")
    plan = plan_legs(job, (), view(), slots=4, done=("iad",))
    assert (plan.regions, plan.mode) == (("ord",), "fanout")


def test_a_retried_fanout_keeps_the_responses_of_the_regions_that_succeeded_before() -> None:
    queue = queue_with(spec(regions=["iad", "ord"], execution_mode="fanout", retry_policy={"max_retries": 1}))
    queue.next(NOW0, WALL0, regions=view())
    first = [LegResult("iad", ok(200)), LegResult("ord", ok(503))]
    retried = queue.settle_legs("job-1", first, NOW0, WALL0, Random(1), regions=view(), mode="fanout")
    queue.commit(retried)
    decision = queue.next(NOW0 + 600, WALL0 + 600_000, regions=view())
    assert isinstance(decision, Dispatch) and decision.legs.regions == ("ord",) and decision.legs.mode == "fanout"
    second = [LegResult("ord", ok(201))]
    done = queue.settle_legs("job-1", second, NOW0 + 601, WALL0 + 601_000, Random(1), regions=view(), mode="fanout")
    assert done.record.status == "success"
    assert {r: v["status_code"] for r, v in done.record.region_responses.items()} == {"iad": 200, "ord": 201}
    assert done.record.response is not None and done.record.response["status_code"] == 200  # the first named


@pytest.mark.parametrize(
    ("fields", "slots", "p95", "expected"),
    [
        # one named region, fallback: the healthiest other region is the hedge
        ({"regions": ["iad"], "hedge_after_ms": 200}, 2, None, ("lax", 0.2)),
        ({"regions": ["iad"], "hedge_after_ms": 200, "method": "PUT"}, 2, None, ("lax", 0.2)),
        # a second request must be harmless: a POST hedges only when it sends its idempotency key upstream
        ({"regions": ["iad"], "hedge_after_ms": 200, "method": "POST"}, 2, None, (None, None)),
        (
            {"regions": ["iad"], "hedge_after_ms": 200, "method": "POST", "send_idempotency_key": True},
            2,
            None,
            ("lax", 0.2),
        ),
        # strict has no other region to hedge with; one free slot has no room for a hedge
        ({"regions": ["iad"], "hedge_after_ms": 200, "region_policy": "strict"}, 2, None, (None, None)),
        ({"regions": ["iad"], "hedge_after_ms": 200}, 1, None, (None, None)),
        # a race with one slot free hedges with its next ranked region
        ({"regions": ["iad", "ord"], "hedge_after_ms": 50}, 1, None, (None, None)),
        # "auto": the first region's recent p95, and no hedge until there is one
        ({"regions": ["iad"], "hedge_after_ms": "auto"}, 2, None, (None, None)),
        ({"regions": ["iad"], "hedge_after_ms": "auto"}, 2, 0.35, ("lax", 0.35)),
        ({"regions": ["iad"]}, 2, 0.35, (None, None)),
    ],
)
def test_a_single_leg_names_its_hedge(
    fields: dict[str, Any], slots: int, p95: float | None, expected: tuple[str | None, float | None]
) -> None:
    ranked = view()
    with_p95 = RegionView(up=ranked.up, local=ranked.local, rank=ranked.rank, p95=lambda origin, region: p95)
    plan = plan_legs(spec(**fields), (), with_p95, slots=slots)
    assert plan.mode == "single" and len(plan.regions) == 1
    assert (plan.hedge, plan.hedge_after_s) == expected


def test_a_hedge_reserves_its_slot_and_its_pacing_at_dispatch() -> None:
    queue = OutboundQueue(KEY, ORIGIN, QueueLimits(rps=1000, max_concurrent=4), RetrySettings())
    queue.push(record(spec(regions=["iad"], hedge_after_ms=100)), NOW0)
    decision = queue.next(NOW0, WALL0, regions=view())
    assert isinstance(decision, Dispatch) and decision.legs.hedge == "lax"
    assert queue.in_flight == 2
