"""Noisy neighbour: a light tenant's latency alone and under a heavy tenant's flood, fair scheduler against FIFO.

Goal from the issue: with the fair scheduler, the light tenant's p99 under the flood is at most 1.5x its p99
alone while the upstream stays at least 85% busy; plain FIFO (`fairness = false`, same limits) should show the
problem. Everything runs on loopback, each part in its own process:

- upstream: `python -m bench.noisy_neighbour upstream PORT`, raw keep-alive HTTP/1.1 on Trio with a fixed
  capacity: `UPSTREAM_SLOTS` requests at once (a FIFO semaphore), each holding its slot for `SERVICE_S`. It
  keeps a ledger (`LEDGER_PATH`, answered outside the slots): slot-seconds spent serving, requests served per
  `x-api-key` (the proxy passes the header on), and requests that found every slot taken (the proxy must
  never cause one). Busy fraction over a window = slot-seconds served / (`UPSTREAM_SLOTS` x wall time).
- proxy: the real `ezthrottle serve --config FILE` with one `[[protect]]` listener, `max_concurrency` =
  `UPSTREAM_SLOTS`, two keys of the same tier (paid): the result comes from per-key fairness, not from a tier
  privilege. Started once with fairness on and once with it off, the same config otherwise.
- heavy tenant: wrk, `FLOOD_CONNECTIONS` keep-alive connections sending back to back. A refused request comes
  back at once and is sent again, so the heavy tenant offers what the proxy can answer, many times the
  upstream's capacity (the checks show the factor).
- light tenant: this process, `LIGHT_RATE_PER_S` requests a second on a fixed schedule (open loop: each in its
  own task, so a slow answer never delays the next send), each timed from its scheduled start to its response.

Queue limits: the defaults (50 waiting per key, 1000 in all) would queue all 50 heavy connections and refuse
none, so the "flood" would offer only what it is served. They are set to what the upstream clears in about
`QUEUE_SERVICE_TIMES` service times, the point of refusing early instead of queueing: a key may have
`UPSTREAM_SLOTS` waiting and all keys `2 x UPSTREAM_SLOTS`. In FIFO mode the one queue has the global limit.

Each mode: a warm-up, the light tenant alone for `LIGHT_WINDOW_S`, then the flood, and after `FLOOD_SETTLE_S`
the light tenant again for `LIGHT_WINDOW_S`. Latency percentiles are over the light tenant's 200s; its refusals
are counted separately. `python -m bench.noisy_neighbour` runs it alone and prints its RESULTS.md section.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import LOOPBACK, LoadResult, ServedTarget, free_loopback_port, percentiles, run_wrk, running_command
from bench.proxy_overhead import KEY_HEADER, protected_listener

UPSTREAM_SLOTS = 8
SERVICE_S = 0.05
FLOOD_CONNECTIONS = 50
LIGHT_RATE_PER_S = 10
LIGHT_WINDOW_S = 10
# The flood reaches its steady state (queues full, slots held) before the light tenant is timed.
FLOOD_SETTLE_S = 1
# wrk keeps flooding this long after the light tenant's last request was sent, so every one of them meets it.
FLOOD_TAIL_S = 2
WARM_UP_S = 1
LIGHT_TIMEOUT_S = 30.0
GOAL_P99_RATIO = 1.5
GOAL_BUSY_FRACTION = 0.85
GOAL_FLOOD_FACTOR = 20
QUEUE_SERVICE_TIMES = 2
KEY_QUEUE_LENGTH_MAX = UPSTREAM_SLOTS
QUEUE_LENGTH_MAX = QUEUE_SERVICE_TIMES * UPSTREAM_SLOTS
UPSTREAM_CAPACITY_PER_S = UPSTREAM_SLOTS / SERVICE_S

LEDGER_PATH = "/ledger"
WORK_PATH = "/work"
HEAVY_KEY = {"id": "heavy", "key": "pk_heavy_tenant_0123456789", "tier": "paid"}
LIGHT_KEY = {"id": "light", "key": "pk_light_tenant_0123456789", "tier": "paid"}
MODES = {"fair scheduler": True, "plain FIFO": False}
ALONE, FLOODED = "alone", "under flood"

END_OF_HEAD = b"\r\n\r\n"
RECEIVE_BYTES_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class LedgerReading:
    """The upstream's ledger at one moment (its own clock)."""

    at_s: float
    busy_s: float
    served: dict[str, int]
    beyond_slots: int

    def since(self, earlier: LedgerReading) -> tuple[float, dict[str, float]]:
        """Busy fraction and requests served per second, per key, between two readings."""
        wall_s = self.at_s - earlier.at_s
        rates = {key: (count - earlier.served.get(key, 0)) / wall_s for key, count in self.served.items()}
        return (self.busy_s - earlier.busy_s) / (UPSTREAM_SLOTS * wall_s), rates


@dataclass(frozen=True, slots=True)
class Phase:
    """One timed window of the light tenant, and what the upstream and the heavy tenant did meanwhile."""

    light_latencies_ms: list[float]
    light_refused: int
    busy_fraction: float
    heavy_admitted_per_s: float
    flood: LoadResult | None = None

    def light_percentiles(self) -> tuple[float, float]:
        p50, p99 = percentiles(self.light_latencies_ms, (50, 99))
        return p50, p99


async def read_ledger(client: httpx.AsyncClient, upstream: str) -> LedgerReading:
    response = await client.get(upstream + LEDGER_PATH)
    response.raise_for_status()
    return LedgerReading(**response.json())


async def time_light_tenant(client: httpx.AsyncClient, proxy: str, window_s: float) -> tuple[list[float], int]:
    """Send `LIGHT_RATE_PER_S` requests a second for `window_s`; latencies (ms) of the 200s, and the rest."""
    latencies_ms: list[float] = []
    refused = 0

    async def one(scheduled_at: float) -> None:
        nonlocal refused
        response = await client.post(proxy + WORK_PATH, headers={KEY_HEADER: LIGHT_KEY["key"]})
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


async def timed_phase(client: httpx.AsyncClient, proxy: str, upstream: str) -> Phase:
    before = await read_ledger(client, upstream)
    latencies_ms, refused = await time_light_tenant(client, proxy, LIGHT_WINDOW_S)
    busy_fraction, served_per_s = (await read_ledger(client, upstream)).since(before)
    return Phase(latencies_ms, refused, busy_fraction, served_per_s.get(HEAVY_KEY["key"], 0.0))


async def measure_mode(proxy: str, upstream: str, scratch: Path) -> tuple[dict[str, Phase], int]:
    """Both phases against one running proxy; also returns the upstream's count of requests beyond its slots."""
    flood_target = ServedTarget(proxy, WORK_PATH, ((KEY_HEADER, HEAVY_KEY["key"]),), b"")
    flood_s = FLOOD_SETTLE_S + LIGHT_WINDOW_S + FLOOD_TAIL_S
    flood = functools.partial(run_wrk, flood_target, scratch, duration_s=flood_s, connections=FLOOD_CONNECTIONS)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=LIGHT_TIMEOUT_S, limits=limits, trust_env=False) as client:
        await time_light_tenant(client, proxy, WARM_UP_S)  # connections open, code paths warm
        alone = await timed_phase(client, proxy, upstream)
        flood_result: list[LoadResult] = []
        async with trio.open_nursery() as nursery:

            async def run_flood() -> None:
                flood_result.append(await trio.to_thread.run_sync(flood))

            nursery.start_soon(run_flood)
            await trio.sleep(FLOOD_SETTLE_S)
            flooded = await timed_phase(client, proxy, upstream)
        beyond_slots = (await read_ledger(client, upstream)).beyond_slots
    return {ALONE: alone, FLOODED: dataclasses.replace(flooded, flood=flood_result[0])}, beyond_slots


def protect_settings(fairness: bool) -> dict[str, Any]:
    return {
        "max_concurrency": UPSTREAM_SLOTS,
        "fairness": fairness,
        "key_queue_length_max": KEY_QUEUE_LENGTH_MAX,
        "queue_length_max": QUEUE_LENGTH_MAX,
    }


def run() -> dict[str, Any]:
    """Start the upstream, then each mode's proxy in turn, measure, and shape the result for `python -m bench`."""
    upstream_port = free_loopback_port()
    upstream = f"http://{LOOPBACK}:{upstream_port}"
    upstream_argv = [sys.executable, "-m", "bench.noisy_neighbour", "upstream", str(upstream_port)]
    measured: dict[str, tuple[dict[str, Phase], int]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-noisy-neighbour-") as scratch_dir,
        running_command(upstream_argv, upstream + LEDGER_PATH),
    ):
        scratch = Path(scratch_dir)
        for mode, fairness in MODES.items():
            config_name = f"fairness-{'on' if fairness else 'off'}"
            keys = [HEAVY_KEY, LIGHT_KEY]
            with protected_listener(scratch, config_name, upstream, protect_settings(fairness), keys) as proxy:
                measured[mode] = trio.run(measure_mode, proxy, upstream, scratch)
    phases = {mode: phases_of_mode for mode, (phases_of_mode, _) in measured.items()}
    commands = [
        "python -m bench.noisy_neighbour upstream PORT",
        "ezthrottle serve --config FILE  # one [[protect]] listener, fairness = true / false",
        *(mode_phases[FLOODED].flood.command for mode_phases in phases.values() if mode_phases[FLOODED].flood),
    ]
    return {
        "title": "Inbound proxy: noisy neighbour (light tenant latency under a heavy tenant's flood)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {mode: f"ezthrottle serve, fairness = {str(on).lower()}" for mode, on in MODES.items()},
        "commands": commands,
        "rows": [
            _row(mode, name, phase) for mode, mode_phases in phases.items() for name, phase in mode_phases.items()
        ],
        "checks": _checks(phases, sum(beyond for _, beyond in measured.values())),
        "notes": [
            f"Upstream: {UPSTREAM_SLOTS} slots x {SERVICE_S * 1000:g} ms = {UPSTREAM_CAPACITY_PER_S:g} req/s. Proxy:"
            f" max_concurrency = {UPSTREAM_SLOTS}, key_queue_length_max = {KEY_QUEUE_LENGTH_MAX},"
            f" queue_length_max = {QUEUE_LENGTH_MAX}, both keys paid. Light tenant: {LIGHT_RATE_PER_S} req/s for"
            f" {LIGHT_WINDOW_S} s per phase (httpx, this process). Heavy tenant: wrk, {FLOOD_CONNECTIONS}"
            f" connections; its offered rate is wrk's, its admitted rate the upstream's count of its requests."
        ],
    }


def _row(mode: str, phase_name: str, phase: Phase) -> dict[str, str]:
    p50, p99 = phase.light_percentiles()
    return {
        "scheduler": mode,
        "light tenant": phase_name,
        "light p50 ms": f"{p50:.1f}",
        "light p99 ms": f"{p99:.1f}",
        "light 200 / refused": f"{len(phase.light_latencies_ms)} / {phase.light_refused}",
        "upstream busy": f"{phase.busy_fraction:.0%}",
        "heavy offered req/s": f"{phase.flood.requests_per_s:.0f}" if phase.flood else "-",
        "heavy admitted req/s": f"{phase.heavy_admitted_per_s:.1f}" if phase.flood else "-",
    }


def _checks(phases: dict[str, dict[str, Phase]], beyond_slots: int) -> dict[str, str]:
    checks: dict[str, str] = {}
    for mode, mode_phases in phases.items():
        alone, flooded = mode_phases[ALONE], mode_phases[FLOODED]
        ratio = flooded.light_percentiles()[1] / alone.light_percentiles()[1]
        offered = flooded.flood.requests_per_s / UPSTREAM_CAPACITY_PER_S if flooded.flood else math.nan
        checks[f"{mode}: light p99 under flood / alone"] = _against_goal(
            f"{ratio:.2f}x", ratio <= GOAL_P99_RATIO, f"<= {GOAL_P99_RATIO}x"
        )
        checks[f"{mode}: upstream busy under flood"] = _against_goal(
            f"{flooded.busy_fraction:.0%}", flooded.busy_fraction >= GOAL_BUSY_FRACTION, f">= {GOAL_BUSY_FRACTION:.0%}"
        )
        checks[f"{mode}: heavy offered rate / upstream capacity"] = _against_goal(
            f"{offered:.1f}x", offered >= GOAL_FLOOD_FACTOR, f">= {GOAL_FLOOD_FACTOR}x"
        )
    checks["requests that found every upstream slot taken (the proxy sent more than max_concurrency)"] = str(
        beyond_slots
    )
    return checks


def _against_goal(value: str, met: bool, goal: str) -> str:
    return f"{value} (goal {goal}: {'met' if met else 'missed'})"


@dataclass(slots=True)
class UpstreamLedger:
    """The upstream's capacity and its account of the work done, read through `LEDGER_PATH`."""

    slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(UPSTREAM_SLOTS))
    busy_s: float = 0.0
    served: Counter[str] = field(default_factory=Counter)
    beyond_slots: int = 0

    async def serve(self, key: str) -> bytes:
        """One request's work: a slot held for `SERVICE_S` (waiting first if all are taken, and counted)."""
        if self.slots.value == 0:
            self.beyond_slots += 1
        async with self.slots:
            started = trio.current_time()
            await trio.sleep(SERVICE_S)
            self.busy_s += trio.current_time() - started
        self.served[key] += 1
        return b'{"ok":true}'

    def reading(self) -> bytes:
        fields = {"at_s": trio.current_time(), "busy_s": self.busy_s, "served": self.served}
        return json.dumps({**fields, "beyond_slots": self.beyond_slots}).encode()


async def serve_connection(ledger: UpstreamLedger, stream: trio.SocketStream) -> None:
    """Requests on one keep-alive connection, one at a time; bodies are framed by Content-Length only (the proxy
    passes on the empty bodies the bench sends with theirs)."""
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


async def serve_upstream(port: int) -> None:
    await trio.serve_tcp(functools.partial(serve_connection, UpstreamLedger()), port, host=LOOPBACK)


def main() -> None:
    """`python -m bench.noisy_neighbour` runs the benchmark; `... upstream PORT` serves the upstream."""
    if sys.argv[1:2] == ["upstream"] and len(sys.argv) == 3:
        trio.run(serve_upstream, int(sys.argv[2]))
        return
    from bench.__main__ import render_section  # here, not at the top: bench.__main__ imports this module

    print(render_section(run()))


if __name__ == "__main__":
    main()
