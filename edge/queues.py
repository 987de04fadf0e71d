"""One queue per user per API key: a Trio task per active queue key, a nursery per task for its attempts.

How it fits together:

- `QueueManager.submit` makes a job durable (`Store.insert_job`) and only then puts it on its key's queue. The
  API answers 201 after `submit` returns, so an acknowledged job is always on disk.
- Each key has a `KeyQueue`: the pure pacing state (`scheduler.QueueLimits`) and the waiting job ids
  (`scheduler.ReadyQueue`). A key with waiting jobs has exactly one task, `_run_queue`, which decides with the
  pure core ("may the next job go now, and if not, until when do I wait?"), then does the I/O: it starts each
  attempt in its own nursery and sleeps until the next decision point or until something wakes it.
- When a queue has nothing waiting and nothing in flight, its task ends. The `KeyQueue` stays registered, so
  limits learned from the provider's headers survive, but it holds no task and drops its job container, so an
  idle key costs a few hundred bytes.
- After every attempt the job record (with the attempt, the delay chosen and why) is saved; a terminal job goes
  to the webhook deliverer. A 429 blocks the whole queue (`QueueLimits.on_response`) and never uses up a job's
  retries; the job keeps its place in line.

Everything that reads time uses `trio.current_time()` (pacing) or the injected wall clock (records), so the
simulator drives this module unchanged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import trio

from edge.config import Config
from edge.executor import AttemptResult, Executor, Timeouts
from edge.metrics import NodeMetrics
from edge.origins import origin_of
from edge.records import Attempt, JobRecord, JobStatus
from edge.runtime import Runtime
from edge.store import Store, StoreError
from edge.webhooks import WebhookDeliverer
from scheduler import QueueLimits, ReadyQueue, decide_retry, parse_limit_headers

log = logging.getLogger("ezthrottle.queues")

STORE_RETRY_S = 5.0  # how long a job waits after the store failed to save its outcome


class KeyQueue:
    """The state of one queue key; see the module docstring for its life cycle."""

    __slots__ = ("idle_since", "in_flight", "key", "limits", "origin", "ready", "running", "wakeup")

    def __init__(self, key: str, origin: str, limits: QueueLimits) -> None:
        self.key = key
        self.origin = origin
        self.limits = limits
        self.ready: ReadyQueue | None = None
        self.in_flight = 0
        self.running = False
        self.wakeup: trio.Event | None = None
        self.idle_since = 0.0

    @property
    def depth(self) -> int:
        return len(self.ready) if self.ready is not None else 0

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()


@dataclass(slots=True)
class LiveJob:
    """A job this node holds in a queue: its record and its place in line (monotonic time)."""

    record: JobRecord
    queue: KeyQueue
    eligible_at: float


class QueueManager:
    """Owns every queue key of this node and the tasks that drain them."""

    def __init__(
        self,
        *,
        config: Config,
        runtime: Runtime,
        store: Store,
        executor: Executor,
        webhooks: WebhookDeliverer,
        metrics: NodeMetrics,
        owns: Callable[[str], bool] = lambda key: True,
    ) -> None:
        self._config = config
        self._owns = owns
        self._runtime = runtime
        self._store = store
        self._executor = executor
        self._webhooks = webhooks
        self._metrics = metrics
        self._queues: dict[str, KeyQueue] = {}
        self._active_queues = 0
        self._jobs: dict[str, LiveJob] = {}
        self._backlog: Counter[str] = Counter()
        self._account_queue_learned: dict[str, bool] = {}
        self._nursery: trio.Nursery | None = None

    # -- service --------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume every unfinished job from the store, then serve queues until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            resumed = await self._store.unfinished_jobs()
            for record in resumed:
                # A job that was running when the node died is retried: at-least-once, made safe by idempotency keys.
                record.status = "queued"
                self._enqueue(record)
            if resumed:
                log.info("resumed %d unfinished jobs", len(resumed))
            task_status.started()
            await trio.sleep_forever()

    # -- API-facing verbs -------------------------------------------------------------------------------------

    def backlog(self, account_id: str) -> int:
        return self._backlog[account_id]

    def account_queue_enabled(self, origin: str) -> bool:
        """Per-key queues for a target: learned from X-EZTHROTTLE-ACCOUNT-QUEUE, else config, else default."""
        learned = self._account_queue_learned.get(origin)
        if learned is not None:
            return learned
        target = self._config.target_for(origin)
        if target is not None and target.account_queue is not None:
            return target.account_queue
        return self._config.defaults.account_queue

    async def submit(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Make the job durable, then queue it. Returns the stored job and whether it is new."""
        self._backlog[record.account_id] += 1  # counted before the await, so concurrent submits see it
        try:
            stored, created = await self._store.insert_job(record)
        finally:
            self._backlog[record.account_id] -= 1
        if not created:
            live = self._jobs.get(stored.job_id)
            return (live.record if live else stored), False
        self._enqueue(stored)
        return stored, True

    def live_job(self, job_id: str) -> JobRecord | None:
        live = self._jobs.get(job_id)
        return live.record if live else None

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job. Returns the cancelled record, or None when the job is not waiting here."""
        live = self._jobs.get(job_id)
        if live is None or live.record.status != "queued" or live.queue.ready is None:
            return None
        if not live.queue.ready.remove(job_id):
            return None
        self._metrics.queue_depth.dec()
        await self._finish(live, "cancelled", error="cancelled by the client")
        return live.record

    def queues_with_prefix(self, prefix: str) -> list[dict[str, Any]]:
        """Queues whose key starts with `prefix` (an account's: "acme|"; the shared free ones: "free|")."""
        return [self._describe(q) for key, q in self._queues.items() if key.startswith(prefix)]

    # -- cluster hand-off -----------------------------------------------------------------------------------------

    def ownership_changed(self) -> None:
        """Wake every queue task so that keys now owned elsewhere stop dispatching and owned ones resume."""
        for queue in self._queues.values():
            queue.wake()

    def detach(self, is_foreign: Callable[[str], bool]) -> list[JobRecord]:
        """Take the waiting jobs of foreign keys out of their queues (in-flight ones finish here first)."""
        detached = []
        for queue in self._queues.values():
            if queue.ready is None or not len(queue.ready) or not is_foreign(queue.key):
                continue
            while (job_id := queue.ready.pop_ready(float("inf"))) is not None:
                live = self._jobs.pop(job_id)
                self._metrics.queue_depth.dec()
                self._backlog[live.record.account_id] -= 1
                detached.append(live.record)
            queue.wake()
        return detached

    def reattach(self, records: Collection[JobRecord]) -> None:
        """Put detached jobs back (their transfer failed); they wait until a later hand-off succeeds."""
        for record in records:
            self._enqueue(record)

    async def accept_handoff(self, records: Collection[JobRecord]) -> int:
        """Make jobs handed over by another node durable here and queue them; returns how many were new."""
        accepted = 0

        async def accept(record: JobRecord) -> None:
            nonlocal accepted
            record.status = "queued"
            _stored, created = await self.submit(record)
            accepted += created

        async with trio.open_nursery() as nursery:
            for record in records:
                nursery.start_soon(accept, record)
        return accepted

    def forget_idle(self, idle_for_s: float) -> int:
        """Drop keys idle for `idle_for_s` (and the limits they learned), so distinct keys cannot grow memory
        without bound. Returns how many were dropped."""
        cutoff = trio.current_time() - idle_for_s
        stale = [key for key, q in self._queues.items() if not q.running and q.idle_since <= cutoff]
        for key in stale:
            del self._queues[key]
        return len(stale)

    def queue_keys(self) -> list[str]:
        return list(self._queues)

    def statistics(self) -> dict[str, int]:
        return {
            "queues": len(self._queues),
            "active_queues": self._active_queues,
            "jobs": len(self._jobs),
        }

    # -- queue tasks -------------------------------------------------------------------------------------------

    def _queue_for(self, key: str, origin: str) -> KeyQueue:
        queue = self._queues.get(key)
        if queue is None:
            queue = KeyQueue(key, origin, self._initial_limits(origin))
            self._queues[key] = queue
        return queue

    def _initial_limits(self, origin: str) -> QueueLimits:
        defaults = self._config.defaults
        target = self._config.target_for(origin)
        rps, rps_source = defaults.rps, "default"
        concurrency, concurrency_source = defaults.max_concurrent, "default"
        if target is not None and target.rps is not None:
            rps, rps_source = target.rps, "config"
        if target is not None and target.max_concurrent is not None:
            concurrency, concurrency_source = target.max_concurrent, "config"
        return QueueLimits(rps, concurrency, rps_source=rps_source, concurrency_source=concurrency_source)

    def _enqueue(self, record: JobRecord) -> None:
        queue = self._queue_for(record.queue_key, origin_of(record.spec["url"]))
        now = trio.current_time()
        eligible_at = now
        not_before_ms = record.next_attempt_at_ms or record.spec.get("retry_at")
        if not_before_ms:
            eligible_at = now + max(0, not_before_ms - self._runtime.wall_ms()) / 1000
        self._jobs[record.job_id] = LiveJob(record, queue, eligible_at)
        self._backlog[record.account_id] += 1
        self._push(queue, record.job_id, eligible_at)

    def _push(self, queue: KeyQueue, job_id: str, eligible_at: float) -> None:
        if queue.ready is None:
            queue.ready = ReadyQueue()
        queue.ready.push(job_id, eligible_at)
        self._metrics.queue_depth.inc()
        if queue.running:
            queue.wake()
        else:
            assert self._nursery is not None, "QueueManager.run() must be started first"
            queue.running = True
            self._active_queues += 1
            self._metrics.active_queues.inc()
            self._nursery.start_soon(self._run_queue, queue, name=f"queue {queue.origin}")

    async def _run_queue(self, queue: KeyQueue) -> None:
        """Drain one key's queue: pace, start attempts, sleep until the next decision point; exit when idle."""
        async with trio.open_nursery() as attempts:
            while True:
                now = trio.current_time()
                ready = queue.ready
                if ready is None or (len(ready) == 0 and queue.in_flight == 0):
                    # Idle: give up the task (and the job container) before any await, so a submit that
                    # arrives later starts a fresh task instead of waking this finished one.
                    queue.ready = None
                    queue.running = False
                    queue.idle_since = now
                    self._active_queues -= 1
                    self._metrics.active_queues.dec()
                    return
                wake_at = float("inf")  # until woken: a new job, an attempt done, or an ownership change
                if len(ready) and queue.in_flight < queue.limits.max_concurrent and self._owns(queue.key):
                    pace_at = queue.limits.ready_at(now)
                    head_at = ready.next_eligible_at()
                    assert head_at is not None
                    wake_at = max(pace_at, head_at)
                    if wake_at <= now:
                        job_id = ready.pop_ready(now)
                        assert job_id is not None
                        self._metrics.queue_depth.dec()
                        queue.limits.on_dispatch(now)
                        queue.in_flight += 1
                        self._metrics.in_flight.inc()
                        attempts.start_soon(self._attempt, self._jobs[job_id], name=f"attempt {job_id}")
                        continue
                queue.wakeup = trio.Event()
                with trio.move_on_at(wake_at):
                    await queue.wakeup.wait()
                queue.wakeup = None

    async def _attempt(self, live: LiveJob) -> None:
        record, queue = live.record, live.queue
        try:
            if self._runtime.wall_ms() >= record.deadline_at_ms:
                await self._finish(live, "failed", error="deadline passed before the job could run")
                return
            record.status = "running"
            result = await self._send(record, queue.origin)
            await self._settle(live, result)
        except StoreError:
            # The outcome could not be made durable (disk full, I/O error). Keep the job and try again later:
            # the store still holds its previous state, so at worst the attempt is repeated (at-least-once).
            log.exception("could not save job %s; it will run again in %ss", record.job_id, STORE_RETRY_S)
            record.status = "queued"
            self._push(queue, record.job_id, trio.current_time() + STORE_RETRY_S)
        finally:
            queue.in_flight -= 1
            self._metrics.in_flight.dec()
            queue.wake()

    async def _send(self, record: JobRecord, origin: str) -> AttemptResult:
        spec = record.spec
        headers = dict(spec["headers"])
        if spec.get("send_idempotency_key") and not any(h.lower() == "idempotency-key" for h in headers):
            headers["Idempotency-Key"] = record.idempotent_key
        return await self._executor.execute(
            method=spec["method"],
            url=spec["url"],
            headers=headers,
            body=spec["body"],
            timeouts=self._timeouts(origin),
        )

    def _timeouts(self, origin: str) -> Timeouts:
        defaults = self._config.defaults
        target = self._config.target_for(origin)

        def pick(name: str) -> float:
            value = getattr(target, name, None) if target is not None else None
            return float(value if value is not None else getattr(defaults, name))

        return Timeouts(pick("connect_timeout_s"), pick("read_timeout_s"), pick("total_timeout_s"))

    async def _settle(self, live: LiveJob, result: AttemptResult) -> None:
        """Decide what one attempt means for the queue and for the job, record it, and act."""
        record, queue = live.record, live.queue
        now = trio.current_time()
        wall_ms = self._runtime.wall_ms()
        signals = parse_limit_headers(result.headers, wall_now=wall_ms / 1000)
        if signals.malformed:
            self._metrics.malformed_headers.inc(len(signals.malformed))
        if signals.account_queue is not None:
            self._account_queue_learned[queue.origin] = signals.account_queue
        queue_delay = None
        if result.status_code is not None:
            self._metrics.upstream_latency.observe(result.duration_s)
            queue_delay = queue.limits.on_response(now, result.status_code, signals, self._runtime.rng)
            if result.status_code == 429:
                self._metrics.upstream_429.inc()
        policy = record.spec["retry_policy"]
        decision = decide_retry(
            status_code=result.status_code,
            error=result.error,
            retry_codes=policy["retry_codes"],
            retries_used=record.retries_used,
            max_retries=policy["max_retries"] if result.retryable else 0,
            retry_after_s=signals.retry_after_s,
            rng=self._runtime.rng,
            base_s=self._config.defaults.backoff_base_s,
            cap_s=self._config.defaults.backoff_cap_s,
            remaining=signals.remaining,
        )
        delay_s, reason = decision.delay_s, decision.reason
        if decision.kind == "retry" and not decision.counts_retry and queue_delay is not None:
            delay_s, reason = queue_delay.delay_s, queue_delay.reason
        attempt = Attempt(
            at_ms=wall_ms - int(result.duration_s * 1000),
            duration_ms=round(result.duration_s * 1000, 3),
            status_code=result.status_code,
            error=result.error,
        )
        record.attempts.append(attempt)
        response = result.response_dict() if result.status_code is not None else None
        if decision.kind != "retry":
            self._metrics.attempts.labels("success" if decision.kind == "success" else "failed").inc()
            await self._finish(live, decision.kind, response=response, error=None if response else result.error)
            return
        self._metrics.attempts.labels(
            "rate_limited" if result.status_code == 429 else "error" if result.status_code is None else "retry"
        ).inc()
        retry_wall_ms = wall_ms + int(delay_s * 1000)
        if retry_wall_ms >= record.deadline_at_ms:
            attempt.delay_reason = f"{reason}; deadline reached"
            await self._finish(live, "failed", response=response, error=f"deadline reached after {reason}")
            return
        attempt.delay_s, attempt.delay_reason = round(delay_s, 3), reason
        if decision.counts_retry:
            record.retries_used += 1
            live.eligible_at = now + delay_s  # a 429 keeps the job's place in line; other retries go behind
        record.status = "queued"
        record.next_attempt_at_ms = retry_wall_ms
        record.updated_at_ms = wall_ms
        await self._store.save_job(record)
        self._push(queue, record.job_id, live.eligible_at)

    async def _finish(
        self,
        live: LiveJob,
        status: JobStatus,
        *,
        response: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        record = live.record
        wall_ms = self._runtime.wall_ms()
        record.status = status
        record.response = response
        record.error = error
        record.finished_at_ms = record.updated_at_ms = wall_ms
        record.next_attempt_at_ms = None
        if status != "cancelled":
            self._webhooks.attach(record)
        await self._store.save_job(record)
        del self._jobs[record.job_id]
        self._backlog[record.account_id] -= 1
        if self._backlog[record.account_id] <= 0:
            del self._backlog[record.account_id]
        self._metrics.jobs_finished.labels(status).inc()
        if record.has_pending_deliveries:
            self._webhooks.schedule(record)

    def _describe(self, queue: KeyQueue) -> dict[str, Any]:
        fingerprint = queue.key.rsplit("|", 1)[-1] if queue.key.count("|") == 2 else "-"
        limits = queue.limits.snapshot()
        blocked_until = limits.pop("blocked_until", 0.0)
        now = trio.current_time()
        limits["blocked_until_ms"] = (
            self._runtime.wall_ms() + int((blocked_until - now) * 1000) if blocked_until > now else None
        )
        if blocked_until <= now:
            limits["blocked_reason"] = None
        return {
            "queue_key": queue.key,
            "origin": queue.origin,
            "credential_fingerprint": None if fingerprint == "-" else fingerprint,
            "depth": queue.depth,
            "in_flight": queue.in_flight,
            "active": queue.running,
            **limits,
        }
