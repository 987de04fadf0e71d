"""The job engine's Trio shells on real parts: the memory store, virtual time and a simulated network.

What the tests of edge/engine/shell share, and what each part stands for:
- `World`: one node's injected world. Its config comes from a TOML file through `load_config`; its `Runtime`'s wall
  clock follows trio's clock, so that deadlines, `retry_at` and webhook times move with the `MockClock`; every random
  draw comes from a seeded `Random`. Outbound HTTP is the simulator's `SimulatedHttp` with a scripted `Upstream`
  and a webhook `Receiver` mounted on it: the real executor and the real deliverer send real httpx requests to
  in-process ASGI apps, without a socket.
- `FaultyStore`: the real memory store behind a wrapper that fails chosen calls (by method name and count) with
  `StoreError` before they reach it, can hold calls at a gate, and counts every call. This is fault injection
  around the real component, not a mock of it: every call that is not failed is the memory store's own.
- `running`: a real `QueueManager` and `WebhookDeliverer` over such a store, started as edge/node.py starts them
  (the manager resumes first, then the deliverer), each in a cancel scope of its own so a test can "restart" one.
- `until`: poll a condition in virtual time. It never gives up by itself: every test bounds itself with
  `trio.fail_after`, and under `autojump_clock` a test that waits for something that never happens fails at once.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import json
import sys
import types
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from random import Random
from typing import Any

import trio

from edge.config import Config, load_config
from edge.engine.lifecycle import JobEvent, transition
from edge.engine.records import Attempt, Delivery, JobRecord
from edge.engine.shell.executor import Executor
from edge.engine.shell.queues import QueueManager
from edge.engine.shell.webhooks import WebhookDeliverer
from edge.engine.spec import queue_key, validate_job
from edge.metrics import NodeMetrics
from edge.outbound.client import OutboundHttp
from edge.runtime import Runtime
from edge.store import Store, StoreError, StoreStatistics
from simulations.actors import Receive, Scope, Send, read_body, respond
from simulations.determinism import Trace
from simulations.http import Latency, SimulatedHttp

SEED = 20_250_611
WALL_START_S = 1_700_000_000.0  # unix seconds at virtual time 0
UPSTREAM = "http://upstream.test"
HOOKS = "http://hooks.test"
ACCOUNT = "acme"
OTHER_ACCOUNT = "other"
WEBHOOK_SECRET = "whsec_shell_tests_0123456789"
# Each leg of a simulated request takes 1 to 4 ms: small beside every wait the tests measure (10 ms and up).
LATENCY = Latency(min_s=0.001, max_s=0.004)
# Virtual seconds: more than the longest test needs (about 1,200), and little enough that a stuck test, which
# reaches it at once under autojump_clock, is not slowed much by `until` polling every 10 ms of it.
TEST_TIMEOUT_S = 2_000.0


def write_config(tmp_path: Path, extra: str = "", *, server: str = "", defaults: str = "") -> Config:
    """The node's config from a TOML file: two accounts (acme signs its webhooks), fast default pacing."""
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[server]
data_dir = "{tmp_path / "data"}"
{server}

[defaults]
rps = 100
max_concurrent = 4
{defaults}

[[accounts]]
id = "{ACCOUNT}"
key = "ck_test_acme_0123456789"
plan = "pro"
webhook_secret = "{WEBHOOK_SECRET}"

[[accounts]]
id = "{OTHER_ACCOUNT}"
key = "ck_test_other_0123456789"
plan = "pro"
{extra}
"""
    )
    return load_config(path, env={})


# -- the upstream and the webhook receiver ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b'{"ok": true}'


@dataclass(slots=True)
class Arrival:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Upstream:
    """The provider: answers each request with the next scripted reply (then `default`) and records every arrival.

    A request to a path that `hold` named waits until the returned event is set (an attempt kept in flight)."""

    def __init__(self, *replies: Reply, default: Reply | None = None) -> None:
        self.script = deque(replies)
        self.default = default or Reply()
        self.arrivals: list[Arrival] = []
        self._gates: dict[str, trio.Event] = {}

    def hold(self, path: str) -> trio.Event:
        gate = self._gates[path] = trio.Event()
        return gate

    def arrivals_at(self, path: str) -> list[Arrival]:
        return [arrival for arrival in self.arrivals if arrival.path == path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        self.arrivals.append(Arrival(trio.current_time(), scope["method"], scope["path"], headers, body))
        reply = self.script.popleft() if self.script else self.default
        gate = self._gates.get(scope["path"])
        if gate is not None:
            await gate.wait()
        await respond(send, reply.status, reply.body, [("content-type", "application/json"), *reply.headers])


@dataclass(slots=True)
class Hook:
    """One webhook POST as the receiver saw it (the body only when the receiver keeps bodies)."""

    at: float
    path: str
    headers: dict[str, str]
    job_id: str
    status: str
    answered: int
    body: bytes | None


class Receiver:
    """A webhook endpoint: answers the scripted statuses (then `default`) and records every POST.

    With `keep_bodies=False` it keeps no payload, so that a test can look for large objects the node holds on to."""

    def __init__(self, *statuses: int, default: int = 200, keep_bodies: bool = True) -> None:
        self.statuses = deque(statuses)
        self.default = default
        self.keep_bodies = keep_bodies
        self.hooks: list[Hook] = []
        self.in_progress = 0
        self.most_in_progress = 0
        self._gate: trio.Event | None = None

    def hold(self) -> trio.Event:
        gate = self._gate = trio.Event()
        return gate

    def for_job(self, job_id: str) -> list[Hook]:
        return [hook for hook in self.hooks if hook.job_id == job_id]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        doc = json.loads(body)
        answer = self.statuses.popleft() if self.statuses else self.default
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        kept = body if self.keep_bodies else None
        self.hooks.append(Hook(trio.current_time(), scope["path"], headers, doc["job_id"], doc["status"], answer, kept))
        del doc, body
        self.in_progress += 1
        self.most_in_progress = max(self.most_in_progress, self.in_progress)
        try:
            if self._gate is not None:
                await self._gate.wait()
        finally:
            self.in_progress -= 1
        await respond(send, answer, b"{}", [("content-type", "application/json")])


# -- the store, with faults ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Fault:
    method: str
    times: int
    skip: int
    when: Callable[..., bool] | None


class FaultyStore:
    """A `Store` that forwards every call to `inner`, except the ones it was told to fail (see the module docstring).

    A failed call raises `StoreError` after a checkpoint and never reaches `inner`: it did not take effect."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failed_at: dict[str, list[float]] = {}  # trio time of each injected failure, by method
        self._faults: list[_Fault] = []
        self._gates: dict[str, trio.Event] = {}

    def fail(self, method: str, times: int = 1, *, skip: int = 0, when: Callable[..., bool] | None = None) -> None:
        """Fail the next `times` calls of `method` that `when` accepts (given the call's arguments), after letting
        `skip` of them through."""
        if not callable(getattr(self.inner, method, None)):
            raise AttributeError(f"the store has no method {method!r}")
        self._faults.append(_Fault(method, times, skip, when))

    def heal(self) -> None:
        """The store works again: forget every fault not yet used."""
        self._faults.clear()

    def hold(self, method: str) -> trio.Event:
        """Calls of `method` wait until the returned event is set (a save still in progress)."""
        gate = self._gates[method] = trio.Event()
        return gate

    async def _enter(self, method: str, *args: Any) -> None:
        self.calls[method] += 1
        gate = self._gates.get(method)
        if gate is not None:
            await gate.wait()
        fault = next(
            (f for f in self._faults if f.method == method and (f.when is None or f.when(*args))),
            None,
        )
        if fault is None:
            return
        if fault.skip:
            fault.skip -= 1
            return
        fault.times -= 1
        if not fault.times:
            self._faults.remove(fault)
        await trio.lowlevel.checkpoint()
        # Counted right before the raise, with no checkpoint between: whoever sees the count sees what the shell
        # did about the failure.
        self.failed[method] += 1
        self.failed_at.setdefault(method, []).append(trio.current_time())
        raise StoreError(f"injected fault: {method} (call {self.calls[method]})")

    async def insert_job(
        self, record: JobRecord, spawned: Sequence[JobRecord] = (), *, shared_state: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[JobRecord, bool]:
        await self._enter("insert_job", record)
        return await self.inner.insert_job(record, spawned, shared_state=shared_state)

    async def save_job(self, record: JobRecord, spawned: Sequence[JobRecord] = ()) -> None:
        await self._enter("save_job", record)
        await self.inner.save_job(record, spawned)

    async def save_delivery(
        self, job_id: str, index: int, delivery: Delivery, webhook_outcome: str, updated_at_ms: int
    ) -> None:
        await self._enter("save_delivery", job_id, index, delivery, webhook_outcome, updated_at_ms)
        await self.inner.save_delivery(job_id, index, delivery, webhook_outcome, updated_at_ms)

    async def get_job(self, job_id: str) -> JobRecord | None:
        await self._enter("get_job", job_id)
        return await self.inner.get_job(job_id)

    async def unfinished_jobs(self) -> list[JobRecord]:
        await self._enter("unfinished_jobs")
        return await self.inner.unfinished_jobs()

    async def jobs_with_pending_deliveries(self) -> list[JobRecord]:
        await self._enter("jobs_with_pending_deliveries")
        return await self.inner.jobs_with_pending_deliveries()

    async def purge_finished(self, finished_before_ms: int) -> int:
        await self._enter("purge_finished", finished_before_ms)
        return await self.inner.purge_finished(finished_before_ms)

    async def count_unfinished(self, account_id: str) -> int:
        await self._enter("count_unfinished", account_id)
        return await self.inner.count_unfinished(account_id)

    async def shared_state(self) -> dict[str, bytes]:
        await self._enter("shared_state")
        return await self.inner.shared_state()

    async def save_shared_state(self, key: str, value: bytes) -> None:
        await self._enter("save_shared_state", key, value)
        await self.inner.save_shared_state(key, value)

    async def delete_jobs(self, job_ids: Collection[str]) -> int:
        await self._enter("delete_jobs", job_ids)
        return await self.inner.delete_jobs(job_ids)

    def statistics(self) -> StoreStatistics:
        return self.inner.statistics()


# -- the node's world and its shells -------------------------------------------------------------------------------


async def _no_dns(host: str) -> list[str]:
    raise OSError(f"no DNS in these tests ({host})")


class World:
    """One node's injected world (see the module docstring); builds records and the real shells."""

    def __init__(
        self, config: Config, *, upstream: Upstream | None = None, receiver: Receiver | None = None, seed: int = SEED
    ) -> None:
        self.config = config
        seeds = Random(seed)
        self.runtime = Runtime(
            wall_clock=lambda: WALL_START_S + trio.current_time(),
            rng=Random(seeds.getrandbits(64)),
            resolver=_no_dns,
        )
        self.trace = Trace()
        self.http = SimulatedHttp(rng=Random(seeds.getrandbits(64)), trace=self.trace, latency=LATENCY)
        self.upstream = upstream or Upstream()
        self.receiver = receiver or Receiver()
        self.http.mount("upstream.test:80", self.upstream)
        self.http.mount("hooks.test:80", self.receiver)
        self.outbound = OutboundHttp(self.http)
        self.metrics = NodeMetrics()
        self._ids = count(1)

    def wall_ms(self, after_s: float = 0.0) -> int:
        """Unix ms now, or `after_s` seconds from now."""
        return self.runtime.wall_ms() + int(after_s * 1000)

    def record(
        self,
        path: str = "/v1/charges",
        *,
        account: str = ACCOUNT,
        credential: str | None = None,
        hook_count: int = 1,
        deadline_s: float | None = None,
        **job: Any,
    ) -> JobRecord:
        """A job as the API accepts it (edge/http/api.py `_new_record`), with `hook_count` webhooks to the receiver;
        `job` adds or overrides fields of the public contract."""
        n = next(self._ids)
        doc: dict[str, Any] = {
            "url": UPSTREAM + path,
            "method": "POST",
            "body": json.dumps({"n": n}),
            "metadata": {"n": n},
            "webhooks": [{"url": f"{HOOKS}/hook"} for _ in range(hook_count)],
        }
        if credential is not None:
            doc["headers"] = {"Authorization": f"Bearer {credential}"}
        spec = validate_job({**doc, **job})
        wall_ms = self.wall_ms()
        job_id, idempotent_key = f"job-{n}", f"idem-{n}"
        deadline_ms = int((deadline_s or self.config.defaults.job_deadline_s) * 1000)
        return JobRecord(
            job_id=job_id,
            account_id=account,
            idempotent_key=idempotent_key,
            queue_key=queue_key(account_id=account, plan="pro", job=spec, account_queue=True),
            spec=dataclasses.replace(spec, idempotent_key=idempotent_key),
            created_at_ms=wall_ms,
            updated_at_ms=wall_ms,
            deadline_at_ms=max(wall_ms, spec.retry_at or 0) + deadline_ms,
        )

    def deliverer(self, store: Store) -> WebhookDeliverer:
        return WebhookDeliverer(
            config=self.config, runtime=self.runtime, store=store, outbound=self.outbound, metrics=self.metrics
        )

    def manager(
        self, store: Store, deliverer: WebhookDeliverer, *, owns: Callable[[str], bool] = lambda key: True
    ) -> QueueManager:
        return QueueManager(
            config=self.config,
            runtime=self.runtime,
            store=store,
            executor=Executor(self.outbound),
            webhooks=deliverer,
            metrics=self.metrics,
            owns=owns,
        )

    def sample(self, name: str, **labels: str) -> float:
        """A sample of the node's metrics registry (counters end in `_total`); 0 when it has none yet."""
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


async def start_service(nursery: trio.Nursery, run: Callable[..., Awaitable[None]]) -> trio.CancelScope:
    """Start `run(task_status=...)` in `nursery` inside a cancel scope of its own; returns the scope (to stop it)."""
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await run(task_status=task_status)

    await nursery.start(serve)
    return scope


@dataclass
class Node:
    """The shells of one node, started over `store` (a FaultyStore around `memory`)."""

    world: World
    memory: Store
    store: FaultyStore
    manager: QueueManager
    deliverer: WebhookDeliverer
    nursery: trio.Nursery
    scopes: dict[str, trio.CancelScope] = field(default_factory=dict)

    async def job(self, job_id: str) -> JobRecord:
        """The stored record, read past the fault injection (and not counted)."""
        record = await self.memory.get_job(job_id)
        assert record is not None, f"{job_id} is not in the store"
        return record

    def live_status(self, job_id: str) -> str | None:
        """The status of the live record the manager holds; None when it holds none."""
        live = self.manager.live_job(job_id)
        return None if live is None else live.status

    async def restart_deliverer(self) -> WebhookDeliverer:
        """Stop the deliverer (its memory is lost, as in a crash) and start a new one on the same store.

        The manager keeps the deliverer it was built with, so a job that finishes after this is scheduled on the
        stopped one: restart the deliverer only once no job is left to finish."""
        self.scopes["deliverer"].cancel()
        self.deliverer = self.world.deliverer(self.store)
        self.scopes["deliverer"] = await start_service(self.nursery, self.deliverer.run)
        return self.deliverer


@asynccontextmanager
async def running(
    world: World, memory: Store, *, owns: Callable[[str], bool] = lambda key: True
) -> AsyncIterator[Node]:
    """A real manager and deliverer over `memory` (behind a FaultyStore), running until the block ends."""
    store = FaultyStore(memory)
    async with trio.open_nursery() as nursery:
        deliverer = world.deliverer(store)
        manager = world.manager(store, deliverer, owns=owns)
        node = Node(world, memory, store, manager, deliverer, nursery)
        node.scopes["manager"] = await start_service(nursery, manager.run)
        node.scopes["deliverer"] = await start_service(nursery, deliverer.run)
        yield node
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], object], *, step_s: float = 0.01) -> None:
    """Wait in virtual time until `condition()` (awaited when it returns an awaitable) is true."""
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        await trio.sleep(step_s)


def finished(record: JobRecord, wall_ms: int, *, status_code: int = 200, body: str = '{"ok": true}') -> JobRecord:
    """`record` after one successful attempt, built through the status table as the queue core builds it."""
    running_record = transition(record, JobEvent.DISPATCH)
    attempt = Attempt(at_ms=wall_ms - 5, duration_ms=5.0, status_code=status_code)
    return transition(
        running_record.with_attempt(attempt),
        JobEvent.SUCCEED,
        finished_at_ms=wall_ms,
        updated_at_ms=wall_ms,
        next_attempt_at_ms=None,
        response={"status_code": status_code, "headers": {"content-type": "application/json"}, "body": body},
    )


# -- memory ---------------------------------------------------------------------------------------------------------


def live_records(job_id: str) -> int:
    """How many JobRecord objects of `job_id` are alive anywhere in the process (after a full collection)."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, JobRecord) and obj.job_id == job_id)


def live_bodies(chars_min: int) -> int:
    """How many response dicts with a body of at least `chars_min` characters are alive (after a collection)."""
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, dict) and isinstance(obj.get("body"), str) and len(obj["body"]) >= chars_min
    )


_NOT_STATE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def reachable_bytes(*roots: object) -> int:
    """The `sys.getsizeof` total of every object reachable from `roots` (types, modules and functions excluded)."""
    seen: set[int] = set()
    stack = list(roots)
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_STATE):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total
