"""`ezthrottle simulate --calibrate`: measure what each `Operation` costs on this machine, with the real node code.

The measured node, A, runs in this process's main trio loop as production runs it: `edge.node.run_node` with its
SQLite store in a temporary data dir, its job API and one protected listener served by hypercorn on loopback,
clustered (replicas = 2, real UDP gossip, an HMAC key) with a second node, B. Everything else runs in helper
threads, each with a trio loop of its own: node B (an in-memory store, so it starts no worker threads of its own),
one loopback HTTP/1.1 server that answers every request 200 (the upstream of attempts and of the protected
listener, and the webhook receiver, counting each by path) and the load driver (an httpx client, `CONCURRENCY`
requests in flight).

A's CPU over a phase is the process's (`time.process_time`, every thread, so A's SQLite commits in trio's worker
threads count) less the helper threads' (their own thread CPU clocks), less A's idle rate over the phase's length
(gossip and timers run throughout). Each phase makes A do one kind of work `repetitions` times, with CONCURRENCY
requests in flight and one at a time (`Calibration.solo_costs_s`: a busy node batches, so its operations cost
less), in ROUNDS alternating rounds of all phases; a cost is the median over the rounds of A's CPU divided by that
count, less the costs of earlier phases of its round that it includes:

    gossip     A idle for IDLE_S: its CPU per datagram it sent or received (all idle CPU is put on gossip)
    submit     jobs posted to A for keys A owns (retry_at far ahead, so none runs): accept, commit, replicate to B
    accept     jobs posted to B for keys A owns: A's share as the owner of a forwarded job
    replicate  jobs posted to B for keys B owns: A keeps B's copies (one record each, however B batched them)
    forward    jobs posted to A for keys B owns: A's share as the entry that forwards them
    refusal    jobs posted to A by an account over its plan's quota: 429 quota-exceeded
    attempt    jobs posted to A for keys A owns, run at once against the upstream: less one submit each
    webhook    the same with a webhook each: less one submit and one attempt each
    proxy      GETs through A's protected listener to the upstream

Each cost is what the node does for one operation at this concurrency, event loop and HTTP server included; a
cost that includes others (a submission's replication to B, an attempt's saves) counts them only on A's side.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import itertools
import json
import os
import platform
import queue
import secrets
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final, final

import h11
import httpx
import trio

from cluster import Rendezvous
from edge.config import Config, load_config
from edge.engine.spec import queue_key, validate_job
from edge.node import Node, run_node
from edge.runtime import Runtime
from edge.store import MemoryStoreData, open_memory_store

from .cpu import Calibration, Operation

REPETITIONS: Final = 200  # operations per phase: about a second of work each on the 2-core development machine
# Each cost is the median of this many rounds of its phase (alternating loaded and one-at-a-time rounds): one round
# alone varied by 1.5-3x per operation from run to run on the shared development machine.
ROUNDS: Final = 3
CONCURRENCY: Final = 8  # the driver's requests in flight: enough to batch as a loaded node does
IDLE_S: Final = 2.0
SETTLE_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.02
LOOPBACK: Final = "127.0.0.1"
NODES: Final = ("a", "b")
ACCOUNT = "calibrate"
ACCOUNT_KEY = "ck_calibrate_0123456789abcdef"
CAPPED_ACCOUNT = "capped"  # on a plan of one job a month: every submission after the first is refused
CAPPED_KEY = "ck_capped_0123456789abcdef"
PROXY_KEY = "pk_calibrate_0123456789abcdef"
CREDENTIALS_PER_NODE = 8  # queue keys per owner: several queues, as a loaded node has
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01: accepted jobs that never run while calibrating
ATTEMPT_PATH = "/attempt"
WEBHOOK_PATH = "/hook"
PROXY_PATH = "/proxied"
NO_ANSWER = 0


def calibrate(repetitions: int = REPETITIONS) -> Calibration:
    """Measure every operation's cost on this machine (see the module docstring): about 45 s at the default on
    the 2-core development machine."""
    if repetitions < 10:
        raise ValueError("repetitions must be at least 10 for a cost to mean anything")
    return trio.run(_calibrate, repetitions)


def machine_description() -> str:
    """CPU model, core count and OS: what a calibration was measured on."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return (
        f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


# -- helpers in threads --------------------------------------------------------------------------------------------


@final
class _Helper:
    """A trio loop in a thread of its own, whose CPU (its thread's clock) is not the measured node's."""

    def __init__(self, name: str, main: Callable[..., Awaitable[object]], *args: object) -> None:
        self._ready: queue.Queue[tuple[int, trio.lowlevel.TrioToken]] = queue.Queue()
        self._main = main
        self._args = args
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failure: BaseException | None = None
        self._stop = trio.Event()  # set in the helper's own loop by `close`
        self._thread.start()
        self._clock_id, self._token = self._ready.get(timeout=SETTLE_TIMEOUT_S)

    def _run(self) -> None:
        async def main() -> None:
            self._ready.put((time.pthread_getcpuclockid(threading.get_ident()), trio.lowlevel.current_trio_token()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(self._main, *self._args))
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        except BaseException as exc:  # reported by `close`, in the measuring thread
            self.failure = exc

    def cpu_s(self) -> float:
        return time.clock_gettime(self._clock_id)

    def call(self, function: Callable[..., Awaitable[Any]], *args: object) -> Any:
        """Run `function(*args)` in the helper's loop and wait for it (from a thread that is not the helper's)."""
        return trio.from_thread.run(partial(function, *args), trio_token=self._token)

    def close(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=SETTLE_TIMEOUT_S)
        if self.failure is not None:
            raise RuntimeError(f"calibration helper {self._thread.name} failed") from self.failure


async def serve_ok(listener: trio.SocketListener, on_request: Callable[[str, bytes], None]) -> None:
    """Answer every HTTP/1.1 request on `listener` 200 `{}`, telling `on_request` its path and body first: the
    cheapest stand-in for an upstream or a webhook receiver (also the CPU model's validation benchmark's)."""

    async def connection(stream: trio.SocketStream) -> None:
        http = h11.Connection(h11.SERVER)
        path, body = "", b""
        with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    http.receive_data(data)
                elif isinstance(event, h11.Request):
                    path, body = event.target.decode(), b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    on_request(path, body)
                    headers = [("content-type", "application/json"), ("content-length", "2")]
                    reply = http.send(h11.Response(status_code=200, headers=headers))
                    reply += http.send(h11.Data(data=b"{}")) + http.send(h11.EndOfMessage())
                    await stream.send_all(reply)
                    http.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, connection, [listener])


async def _drive(requests: list[httpx.Request], concurrency: int) -> list[int]:
    """Send `requests` (`concurrency` at a time) and return their statuses (NO_ANSWER: the connection broke)."""
    statuses: list[int] = []
    pending = iter(requests)
    async with httpx.AsyncClient(trust_env=False, timeout=SETTLE_TIMEOUT_S) as client:

        async def worker() -> None:
            for request in pending:
                try:
                    response = await client.send(request)
                except httpx.TransportError:
                    statuses.append(NO_ANSWER)
                    continue
                statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return statuses


# -- the measured node and its configuration ------------------------------------------------------------------------


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _node_config(
    name: str, data_dir: Path, ports: Mapping[str, tuple[int, int]], cluster_key: str, upstream: str
) -> Config:
    api_port, gossip_port = ports[name]
    seeds = [] if name == NODES[0] else [f"{LOOPBACK}:{ports[NODES[0]][1]}"]  # B joins A
    digest = hashlib.sha256(PROXY_KEY.encode()).hexdigest()
    text = f"""
[server]
listen = "{LOOPBACK}:{api_port}"
data_dir = "{data_dir}"
node_id = "{name}"
[security]
allow_private_targets = true
[defaults]
rps = 1000000
max_concurrent = {CONCURRENCY}
[cluster]
bind = "{LOOPBACK}:{gossip_port}"
api_advertise = "{LOOPBACK}:{api_port}"
seeds = {json.dumps(seeds)}
keys = ["{cluster_key}"]
profile = "lan"
replicas = 2
[plans.capped]
monthly_requests = 1
[[accounts]]
id = "{ACCOUNT}"
key = "{ACCOUNT_KEY}"
plan = "pro"
[[accounts]]
id = "{CAPPED_ACCOUNT}"
key = "{CAPPED_KEY}"
plan = "capped"
"""
    if name == NODES[0]:
        text += f"""
[[protect]]
listen = "{LOOPBACK}:{_free_port()}"
upstream = "{upstream}"
[[protect.keys]]
key_sha256 = "{digest}"
tier = "paid"
"""
    path = data_dir / "node.toml"
    path.write_text(text)
    return load_config(path, env={})


def _credentials(owner: str, upstream: str) -> list[str]:
    """CREDENTIALS_PER_NODE credentials whose jobs (to `upstream`, of ACCOUNT) are in queue keys `owner` owns."""
    ring = Rendezvous(NODES)
    chosen = []
    for index in itertools.count():
        credential = f"calibrate-{index}"
        job = validate_job(_job(upstream, credential, 0, far=True))
        key = queue_key(account_id=ACCOUNT, plan="pro", job=job, account_queue=True)
        if ring.owner(key) == owner:
            chosen.append(credential)
            if len(chosen) == CREDENTIALS_PER_NODE:
                return chosen
    raise AssertionError("unreachable: the candidates never end")


def _job(upstream: str, credential: str, number: int, *, far: bool, webhook: bool = False) -> dict[str, Any]:
    job: dict[str, Any] = {
        "url": f"{upstream}{ATTEMPT_PATH}/{credential}",
        "method": "POST",
        "headers": {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"},
        "body": json.dumps({"n": number}),
        "idempotent_key": f"{credential}-{number}-{secrets.token_hex(4)}",
        "metadata": {"calibration": True},
    }
    if far:
        job["retry_at"] = FAR_FUTURE_MS
    if webhook:
        job["webhooks"] = [{"url": f"{upstream}{WEBHOOK_PATH}"}]
    return job


def _submissions(base_url: str, jobs: Iterable[dict[str, Any]], key: str) -> list[httpx.Request]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return [
        httpx.Request("POST", f"{base_url}/api/v1/jobs", headers=headers, content=json.dumps(job).encode())
        for job in jobs
    ]


@final
class _Bench:
    """Node A in this loop, the helpers in theirs, and the CPU book-keeping of one phase at a time."""

    def __init__(self, node: Node, helpers: list[_Helper], driver: _Helper) -> None:
        self.node = node
        self._helpers = helpers
        self._driver = driver
        self.idle_rate = 0.0  # A's CPU seconds per second when it does nothing but gossip and timers

    def _cpu_s(self) -> float:
        """This process's CPU less every helper thread's: A's."""
        return time.process_time() - sum(helper.cpu_s() for helper in self._helpers)

    async def idle(self, duration_s: float) -> tuple[float, int]:
        """A's CPU over `duration_s` with no work, and the datagrams it sent and received meanwhile."""
        member = self.node.membership
        assert member is not None
        before_stats = member.statistics()
        before = self._cpu_s()
        await trio.sleep(duration_s)
        cpu = self._cpu_s() - before
        after_stats = member.statistics()
        datagrams = (after_stats.packets_sent - before_stats.packets_sent) + (
            after_stats.packets_received - before_stats.packets_received
        )
        self.idle_rate = cpu / duration_s
        return cpu, datagrams

    async def phase(
        self, requests: list[httpx.Request], concurrency: int, settled: Callable[[], bool] = lambda: True
    ) -> tuple[float, float, list[int]]:
        """Drive `requests`, wait until `settled()`; A's CPU (less idle), wall time, statuses."""
        started_at = trio.current_time()
        before = self._cpu_s()
        statuses: list[int] = await trio.to_thread.run_sync(self._driver.call, _drive, requests, concurrency)
        with trio.fail_after(SETTLE_TIMEOUT_S):
            while not settled():
                await trio.sleep(POLL_S)
        wall_s = trio.current_time() - started_at
        return self._cpu_s() - before - self.idle_rate * wall_s, wall_s, statuses


async def _calibrate(repetitions: int) -> Calibration:
    counts: Counter[str] = Counter()  # requests the upstream saw, by path
    upstream_listener = (await trio.open_tcp_listeners(0, host=LOOPBACK))[0]
    upstream = f"http://{LOOPBACK}:{upstream_listener.socket.getsockname()[1]}"
    ports = {name: (_free_port(), _free_port(socket.SOCK_DGRAM)) for name in NODES}
    cluster_key = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="ezthrottle-calibrate-") as scratch:
        configs = {}
        for name in NODES:
            Path(scratch, name).mkdir()
            configs[name] = _node_config(name, Path(scratch, name), ports, cluster_key, upstream)
        helpers = [_Helper("upstream", serve_ok, upstream_listener, partial(_count, counts))]
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(run_node, configs["a"], Runtime.real())
            try:
                helpers.append(_Helper("node-b", _run_peer, configs["b"]))
                driver = _Helper("driver", trio.sleep_forever)
                helpers.append(driver)
                await _wait_for_cluster(node)
                bench = _Bench(node, helpers, driver)
                return await _measure(bench, configs, upstream, counts, repetitions)
            finally:
                for helper in reversed(helpers):
                    await trio.to_thread.run_sync(helper.close)
                node.stop()
    raise AssertionError("unreachable")


def _count(counts: Counter[str], path: str, _body: bytes) -> None:
    counts["/" + path.split("/")[1]] += 1


async def _run_peer(config: Config) -> None:
    """Node B: the same code on an in-memory store."""
    async with open_memory_store(MemoryStoreData()) as store:
        await run_node(config, Runtime.real(), store=store)


async def _wait_for_cluster(node: Node) -> None:
    member = node.membership
    assert member is not None
    with trio.fail_after(SETTLE_TIMEOUT_S):
        while {info.node for info in member.live_members()} != set(NODES):
            await trio.sleep(POLL_S)


async def _measure(
    bench: _Bench,
    configs: Mapping[str, Config],
    upstream: str,
    counts: Counter[str],
    repetitions: int,
) -> Calibration:
    """Gossip from an idle spell, then the phases of the module docstring at CONCURRENCY and one at a time."""
    idle_cpu_s, datagrams = await bench.idle(IDLE_S)
    gossip_s = idle_cpu_s / max(1, datagrams)
    phases = _Phases(bench, configs, upstream, counts, repetitions)
    loaded_rounds, solo_rounds = [], []
    for _ in range(ROUNDS):
        loaded_rounds.append(await phases.run(CONCURRENCY))
        solo_rounds.append(await phases.run(1))
    loaded, loaded_notes = _medians(loaded_rounds)
    solo, solo_notes = _medians(solo_rounds)
    notes: dict[str, Any] = {
        "repetitions": repetitions,
        "rounds": ROUNDS,
        # `ezthrottle serve` tunes the collector (edge/process.py), which changes these costs by tens of percent.
        "gc": f"thresholds {gc.get_threshold()}, {gc.get_freeze_count()} objects frozen",
        "gossip": (
            f"A idle for {IDLE_S:g} s: {idle_cpu_s * 1000:.1f} ms CPU over {datagrams} datagrams sent or received "
            "(every idle CPU second is put on gossip)"
        ),
        f"at concurrency {CONCURRENCY}": loaded_notes,
        "one at a time": solo_notes,
    }
    return Calibration(
        costs_s={**loaded, Operation.GOSSIP: gossip_s},
        solo_costs_s={**solo, Operation.GOSSIP: gossip_s},
        concurrency=CONCURRENCY,
        machine=machine_description(),
        measured_at=_now(),
        cores=1,
        notes=notes,
    )


def _medians(
    rounds: list[tuple[dict[Operation, float], dict[str, str]]],
) -> tuple[dict[Operation, float], dict[str, str]]:
    """Each operation's median cost over the rounds, noted with the first round's measurement and the spread."""
    costs: dict[Operation, float] = {}
    notes: dict[str, str] = {}
    for operation in rounds[0][0]:
        each = sorted(round_costs[operation] for round_costs, _notes in rounds)
        costs[operation] = statistics.median(each)
        notes[operation.value] = (
            f"{rounds[0][1][operation.value]}; median of {len(each)} rounds "
            f"({each[0] * 1e6:.0f}-{each[-1] * 1e6:.0f} us)"
        )
    return costs, notes


@final
class _Phases:
    """The phases of the module docstring, in order, each cost from the phases before it."""

    def __init__(
        self, bench: _Bench, configs: Mapping[str, Config], upstream: str, counts: Counter[str], repetitions: int
    ) -> None:
        self._bench = bench
        self._a_url, self._b_url = (f"http://{configs[name].server.listen}" for name in NODES)
        self._proxy_url = f"http://{bench.node.protected[configs['a'].protect[0].label][0]}"
        self._upstream = upstream
        self._counts = counts
        self._n = repetitions
        self._numbers = itertools.count()
        self._owned = {name: itertools.cycle(_credentials(name, upstream)) for name in NODES}

    def _jobs(self, url: str, owner: str, key: str = ACCOUNT_KEY, **kind: bool) -> list[httpx.Request]:
        jobs = (_job(self._upstream, next(self._owned[owner]), next(self._numbers), **kind) for _ in range(self._n))
        return _submissions(url, jobs, key)

    async def run(self, concurrency: int) -> tuple[dict[Operation, float], dict[str, str]]:
        """Every cost but gossip's, with `concurrency` requests in flight; and how each was measured."""
        notes: dict[str, str] = {}
        counts, n = self._counts, self._n

        async def measure(
            what: str, requests: list[httpx.Request], settled: Callable[[], bool] = lambda: True
        ) -> tuple[float, list[int]]:
            cpu_s, wall_s, statuses = await self._bench.phase(requests, concurrency, settled)
            answers = ", ".join(f"{count} x {status or 'no answer'}" for status, count in Counter(statuses).items())
            notes[what] = f"{len(requests)} requests in {wall_s:.2f} s ({answers}): {cpu_s * 1000:.0f} ms of A's CPU"
            return cpu_s, statuses

        costs: dict[Operation, float] = {}
        a, b = self._a_url, self._b_url
        for operation, url, owner in (
            (Operation.SUBMIT, a, "a"),  # A takes the job
            (Operation.ACCEPT, b, "a"),  # B forwards it to A
            (Operation.REPLICATE, b, "b"),  # B takes it, A keeps its copy
            (Operation.FORWARD, a, "b"),  # A forwards it to B
        ):
            cpu_s, statuses = await measure(operation.value, self._jobs(url, owner, far=True))
            _all_accepted(statuses, operation.value)
            costs[operation] = cpu_s / n
        cpu_s, _statuses = await measure("refusal", self._jobs(a, "a", CAPPED_KEY, far=True))
        costs[Operation.REFUSAL] = cpu_s / n  # the capped plan's one job a month went in an earlier phase
        attempts = counts[ATTEMPT_PATH] + n
        cpu_s, statuses = await measure(
            "attempt", self._jobs(a, "a", far=False), lambda: counts[ATTEMPT_PATH] >= attempts
        )
        _all_accepted(statuses, "attempt")
        costs[Operation.ATTEMPT] = max(0.0, cpu_s / n - costs[Operation.SUBMIT])
        attempts, hooks = counts[ATTEMPT_PATH] + n, counts[WEBHOOK_PATH] + n
        cpu_s, statuses = await measure(
            "webhook",
            self._jobs(a, "a", far=False, webhook=True),
            lambda: counts[ATTEMPT_PATH] >= attempts and counts[WEBHOOK_PATH] >= hooks,
        )
        _all_accepted(statuses, "webhook")
        costs[Operation.WEBHOOK] = max(0.0, cpu_s / n - costs[Operation.SUBMIT] - costs[Operation.ATTEMPT])
        proxied = [
            httpx.Request("GET", f"{self._proxy_url}{PROXY_PATH}/{i}", headers={"x-api-key": PROXY_KEY})
            for i in range(n)
        ]
        cpu_s, statuses = await measure("proxy", proxied)
        costs[Operation.PROXY] = cpu_s / max(1, statuses.count(200))  # per answered request
        return costs, notes


def _all_accepted(statuses: list[int], what: str) -> None:
    refused = Counter(status for status in statuses if status not in (200, 201))
    if refused:
        raise RuntimeError(f"calibration {what}: the node answered {dict(refused)}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
