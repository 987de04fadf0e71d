"""Fair sharing through the real proxy: tier shares under saturation, and a light tenant beside a heavy one.

The upstream has 8 slots and holds each request 100 ms. (The issue's example is 20 ms; but client, proxy and
upstream share this process, and at ~6 ms of CPU per proxied request one core tops out near 160 req/s, below
the 400 req/s that 8 x 20 ms would need, so the upstream would not be the bottleneck. At 100 ms it needs 80.)

Tolerance: over a 4 s window (~320 requests) each tier's share of the upstream's work must be within 5
percentage points of the configured split. The scheduler itself is deterministic and exact to 1.5 points in
tests/scheduler (test_fair_*.py); the extra slack covers real-time jitter and the requests in flight at the window's
edges.
"""

from __future__ import annotations

import statistics
from collections import Counter

import httpx
import pytest
import trio

from tests.edge.proxy.support import Harness, Upstream, harness, protect_keys

SERVICE_S = 0.1
CAPACITY = 8
TOLERANCE = 0.05
TIER_KEYS = {tier: [f"{tier}_key_{n}_0123456789" for n in range(2)] for tier in ("reserved", "paid", "free")}
TIER_OF_KEY = {key: tier for tier, keys in TIER_KEYS.items() for key in keys}
HEAVY, LIGHT = "heavy_key_0123456789", "light_key_0123456789"


def key_id(key: str) -> str:
    return key.removesuffix("_0123456789")


async def keep_busy(client: httpx.AsyncClient, key: str, until: float) -> None:
    """One closed-loop worker: a new request as soon as the last one is answered."""
    while trio.current_time() < until:
        response = await client.get("/work", headers={"x-api-key": key})
        assert response.status_code == 200, response.text


async def test_busy_tiers_get_their_configured_shares_of_the_upstream() -> None:
    keys = protect_keys({"key": key, "tier": tier, "id": key_id(key)} for key, tier in TIER_OF_KEY.items())
    upstream = Upstream(capacity=CAPACITY, service_s=SERVICE_S)
    slots_in_use: list[int] = []
    async with harness(upstream, keys=keys, max_concurrency=CAPACITY) as h:
        start = trio.current_time() + 0.5
        end = start + 4.0
        async with trio.open_nursery() as nursery:
            for key in TIER_OF_KEY:
                for _ in range(6):  # 12 outstanding per tier: every tier stays backlogged
                    nursery.start_soon(keep_busy, h.client, key, end)
            await trio.sleep_until(start)
            while trio.current_time() < end:
                slots_in_use.append(h.stats().inflight)
                await trio.sleep(0.02)
    served = Counter(TIER_OF_KEY[key] for at, key in upstream.served_log if start <= at < end)
    total = sum(served.values())
    shares = {tier: count / total for tier, count in served.items()}
    assert shares["reserved"] == pytest.approx(0.20, abs=TOLERANCE), shares
    assert shares["paid"] == pytest.approx(0.64, abs=TOLERANCE), shares
    assert shares["free"] == pytest.approx(0.16, abs=TOLERANCE), shares
    # Work-conserving: with requests queued, no slot stays free. (The upstream itself is busy a little less:
    # part of each hold is the proxy's own round trip, which is slow with client and upstream in this process.)
    assert statistics.mean(slots_in_use) >= 0.95 * CAPACITY
    assert upstream.in_flight_max <= CAPACITY and upstream.overloaded == 0
    for key, tier in TIER_OF_KEY.items():
        assert h.proxy.metric("ezthrottle_proxy_admitted_total", listener="test", tier=tier, key=key_id(key)) > 0


async def light_latencies(*, fairness: bool) -> tuple[list[float], list[int]]:
    """The light tenant's latencies beside a 40-connection flood, and the proxy's slots in use meanwhile."""
    keys = protect_keys([{"key": HEAVY, "tier": "paid"}, {"key": LIGHT, "tier": "paid"}])
    upstream = Upstream(capacity=CAPACITY, service_s=SERVICE_S)
    latencies: list[float] = []
    slots_in_use: list[int] = []
    settings = {"keys": keys, "fairness": fairness, "max_concurrency": CAPACITY}
    async with harness(upstream, **settings) as h, trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(keep_busy, h.client, HEAVY, trio.current_time() + 60)
        await trio.sleep(0.5)  # the flood's queue builds up
        nursery.start_soon(sample_slots, h, slots_in_use)
        for _ in range(6):
            started = trio.current_time()
            response = await h.client.get("/work", headers={"x-api-key": LIGHT})
            assert response.status_code == 200
            latencies.append(trio.current_time() - started)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return latencies, slots_in_use


async def sample_slots(h: Harness, into: list[int]) -> None:
    while True:
        into.append(h.stats().inflight)
        await trio.sleep(0.02)


async def test_a_light_tenant_is_not_slowed_by_a_heavy_one_unless_fairness_is_off() -> None:
    fair, fair_slots = await light_latencies(fairness=True)
    fifo, _ = await light_latencies(fairness=False)
    # Fair: the heavy key may hold 7 of 8 slots, so the light one finds a free slot and waits for nothing
    # (one service time plus the proxy's round trip, which is slow with everything in this process).
    assert statistics.median(fair) < 2.5 * SERVICE_S, fair
    # FIFO: the light tenant queues behind ~32 of the flood's requests, about 4 service times more.
    assert statistics.median(fifo) > max(3.5 * SERVICE_S, 2 * statistics.median(fair)), fifo
    # Meanwhile the flood kept the other slots busy: fairness costs no capacity.
    assert statistics.mean(fair_slots) >= 0.9 * CAPACITY
