"""The dashboard's numbers: attempts counted per account from the event bus, members' samples merged, and the
inbound proxy summed per listener and tier (the page itself: tests/e2e/test_dashboard.py)."""

from __future__ import annotations

from itertools import count

from prometheus_client import CollectorRegistry

from edge.engine.shell.events import EventBus
from edge.http.dashboard import SAMPLE_S, ActivityHistory, merged_series, proxy_view
from edge.proxy.metrics import ProxyMetrics


def test_attempts_are_counted_per_account_by_outcome_with_their_latency():
    clock = count(10_000, 2_000)
    history = ActivityHistory(lambda: next(clock))
    bus = EventBus(node="n1", wall_ms=lambda: 0)
    bus.observe(history.observe)
    bus.publish("j1", "acme", "queued")
    bus.publish("j1", "acme", "attempt", outcome="rate_limited", status_code=429, duration_ms=20.0)
    bus.publish("j1", "acme", "attempt", outcome="cancelled", status_code=None, duration_ms=5.0)  # a race's loser
    bus.publish("j1", "acme", "attempt", outcome="won", status_code=200, duration_ms=60.0)
    bus.publish("j2", "other", "attempt", outcome="retried", status_code=None, error="timeout", duration_ms=900.0)
    history.sample()
    history.sample()  # a quiet interval is a point of zeros
    [busy, quiet] = history.series("acme")
    assert busy == {
        "t_ms": 10_000,
        "queued": 1,
        "ok": 1,
        "rate_limited": 1,
        "errors": 0,
        "latency_ms_sum": 80.0,
        "latency_count": 2,
        "latency_ms_max": 60.0,
    }
    assert quiet["t_ms"] == 12_000 and quiet["ok"] == 0 == quiet["latency_count"]
    everyone = history.series(None)[0]
    assert (everyone["errors"], everyone["latency_count"]) == (1, 2)  # the timeout had no answer: no latency


def test_members_samples_in_one_interval_are_added_up():
    slot_ms = SAMPLE_S * 1000
    a = [{"t_ms": 10 * slot_ms + 10, "ok": 2, "latency_ms_max": 50.0}, {"t_ms": 11 * slot_ms + 5, "ok": 1}]
    b = [{"t_ms": 10 * slot_ms + 900, "ok": 3, "latency_ms_max": 80.0}]
    merged = merged_series([a, b])
    assert [(p["t_ms"], p["ok"], p["latency_ms_max"]) for p in merged] == [
        (10 * slot_ms, 5, 80.0),
        (11 * slot_ms, 1, 0.0),
    ]


def test_the_proxy_is_shown_per_listener_and_tier_summed_over_keys():
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    metrics.capacity.labels("api").set(16)
    metrics.admitted.labels("api", "paid", "big").inc(3)
    metrics.admitted.labels("api", "paid", "small").inc(2)
    metrics.refused.labels("api", "free", "other", "rate-limited").inc(4)
    metrics.wait.labels("api", "paid", "big").observe(0.5)
    metrics.in_flight.labels("api", "paid").set(1)
    [listener] = proxy_view(registry)
    assert listener["listener"] == "api" and listener["capacity"] == 16
    tiers = {tier["tier"]: tier for tier in listener["tiers"]}
    assert (tiers["paid"]["admitted"], tiers["paid"]["in_flight"], tiers["paid"]["wait_s_sum"]) == (5, 1, 0.5)
    assert tiers["free"]["refused"] == 4
