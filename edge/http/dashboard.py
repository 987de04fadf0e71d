"""GET /dashboard and GET /api/v1/dashboard: a page the node serves itself, and the data the page polls.

The page is three files in edge/http/static/ (HTML, its script, its style), served as they are: no build step, and
nothing loaded from anywhere else (its Content-Security-Policy allows only this node). It asks for a credential,
keeps it in the tab's sessionStorage, sends it as a bearer header (never in a URL), polls the data every
2 s and draws its charts itself on canvas.

Who sees what: an account key sees its own account (its queues, plan usage, recent jobs, and charts of its
attempts); the operator's token (`server.admin_token_sha256`) sees every account, and the inbound proxy. Without
either the data is refused (401); the page itself loads, and asks.

The data is put together on the node asked (`Dashboard.view`): members, regions and usage from its own view of the
cluster, and from every live member its part (`Dashboard.local_part`, over the internal API's `dashboard` route):
its busiest queues, its recent jobs and their attempts (its event bus), its inbound proxy per listener and tier,
and the samples behind the charts (`ActivityHistory`: attempts by outcome, latency and jobs queued, counted from
the event bus per account every SAMPLE_S and kept for the last SAMPLES_MAX samples).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry

from edge.config import AccountConfig, Config
from edge.engine.shell.events import EventBus
from edge.engine.shell.queues import QueueManager
from edge.placement.routing import JobRouter
from edge.placement.usage import UsageReport

PAGE_PATH: Final = "/dashboard"
DATA_PATH: Final = "/api/v1/dashboard"
SAMPLE_S: Final = 2.0
SAMPLES_MAX: Final = 150  # five minutes of charts
QUEUES_SHOWN: Final = 50  # the busiest, of all members together
RECENT_JOBS_SHOWN: Final = 20
# The page's own files, by path; nothing else may run or style it, and no other page may frame it.
_ASSETS: Final = {
    PAGE_PATH: ("dashboard.html", b"text/html; charset=utf-8"),
    f"{PAGE_PATH}/dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    f"{PAGE_PATH}/dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}
ASSET_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The counts of one sample; `latency_ms_max` is the largest, every other one adds up.
_COUNTS: Final = ("queued", "ok", "rate_limited", "errors", "latency_ms_sum", "latency_count", "latency_ms_max")
_OK_OUTCOMES: Final = frozenset({"won", "succeeded"})
# The proxy's series shown per listener and tier (edge/proxy/metrics.py), summed over its keys.
_PROXY_FIELDS: Final = {
    "ezthrottle_proxy_queued": "queued",
    "ezthrottle_proxy_in_flight": "in_flight",
    "ezthrottle_proxy_admitted_total": "admitted",
    "ezthrottle_proxy_refused_total": "refused",
    "ezthrottle_proxy_queue_wait_seconds_sum": "wait_s_sum",
    "ezthrottle_proxy_queue_wait_seconds_count": "wait_count",
}

Counts = dict[str, float]


def asset(path: str) -> tuple[bytes, bytes] | None:
    """The page file served at `path` and its content type, or None for another path."""
    found = _ASSETS.get(path)
    if found is None:
        return None
    name, content_type = found
    return _asset_bytes(name), content_type


@functools.cache  # by file name: three entries, whatever paths are asked for
def _asset_bytes(name: str) -> bytes:
    return (resources.files("edge.http") / "static" / name).read_bytes()


class ActivityHistory:
    """Attempts and queued jobs per account, counted from the event bus and sampled every SAMPLE_S."""

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self._wall_ms = wall_ms
        self._current: dict[str, Counts] = {}
        self._samples: deque[tuple[int, dict[str, Counts]]] = deque(maxlen=SAMPLES_MAX)

    def observe(self, account_id: str, kind: str, fields: Mapping[str, Any]) -> None:
        """An `EventBus` observer: count the account's queued jobs and its attempts by outcome, with latency."""
        if kind not in ("queued", "attempt") or fields.get("outcome") == "cancelled":  # a race's loser: not an answer
            return
        counts = self._current.setdefault(account_id, dict.fromkeys(_COUNTS, 0.0))
        if kind == "queued":
            counts["queued"] += 1
            return
        outcome = fields.get("outcome")
        counts["ok" if outcome in _OK_OUTCOMES else "rate_limited" if outcome == "rate_limited" else "errors"] += 1
        if fields.get("status_code") is not None:
            duration_ms = float(fields.get("duration_ms") or 0.0)
            counts["latency_ms_sum"] += duration_ms
            counts["latency_count"] += 1
            counts["latency_ms_max"] = max(counts["latency_ms_max"], duration_ms)

    async def run(self) -> None:
        while True:
            await trio.sleep(SAMPLE_S)
            self.sample()

    def sample(self) -> None:
        self._samples.append((self._wall_ms(), self._current))
        self._current = {}

    def series(self, account_id: str | None) -> list[Counts]:
        """One point per sample: the account's counts, or (None) every account's together."""
        points = []
        for at_ms, by_account in self._samples:
            chosen = by_account.values() if account_id is None else [by_account.get(account_id, {})]
            points.append({"t_ms": float(at_ms), **_summed(chosen)})
        return points


def _summed(counts: Iterable[Mapping[str, float]]) -> Counts:
    total = dict.fromkeys(_COUNTS, 0.0)
    for one in counts:
        for name in _COUNTS:
            value = one.get(name, 0.0)
            total[name] = max(total[name], value) if name == "latency_ms_max" else total[name] + value
    return total


def merged_series(parts: Iterable[list[Counts]]) -> list[Counts]:
    """The members' samples as one series: points in the same SAMPLE_S slot are added up (members sample apart)."""
    slot_ms = SAMPLE_S * 1000
    slots: dict[int, list[Counts]] = {}
    for points in parts:
        for point in points:
            slots.setdefault(int(point["t_ms"] // slot_ms), []).append(point)
    return [{"t_ms": slot * slot_ms, **_summed(slots[slot])} for slot in sorted(slots)]


def proxy_view(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """The inbound proxy per listener (its capacity) and tier (waiting, in flight, admitted, refused, waits)."""
    listeners: dict[str, dict[str, Any]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "ezthrottle_proxy_capacity":
                listeners.setdefault(labels["listener"], {"capacity": None, "tiers": {}})["capacity"] = sample.value
            field = _PROXY_FIELDS.get(sample.name)
            if field is None or "tier" not in labels:
                continue
            tiers = listeners.setdefault(labels["listener"], {"capacity": None, "tiers": {}})["tiers"]
            row = tiers.setdefault(labels["tier"], dict.fromkeys(_PROXY_FIELDS.values(), 0.0))
            row[field] += sample.value
    return [
        {
            "listener": name,
            "capacity": listener["capacity"],
            "tiers": [{"tier": tier, **row} for tier, row in sorted(listener["tiers"].items())],
        }
        for name, listener in sorted(listeners.items())
    ]


class Dashboard:
    """The dashboard's data: this node's part, and the whole view put together from every member's."""

    def __init__(
        self,
        *,
        config: Config,
        wall_ms: Callable[[], int],
        router: JobRouter,
        manager: QueueManager,
        events: EventBus,
        history: ActivityHistory,
        registry: CollectorRegistry,
        usage: UsageReport | None,
        cluster_status: Callable[[], dict[str, Any]] | None,
        regions_status: Callable[[str], dict[str, Any]] | None,
    ) -> None:
        self._config = config
        self._wall_ms = wall_ms
        self._router = router
        self._manager = manager
        self._events = events
        self._history = history
        self._registry = registry
        self._usage = usage
        self._cluster_status = cluster_status
        self._regions_status = regions_status
        self._plans = {account.id: account.plan for account in config.accounts}

    def local_part(self, account_id: str | None) -> dict[str, Any]:
        """What this node holds for the view of one account, or (None) of the operator."""
        queues, queues_total = self._manager.busiest_queues(self._queue_prefix(account_id), QUEUES_SHOWN)
        node = self._events.node
        return {
            "node": node,
            "queues": [{**queue, "node": node} for queue in queues],
            "queues_total": queues_total,
            "recent_jobs": self._events.recent(account_id, RECENT_JOBS_SHOWN),
            "series": self._history.series(account_id),
            "proxy": proxy_view(self._registry) if account_id is None else [],
        }

    async def view(self, account: AccountConfig | None) -> dict[str, Any]:
        """The page's data for `account`, or (None) for the operator."""
        account_id = None if account is None else account.id
        parts = await self._router.dashboard_parts(account_id, self.local_part)
        answered = [part for part in parts if not part.get("unreachable")]
        queues = [queue for part in answered for queue in part["queues"]]
        queues.sort(key=lambda queue: queue["depth"] + queue["in_flight"], reverse=True)
        jobs = sorted((job for part in answered for job in part["recent_jobs"]), key=lambda job: -job["updated_at_ms"])
        accounts = self._config.accounts if account is None else [account]
        return {
            "scope": "operator" if account is None else "account",
            "account_id": account_id,
            "node": self._events.node,
            "generated_at_ms": self._wall_ms(),
            "interval_s": SAMPLE_S,
            "members_unreachable": [part["node"] for part in parts if part.get("unreachable")],
            "queues": queues[:QUEUES_SHOWN],
            "queues_total": sum(part["queues_total"] for part in answered),
            "cluster": self._cluster_status() if self._cluster_status else {"enabled": False},
            "regions": self._regions_status(self._queue_prefix(account_id)) if self._regions_status else None,
            "usage": [self._usage.usage(a.id) for a in accounts] if self._usage is not None else [],
            "recent_jobs": jobs[:RECENT_JOBS_SHOWN],
            "proxy": [{**listener, "node": part["node"]} for part in answered for listener in part["proxy"]],
            "series": merged_series(part["series"] for part in answered),
        }

    def _queue_prefix(self, account_id: str | None) -> str:
        """The queue keys an account sees (free-plan accounts share theirs: edge/engine/spec.py `queue_key`)."""
        if account_id is None:
            return ""
        return "free|" if self._plans.get(account_id) == "free" else f"{account_id}|"
