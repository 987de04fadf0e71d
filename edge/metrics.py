"""Prometheus metrics of one node, in a registry of its own.

A per-node `CollectorRegistry` (not the process-global one) lets several nodes live in one process: the simulator
and the in-process tests run many. Label sets are bounded: outcomes and kinds are fixed vocabularies, and nothing is
labelled by account, key or URL; region labels come from the cluster's members, not from jobs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ATTEMPT_OUTCOMES = ("success", "retry", "rate_limited", "failed", "error")


class NodeMetrics:
    """The counters, gauges and histograms the issue asks for, created once per node."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_accepted = Counter("ezthrottle_jobs_accepted", "Jobs accepted (made durable)", registry=r)
        self.jobs_duplicate = Counter(
            "ezthrottle_jobs_duplicate", "Submissions answered with an existing job", registry=r
        )
        self.jobs_finished = Counter(
            "ezthrottle_jobs_finished", "Jobs that reached a terminal state", ["status"], registry=r
        )
        self.jobs_refused = Counter(
            "ezthrottle_jobs_refused", "Submissions refused, by HTTP status", ["status"], registry=r
        )
        self.queue_depth = Gauge("ezthrottle_queue_depth", "Jobs waiting in queues on this node", registry=r)
        self.in_flight = Gauge("ezthrottle_in_flight", "Outbound attempts in flight", registry=r)
        self.active_queues = Gauge("ezthrottle_active_queues", "Queue keys with a running task", registry=r)
        self.attempts = Counter("ezthrottle_attempts", "Outbound attempts by outcome", ["outcome"], registry=r)
        self.upstream_429 = Counter("ezthrottle_upstream_429", "429 responses seen from targets", registry=r)
        self.malformed_headers = Counter(
            "ezthrottle_malformed_limit_headers", "Rate-limit headers ignored as malformed", registry=r
        )
        self.upstream_latency = Histogram(
            "ezthrottle_upstream_latency_seconds",
            "Latency of outbound attempts",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.region_attempts = Counter(
            "ezthrottle_region_attempts",
            "Attempt legs by the region that ran them and how they ended (ok, failed, cancelled)",
            ["region", "result"],
            registry=r,
        )
        self.region_latency = Histogram(
            "ezthrottle_region_latency_seconds",
            "Latency of attempt legs that got an answer, by region",
            ["region"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "ezthrottle_webhook_deliveries", "Webhook delivery tries by outcome", ["outcome"], registry=r
        )
        self.usage_accepted = Counter(
            "ezthrottle_usage_accepted", "Jobs this node accepted against a metered plan's quota", ["plan"], registry=r
        )
        self.quota_refused = Counter(
            "ezthrottle_quota_refused", "Submissions refused because the plan's quota was spent", ["plan"], registry=r
        )
        for outcome in ATTEMPT_OUTCOMES:
            self.attempts.labels(outcome)
        for status in ("success", "failed", "cancelled"):
            self.jobs_finished.labels(status)
        for outcome in ("delivered", "retry", "gave_up"):
            self.webhook_deliveries.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
