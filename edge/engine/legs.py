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
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, final

from edge.engine.spec import JobSpec

# Rank candidate regions for an origin, healthiest first (RegionHealth.rank, with the clock and rng bound).
Ranker = Callable[[str, Sequence[str]], list[str]]

NO_REGION: Final = ""  # the leg of a job without regions: run on the key's owner


@final
@dataclass(frozen=True, slots=True)
class RegionView:
    """What the key's owner knows of regions when it plans a dispatch."""

    up: frozenset[str]  # regions with at least one live member
    local: str  # the owner's own region ("" when it has none)
    rank: Ranker

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
    if not ranked and spec.region_policy == "fallback":
        others = sorted(r for r in view.up if r not in spec.regions and r not in tried)
        ranked = view.rank(spec.origin, others)[:1] if others else []
    if not ranked:
        return LegPlan((), "single", unavailable=_down(spec) if spec.region_policy == "strict" else "no region is up")
    if spec.execution_mode == "race" and len(ranked) > 1 and slots > 1:
        legs = tuple(ranked[: max(1, slots)])
        return LegPlan(legs, "race" if len(legs) > 1 else "single")
    return LegPlan((ranked[0],), "single")


def _down(spec: JobSpec) -> str:
    return f"none of the job's regions ({', '.join(spec.regions)}) is up"
