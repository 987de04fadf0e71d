"""One queue per user per API key: a Trio task per active queue key, a nursery per task for its attempts.

This is the shell of the outbound queue core (edge/engine/queue.py): every decision (which job goes next and when,
what an attempt's outcome means, what a cancel does) is the core's; this module does the I/O it asks for.

- `QueueManager.submit` makes a job durable (`Store.insert_job`) and only then puts it in its key's queue. The
  API answers 201 after `submit` returns, so an acknowledged job is always on disk.
- A key with waiting jobs has exactly one task, `_run_queue`, which asks the core `next(now)` and carries the
  answer out: start an attempt in the task's nursery, save an expired job, or sleep until the time named (or until
  something wakes it: a new job, an attempt done, an ownership change). The task ends when the core says IDLE; the
  key's `OutboundQueue` stays, so limits learned from the provider's headers survive.
- After an attempt, the core's `Settlement` is saved and only then committed; a failed save aborts it, and the job
  waits again as it was. The jobs a settlement spawns (a workflow's next step, a follow-up) are saved in the same
  commit and queued after it; the step jobs it stops are stopped wherever they are.
- Workflows (edge/engine/workflow.py): a step job that ends reports to its root (here, or through `WorkflowLinks`
  on the node that holds the root). Every STEP_CHECK_S, and after a restart, each parked root's running steps
  are looked up too, so a report lost to a crash or a hand-off only costs a delay. An attempt the core interrupts
  (a step stopped mid-flight, a failure timeout) is cancelled through its cancel scope.

Everything that reads time uses `trio.current_time()` (pacing) or the injected wall clock (records), so the
simulator drives this module unchanged.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any, Protocol

import trio

from edge.config import Config
from edge.engine import workflow
from edge.engine.outcome import AttemptResult
from edge.engine.queue import (
    IDLE,
    Conclude,
    Dispatch,
    Interrupt,
    LegResult,
    OutboundQueue,
    Queues,
    RetrySettings,
    Settlement,
    WaitUntil,
    wins,
)
from edge.engine.records import JobRecord
from edge.engine.shell.events import EventBus
from edge.engine.shell.executor import Executor, Timeouts
from edge.engine.shell.placement import AttemptRunner, LocalPlacement, Placement
from edge.engine.shell.webhooks import WebhookDeliverer
from edge.logs import job_fields
from edge.metrics import NodeMetrics
from edge.runtime import Runtime
from edge.store import Store, StoreError
from scheduler import QueueLimits

log = logging.getLogger("ezthrottle.queues")

STEP_CHECK_S = 2.0  # how often parked workflow roots look their running steps up (a lost report costs this long)


class WorkflowLinks(Protocol):
    """How workflows reach jobs this node does not hold (edge/placement/routing.py in a cluster)."""

    async def find(self, job_id: str) -> JobRecord | None: ...

    async def stop(self, job_id: str) -> None:
        """Stop a step job held by another node."""
        ...

    async def report(self, step: JobRecord) -> None:
        """Tell the node holding the step's root that the step ended."""
        ...

    def hand_off_soon(self) -> None:
        """Jobs of keys another node owns were just created here: move them without waiting for the sweep."""
        ...


class Reserved(Protocol):
    """A submission `Admission` let in: the shared-state rows the job's commit writes with it (its usage count)."""

    @property
    def shared_state(self) -> Sequence[tuple[str, bytes]]: ...


class Admission(Protocol):
    """Whether a new submission may be accepted beyond the backlog bound (the plan's quota, edge/placement/usage.py):
    `reserve` raises to refuse; `settle` is told whether the job was new once it was saved, or failed."""

    async def reserve(self, account_id: str) -> Reserved:
        """Let the submission in, or raise. Its job's commit is to be called at once, with no await between: the
        rows are valued for that moment."""
        ...

    def settle(self, reservation: Any, *, created: bool) -> None: ...


class Replication(Protocol):
    """Copies of every save on the key's other holders (edge/placement/replication.py)."""

    async def replicated(self, records: Sequence[JobRecord]) -> list[JobRecord | None]:
        """Wait until the other holders have `records` durable; per record None, or the job they hold under its
        idempotency key instead. Raises (a Problem) when they cannot confirm in time."""
        ...

    async def replicate_soon(self, records: Sequence[JobRecord], *, moved_from: Sequence[str] = ()) -> None:
        """The same for a save nobody waits on: failures are retried later, never raised. `moved_from[i]`: the
        queue key record i had before (a rekey), whose holders must learn that it moved."""
        ...


class _LocalLinks:
    """A node alone holds every job: nothing to reach but its store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def find(self, job_id: str) -> JobRecord | None:
        return await self._store.get_job(job_id)

    async def stop(self, job_id: str) -> None:
        pass

    async def report(self, step: JobRecord) -> None:
        pass

    def hand_off_soon(self) -> None:
        pass


class _QueueTask:
    """The task draining one key, the event that wakes it, and until when it sleeps (None while it runs)."""

    __slots__ = ("asleep_until", "wakeup")

    def __init__(self) -> None:
        self.wakeup = trio.Event()
        self.asleep_until: float | None = None

    def wake(self) -> None:
        self.wakeup.set()


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
        placement: Placement | None = None,
        on_account_queue: Callable[[str, bool], None] | None = None,
        per_key: workflow.PerKeyQueues = lambda origin: True,
        admission: Admission | None = None,
        replication: Replication | None = None,
        holds_copy: Callable[[str], bool] = lambda key: False,
        events: EventBus | None = None,
    ) -> None:
        """`holds_copy(key)`: this node keeps the key's jobs only as a replica (another member runs them).
        `events`: where what happens to each job is published (edge/engine/shell/events.py)."""
        self.events = events or EventBus(node=config.server.node_id or "local", wall_ms=runtime.wall_ms)
        self._config = config
        self._replication = replication
        self._holds_copy = holds_copy
        self._admission = admission
        self._owns = owns
        self._on_account_queue = on_account_queue
        self._runtime = runtime
        self._store = store
        self._placement: Placement = placement or LocalPlacement(executor)
        self._webhooks = webhooks
        self._metrics = metrics
        defaults = config.defaults
        self._tasks: dict[str, _QueueTask] = {}
        self._queues = Queues(
            self._initial_limits,
            RetrySettings(defaults.backoff_base_s, defaults.backoff_cap_s),
            busy=lambda queue: queue.key in self._tasks,
            per_key=per_key,
        )
        self._attempts: dict[str, trio.CancelScope] = {}  # by job id: the attempt out now, for an Interrupt
        self._links: WorkflowLinks = _LocalLinks(store)
        self._nursery: trio.Nursery | None = None
        self._key_of: Callable[[JobRecord], str] | None = None  # see `follow_keys`
        self._rekeys_due: set[str] = set()  # origins a rekey is scheduled for or running on
        self._rekey_again: set[str] = set()  # origins an outdated job reached while their rekey ran

    def follow_keys(self, key_of: Callable[[JobRecord], str]) -> None:
        """Keep every waiting job under the queue key `key_of` gives it now (the provider's per-credential queue
        flag can change). `rekey(origin)` moves those queued when it changes; a job that arrives later under an
        outdated key (a hand-off or a transfer in flight during that rekey, a takeover of copies) schedules one."""
        self._key_of = key_of

    def connect(self, links: WorkflowLinks) -> None:
        """Reach other nodes' jobs through `links` (the cluster's router, built after this manager)."""
        self._links = links

    # -- service --------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume every unfinished job from the store, then serve queues until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            resumed = [r for r in await self._store.unfinished_jobs() if not self._holds_copy(r.queue_key)]
            for record in resumed:
                # A job that was running when the node died is retried: at-least-once, made safe by idempotency keys.
                self._enqueue(record)
            if resumed:
                log.info("resumed %d unfinished jobs", len(resumed))
            task_status.started()
            while True:
                await self.check_steps()
                await trio.sleep(STEP_CHECK_S)

    # -- API-facing verbs -------------------------------------------------------------------------------------

    def backlog(self, account_id: str) -> int:
        """The account's unfinished jobs held here, counting submissions still being saved."""
        return self._queues.backlog(account_id)

    async def submit(self, record: JobRecord, *, admit: bool = True) -> tuple[JobRecord, bool]:
        """Make the job durable, then queue it. Returns the stored job and whether it is new.

        With `admit`, a new job is refused (BacklogFull) when its account already has `server.account_backlog_max`
        unfinished jobs here, and by the plan's quota (`Admission`: it raises its own refusal). The checks run on the
        node that holds the queue, whichever node the client called; a resubmission of a job still unfinished here
        is answered with it whatever they say, and jobs handed over from another node were acknowledged already and
        are never refused (nor counted again). A new workflow root is saved together with its first step, and a new
        job with the rows its reservation names (the account's usage: counted in the commit that makes it durable)."""
        if admit and (duplicate := self._queues.live_duplicate(record.account_id, record.idempotent_key)):
            return duplicate, False
        spawn: tuple[JobRecord, ...] = ()
        if workflow.is_workflow(record.spec) and not record.steps:
            move = workflow.begin(record, self._runtime.wall_ms())
            record, spawn = move.record, move.spawn
        self._queues.admit(record.account_id, self._config.server.account_backlog_max if admit else None)
        created = False
        try:
            reservation = await self._admission.reserve(record.account_id) if admit and self._admission else None
            try:
                rows = reservation.shared_state if reservation is not None else ()
                stored, created = await self._store.insert_job(record, spawn, shared_state=rows)
            finally:
                if reservation is not None and self._admission is not None:
                    self._admission.settle(reservation, created=created)
        finally:
            self._queues.admitted(record.account_id)
        if not created:
            return self._queues.live_job(stored.job_id) or stored, False
        if log.isEnabledFor(logging.DEBUG):  # the digest in its fields costs more than the check
            log.debug("job %s accepted", stored.job_id, extra=job_fields(stored.job_id, stored.queue_key))
        if self._replication is not None:
            try:
                held_elsewhere = (await self._replication.replicated([stored, *spawn]))[0]
            except Exception:
                self._enqueue(stored)  # durable here: it runs, though the client hears it was not accepted
                self._enqueue_spawned(spawn)
                raise
            if held_elsewhere is not None:
                # Another holder has a job under this idempotency key (it was accepted before the key moved here).
                await self._store.delete_jobs([stored.job_id, *(s.job_id for s in spawn)])
                await self._store.merge_jobs([held_elsewhere])
                return held_elsewhere, False
        self._enqueue(stored)
        self._enqueue_spawned(spawn)
        return stored, True

    def live_job(self, job_id: str) -> JobRecord | None:
        return self._queues.live_job(job_id)

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job. Returns the cancelled record, or None when the job is not waiting here.

        StoreError when the cancel could not be saved: the job is then back in line as it was."""
        queue = self._queues.queue_of(job_id)
        settlement = queue.cancel(job_id, self._runtime.wall_ms()) if queue else None
        if queue is None or settlement is None:
            return None
        self._metrics.queue_depth.dec()
        try:
            await self._save(queue, settlement)
        finally:
            self._wake(queue)
        return settlement.record

    # -- workflows -----------------------------------------------------------------------------------------------

    async def stop(self, job_id: str, *, forward: bool = True) -> None:
        """End a step job its workflow no longer needs: here, or (`forward`) on the node that holds it."""
        queue = self._queues.queue_of(job_id)
        if queue is None:
            if forward:
                await self._links.stop(job_id)
            return
        decision = queue.stop(job_id, self._runtime.wall_ms())
        if isinstance(decision, Interrupt):
            self._interrupt(decision.job_id)
        elif decision is not None:
            self._metrics.queue_depth.dec()
            await self._save_logged(queue, decision)

    async def step_ended(self, step: JobRecord, *, forward: bool = True) -> None:
        """A step job ended: tell its root, here or (`forward`) on the node that holds it."""
        assert step.parent_id is not None
        queue = self._queues.queue_of(step.parent_id)
        if queue is not None:
            await self._root_learns(queue, step.parent_id, step)
        elif forward:
            await self._links.report(step)

    async def check_steps(self) -> None:
        """Look up the running steps of every parked root that are not held here (they report when they end)."""
        for queue, root_id, step_id in self._queues.open_steps():
            if self._queues.live_job(step_id) is not None:
                continue
            try:
                step = await self._links.find(step_id)
            except StoreError:
                log.exception(
                    "could not look up step %s of job %s; trying again later",
                    step_id,
                    root_id,
                    extra=job_fields(root_id),
                )
                continue
            if step is not None and step.is_terminal:
                await self._root_learns(queue, root_id, step)

    async def _root_learns(self, queue: OutboundQueue, root_id: str, step: JobRecord) -> None:
        settlement = queue.step_finished(root_id, step, self._runtime.wall_ms())
        if settlement is not None:
            self._metrics.queue_depth.dec()
            await self._save_logged(queue, settlement)

    def _interrupt(self, job_id: str) -> None:
        scope = self._attempts.get(job_id)
        if scope is not None:
            scope.cancel()

    def _enqueue_spawned(self, jobs: Collection[JobRecord]) -> None:
        for job in jobs:
            self._enqueue(job)
        if any(not self._owns(job.queue_key) for job in jobs):
            self._links.hand_off_soon()

    def queues_with_prefix(self, prefix: str) -> list[dict[str, Any]]:
        """Queues whose key starts with `prefix` (an account's: "acme|"; the shared free ones: "free|")."""
        return [self._describe(q) for q in self._queues if q.key.startswith(prefix)]

    def busiest_queues(self, prefix: str, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The `limit` queues with a key prefix holding the most jobs (waiting or in flight), and how many there are:
        the dashboard's view, which must stay cheap with 100,000 keys."""
        matching = [q for q in self._queues if q.key.startswith(prefix)]
        busiest = heapq.nlargest(limit, matching, key=lambda q: q.depth + q.in_flight)
        return [self._describe(q) for q in busiest], len(matching)

    # -- cluster hand-off -----------------------------------------------------------------------------------------

    def ownership_changed(self) -> None:
        """Wake every queue task so that keys now owned elsewhere stop dispatching and owned ones resume."""
        for task in self._tasks.values():
            task.wake()

    def detach(self, is_foreign: Callable[[str], bool]) -> list[JobRecord]:
        """Take the waiting jobs of foreign keys out of their queues (in-flight ones finish here first)."""
        detached = self._queues.take_waiting(is_foreign)
        self._metrics.queue_depth.dec(len(detached))
        self.ownership_changed()
        return detached

    def adopt(self, records: Collection[JobRecord]) -> None:
        """Queue jobs this node held as copies and now runs (a takeover); they are durable here already."""
        for record in records:
            self._enqueue(record)

    def reattach(self, records: Collection[JobRecord]) -> None:
        """Put detached jobs back (their transfer failed); they wait until a later hand-off succeeds."""
        for record in records:
            self._enqueue(record)

    async def accept_handoff(self, records: Collection[JobRecord]) -> int:
        """Make jobs handed over by another node durable here and queue them; returns how many were new."""
        accepted = 0

        async def accept(record: JobRecord) -> None:
            nonlocal accepted
            _stored, created = await self.submit(record, admit=False)
            accepted += created

        async with trio.open_nursery() as nursery:
            for record in records:
                nursery.start_soon(accept, record)
        return accepted

    async def rekey(self, origin: str) -> int:
        """Move the waiting jobs of `origin` to the queue keys `follow_keys` gives them now; returns how many moved.

        Each moved job is saved under its new key first; one whose save fails stays under its old key (the next
        rekey or a restart moves it), so a job is never in two queues and never lost."""
        key_of = self._key_of
        if key_of is None:
            return 0
        self._rekeys_due.add(origin)
        try:
            count, failed = await self._move_to_new_keys(origin, key_of)
        finally:
            self._rekeys_due.discard(origin)
        if origin in self._rekey_again:
            self._rekey_again.discard(origin)
            if not failed and self._nursery is not None:  # (after a failed save, the next change retries)
                self._rekeys_due.add(origin)
                self._nursery.start_soon(self.rekey, origin)
        if count:
            log.info("moved %d queued jobs of %s to new queue keys", count, origin)
        return count

    async def _move_to_new_keys(self, origin: str, key_of: Callable[[JobRecord], str]) -> tuple[int, bool]:
        """`rekey`'s moves: how many jobs moved, and whether a save failed."""
        moved = self._queues.take_rekeyed(origin, key_of)
        self._metrics.queue_depth.dec(len(moved))
        count, failed = 0, False
        saved: list[JobRecord] = []
        old_keys: list[str] = []
        for record, new_key in moved:
            rekeyed = record.evolve(queue_key=new_key, revision=record.revision + 1)
            try:
                await self._store.save_job(rekeyed)
            except StoreError:
                log.exception(
                    "could not move job %s to its new queue; it stays where it was",
                    record.job_id,
                    extra=job_fields(record.job_id, new_key),
                )
                rekeyed = record
                failed = True
            else:
                count += 1
                saved.append(rekeyed)
                old_keys.append(record.queue_key)
            self._enqueue(rekeyed)
        if saved and self._replication is not None:
            await self._replication.replicate_soon(saved, moved_from=old_keys)
        return count, failed

    def forget_idle(self, idle_for_s: float) -> int:
        """Drop keys idle for `idle_for_s` (and the limits they learned), so distinct keys cannot grow memory
        without bound. Returns how many were dropped."""
        return self._queues.forget_idle(trio.current_time(), idle_for_s)

    def queue_keys(self) -> list[str]:
        return [queue.key for queue in self._queues]

    def statistics(self) -> dict[str, int]:
        return {"queues": len(self._queues), "active_queues": len(self._tasks), "jobs": self._queues.jobs}

    # -- queue tasks -------------------------------------------------------------------------------------------

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
        if self._queues.live_job(record.job_id) is not None:
            # Already here (a copy taken over while its hand-off was in transit came back): one job, one place.
            return
        now = trio.current_time()
        eligible_at = now
        not_before_ms = record.next_attempt_at_ms or record.spec.retry_at
        if not_before_ms:
            eligible_at = now + max(0, not_before_ms - self._runtime.wall_ms()) / 1000
        queue = self._queues.push(record, eligible_at)
        self._metrics.queue_depth.inc()
        self._rekey_if_outdated(record)
        if self.events.state_of(record.job_id) in (None, "moved"):  # new here (a rekey or a failed hand-off is not)
            self.events.publish(record.job_id, record.account_id, "queued", not_before_ms=not_before_ms or None)
        # A job that cannot go before the task wakes anyway changes nothing it decided (unless it brings a timer).
        self._wake(queue, not_before=eligible_at if workflow.due_at_ms(record) is None else -math.inf)

    def _rekey_if_outdated(self, record: JobRecord) -> None:
        """Schedule a rekey of the record's origin if it came in under a key `follow_keys` no longer gives it."""
        if self._key_of is None or record.steps or self._nursery is None or self._key_of(record) == record.queue_key:
            return
        origin = record.spec.origin
        if origin in self._rekeys_due:
            self._rekey_again.add(origin)  # the running rekey may have looked already: it runs once more
            return
        self._rekeys_due.add(origin)
        self._nursery.start_soon(self.rekey, origin)

    def _wake(self, queue: OutboundQueue, *, not_before: float = -math.inf) -> None:
        """Wake the key's task (unless it sleeps until `not_before` or earlier anyway), or start one."""
        task = self._tasks.get(queue.key)
        if task is not None:
            if task.asleep_until is None or task.asleep_until > not_before:
                task.wake()
            return
        assert self._nursery is not None, "QueueManager.run() must be started first"
        self._tasks[queue.key] = _QueueTask()
        self._metrics.active_queues.inc()
        self._nursery.start_soon(self._run_queue, queue, name=f"queue {queue.origin}")

    async def _run_queue(self, queue: OutboundQueue) -> None:
        """Drain one key's queue: ask the core, carry out its answer, sleep until the next decision point."""
        task = self._tasks[queue.key]
        async with trio.open_nursery() as attempts:
            while True:
                decision = queue.next(
                    trio.current_time(),
                    self._runtime.wall_ms(),
                    may_dispatch=self._owns(queue.key),
                    regions=self._placement.view(),
                )
                if isinstance(decision, Dispatch):
                    self._metrics.queue_depth.dec()
                    self._metrics.in_flight.inc()
                    attempts.start_soon(self._attempt, queue, decision, name=f"attempt {decision.record.job_id}")
                elif isinstance(decision, Conclude):
                    self._metrics.queue_depth.dec()
                    attempts.start_soon(self._save_logged, queue, decision.settlement)
                elif isinstance(decision, Interrupt):
                    self._interrupt(decision.job_id)
                elif isinstance(decision, WaitUntil):
                    task.asleep_until = decision.at
                    with trio.move_on_at(decision.at):
                        await task.wakeup.wait()
                    task.asleep_until = None
                    task.wakeup = trio.Event()
                else:
                    assert decision is IDLE
                    # Give up the task before any await, so a submit that arrives later starts a fresh task.
                    queue.idle_since = trio.current_time()
                    del self._tasks[queue.key]
                    self._metrics.active_queues.dec()
                    return

    async def _attempt(self, queue: OutboundQueue, dispatch: Dispatch) -> None:
        record, plan = dispatch.record, dispatch.legs
        results: dict[str, AttemptResult | None] = dict.fromkeys(plan.regions)
        self.events.publish(
            record.job_id, record.account_id, "dispatched", regions=[region or None for region in plan.regions]
        )
        try:
            # An Interrupt cancels this scope: the legs still out end as cancelled (None), like a race's losers.
            with trio.CancelScope() as self._attempts[record.job_id]:
                if plan.hedge is not None and plan.hedge_after_s is not None:
                    await self._run_hedged(queue, record, results, plan.hedge, plan.hedge_after_s)
                elif plan.mode == "single":
                    results[plan.regions[0]] = await self._run_leg(queue, record, plan.regions[0])
                else:
                    await self._run_legs(queue, record, results, race=plan.mode == "race")
            legs = [LegResult(region, result) for region, result in results.items()]
            settlement = queue.settle_legs(
                record.job_id,
                legs,
                trio.current_time(),
                self._runtime.wall_ms(),
                self._runtime.rng,
                regions=self._placement.view(),
                mode=plan.mode if len(legs) == len(plan.regions) else "race",  # a hedge that started races
            )
        finally:
            del self._attempts[record.job_id]
            self._metrics.in_flight.dec()
        for leg in legs:
            if leg.result is not None:
                self._count(leg.result)
        self._count_settlement(settlement)
        added = settlement.record.attempts_total - record.attempts_total
        await self._save_logged(queue, settlement, attempts_added=added)

    async def _run_legs(
        self, queue: OutboundQueue, record: JobRecord, results: dict[str, AttemptResult | None], *, race: bool
    ) -> None:
        """Every leg (a region of `results`, filled in as they end) at once in one nursery: a race cancels the others
        when one wins; a fanout waits for all."""
        async with trio.open_nursery() as legs:

            async def leg(region: str) -> None:
                result = await self._run_leg(queue, record, region)
                results[region] = result
                if race and wins(result):
                    legs.cancel_scope.cancel()  # the losers' cancel scopes end their requests, here or remote

            for region in results:
                legs.start_soon(leg, region, name=f"attempt {record.job_id} in {region or 'owner'}")

    async def _run_hedged(
        self,
        queue: OutboundQueue,
        record: JobRecord,
        results: dict[str, AttemptResult | None],
        hedge: str,
        after_s: float,
    ) -> None:
        """The first leg alone; when it has not answered within `after_s`, the hedge region too, and the two race.
        A first leg that fails before then is not hedged: its reroute or retry decides what comes next."""
        [first] = list(results)
        first_done = trio.Event()
        async with trio.open_nursery() as legs:

            async def leg(region: str) -> None:
                result = await self._run_leg(queue, record, region)
                results[region] = result
                if wins(result):
                    legs.cancel_scope.cancel()

            async def first_leg() -> None:
                try:
                    await leg(first)
                finally:
                    first_done.set()

            async def hedge_when_slow() -> None:
                with trio.move_on_after(after_s):
                    await first_done.wait()
                    return
                results[hedge] = None
                legs.start_soon(leg, hedge, name=f"attempt {record.job_id} hedged in {hedge}")

            legs.start_soon(first_leg, name=f"attempt {record.job_id} in {first or 'owner'}")
            legs.start_soon(hedge_when_slow)

    async def _run_leg(self, queue: OutboundQueue, record: JobRecord, region: str) -> AttemptResult:
        origin = queue.origin
        self._placement.started(origin, region)
        result: AttemptResult | None = None
        try:
            result = await self._send(self._placement.runner(region, queue.key), record, origin)
            return result
        finally:
            self._placement.finished(origin, region, result)  # None: cancelled (a race's loser)

    async def _save_logged(self, queue: OutboundQueue, settlement: Settlement, *, attempts_added: int = 0) -> None:
        """Save a settlement from a queue task: a store failure is logged, and the job waits to run again."""
        try:
            await self._save(queue, settlement, attempts_added=attempts_added)
        except StoreError:
            record = settlement.record
            log.exception(
                "could not save job %s; it will run again later",
                record.job_id,
                extra=job_fields(record.job_id, record.queue_key),
            )
        finally:
            self._wake(queue)

    async def _save(self, queue: OutboundQueue, settlement: Settlement, *, attempts_added: int = 0) -> None:
        """Save, then commit; abort when the store fails (StoreError is raised again). `attempts_added`: how many
        attempts the settlement records (they are published once it is saved)."""
        settlement.record.revision += 1
        record = settlement.record
        if settlement.is_terminal:
            record = self._webhooks.attach(record)
        try:
            await self._store.save_job(record, settlement.spawn)
        except BaseException:
            queue.abort(settlement, trio.current_time())
            self._metrics.queue_depth.inc()
            raise
        queue.commit(settlement)
        self._queues.settled(settlement)
        self._publish_settled(record, settlement, attempts_added)
        self._enqueue_spawned(settlement.spawn)
        if self._replication is not None:  # before the webhook: a takeover must not run a job already reported
            await self._replication.replicate_soon([record, *settlement.spawn])
        assert self._nursery is not None
        for job_id in settlement.stop:
            self._nursery.start_soon(self.stop, job_id)
        if settlement.is_terminal:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "job %s finished: %s",
                    record.job_id,
                    record.status,
                    extra=job_fields(record.job_id, record.queue_key),
                )
            self._metrics.jobs_finished.labels(record.status).inc()
            if record.has_pending_deliveries:
                self._webhooks.schedule(record)
            if record.is_step:
                self._nursery.start_soon(self.step_ended, record)
        else:
            self._metrics.queue_depth.inc()

    def _publish_settled(self, record: JobRecord, settlement: Settlement, attempts_added: int) -> None:
        """Tell the job's readers what a saved settlement did (`record` as saved, webhook deliveries included): its
        attempts, then the retry it schedules or the end."""
        publish = partial(self.events.publish, record.job_id, record.account_id)
        for attempt in record.attempts[-attempts_added:] if attempts_added else ():
            publish("attempt", **attempt.to_wire())
        last = record.attempts[-1] if attempts_added and record.attempts else None
        if settlement.next_step == "retry":
            publish(
                "retry_scheduled",
                next_attempt_at_ms=record.next_attempt_at_ms,
                delay_s=last.delay_s if last else None,
                reason=last.delay_reason if last else None,
            )
        elif settlement.is_terminal:
            status_code = (record.response or {}).get("status_code")
            publish("finished", status=record.status, status_code=status_code, error=record.error)
            if not record.has_pending_deliveries:
                self.events.end(record.job_id, record.account_id, status=record.status, webhooks=record.webhook_outcome)

    def _count(self, result: AttemptResult) -> None:
        if result.status_code is not None:
            self._metrics.upstream_latency.observe(result.duration_s)

    def _count_settlement(self, settlement: Settlement) -> None:
        if settlement.malformed_headers:
            self._metrics.malformed_headers.inc(settlement.malformed_headers)
        if settlement.rate_limited:
            self._metrics.upstream_429.inc()
        self._metrics.attempts.labels(settlement.label).inc()
        if settlement.account_queue is not None and self._on_account_queue is not None:
            self._on_account_queue(settlement.record.spec.origin, settlement.account_queue)

    async def _send(self, runner: AttemptRunner, record: JobRecord, origin: str) -> AttemptResult:
        spec = record.spec
        headers = dict(spec.headers)
        if spec.send_idempotency_key and not any(h.lower() == "idempotency-key" for h in headers):
            headers["Idempotency-Key"] = record.idempotent_key
        return await runner.execute(
            method=spec.method,
            url=spec.parsed_url,
            headers=headers,
            body=spec.body,
            timeouts=self._timeouts(origin),
        )

    def _timeouts(self, origin: str) -> Timeouts:
        defaults = self._config.defaults
        target = self._config.target_for(origin)

        def pick(name: str) -> float:
            value = getattr(target, name, None) if target is not None else None
            return float(value if value is not None else getattr(defaults, name))

        return Timeouts(pick("connect_timeout_s"), pick("read_timeout_s"), pick("total_timeout_s"))

    def _describe(self, queue: OutboundQueue) -> dict[str, Any]:
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
            "workflows": sum(1 for _root in queue.parked_roots()),
            "active": queue.key in self._tasks,
            **limits,
        }
