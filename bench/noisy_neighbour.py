"""Noisy neighbour: a light tenant's latency alone and under a heavy tenant's flood, fair scheduler against FIFO.

Goal from the issue: with the fair scheduler, the light tenant's p99 under a flood of at least 20x the upstream's
capacity is at most 1.5x its p99 alone, while the upstream stays at least 85% busy; plain FIFO (`fairness =
false`, same limits otherwise) should show the problem. Everything runs on loopback, each part in its own process:

- upstream: `python -m bench.noisy_neighbour upstream PORT SLOTS SERVICE_S`, raw keep-alive HTTP/1.1 on Trio with
  a fixed capacity: SLOTS requests at once (a FIFO semaphore), each holding its slot for SERVICE_S. It
  keeps a ledger (`LEDGER_PATH`, answered outside the slots): slot-seconds spent serving, requests served per
  `x-api-key` (the proxy passes the header on), and requests that found every slot taken (the proxy must never
  cause one). Busy fraction over a window = slot-seconds served / (SLOTS x wall time).
- proxy: the real `ezthrottle serve --config FILE` with one `[[protect]]` listener, `max_concurrency` =
  SLOTS, and two keys of the same tier (paid), so the result comes from per-key fairness, not from a
  tier privilege. Started once with fairness on and once with it off.
- heavy tenant: wrk, `FLOOD_CONNECTIONS` keep-alive connections. A refused request comes back at once and the
  connection goes again, so back to back the flood offers whatever the proxy can answer; the paced flood pauses
  before every request (`FLOOD_PAUSES_MS`).
- light tenant: this process, `LIGHT_RATE_PER_S` GETs a second on a fixed schedule (open loop: each in its own
  task, so a slow answer never delays the next send), each timed from its scheduled start to its response. The
  proxy's own histogram (`WAIT_METRIC`, from the node's /metrics) says how long its requests waited for a slot:
  that part of the latency is the scheduler's, the rest is the proxy's CPU and the network.

Two upstreams (`UPSTREAMS`), both slower than the issue's example (8 x 20 ms = 400 req/s), because the proxy
itself has a ceiling: one process answers about 5,000 refusals a second on this machine (less while it also
proxies), so a flood of 20x 400 req/s would measure the proxy's CPU, not the scheduler:
- 8 x 50 ms (160 req/s): a 20x flood is 3,200 req/s, within one proxy process's reach. The flood with 8 ms
  pauses offers about that much and leaves the proxy spare CPU; the one back to back saturates it, and its
  rows say what the light tenant and the upstream's use saw then.
- 16 x 400 ms (40 req/s): a 20x flood (800 req/s) is well within the proxy's reach. Its service time is also
  long next to the delay a saturated event loop adds to every request.

The per-key cap (`key_concurrency_share_max`) is sized as an operator would size it: to leave the light tenant
the slots it keeps busy (10 req/s x its latency through the proxy, taken as 1.25 x the service time, rounded up)
and so 7 of 8 slots at 50 ms, 11 of 16 at 400 ms. The price: a heavy tenant alone can use only that much of the
upstream. Where the default cap (0.9) would let the heavy tenant hold more than that (14 of 16 at 400 ms), the
fair scheduler also runs with the default, in the rows "fair scheduler, default cap": there the light tenant's
requests find every slot taken and wait for the next to free, since a scheduler that never preempts hands slots
over only as they free, and it keeps no headroom for active keys.

Queue limits: the defaults (50 waiting per key, 1000 in all) would queue all 50 heavy connections and refuse
none, so a flood could offer no more than it is served. They are set to what the upstream clears in about
`QUEUE_SERVICE_TIMES` service times, the point of refusing early instead of queueing: a key may have
SLOTS waiting and all keys `QUEUE_SERVICE_TIMES` x SLOTS; in FIFO mode the one queue has the
global limit.

Each mode: a warm-up, the light tenant alone for `LIGHT_WINDOW_S`, then under each flood in turn for
`LIGHT_WINDOW_S`, timed from `FLOOD_SETTLE_S` into the flood (queues full, slots held). Latency percentiles are
over the light tenant's 200s; its refusals are counted apart. `python -m bench.noisy_neighbour` runs it alone and
prints its RESULTS.md section.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from bench.common import LOOPBACK, TOOL_GRACE_S, LoadResult, free_loopback_port, parse_wrk, percentiles, running_command
from bench.proxy_overhead import KEY_HEADER, ProtectedListener, protected_listener
from scheduler import SchedulerPolicy

FLOOD_CONNECTIONS = 50
# Each heavy connection's pause before every request, by flood: back to back is as much as the proxy can answer;
# the paced ones offer at most FLOOD_CONNECTIONS / (pause + round trip): 8 ms, up to ~4,000 req/s, some
# 20-25x the 8 x 50 ms upstream; 50 ms, ~750 req/s, 20x the 16 x 400 ms one. They leave the proxy spare CPU, so
# the scheduler's effect shows apart from the proxy's saturation.
FLOOD_PAUSES_MS = {"flood, back to back": 0, "flood, 8 ms pauses": 8, "flood, 50 ms pauses": 50}
# The light tenant's latency through the proxy relative to the upstream's service time, for sizing the cap.
LIGHT_LATENCY_PER_SERVICE_TIME = 1.25
LIGHT_RATE_PER_S = 10
LIGHT_WINDOW_S = 10
FLOOD_SETTLE_S = 1
# wrk keeps flooding this long after the light tenant's last request was sent, so every one of them meets it.
FLOOD_TAIL_S = 2
WARM_UP_S = 1
LIGHT_TIMEOUT_S = 30.0
GOAL_P99_RATIO = 1.5
GOAL_BUSY_FRACTION = 0.85
GOAL_FLOOD_FACTOR = 20
QUEUE_SERVICE_TIMES = 2

LEDGER_PATH = "/ledger"
WAIT_METRIC = "ezthrottle_proxy_queue_wait_seconds"
WORK_PATH = "/work"
HEAVY_KEY = {"id": "heavy", "key": "pk_heavy_tenant_0123456789", "tier": "paid"}
LIGHT_KEY = {"id": "light", "key": "pk_light_tenant_0123456789", "tier": "paid"}


@dataclass(frozen=True, slots=True)
class Mode:
    """How the proxy is configured: fair or FIFO, and whether the per-key cap is sized or left at its default."""

    name: str
    fairness: bool
    sized_cap: bool = True


MODES = (
    Mode("fair scheduler", True),
    Mode("fair scheduler, default cap", True, sized_cap=False),
    Mode("plain FIFO", False),
)
# The per-key cap a [[protect]] listener has unless it sets key_concurrency_share_max.
DEFAULT_KEY_SHARE_MAX = SchedulerPolicy(capacity=1).key_concurrency_share_max
ALONE = "none (light tenant alone)"

END_OF_HEAD = b"\r\n\r\n"
RECEIVE_BYTES_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The upstream's ledger (on its own clock), the proxy's record of the light tenant's waits for a slot, and the
    proxy process's CPU time."""

    at_s: float
    slots: int
    busy_s: float
    served: dict[str, int]
    beyond_slots: int
    light_waited_s: float
    light_admitted: float
    light_admitted_within_10ms: float
    proxy_cpu_s: float


@dataclass(frozen=True, slots=True)
class Phase:
    """One timed window of the light tenant, and what the proxy, the upstream and the heavy tenant did meanwhile."""

    light_latencies_ms: list[float]
    light_refused: int
    busy_fraction: float
    heavy_admitted_per_s: float
    light_wait_ms_mean: float
    light_admitted_within_10ms: float
    proxy_cpu_share: float  # of one core: the proxy is one Trio thread
    beyond_slots: int  # requests that found every upstream slot taken during the window
    flood: LoadResult | None = None

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, latencies_ms: list[float], refused: int) -> Phase:
        wall_s = after.at_s - before.at_s
        heavy = HEAVY_KEY["key"]
        admitted = after.light_admitted - before.light_admitted
        per_admission = 1 / admitted if admitted else math.nan  # FIFO may refuse every light request
        within_10ms = after.light_admitted_within_10ms - before.light_admitted_within_10ms
        return cls(
            light_latencies_ms=latencies_ms,
            light_refused=refused,
            busy_fraction=(after.busy_s - before.busy_s) / (after.slots * wall_s),
            heavy_admitted_per_s=(after.served.get(heavy, 0) - before.served.get(heavy, 0)) / wall_s,
            light_wait_ms_mean=1000 * (after.light_waited_s - before.light_waited_s) * per_admission,
            light_admitted_within_10ms=within_10ms * per_admission,
            proxy_cpu_share=(after.proxy_cpu_s - before.proxy_cpu_s) / wall_s,
            beyond_slots=after.beyond_slots - before.beyond_slots,
        )

    @property
    def light_p99_ms(self) -> float:
        return percentiles(self.light_latencies_ms, (99,))[0]


async def snapshot(client: httpx.AsyncClient, upstream: str, proxy: ProtectedListener) -> Snapshot:
    ledger = await client.get(upstream + LEDGER_PATH)
    ledger.raise_for_status()
    metrics = await client.get(proxy.api_url + "/metrics")
    metrics.raise_for_status()
    light_waits = {
        sample.name + sample.labels.get("le", ""): sample.value
        for family in text_string_to_metric_families(metrics.text)
        if family.name == WAIT_METRIC
        for sample in family.samples
        if sample.labels["key"] == LIGHT_KEY["id"]
    }
    return Snapshot(
        **ledger.json(),
        light_waited_s=light_waits[f"{WAIT_METRIC}_sum"],
        light_admitted=light_waits[f"{WAIT_METRIC}_count"],
        light_admitted_within_10ms=light_waits[f"{WAIT_METRIC}_bucket0.01"],
        proxy_cpu_s=proxy.cpu_s(),
    )


async def time_light_tenant(client: httpx.AsyncClient, proxy: str, window_s: float) -> tuple[list[float], int]:
    """Send `LIGHT_RATE_PER_S` GETs a second for `window_s`: latencies (ms) of the 200s, and how many were not."""
    latencies_ms: list[float] = []
    refused = 0

    async def one(scheduled_at: float) -> None:
        nonlocal refused
        response = await client.get(proxy + WORK_PATH, headers={KEY_HEADER: LIGHT_KEY["key"]})
        if response.status_code == 200:
            latencies_ms.append((trio.current_time() - scheduled_at) * 1000)
        else:
            refused += 1

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(round(window_s * LIGHT_RATE_PER_S)):
            scheduled_at = started + index / LIGHT_RATE_PER_S
            await trio.sleep_until(scheduled_at)
            nursery.start_soon(one, scheduled_at)
    return latencies_ms, refused


async def timed_phase(client: httpx.AsyncClient, upstream: str, proxy: ProtectedListener) -> Phase:
    before = await snapshot(client, upstream, proxy)
    latencies_ms, refused = await time_light_tenant(client, proxy.url, LIGHT_WINDOW_S)
    return Phase.between(before, await snapshot(client, upstream, proxy), latencies_ms, refused)


def flood_with_wrk(url: str, scratch: Path, pause_ms: int, duration_s: int) -> LoadResult:
    """The heavy tenant: wrk's GETs from `FLOOD_CONNECTIONS` connections, each pausing `pause_ms` before a request
    (wrk's `delay` hook). Not `bench.common.run_wrk`, which POSTs a body file and cannot pace."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    script = scratch / f"flood-{pause_ms}ms.lua"
    script.write_text(f'wrk.headers["{KEY_HEADER}"] = "{HEAVY_KEY["key"]}"\nfunction delay() return {pause_ms} end\n')
    argv = ["-t", "1", "-c", str(FLOOD_CONNECTIONS), "-d", f"{duration_s}s", "--latency", "-s", script.name, url]
    completed = subprocess.run(
        [wrk, *argv], cwd=scratch, capture_output=True, text=True, timeout=duration_s + TOOL_GRACE_S, check=True
    )
    return parse_wrk(completed.stdout, command=shlex.join(["wrk", *argv]))


async def measure_mode(upstream: str, proxy: ProtectedListener, scratch: Path) -> tuple[dict[str, Phase], int]:
    """Every phase against one running proxy; also the upstream's count of requests beyond its slots."""
    flood_s = FLOOD_SETTLE_S + LIGHT_WINDOW_S + FLOOD_TAIL_S
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=LIGHT_TIMEOUT_S, limits=limits, trust_env=False) as client:
        await time_light_tenant(client, proxy.url, WARM_UP_S)  # connections open, code paths warm, metrics exist
        phases = {ALONE: await timed_phase(client, upstream, proxy)}
        for name, pause_ms in FLOOD_PAUSES_MS.items():
            flood = functools.partial(flood_with_wrk, proxy.url + WORK_PATH, scratch, pause_ms, flood_s)
            flood_result: list[LoadResult] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_run_in_thread, flood, flood_result)
                await trio.sleep(FLOOD_SETTLE_S)
                phase = await timed_phase(client, upstream, proxy)
            phases[name] = dataclasses.replace(phase, flood=flood_result[0])
        beyond_slots = (await snapshot(client, upstream, proxy)).beyond_slots
    return phases, beyond_slots


async def _run_in_thread(work: Callable[[], LoadResult], results: list[LoadResult]) -> None:
    results.append(await trio.to_thread.run_sync(work))


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream size: `slots` requests at once, each served in `service_s`."""

    slots: int
    service_s: float

    @property
    def label(self) -> str:
        return f"{self.slots} x {self.service_s * 1000:g} ms"

    @property
    def capacity_per_s(self) -> float:
        return self.slots / self.service_s

    @property
    def heavy_slots_max(self) -> int:
        """The slots the per-key cap lets one key hold: all but those the light tenant keeps busy."""
        return self.slots - math.ceil(LIGHT_RATE_PER_S * LIGHT_LATENCY_PER_SERVICE_TIME * self.service_s)

    @property
    def default_cap_differs(self) -> bool:
        """Whether the default per-key cap would let one key hold more slots than the sized one."""
        return math.floor(DEFAULT_KEY_SHARE_MAX * self.slots) > self.heavy_slots_max

    def protect_settings(self, mode: Mode) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "max_concurrency": self.slots,
            "fairness": mode.fairness,
            "key_queue_length_max": self.slots,
            "queue_length_max": QUEUE_SERVICE_TIMES * self.slots,
        }
        if mode.sized_cap:
            settings["key_concurrency_share_max"] = self.heavy_slots_max / self.slots
        return settings


UPSTREAMS = (Upstream(slots=8, service_s=0.05), Upstream(slots=16, service_s=0.4))


def run() -> dict[str, Any]:
    """For each upstream size, start the upstream, then each mode's proxy in turn; measure; shape the result."""
    # (upstream, scheduler mode) -> flood name -> phase
    phases: dict[tuple[Upstream, str], dict[str, Phase]] = {}
    beyond_slots = 0
    with tempfile.TemporaryDirectory(prefix="bench-noisy-neighbour-") as scratch_dir:
        scratch = Path(scratch_dir)
        for size in UPSTREAMS:
            port = free_loopback_port()
            upstream = f"http://{LOOPBACK}:{port}"
            argv = [sys.executable, "-m", "bench.noisy_neighbour", "upstream", str(port)]
            argv += [str(size.slots), str(size.service_s)]
            with running_command(argv, upstream + LEDGER_PATH):
                for mode in MODES:
                    if not mode.sized_cap and not size.default_cap_differs:
                        continue  # the same configuration as the sized cap
                    config_name = mode.name.replace(",", "").replace(" ", "-")
                    settings = size.protect_settings(mode)
                    with protected_listener(scratch, config_name, upstream, settings, [HEAVY_KEY, LIGHT_KEY]) as proxy:
                        phases[size, mode.name], beyond = trio.run(measure_mode, upstream, proxy, scratch)
                        beyond_slots += beyond
    flood_commands = {
        phase.flood.command for mode_phases in phases.values() for phase in mode_phases.values() if phase.flood
    }
    return {
        "title": "Inbound proxy: noisy neighbour (a light tenant under a heavy tenant's flood)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {
            mode.name: f"ezthrottle serve, [[protect]] fairness = {str(mode.fairness).lower()}" for mode in MODES
        },
        "commands": [
            "python -m bench.noisy_neighbour upstream PORT SLOTS SERVICE_S",
            "ezthrottle serve --config FILE",
            *sorted(flood_commands),
        ],
        "rows": [
            _row(size, mode, name, phase, mode_phases[ALONE])
            for (size, mode), mode_phases in phases.items()
            for name, phase in mode_phases.items()
        ],
        "checks": _checks(phases, beyond_slots),
        "notes": [
            "Upstreams (slots x service time = capacity; the proxy's max_concurrency = slots, key_queue_length_max ="
            f" slots, queue_length_max = {QUEUE_SERVICE_TIMES} x slots, key_concurrency_share_max as shown, or its"
            f" default {DEFAULT_KEY_SHARE_MAX:g} in the default-cap rows): "
            + "; ".join(
                f"{size.label} = {size.capacity_per_s:g} req/s, cap {size.heavy_slots_max}/{size.slots}"
                for size in UPSTREAMS
            )
            + ";"
            f" both keys paid. Light tenant: {LIGHT_RATE_PER_S} GET/s for"
            f" {LIGHT_WINDOW_S} s per row (httpx, the bench process). Heavy tenant: wrk, {FLOOD_CONNECTIONS}"
            " connections; offered = wrk's req/s over its whole run, refused = its share of non-2xx answers,"
            " admitted = the upstream's count of its requests during the light tenant's window.",
            "Over the same window: proxy CPU = the node process's user + system time as a share of one core (the"
            f" proxy is one Trio thread); light wait for a slot = `{WAIT_METRIC}` for key light, from the node's"
            " /metrics. A light wait near zero with a higher latency means the time went to the proxy's event loop,"
            " not to the scheduler's queue.",
        ],
    }


def _row(size: Upstream, mode: str, flood_name: str, phase: Phase, alone: Phase) -> dict[str, str]:
    flood = phase.flood
    offered = "-"
    if flood is not None:
        offered = f"{flood.requests_per_s:.0f} ({_flood_factor(flood, size):.1f}x capacity)"
    return {
        "upstream": size.label,
        "scheduler": mode,
        "heavy tenant": flood_name,
        "heavy offered req/s": offered,
        "heavy refused": "-" if flood is None else f"{flood.failed / (flood.succeeded + flood.failed):.0%}",
        "heavy admitted req/s": "-" if flood is None else f"{phase.heavy_admitted_per_s:.0f}",
        "upstream busy": f"{phase.busy_fraction:.0%}",
        "proxy CPU": f"{phase.proxy_cpu_share:.0%}",
        "light p50 ms": f"{percentiles(phase.light_latencies_ms, (50,))[0]:.1f}",
        "light p99 ms": f"{phase.light_p99_ms:.1f}",
        "light p99 / alone": f"{phase.light_p99_ms / alone.light_p99_ms:.2f}x",
        "light 200 / refused": f"{len(phase.light_latencies_ms)} / {phase.light_refused}",
        "light wait for a slot (proxy metric)": (
            f"{phase.light_wait_ms_mean:.1f} ms mean, {phase.light_admitted_within_10ms:.0%} within 10 ms"
        ),
        "upstream found full": str(phase.beyond_slots),
    }


def _flood_factor(flood: LoadResult, size: Upstream) -> float:
    return flood.requests_per_s / size.capacity_per_s


def _checks(phases: dict[tuple[Upstream, str], dict[str, Phase]], beyond_slots: int) -> dict[str, str]:
    """The issue's three goals for each flood against the fair scheduler, and what FIFO did to the light tenant."""
    checks: dict[str, str] = {}
    for (size, mode), mode_phases in phases.items():
        fairness = next(known.fairness for known in MODES if known.name == mode)
        alone = mode_phases[ALONE]
        for name, phase in mode_phases.items():
            if phase.flood is None:
                continue
            ratio = phase.light_p99_ms / alone.light_p99_ms
            refused = f"light refused {phase.light_refused} of {phase.light_refused + len(phase.light_latencies_ms)}"
            where = f"{size.label} upstream, {mode}, {name}"
            if not fairness:
                checks[f"the problem, {where}"] = f"light p99 {ratio:.2f}x alone; {refused}"
                continue
            busy, factor = phase.busy_fraction, _flood_factor(phase.flood, size)
            verdicts = [
                _goal(f"light p99 {ratio:.2f}x alone", ratio <= GOAL_P99_RATIO, f"<= {GOAL_P99_RATIO}x"),
                _goal(f"upstream {busy:.0%} busy", busy >= GOAL_BUSY_FRACTION, f">= {GOAL_BUSY_FRACTION:.0%}"),
                _goal(f"flood {factor:.1f}x capacity", factor >= GOAL_FLOOD_FACTOR, f">= {GOAL_FLOOD_FACTOR}x"),
                refused,
            ]
            checks[f"goals, {where}"] = "; ".join(verdicts)
    checks[
        "requests that found every upstream slot taken, whole run (a client that leaves mid-request frees its proxy"
        " slot while the upstream still works on it: wrk's connections at the end of each flood)"
    ] = str(beyond_slots)
    return checks


def _goal(value: str, met: bool, goal: str) -> str:
    return f"{value} (goal {goal}: {'met' if met else 'missed'})"


@dataclass(slots=True)
class UpstreamLedger:
    """The upstream's capacity and its account of the work done, read through `LEDGER_PATH`."""

    slot_count: int
    service_s: float
    slots: trio.Semaphore = field(init=False)
    busy_s: float = 0.0
    served: Counter[str] = field(default_factory=Counter)
    beyond_slots: int = 0

    def __post_init__(self) -> None:
        self.slots = trio.Semaphore(self.slot_count)

    async def serve(self, key: str) -> bytes:
        """One request's work: a slot held for `service_s` (waited for, and counted, when all are taken)."""
        if self.slots.value == 0:
            self.beyond_slots += 1
        async with self.slots:
            started = trio.current_time()
            await trio.sleep(self.service_s)
            self.busy_s += trio.current_time() - started
        self.served[key] += 1
        return b'{"ok":true}'

    def reading(self) -> bytes:
        fields = {"at_s": trio.current_time(), "slots": self.slot_count, "busy_s": self.busy_s, "served": self.served}
        return json.dumps({**fields, "beyond_slots": self.beyond_slots}).encode()


async def serve_connection(ledger: UpstreamLedger, stream: trio.SocketStream) -> None:
    """Requests on one keep-alive connection, in turn. Bodies are framed by Content-Length only: the bench sends
    none, and the proxy passes requests on with their own framing."""
    unread = b""
    try:
        while True:
            while END_OF_HEAD not in unread:
                chunk = await stream.receive_some(RECEIVE_BYTES_MAX)
                if not chunk:
                    return
                unread += chunk
            head, _, unread = unread.partition(END_OF_HEAD)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)
            }
            body_bytes = int(headers.get("content-length", "0"))
            while len(unread) < body_bytes:
                chunk = await stream.receive_some(RECEIVE_BYTES_MAX)
                if not chunk:
                    return
                unread += chunk
            unread = unread[body_bytes:]
            target = request_line.split(" ")[1]
            body = ledger.reading() if target == LEDGER_PATH else await ledger.serve(headers.get(KEY_HEADER, "-"))
            head_out = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            await stream.send_all(head_out.encode() + body)
    except trio.BrokenResourceError:
        pass  # the client dropped the connection; others are unaffected


async def serve_upstream(port: int, slot_count: int, service_s: float) -> None:
    ledger = UpstreamLedger(slot_count, service_s)
    await trio.serve_tcp(functools.partial(serve_connection, ledger), port, host=LOOPBACK)


def main() -> None:
    """`python -m bench.noisy_neighbour` runs the benchmark; `... upstream PORT SLOTS SERVICE_S` serves an upstream."""
    if sys.argv[1:2] == ["upstream"] and len(sys.argv) == 5:
        trio.run(serve_upstream, int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    from bench.__main__ import render_section  # here, not at the top: bench.__main__ imports this module

    print(render_section(run()))


if __name__ == "__main__":
    main()
