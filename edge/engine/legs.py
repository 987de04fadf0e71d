"""Where an attempt runs: in which regions, and how many at once (the legs of one dispatch).

A job without `regions` runs where it always has: on its key's owner, one leg with no region; so does every job on a
node or cluster that knows no regions (no member has one). A job with `regions` runs each attempt in one or more
regions, executed by a node of each (the owner itself when it is in that region):

- `execution_mode: "race"` starts the attempt in every usable region at once; the first success wins and the
  others are cancelled. With one usable region a race is a single attempt.
- `execution_mode: "fanout"` runs the attempt once in every named region that is up; the job succeeds only when
  every one of them succeeded.
- `region_policy: "fallback"` (the default) chooses among the named regions by health, not by list order, and when
  none of them is usable uses the healthiest other region that is up. `"strict"` never leaves the named regions.

A region is usable while it is up (a live member of the cluster is in it) and the job has not been rerouted away
from it already. Health ranks the usable ones (edge/engine/regions.py: latency that reacts to spikes, ejection
after a run of failures); the planner takes them in that order.

Every leg is an attempt the provider sees, so each counts against the key's rate and concurrency limits: a race never
starts more legs than the key has free in-flight slots (at least one), and the pacer is charged once per leg.

Hedging (`hedge_after_ms`, an extension): a dispatch of one leg that has another usable region (the next ranked named
one; with `fallback`, else the healthiest other region) names it as its `hedge`. The shell starts it when the first
leg has not answered after `hedge_after_s` (a number of ms, or "auto": the first region's recent p95 for the
origin), and the two race. Only for jobs a second request cannot harm: idempotent methods, or a job that sends its
idempotency key upstream. The hedge's slot and pacing are reserved at dispatch, whether it starts or not, so a
hedge can never take the key over its limits.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, final

from edge.engine.spec import JobSpec

# Rank candidate regions for an origin, healthiest first (RegionHealth.rank, with the clock and rng bound).
Ranker = Callable[[str, Sequence[str]], list[str]]
# The recent p95 latency (seconds) of an (origin, region), None when unknown (RegionHealth.p95_s).
Percentile = Callable[[str, str], float | None]
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

NO_REGION: Final = ""  # the leg of a job without regions: run on the key's owner


@final
@dataclass(frozen=True, slots=True)
class RegionView:
    """What the key's owner knows of regions when it plans a dispatch."""

    up: frozenset[str]  # regions with at least one live member
    local: str  # the owner's own region ("" when it has none)
    rank: Ranker
    p95: Percentile = lambda origin, region: None

    @classmethod
    def single(cls, local: str = "") -> RegionView:
        """A node alone (or a cluster without regions): only its own region is up."""
        return cls(up=frozenset({local}) if local else frozenset(), local=local, rank=lambda origin, c: list(c))


@final
@dataclass(frozen=True, slots=True)
class LegPlan:
    """The regions of one dispatch (`NO_REGION` for the owner itself), and whether they race or fan out."""

    regions: tuple[str, ...]
    mode: str  # "single", "race" or "fanout"
    # Set when no leg can run: the job's named regions are down (strict) or none is up at all.
    unavailable: str | None = None
    # A single leg's hedge: the region to start too when the first has not answered after `hedge_after_s`.
    hedge: str | None = None
    hedge_after_s: float | None = None


SINGLE: Final = LegPlan((NO_REGION,), "single")


def plan_legs(
    spec: JobSpec, tried: Collection[str], view: RegionView, *, slots: int, done: Collection[str] = ()
) -> LegPlan:
    """The legs for the next attempt of a job, given the regions it was rerouted away from (`tried`) and, for a
    fanout, the regions that already succeeded (`done`: they are not run again).

    `slots` is how many attempts the key may still start now (its free in-flight slots, at least one)."""
    if not spec.regions or not view.up:
        return SINGLE  # no regions named, or none known: a node or cluster without regions runs it on the owner
    named = [r for r in spec.regions if r in view.up and r not in tried]
    if spec.execution_mode == "fanout":
        # Every named region executes once; a region that is down is not waited for (see README, "Regions").
        up = [r for r in spec.regions if r in view.up and r not in done]
        if not up:
            return LegPlan((), "fanout", unavailable=_down(spec))
        return LegPlan(tuple(up), "fanout")  # even one leg: its response joins the ones already in
    ranked = view.rank(spec.origin, named) if named else []
    fallback = spec.region_policy == "fallback"
    if not ranked and fallback:
        ranked = _healthiest_other(spec, tried, view)
        fallback = False  # already outside the named regions: a hedge stays among the ranked ones
    if not ranked:
        return LegPlan((), "single", unavailable=_down(spec) if spec.region_policy == "strict" else "no region is up")
    if spec.execution_mode == "race" and len(ranked) > 1 and slots > 1:
        legs = tuple(ranked[: max(1, slots)])
        return LegPlan(legs, "race" if len(legs) > 1 else "single")
    if spec.hedge_after_ms is not None and slots > 1 and _hedgeable(spec):
        spare = ranked[1:] or (_healthiest_other(spec, tried, view) if fallback else [])
        after_s = _hedge_after_s(spec, ranked[0], view)
        if spare and after_s is not None:
            return LegPlan((ranked[0],), "single", hedge=spare[0], hedge_after_s=after_s)
    return LegPlan((ranked[0],), "single")


def _healthiest_other(spec: JobSpec, tried: Collection[str], view: RegionView) -> list[str]:
    """The healthiest up region the job does not name and was not rerouted from, as a list of at most one."""
    others = sorted(r for r in view.up if r not in spec.regions and r not in tried)
    return view.rank(spec.origin, others)[:1] if others else []


def _hedgeable(spec: JobSpec) -> bool:
    """Whether a second, concurrent request cannot harm: an idempotent method, or an idempotency key sent upstream."""
    return spec.method in IDEMPOTENT_METHODS or spec.send_idempotency_key


def _hedge_after_s(spec: JobSpec, region: str, view: RegionView) -> float | None:
    if spec.hedge_after_ms == "auto":
        return view.p95(spec.origin, region)
    return None if spec.hedge_after_ms is None else float(spec.hedge_after_ms) / 1000


def _down(spec: JobSpec) -> str:
    return f"none of the job's regions ({', '.join(spec.regions)}) is up"
