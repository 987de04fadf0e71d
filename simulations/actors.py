"""The simulated world's other parties: upstream providers, webhook receivers, and the arrival processes of
client workloads. Providers and receivers are plain ASGI apps, mounted on `SimulatedHttp`; everything random draws
from an RNG the caller hands in (one per actor, split from the seed), and time is trio's virtual clock.

- `Provider`: enforces a per-credential limit with GCRA (`scheduler.Gcra`, `burst` back-to-back calls, then one per
  1/rate), and answers over-limit calls with 429 plus the dialect its `signal` names: `Retry-After`, the IETF
  `RateLimit` / `RateLimit-Policy` fields, OpenAI's `x-ratelimit-*-requests`, or nothing. Latency is lognormal,
  fitted to a median and a p99 (per calling region when `latency_by_region` names it); a share `error_rate` (or,
  during a 5xx burst, that burst's rate) of calls gets 503. It records every arrival with its credential and the
  node that sent it (the upstream-limit invariant reads them), and every call from start to end (`calls`, `ended`):
  when its request left the node (`sent_at`, stamped by the simulated network), its `Idempotency-Key`, and whether
  it was answered or the caller hung up first (a cancelled request: the call's task is cancelled while the
  provider is still working on it). The invariants on races, strict regions and terminal jobs read those.
- `WebhookReceiver`: answers after a lognormal delay, refuses a share `failure_rate` with 500, and reports every
  delivery to a callback (the world's ledger of what each job's webhooks saw).
- `arrival_times`: when a tenant's next jobs come (Poisson, bursty on/off, or periodic), as an endless iterator.

The small ASGI helpers (`respond`, `read_body`, `header`) are shared with the end-to-end tests' real servers.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, final

import trio

from scheduler.gcra import Gcra

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# z of the 99th percentile of the standard normal: fits a lognormal's sigma to a median and a p99.
Z_P99 = 2.3263
SIGNALS = ("retry-after", "ratelimit", "x-ratelimit", "none")
ARRIVALS = ("poisson", "bursty", "periodic")
# Bursty arrivals: on and off spells of this mean length; during "on" the rate doubles, so the mean stays.
BURST_SPELL_S = 5.0
ERROR_STATUS = 503  # retryable by the job contract's default retry_codes, so errors cost retries, not jobs


async def respond(send: Send, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or [])]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def header(scope: Scope, name: str) -> str:
    wanted = name.lower().encode()
    return next((v.decode() for k, v in scope["headers"] if k == wanted), "")


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
@dataclass(frozen=True, slots=True)
class UpstreamArrival:
    """One call as the provider saw it: when, from which node, and what it answered."""

    at: float
    source: str
    status: int


@final
@dataclass(slots=True)
class UpstreamCall:
    """One call from its start to its end, as the provider saw it: `at` when it arrived, `sent_at` when its request
    left the calling node, `source` that node's host; then either `answered_at` and `status`, or `gone_at` (the
    caller hung up before the answer). Both None: still being worked on."""

    at: float
    sent_at: float
    source: str
    credential: str
    idempotency_key: str
    answered_at: float | None = None
    status: int | None = None
    gone_at: float | None = None

    @property
    def ended_at(self) -> float | None:
        return self.answered_at if self.answered_at is not None else self.gone_at


def sent_at_of(scope: Scope) -> float | None:
    """When the request of `scope` left its source, as `SimulatedHttp` stamps it (None outside the simulator)."""
    simulated = scope.get("extensions", {}).get("simulated", {})
    sent_at = simulated.get("sent_at")
    return float(sent_at) if sent_at is not None else None


@final
class Provider:
    """An upstream API with per-credential rate limits (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        rate_limit_rps: float,
        burst: int,
        signal: str,
        latency: LognormalLatency,
        error_rate: float,
        rng: random.Random,
        region_of: Callable[[str], str] = lambda host: "",
        latency_by_region: Mapping[str, LognormalLatency] | None = None,
    ) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
        self.name = name
        self.rate_limit_rps = rate_limit_rps
        self.burst = burst
        self.signal = signal
        self.latency = latency
        self.latency_by_region = dict(latency_by_region or {})
        self.error_rate = error_rate
        # 5xx bursts in progress: region of the calling node ("" = every region) -> share of calls answered 5xx.
        self.error_bursts: dict[str, float] = {}
        self._rng = rng
        self._region_of = region_of
        self._pacers: dict[str, Gcra] = {}
        self.arrivals: dict[str, list[UpstreamArrival]] = {}  # by credential, in arrival order
        self.calls: list[UpstreamCall] = []  # every call, in arrival order
        self.ended: list[UpstreamCall] = []  # the same calls, in the order they ended (answered or hung up)
        self.requests = 0
        self.rate_limited = 0

    def __repr__(self) -> str:
        return f"<Provider {self.name}: {self.requests} requests, {self.rate_limited} answered 429>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        now = trio.current_time()
        credential = header(scope, "authorization") or "-"
        source = scope["client"][0]
        status, headers = self._decide(now, credential, self._error_rate_for(source))
        self.requests += 1
        self.rate_limited += status == 429
        self.arrivals.setdefault(credential, []).append(UpstreamArrival(now, source, status))
        sent_at = sent_at_of(scope)
        call = UpstreamCall(
            now, now if sent_at is None else sent_at, source, credential, header(scope, "idempotency-key")
        )
        self.calls.append(call)
        try:
            await trio.sleep(self._latency_for(source).draw(self._rng))
        except BaseException:  # cancelled: the caller hung up before the answer
            call.gone_at = trio.current_time()
            self.ended.append(call)
            raise
        call.answered_at, call.status = trio.current_time(), status
        self.ended.append(call)
        body = json.dumps({"ok": status < 300, "provider": self.name}).encode()
        await respond(send, status, body, [("content-type", "application/json"), *headers])

    def _latency_for(self, source: str) -> LognormalLatency:
        if not self.latency_by_region:
            return self.latency
        return self.latency_by_region.get(self._region_of(source), self.latency)

    def _error_rate_for(self, source: str) -> float:
        if not self.error_bursts:
            return self.error_rate
        bursts = self.error_bursts
        return max(self.error_rate, bursts.get("", 0.0), bursts.get(self._region_of(source), 0.0))

    def _decide(self, now: float, credential: str, error_rate: float) -> tuple[int, list[tuple[str, str]]]:
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

    def _limit_headers(self, wait_s: float) -> list[tuple[str, str]]:
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


@final
@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One webhook delivery as a receiver saw it."""

    receiver: str
    at: float
    payload: dict[str, Any]
    accepted: bool


@final
class WebhookReceiver:
    """A customer's webhook endpoint: slow, and failing a share of deliveries (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        latency: LognormalLatency,
        failure_rate: float,
        rng: random.Random,
        on_delivery: Callable[[DeliveryReport], None],
    ) -> None:
        self.name = name
        self.latency = latency
        self.failure_rate = failure_rate
        self._rng = rng
        self._on_delivery = on_delivery
        self.deliveries = 0

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self.name}: {self.deliveries} deliveries>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        await trio.sleep(self.latency.draw(self._rng))
        accepted = self._rng.random() >= self.failure_rate
        self.deliveries += 1
        self._on_delivery(DeliveryReport(self.name, trio.current_time(), json.loads(body), accepted))
        await respond(send, 200 if accepted else 500, b"{}", [("content-type", "application/json")])


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
