"""The simulated world's other parties: upstream providers, webhook receivers, and the arrival processes of
client workloads. Providers and receivers are plain ASGI apps, mounted on `SimulatedHttp`; everything random draws
from an RNG the caller hands in (one per actor, split from the seed), and time is trio's virtual clock.

- `Provider`: an upstream API whose answers are `UpstreamCore`'s (simulations/upstream.py: per-credential GCRA
  limits, 429 dialects, lognormal latency per calling region, 5xx), served as ASGI. It records every arrival with
  its credential and the node that sent it (the upstream-limit invariant reads them), and every call from start to
  end (`calls`, `ended`): when its request left the node (`sent_at`, stamped by the simulated network), its
  `Idempotency-Key`, and whether it was answered or the caller hung up first (a cancelled request: the call's task
  is cancelled while the provider is still working on it). The invariants on races, strict regions and terminal
  jobs read those.
- `WebhookReceiver`: answers after a lognormal delay, refuses a share `failure_rate` with 500, and reports every
  delivery to a callback (the world's ledger of what each job's webhooks saw).
- `arrival_times`, `LognormalLatency`: from simulations/upstream.py, pure, shared with the fast model.

The small ASGI helpers (`respond`, `read_body`, `header`) are shared with the end-to-end tests' real servers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, final

import trio

from .upstream import LognormalLatency as LognormalLatency
from .upstream import UpstreamCore
from .upstream import arrival_times as arrival_times

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


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
    """An upstream API with per-credential rate limits, its answers `core`'s (see the module docstring)."""

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
        self.name = name
        self.core = UpstreamCore(
            rate_limit_rps=rate_limit_rps,
            burst=burst,
            signal=signal,
            latency=latency,
            error_rate=error_rate,
            rng=rng,
            latency_by_region=latency_by_region,
        )
        self._region_of = region_of
        self.arrivals: dict[str, list[UpstreamArrival]] = {}  # by credential, in arrival order
        self.calls: list[UpstreamCall] = []  # every call, in arrival order
        self.ended: list[UpstreamCall] = []  # the same calls, in the order they ended (answered or hung up)
        self.requests = 0
        self.rate_limited = 0

    def __repr__(self) -> str:
        return f"<Provider {self.name}: {self.requests} requests, {self.rate_limited} answered 429>"

    @property
    def rate_limit_rps(self) -> float:
        return self.core.rate_limit_rps

    @property
    def error_bursts(self) -> dict[str, float]:
        """5xx bursts in progress (`UpstreamCore.error_bursts`), as the fault injector sets them."""
        return self.core.error_bursts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        now = trio.current_time()
        credential = header(scope, "authorization") or "-"
        source = scope["client"][0]
        region = self._region_of(source)
        status, headers = self.core.answer(now, credential, region)
        self.requests += 1
        self.rate_limited += status == 429
        self.arrivals.setdefault(credential, []).append(UpstreamArrival(now, source, status))
        sent_at = sent_at_of(scope)
        call = UpstreamCall(
            now, now if sent_at is None else sent_at, source, credential, header(scope, "idempotency-key")
        )
        self.calls.append(call)
        try:
            await trio.sleep(self.core.draw_latency(region))
        except BaseException:  # cancelled: the caller hung up before the answer
            call.gone_at = trio.current_time()
            self.ended.append(call)
            raise
        call.answered_at, call.status = trio.current_time(), status
        self.ended.append(call)
        body = json.dumps({"ok": status < 300, "provider": self.name}).encode()
        await respond(send, status, body, [("content-type", "application/json"), *headers])


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
