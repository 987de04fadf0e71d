"""Prometheus metrics of the inbound proxy, registered in the node's own registry.

Cardinality is bounded by construction: `listener` is one per `[[protect]]` section, `tier` is one of three,
`key` is a configured key's id for the first `KEY_LABELS_MAX` keys and otherwise "other" or "anonymous"
(edge/proxy/callers.py), and `reason` / `kind` are fixed vocabularies. Client addresses and presented keys
are never labels.
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from edge.proxy.callers import Caller

# From "admitted at once" to the default 15 s queue timeout.
WAIT_BUCKETS_S: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
UPSTREAM_FAILURES: Final = ("connect", "timeout", "protocol")
CLIENT_FAILURES: Final = ("body-timeout", "body-too-large", "disconnected")


class ProxyMetrics:
    """The proxy's series, created once per node and shared by its listeners (each labels its own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        scoped = ["listener", "tier", "key"]
        self.queued = Gauge("ezthrottle_proxy_queued", "Requests waiting for an upstream slot", scoped, registry=r)
        self.admitted = Counter("ezthrottle_proxy_admitted", "Requests given an upstream slot", scoped, registry=r)
        # reason: rate-limited, key-queue-full, queue-full (scheduler/admission.py) or queue-timeout.
        self.refused = Counter(
            "ezthrottle_proxy_refused", "Requests refused (429/503) by reason", [*scoped, "reason"], registry=r
        )
        self.wait = Histogram(
            "ezthrottle_proxy_queue_wait_seconds",
            "Time admitted requests waited for a slot",
            scoped,
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "ezthrottle_proxy_in_flight", "Requests holding an upstream slot", ["listener", "tier"], registry=r
        )
        self.capacity = Gauge(
            "ezthrottle_proxy_capacity", "Upstream slots (the AIMD limit when adaptive)", ["listener"], registry=r
        )
        self.upstream_failures = Counter(
            "ezthrottle_proxy_upstream_failures", "Upstream exchanges that failed", ["listener", "kind"], registry=r
        )
        self.client_failures = Counter(
            "ezthrottle_proxy_client_failures", "Requests cut short by the client", ["listener", "kind"], registry=r
        )

    def listener(self, label: str) -> ListenerMetrics:
        for kind in UPSTREAM_FAILURES:
            self.upstream_failures.labels(label, kind)
        for kind in CLIENT_FAILURES:
            self.client_failures.labels(label, kind)
        return ListenerMetrics(self, label)


class ListenerMetrics:
    """One listener's view: the verbs the gate and the app call, with the listener label bound.

    Each labelled child is looked up once and kept: `labels()` takes a lock and builds a tuple per call, and a
    proxied request makes half a dozen of them. The cache is bounded like the labels themselves."""

    __slots__ = ("_children", "_label", "_metrics")

    def __init__(self, metrics: ProxyMetrics, label: str) -> None:
        self._metrics = metrics
        self._label = label
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def _child(self, family: MetricWrapperBase, *labels: str) -> Any:
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(self._label, *labels)
        return child

    def on_queued(self, caller: Caller) -> None:
        self._child(self._metrics.queued, caller.policy.tier, caller.label).inc()

    def on_dequeued(self, caller: Caller) -> None:
        self._child(self._metrics.queued, caller.policy.tier, caller.label).dec()

    def on_admitted(self, caller: Caller, waited_s: float) -> None:
        tier, label = caller.policy.tier, caller.label
        self._child(self._metrics.admitted, tier, label).inc()
        self._child(self._metrics.wait, tier, label).observe(waited_s)
        self._child(self._metrics.in_flight, tier).inc()

    def on_released(self, caller: Caller) -> None:
        self._child(self._metrics.in_flight, caller.policy.tier).dec()

    def on_refused(self, caller: Caller, reason: str) -> None:
        self._child(self._metrics.refused, caller.policy.tier, caller.label, reason).inc()

    def on_capacity(self, slots: int) -> None:
        self._child(self._metrics.capacity).set(slots)

    def on_upstream_failure(self, kind: str) -> None:
        self._child(self._metrics.upstream_failures, kind).inc()

    def on_client_failure(self, kind: str) -> None:
        self._child(self._metrics.client_failures, kind).inc()
