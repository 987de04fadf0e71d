"""A flood far beyond the upstream's capacity: queue limits hold, the excess is refused, memory stays bounded."""

from __future__ import annotations

import tracemalloc
from collections import Counter

import httpx
import trio

from tests.edge.proxy.support import Upstream, harness, protect_keys
from tests.edge.proxy.test_refusals import wait_until

FLOOD_KEYS = [f"flood_key_{n:02d}_0123456789" for n in range(6)]
WORKERS_PER_KEY = 12  # 72 requests outstanding at all times, against 8 slots and 20 queue places
KEY_QUEUE_MAX, QUEUE_MAX = 5, 20
FLOOD_S = 1.5
# Everything the process allocates during the flood, the client's and upstream's connections included
# (measured ~4.5 MB). A proxy whose queue grew with the flood would grow with it.
PEAK_BYTES_MAX = 16 * 1024 * 1024


async def flood(url: str, key: str, until: float, statuses: Counter[int]) -> None:
    """One key's share of the flood: its own client, so no connection pool is shared between keys."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client, trio.open_nursery() as nursery:
        for _ in range(WORKERS_PER_KEY):
            nursery.start_soon(flood_worker, client, key, until, statuses)


async def flood_worker(client: httpx.AsyncClient, key: str, until: float, statuses: Counter[int]) -> None:
    while trio.current_time() < until:
        response = await client.get("/work", headers={"x-api-key": key})
        statuses[response.status_code] += 1
        if response.status_code != 200:
            await trio.sleep(0.05)  # a refused client comes straight back, as a flood would


async def test_a_flood_is_held_to_the_queue_limits_and_refused_beyond_them() -> None:
    keys = protect_keys({"key": key, "tier": "paid", "id": f"flood{n}"} for n, key in enumerate(FLOOD_KEYS))
    settings = {
        "keys": keys,
        "max_concurrency": 8,
        "key_queue_length_max": KEY_QUEUE_MAX,
        "queue_length_max": QUEUE_MAX,
    }
    statuses: Counter[int] = Counter()
    queued_max = key_queued_max = 0
    async with harness(Upstream(capacity=8, service_s=0.05), **settings) as h:
        tracemalloc.start()
        try:
            async with trio.open_nursery() as nursery:
                end = trio.current_time() + FLOOD_S
                for key in FLOOD_KEYS:
                    nursery.start_soon(flood, h.proxy.url, key, end, statuses)
                while trio.current_time() < end:
                    stats = h.stats()
                    queued_max = max(queued_max, stats.queued)
                    key_queued_max = max([key_queued_max, *(k.queued for k in stats.top_keys)])
                    await trio.sleep(0.01)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # Nothing left behind (the last slots are freed just after their responses went out).
        await wait_until(lambda: (h.stats().queued, h.stats().inflight, h.stats().keys_tracked) == (0, 0, 0))
        refused = sum(
            h.proxy.metric(
                "ezthrottle_proxy_refused_total", listener="test", tier="paid", key=f"flood{n}", reason=reason
            )
            for n in range(len(FLOOD_KEYS))
            for reason in ("queue-full", "key-queue-full")
        )
    assert queued_max <= QUEUE_MAX and key_queued_max <= KEY_QUEUE_MAX  # sampled every 10 ms
    assert set(statuses) == {200, 429, 503}  # the 503s show the global queue did fill up
    assert refused == statuses[429] + statuses[503]
    assert h.upstream.in_flight_max <= 8 and h.upstream.overloaded == 0
    assert peak < PEAK_BYTES_MAX, peak
