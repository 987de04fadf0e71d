"""The pure parts of the simulated outside world, shared by the full model (simulations/actors.py wraps them in
ASGI apps on trio) and the fast model (simulations/fast/ calls them from its event loop), so both answer the same
scenario the same way.

- `UpstreamCore`: what a provider answers one call, given when it came, with which credential and from which
  region: 503 for a share `error_rate` (or a 5xx burst's rate), else 200 while the credential's GCRA
  (`scheduler.Gcra`, `burst` back-to-back calls, then one per 1/rate) has room, else 429 with the dialect its
  `signal` names (`Retry-After`, the IETF `RateLimit` / `RateLimit-Policy` fields, OpenAI's
  `x-ratelimit-*-requests`, or nothing); and how long it takes (lognormal, per calling region when
  `latency_by_region` names it).
- `LognormalLatency`: delays fitted to a median and a p99.
- `arrival_times`: when a tenant's next jobs come (Poisson, bursty on/off, or periodic), as an endless iterator.

Everything random draws from the RNG the caller hands in, in a fixed order per call (the error draw, then the
latency), so a seed replays exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import final

from scheduler.gcra import Gcra

# z of the 99th percentile of the standard normal: fits a lognormal's sigma to a median and a p99.
Z_P99 = 2.3263
SIGNALS = ("retry-after", "ratelimit", "x-ratelimit", "none")
ARRIVALS = ("poisson", "bursty", "periodic")
# Bursty arrivals: on and off spells of this mean length; during "on" the rate doubles, so the mean stays.
BURST_SPELL_S = 5.0
ERROR_STATUS = 503  # retryable by the job contract's default retry_codes, so errors cost retries, not jobs

Headers = list[tuple[str, str]]


@final
@dataclass(frozen=True, slots=True)
class LognormalLatency:
    """Delays with a given median and p99 (a p99 at or below the median means a constant delay)."""

    median_s: float
    p99_s: float

    def draw(self, rng: random.Random) -> float:
        if self.median_s <= 0:
            return 0.0
        if self.p99_s <= self.median_s:
            return self.median_s
        sigma = (math.log(self.p99_s) - math.log(self.median_s)) / Z_P99
        return rng.lognormvariate(math.log(self.median_s), sigma)


@final
class UpstreamCore:
    """One provider's decisions (see the module docstring); `error_bursts` is what 5xx-burst faults set."""

    def __init__(
        self,
        *,
        rate_limit_rps: float,
        burst: int,
        signal: str,
        latency: LognormalLatency,
        error_rate: float,
        rng: random.Random,
        latency_by_region: Mapping[str, LognormalLatency] | None = None,
    ) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
        self.rate_limit_rps = rate_limit_rps
        self.burst = burst
        self.signal = signal
        self.latency = latency
        self.latency_by_region = dict(latency_by_region or {})
        self.error_rate = error_rate
        # 5xx bursts in progress: region of the calling node ("" = every region) -> share of calls answered 5xx.
        self.error_bursts: dict[str, float] = {}
        self._rng = rng
        self._pacers: dict[str, Gcra] = {}

    def answer(self, now: float, credential: str, region: str) -> tuple[int, Headers]:
        """The status and limit headers of a call arriving at `now` from a node in `region` ("" = none)."""
        error_rate = self._error_rate_for(region)
        if error_rate and self._rng.random() < error_rate:
            return ERROR_STATUS, []
        pacer = self._pacers.get(credential)
        if pacer is None:
            pacer = self._pacers[credential] = Gcra(self.rate_limit_rps, self.burst)
        ready_at = pacer.ready_at(now)
        if ready_at <= now:
            pacer.consume(now)
            return 200, []
        return 429, self._limit_headers(ready_at - now)

    def draw_latency(self, region: str) -> float:
        """How long the call from `region` takes to answer."""
        latency = self.latency_by_region.get(region, self.latency) if self.latency_by_region else self.latency
        return latency.draw(self._rng)

    def _error_rate_for(self, region: str) -> float:
        if not self.error_bursts:
            return self.error_rate
        bursts = self.error_bursts
        return max(self.error_rate, bursts.get("", 0.0), bursts.get(region, 0.0))

    def _limit_headers(self, wait_s: float) -> Headers:
        whole_s = str(max(1, math.ceil(wait_s)))
        if self.signal == "retry-after":
            return [("Retry-After", whole_s)]
        if self.signal == "ratelimit":
            window_s = max(1, math.ceil(self.burst / self.rate_limit_rps))
            return [
                ("RateLimit-Policy", f'"default";q={self.burst};w={window_s}'),
                ("RateLimit", f'"default";r=0;t={whole_s}'),
            ]
        if self.signal == "x-ratelimit":
            return [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", f"{wait_s:.3f}s")]
        return []


def arrival_times(kind: str, rate_per_s: float, rng: random.Random, *, start_s: float = 0.0) -> Iterator[float]:
    """Endless, increasing arrival times from `start_s` at a mean of `rate_per_s` (see the module docstring)."""
    if kind not in ARRIVALS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {kind!r}")
    if rate_per_s <= 0:
        return
    now = start_s
    if kind == "periodic":
        now += rng.uniform(0, 1 / rate_per_s)  # a seeded phase, so periodic tenants do not all fire together
        while True:
            yield now
            now += 1 / rate_per_s
    spell_end = now + rng.expovariate(1 / BURST_SPELL_S)
    on = True
    while True:
        if kind == "poisson":
            now += rng.expovariate(rate_per_s)
            yield now
            continue
        if not on:  # bursty, silent spell: jump to the next "on" spell
            now, on = spell_end, True
            spell_end = now + rng.expovariate(1 / BURST_SPELL_S)
        now += rng.expovariate(2 * rate_per_s)
        if now >= spell_end:
            now, on = spell_end, False
            spell_end = now + rng.expovariate(1 / BURST_SPELL_S)
            continue
        yield now
