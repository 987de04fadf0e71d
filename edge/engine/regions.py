"""Region health per target origin: which region should run the next attempt of a job for that origin.

The key's owner sends each attempt of a job to a node in some region (iad, lax, ord, ...). How well a region does
depends on the origin as much as on the region (an API hosted in Virginia is near iad and far from syd), so every
figure here is kept per (origin, region) pair. The shell reports what happens and asks for an order; this file
decides, and never reads a clock (`now` is monotonic seconds, passed in) or the global random (`rng` is injected).

    health.started(origin, region, now)                  an attempt goes out (it counts as in flight)
    health.succeeded(origin, region, rtt_s, now)         it ended with a usable answer after `rtt_s` seconds
    health.failed(origin, region, now, rtt_s=None)       it ended in a failure (connect error, timeout, 5xx)
    health.finished(origin, region, now)                 it ended with no verdict (a race's loser, cancelled)
    health.rank(origin, candidates, now, rng)            -> the candidates, in the order to try them
    health.p95_s(origin, region)                         -> recent p95 latency, for `hedge_after_ms: "auto"`
    health.snapshot(origin, now=now)                     -> plain data per origin and region, for /api/v1/regions

Each of `succeeded`, `failed` and `finished` ends one attempt that `started` began: call exactly one of them per
attempt. The caller decides what a failure is (the executor knows a 5xx from a 4xx the client asked for).

Latency: peak EWMA (Finagle's and Linkerd's balancers). A plain moving mean of round-trip times answers "how slow was
this region on average lately", and a region that just went from 50 ms to 2 s keeps winning until enough slow samples
drag its mean up: a mean over the last N samples falls behind a 500 ms region only after about N/4 of them were slow,
each a job that waited 2 s. Peak EWMA answers "how slow could the next request be": a sample above the estimate replaces
it at once, and only lower samples are averaged in, with a weight that depends on the time since the last one
(exp(-elapsed/decay_s)), so a burst of samples in one instant cannot wash out a spike and a region earns its good
estimate back over `decay_s` seconds, not over a number of requests. The cost multiplies the estimate by (in flight + 1)
as Finagle's P2C does: a fast region already busy with many attempts costs what queueing behind them would.

Failures: Envoy's consecutive-failure outlier detection. `CONSECUTIVE_FAILURES_MAX` failures in a row eject the
region for that origin for `BASE_EJECTION_S` times the number of times it has been ejected (capped at
`MAX_EJECTION_S`); any success resets the streak. The multiplier comes back down by one for each quiet period (as
long as the current ejection time) that passes without a new ejection, so a region that failed once last week is
not punished for it today. An exponentially decayed error rate is kept as well, for the operators' view only:
ejection decides, the rate explains.

Why never eject every region: the point of ejecting is to route around a bad path to the origin, and that needs
somewhere to go. When every region of an origin fails at once, the likely fault is the origin itself, and ejecting
them all would leave the job nowhere to run while telling us nothing new. So at most
`max(1, MAX_EJECTED_FRACTION x regions)` of an origin's regions are ejected at once, and never all of them; an
ejection that would pass that bound is not made (the streak stays, and the next failure tries again, which succeeds
once another region has come back).

How a recovered region wins traffic back. Ranking by cost sends every job to the best region, so the others get no
new samples and their estimates would stay where their last (bad) sample left them: a region that was slow for a
minute would lose its traffic forever. Three things undo that:
- a random probe: with probability `PROBE_FRACTION` (drawn from the injected rng) one of the other un-ejected
  candidates whose cost is within `PROBE_COST_RATIO_MAX` of the best is moved to the front, so a plausible
  alternative is re-measured now and then at a bounded cost (a few percent of jobs, shared by the others). A region
  known to be far slower (a partial outage: "not down, just slow") is not sampled at random: each such sample
  would be a job at many times the usual latency, and 2.5 % of jobs is enough to own the p99. The staleness probe
  and ageing below bring it back, once per `PROBE_AFTER_S`;
- a staleness probe: a candidate whose last sample (or last probe) is older than `PROBE_AFTER_S` is moved to the
  front at once, deterministically, so a rarely used origin re-measures its regions too;
- ageing: between samples an estimate counts for less the older it is. It moves toward the origin's best current
  estimate as exp(-age/decay_s) (the same time constant as the EWMA). Toward the best, not toward zero as Finagle
  decays between samples: zero would let an idle region look better than every measured one and take a run of jobs
  on no evidence; toward the best, an old estimate becomes "probably as good as the best", which ties rather than
  wins, and breaks the tie as soon as the best one is busy (its in-flight factor). The probes do the measuring.

Near-equal regions. Strictly lowest-cost-first sends every job to one region whenever the others are only a little
slower (50 ms against 55 ms), and then their estimates stop being refreshed: they are known only from their last
sample, a reroute to them flies blind, and which region "wins" depends on whose last sample was lucky (the leader's
peak EWMA holds its peaks; the others keep one sample each). So costs within `COST_TIE_FRACTION` of the lowest count
as equal, and among equals an idle one measured least recently goes first: near-equal regions take turns (sequential
jobs round-robin between them), each stays measured, and what that costs is bounded by the band (at most 25 %
slower on the jobs that go to the others). A region 10x slower is far outside the band and gets only probes.

A region never measured for an origin costs 0 while nothing is in flight to it, so it is tried first: a new
region must get traffic to be measured at all, and one attempt is a small price. Once one is in flight and until
its answer comes, it is costed as if its estimate were the median of the origin's measured regions (a typical
region, not a free one), so a burst of jobs does not all pile onto a region nobody has measured. (Finagle charges
such a node a huge penalty instead; with a handful of regions that would starve a new one whenever its first
attempt is slow.)

Memory: one record per pair, at most `ORIGIN_REGIONS_MAX` of them; past the bound the least recently used pair is
forgotten. Each keeps at most `SAMPLES_MAX` latencies (for the p95) in a float array: about 1 KB per pair.

XX: an ejected pair gets no traffic, so it ages in the LRU order and could be forgotten while ejected (only after
`ORIGIN_REGIONS_MAX` other pairs were used during its ejection). It then comes back as never measured and must fail
`CONSECUTIVE_FAILURES_MAX` times again to be ejected again; acceptable at the bound's size, revisit if it is not.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any, Final, final

# Time constant of the latency and error-rate averages, and of an estimate's ageing between samples. Linkerd's
# proxy and Finagle's P2C-PeakEWMA balancer both default to 10 s: long enough to remember a spike across a few
# requests, short enough that a region is forgiven within a minute of recovering (e^-6 of a spike is left after 60 s).
DECAY_S: Final = 10.0
# Failures in a row that eject a region for an origin: Envoy's `consecutive_5xx` default.
CONSECUTIVE_FAILURES_MAX: Final = 5
# First ejection time; the n-th ejection in a row lasts n times as long: Envoy's `base_ejection_time` default.
BASE_EJECTION_S: Final = 30.0
# Longest ejection whatever the multiplier: Envoy's `max_ejection_time` default.
MAX_EJECTION_S: Final = 300.0
# Share of an origin's regions that may be ejected at once (at least one, never all). Envoy's
# `max_ejection_percent` defaults to 10 % of a cluster's hosts; an origin uses a handful of regions, where 10 %
# would forbid any ejection, and when more than half fail at once the fault is most likely the origin's own.
MAX_EJECTED_FRACTION: Final = 0.5
# Chance that `rank` moves another candidate to the front to re-measure it. No balancer precedent (P2C's random
# pairs re-sample hosts as a side effect); 5 % is the usual epsilon of epsilon-greedy choice: the slow region of
# three costs 2.5 % of jobs, and a recovered one is sampled about once every 40 jobs.
PROBE_FRACTION: Final = 0.05
# Random probes go only to regions costing at most this many times the best. Measured (bench/RESULTS.md, "Regions"):
# with one region of three 20x slower, random probes of it cost 1.3 % of jobs and put the p99 at 8.5x the
# all-healthy one; 4x keeps a merely slower region in the sample while a partial outage costs one job per
# PROBE_AFTER_S.
PROBE_COST_RATIO_MAX: Final = 4.0
# A candidate not measured (nor probed) for this long goes first once. Three decay times: by then its last sample
# has under 5 % weight (e^-3), so it says little, and one probe per region per 30 s bounds what probing costs.
PROBE_AFTER_S: Final = 3 * DECAY_S
# Costs within this fraction of the lowest count as equal, and take turns (module docstring, "Near-equal regions").
# No balancer precedent (P2C shares among near-equals by drawing pairs at random, but also hands a 2x slower host a
# third of the traffic among three). 25 % covers how far a steady region's own peak-EWMA estimate wanders when its
# round trips jitter by +-20 % (between its mean and its peaks), so two equally good regions are not told apart by
# noise; a region 10x slower is far outside it.
COST_TIE_FRACTION: Final = 0.25
# (origin, region) pairs remembered. Origins are client-controlled, so the table is bounded like QUEUE_KEYS_MAX in
# edge/engine/queue.py; 4096 pairs is over 100 origins in all ~35 Fly.io regions, or 1,000 in four, at ~1 KB each.
ORIGIN_REGIONS_MAX: Final = 4096
# Latencies kept per pair for `p95_s`: the last 64 successes. At the 95th percentile that is three samples above
# the answer, enough to be a tail rather than the one worst sample, and 512 bytes per pair.
SAMPLES_MAX: Final = 64
# The percentile `p95_s` reports.
_P95: Final = 0.95


@final
@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The tunables of `RegionHealth`; the defaults are the named constants above (their comments say why)."""

    decay_s: float = DECAY_S
    consecutive_failures_max: int = CONSECUTIVE_FAILURES_MAX
    base_ejection_s: float = BASE_EJECTION_S
    max_ejection_s: float = MAX_EJECTION_S
    max_ejected_fraction: float = MAX_EJECTED_FRACTION
    probe_fraction: float = PROBE_FRACTION
    probe_cost_ratio_max: float = PROBE_COST_RATIO_MAX
    probe_after_s: float = PROBE_AFTER_S
    cost_tie_fraction: float = COST_TIE_FRACTION
    origin_regions_max: int = ORIGIN_REGIONS_MAX
    samples_max: int = SAMPLES_MAX

    def __post_init__(self) -> None:
        for name in ("decay_s", "base_ejection_s", "probe_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not (math.isfinite(self.max_ejection_s) and self.max_ejection_s >= self.base_ejection_s):
            raise ValueError(f"max_ejection_s must be at least base_ejection_s, got {self.max_ejection_s!r}")
        if not (self.probe_cost_ratio_max >= 1.0):  # infinity: probe every region at random
            raise ValueError(f"probe_cost_ratio_max must be at least 1, got {self.probe_cost_ratio_max!r}")
        if not (math.isfinite(self.cost_tie_fraction) and self.cost_tie_fraction >= 0.0):
            raise ValueError(f"cost_tie_fraction must be a finite fraction >= 0, got {self.cost_tie_fraction!r}")
        for name in ("max_ejected_fraction", "probe_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name in ("consecutive_failures_max", "origin_regions_max", "samples_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")

    @property
    def ejections_counted_max(self) -> int:
        """The multiplier stops growing once the ejection time reaches its cap, so its decay stays bounded too."""
        return math.ceil(self.max_ejection_s / self.base_ejection_s)

    def ejection_s(self, times_ejected: int) -> float:
        """How long the `times_ejected`-th ejection in a row lasts."""
        return min(self.base_ejection_s * times_ejected, self.max_ejection_s)


@final
@dataclass(frozen=True, slots=True)
class RegionStatus:
    """One (origin, region) pair as `snapshot` reports it. Times are monotonic seconds (the shell converts)."""

    latency_ms: float | None  # the peak-EWMA estimate as last measured; None: never measured
    p95_ms: float | None
    error_rate: float | None  # decayed share of failed outcomes; None: no outcome yet
    in_flight: int
    consecutive_failures: int
    ejected_until: float | None  # None: not ejected
    times_ejected: int  # the ejection multiplier (decays back after quiet periods)
    ejections_total: int
    samples: int  # latencies in the p95 window
    age_s: float | None  # since the last latency sample

    def to_wire(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "p95_ms": self.p95_ms,
            "error_rate": self.error_rate,
            "in_flight": self.in_flight,
            "consecutive_failures": self.consecutive_failures,
            "ejected_until": self.ejected_until,
            "times_ejected": self.times_ejected,
            "ejections_total": self.ejections_total,
            "samples": self.samples,
            "age_s": self.age_s,
        }


@final
@dataclass(frozen=True, slots=True)
class HealthStatistics:
    """Counters for metrics, as of the latest `now` any call passed in."""

    pairs: int
    origins: int
    in_flight: int
    ejected: int
    ejections_total: int
    ejections_refused_total: int  # ejections not made because too many of the origin's regions were out
    probes_total: int
    evicted_total: int  # pairs forgotten to stay within origin_regions_max


@dataclass(slots=True)
class _Pair:
    """What one owner knows about one region for one origin."""

    estimate_s: float = 0.0  # peak EWMA of round-trip time
    observed_at: float = -math.inf  # last latency sample; -inf: never measured
    probed_at: float = -math.inf  # last time `rank` put it first to re-measure it
    in_flight: int = 0
    # Error rate as two decayed counts: their ratio stays right when several outcomes arrive in the same instant,
    # where a single average weighted by elapsed time would give all but the first a weight of zero.
    failures_decayed: float = 0.0
    outcomes_decayed: float = 0.0
    outcome_at: float = -math.inf
    streak: int = 0  # consecutive failures
    ejected_until: float | None = None
    times_ejected: int = 0
    calm_since: float = 0.0  # start of the quiet period that will take one off `times_ejected`
    ejections_total: int = 0
    samples: array[float] = field(default_factory=lambda: array("d"))
    samples_next: int = 0  # where the next sample goes once `samples` is full (a ring)

    @property
    def is_measured(self) -> bool:
        return self.observed_at > -math.inf


class RegionHealth:
    """The health of every (origin, region) pair an owner has used, bounded to `origin_regions_max` pairs."""

    __slots__ = (
        "_by_origin",
        "_ejections_refused_total",
        "_evicted_total",
        "_latest_now",
        "_pairs",
        "_probes_total",
        "settings",
    )

    def __init__(self, settings: HealthSettings | None = None) -> None:
        self.settings = settings or HealthSettings()
        # Least recently used first; `_by_origin` indexes the same records by origin, then region.
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._by_origin: dict[str, dict[str, _Pair]] = {}
        self._latest_now = -math.inf
        self._ejections_refused_total = 0
        self._probes_total = 0
        self._evicted_total = 0

    def __len__(self) -> int:
        """Pairs tracked."""
        return len(self._pairs)

    # ----- what happened

    def started(self, origin: str, region: str, now: float) -> None:
        """An attempt for `origin` goes out in `region`."""
        self._touch(origin, region, now).in_flight += 1

    def finished(self, origin: str, region: str, now: float) -> None:
        """An attempt ended with no verdict (cancelled: a race's loser, a job given up): nothing is learned."""
        pair = self._touch(origin, region, now)
        pair.in_flight = max(0, pair.in_flight - 1)

    def succeeded(self, origin: str, region: str, rtt_s: float, now: float) -> None:
        """An attempt ended with a usable answer after `rtt_s` seconds: a latency sample, and the streak ends."""
        _check_rtt(rtt_s)
        pair = self._touch(origin, region, now)
        pair.in_flight = max(0, pair.in_flight - 1)
        self._observe(pair, rtt_s, now)
        _record_sample(pair, rtt_s, self.settings.samples_max)
        self._count_outcome(pair, failed=False, now=now)
        pair.streak = 0

    def failed(self, origin: str, region: str, now: float, *, rtt_s: float | None = None) -> None:
        """An attempt ended in a failure (the caller's judgement: connect error, timeout, 5xx).

        `rtt_s`, when known, can only raise a measured estimate: a timeout should make the region look slow, but
        a refused connection answered in 2 ms must not make it look fast, or the fastest-failing region would draw
        the traffic. (A pair never measured takes it as its first sample: it is all we know, and such a pair is
        tried first anyway until the streak ejects it.) Failures never enter the p95 window: it is for hedging
        requests that succeed."""
        pair = self._touch(origin, region, now)
        pair.in_flight = max(0, pair.in_flight - 1)
        if rtt_s is not None:
            _check_rtt(rtt_s)
            if rtt_s > pair.estimate_s or not pair.is_measured:
                self._observe(pair, rtt_s, now)
        self._count_outcome(pair, failed=True, now=now)
        pair.streak += 1
        if pair.streak >= self.settings.consecutive_failures_max and pair.ejected_until is None:
            self._eject(origin, pair, now)

    # ----- choosing

    def rank(self, origin: str, candidates: Iterable[str], now: float, rng: Random) -> list[str]:
        """The candidate regions in the order to try them: un-ejected ones by cost (lowest first; those within
        `cost_tie_fraction` of the lowest first of all, least recently measured first; exact ties keep the
        candidates' order), then ejected ones by when their ejection ends. A probe may move one un-ejected region
        to the front (module docstring). With two or more un-ejected candidates and no stale one, one rng draw
        decides a random probe, and a second picks the region when it happens."""
        self._see(now)
        regions = list(dict.fromkeys(candidates))
        known = self._by_origin.get(origin, {})
        self._refresh_origin(known, now)
        costs = self._costs(known, now)
        usable: list[tuple[float, int, int, str]] = []
        ejected: list[tuple[float, int, str]] = []
        for index, region in enumerate(regions):
            pair = known.get(region)
            if pair is not None and pair.ejected_until is not None:
                ejected.append((pair.ejected_until, index, region))
            else:
                in_flight = pair.in_flight if pair is not None else 0
                usable.append((costs.get(region, 0.0), in_flight, index, region))
        usable.sort()
        ejected.sort()
        order = self._spread_ties(known, usable)
        if len(order) > 1:
            probe = self._stale_candidate(known, order[1:], now)
            if probe is None and rng.random() < self.settings.probe_fraction:
                near = self._near(order, costs)
                probe = near[rng.randrange(len(near))] if near else None
            if probe is not None:
                order.remove(probe)
                order.insert(0, probe)
                if probe in known:
                    known[probe].probed_at = now
                self._probes_total += 1
        return order + [region for *_, region in ejected]

    def cost(self, origin: str, region: str, now: float) -> float:
        """The region's cost for the origin at `now` (aged estimate times in-flight + 1); what `rank` sorts by."""
        self._see(now)
        known = self._by_origin.get(origin, {})
        self._refresh_origin(known, now)
        return self._costs(known, now).get(region, 0.0)

    def p95_s(self, origin: str, region: str) -> float | None:
        """The 95th percentile of the pair's last `samples_max` successful latencies (nearest rank); None when
        there are none yet."""
        pair = self._by_origin.get(origin, {}).get(region)
        if pair is None or not pair.samples:
            return None
        return _percentile(pair.samples, _P95)

    # ----- views

    def snapshot(self, origin: str | None = None, *, now: float) -> dict[str, dict[str, RegionStatus]]:
        """Every pair (or only `origin`'s), as plain data: origin -> region -> status."""
        self._see(now)
        origins = [origin] if origin is not None else sorted(self._by_origin)
        view: dict[str, dict[str, RegionStatus]] = {}
        for name in origins:
            known = self._by_origin.get(name)
            if known is None:
                continue
            self._refresh_origin(known, now)
            view[name] = {region: self._status(known[region], now) for region in sorted(known)}
        return view

    def statistics(self) -> HealthStatistics:
        """A frozen snapshot of counters, as of the latest `now` seen; O(pairs), for metric scrapes."""
        now = self._latest_now
        return HealthStatistics(
            pairs=len(self._pairs),
            origins=len(self._by_origin),
            in_flight=sum(pair.in_flight for pair in self._pairs.values()),
            ejected=sum(1 for pair in self._pairs.values() if _is_ejected(pair, now)),
            ejections_total=sum(pair.ejections_total for pair in self._pairs.values()),
            ejections_refused_total=self._ejections_refused_total,
            probes_total=self._probes_total,
            evicted_total=self._evicted_total,
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<RegionHealth {stats.pairs} pairs over {stats.origins} origins: {stats.in_flight} in flight, "
            f"{stats.ejected} ejected | {stats.ejections_total} ejections ({stats.ejections_refused_total} refused), "
            f"{stats.probes_total} probes, {stats.evicted_total} evicted>"
        )

    # ----- internals

    def _see(self, now: float) -> None:
        self._latest_now = max(self._latest_now, now)

    def _touch(self, origin: str, region: str, now: float) -> _Pair:
        """The pair's record, created if new, marked most recently used, and brought up to `now`."""
        self._see(now)
        key = (origin, region)
        pair = self._pairs.get(key)
        if pair is None:
            pair = _Pair()
            self._pairs[key] = pair
            self._by_origin.setdefault(origin, {})[region] = pair
            while len(self._pairs) > self.settings.origin_regions_max:
                self._evict_oldest()
        else:
            self._pairs.move_to_end(key)
        self._refresh(pair, now)
        return pair

    def _evict_oldest(self) -> None:
        (origin, region), _ = self._pairs.popitem(last=False)
        known = self._by_origin[origin]
        del known[region]
        if not known:
            del self._by_origin[origin]
        self._evicted_total += 1

    def _observe(self, pair: _Pair, rtt_s: float, now: float) -> None:
        """Peak EWMA: a sample above the estimate replaces it; a lower one is averaged in with the weight of the
        time since the last sample (none at all for a sample in the same instant)."""
        if rtt_s > pair.estimate_s or not pair.is_measured:
            pair.estimate_s = rtt_s
        else:
            weight = math.exp(-max(0.0, now - pair.observed_at) / self.settings.decay_s)
            pair.estimate_s = pair.estimate_s * weight + rtt_s * (1.0 - weight)
        pair.observed_at = max(pair.observed_at, now)

    def _count_outcome(self, pair: _Pair, *, failed: bool, now: float) -> None:
        weight = math.exp(-max(0.0, now - pair.outcome_at) / self.settings.decay_s)
        pair.failures_decayed = pair.failures_decayed * weight + (1.0 if failed else 0.0)
        pair.outcomes_decayed = pair.outcomes_decayed * weight + 1.0
        pair.outcome_at = max(pair.outcome_at, now)

    def _eject(self, origin: str, pair: _Pair, now: float) -> None:
        known = self._by_origin[origin]
        ejected_now = sum(1 for other in known.values() if other.ejected_until is not None)
        if ejected_now >= _ejections_allowed(len(known), self.settings.max_ejected_fraction):
            self._ejections_refused_total += 1
            return
        settings = self.settings
        pair.times_ejected = min(pair.times_ejected + 1, settings.ejections_counted_max)
        pair.ejected_until = now + settings.ejection_s(pair.times_ejected)
        pair.ejections_total += 1

    def _refresh(self, pair: _Pair, now: float) -> None:
        """Bring the ejection state up to `now`: end an ejection whose time passed (the streak starts over), and
        take one off the multiplier for each quiet period, as long as the ejection it would set, since then."""
        if pair.ejected_until is not None:
            if now < pair.ejected_until:
                return
            pair.calm_since = pair.ejected_until
            pair.ejected_until = None
            pair.streak = 0
        while pair.times_ejected > 0:
            quiet_s = self.settings.ejection_s(pair.times_ejected)
            if now - pair.calm_since < quiet_s:
                break
            pair.calm_since += quiet_s
            pair.times_ejected -= 1

    def _refresh_origin(self, known: dict[str, _Pair], now: float) -> None:
        for pair in known.values():
            self._refresh(pair, now)

    def _near(self, order: list[str], costs: dict[str, float]) -> list[str]:
        """The candidates after the first that a random probe may pick: those within the probe cost ratio."""
        best = costs.get(order[0], 0.0)
        if best <= 0.0:
            return order[1:]
        bound = best * self.settings.probe_cost_ratio_max
        return [region for region in order[1:] if costs.get(region, 0.0) <= bound]

    def _costs(self, known: dict[str, _Pair], now: float) -> dict[str, float]:
        """Cost of each un-ejected pair of an origin (refreshed to `now`). A pair never measured costs 0 while idle,
        and once an attempt is in flight is costed as if its estimate were the origin's median (module docstring)."""
        measured = [p.estimate_s for p in known.values() if p.is_measured and p.ejected_until is None]
        best_s = min(measured, default=0.0)
        aged = {
            region: _aged(pair, best_s, now, self.settings.decay_s)
            for region, pair in known.items()
            if pair.is_measured and pair.ejected_until is None
        }
        typical_s = _median(list(aged.values())) if aged else 0.0
        costs: dict[str, float] = {}
        for region, pair in known.items():
            if pair.ejected_until is not None:
                continue
            if region in aged:
                costs[region] = aged[region] * (pair.in_flight + 1)
            elif pair.in_flight:
                costs[region] = typical_s * (pair.in_flight + 1)
            else:
                costs[region] = 0.0
        return costs

    def _spread_ties(self, known: dict[str, _Pair], usable: list[tuple[float, int, int, str]]) -> list[str]:
        """Regions sorted by cost, except that those within `cost_tie_fraction` of the lowest cost go first: idle
        ones before busy ones (an attempt in flight is a measurement under way), then least recently measured
        first, then by cost."""
        if not usable:
            return []
        band_max = usable[0][0] * (1.0 + self.settings.cost_tie_fraction)
        tied = [entry for entry in usable if entry[0] <= band_max]
        rest = usable[len(tied) :]

        def turn(entry: tuple[float, int, int, str]) -> tuple[int, float, float, int]:
            cost, in_flight, index, region = entry
            pair = known.get(region)
            return in_flight, pair.observed_at if pair is not None else -math.inf, cost, index

        tied.sort(key=turn)
        return [entry[3] for entry in tied + rest]

    def _stale_candidate(self, known: dict[str, _Pair], others: Sequence[str], now: float) -> str | None:
        """The measured candidate (not first, none in flight) longest without a sample or probe, if that is at
        least `probe_after_s` (ties: the earlier in `others`). One in flight is being measured already; one never
        measured is first anyway."""
        stale: list[tuple[float, int, str]] = []
        for index, region in enumerate(others):
            pair = known.get(region)
            if pair is None or not pair.is_measured or pair.in_flight:
                continue
            seen_at = max(pair.observed_at, pair.probed_at)
            if now - seen_at >= self.settings.probe_after_s:
                stale.append((seen_at, index, region))
        return min(stale)[2] if stale else None

    def _status(self, pair: _Pair, now: float) -> RegionStatus:
        p95 = _percentile(pair.samples, _P95) if pair.samples else None
        return RegionStatus(
            latency_ms=pair.estimate_s * 1000.0 if pair.is_measured else None,
            p95_ms=p95 * 1000.0 if p95 is not None else None,
            error_rate=pair.failures_decayed / pair.outcomes_decayed if pair.outcomes_decayed > 0.0 else None,
            in_flight=pair.in_flight,
            consecutive_failures=pair.streak,
            ejected_until=pair.ejected_until,
            times_ejected=pair.times_ejected,
            ejections_total=pair.ejections_total,
            samples=len(pair.samples),
            age_s=max(0.0, now - pair.observed_at) if pair.is_measured else None,
        )


# ----- formulas (pure functions, tested by tables)


def _ejections_allowed(regions: int, fraction: float) -> int:
    """How many of an origin's `regions` may be ejected at once: the fraction, at least one, never all."""
    return min(regions - 1, max(1, math.floor(regions * fraction)))


def _aged(pair: _Pair, best_s: float, now: float, decay_s: float) -> float:
    """The estimate as it counts at `now`: it drifts from its last value toward the origin's best as it ages."""
    if pair.estimate_s <= best_s:
        return pair.estimate_s
    weight = math.exp(-max(0.0, now - pair.observed_at) / decay_s)
    return best_s + (pair.estimate_s - best_s) * weight


def _record_sample(pair: _Pair, rtt_s: float, samples_max: int) -> None:
    if len(pair.samples) < samples_max:
        pair.samples.append(rtt_s)
        return
    pair.samples[pair.samples_next % samples_max] = rtt_s
    pair.samples_next = (pair.samples_next + 1) % samples_max


def _percentile(samples: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample that at least `fraction` of the samples do not exceed."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2.0


def _is_ejected(pair: _Pair, now: float) -> bool:
    return pair.ejected_until is not None and now < pair.ejected_until


def _check_rtt(rtt_s: float) -> None:
    if not (math.isfinite(rtt_s) and rtt_s >= 0.0):
        raise ValueError(f"rtt_s must be a finite number of seconds >= 0, got {rtt_s!r}")
