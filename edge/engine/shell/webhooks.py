"""Signed, durable webhook delivery of finished jobs: the shell of edge/engine/delivery.py.

A finished job carries one `Delivery` per webhook (`attach`, before its record is saved). The deliverer tries each
when it is due, with bounded concurrency, and saves only that delivery's new state after every try
(`Store.save_delivery`), so a restart resumes exactly the deliveries still pending
(`Store.jobs_with_pending_deliveries`) and a try never rewrites the job's record.

Memory: while a job's deliveries are pending (up to 24 h), the deliverer keeps only their small state (URLs, tries,
times) and the quorum, never the record with its response (up to 1 MiB). Each try reads the record back from the
store for its payload and drops it afterwards.

The payload is the public contract's; with an account webhook secret it is signed as
`X-EZThrottle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>` (`edge.engine.signing`), which
the public SDK's verifier accepts.

A webhook with its own `regions` is delivered from a node in one of them: from this node when it is in one, else
through a node of each named region that is up (the internal API's attempt route, so that node's SSRF guard and
source address apply), racing them when several: the first 2xx wins and the others are cancelled (a receiver may
still see a loser's POST: deliveries are at-least-once anyway). When none of the named regions is up, this node
delivers it, so a region outage delays no result. The payload is signed here, so secrets never leave this node.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import count

import httpx
import trio
from sortedcontainers import SortedList

from edge.config import Config
from edge.engine.delivery import DeliverySchedule, advance, first_deliveries, outcome, webhook_payload
from edge.engine.outcome import AttemptResult
from edge.engine.records import Delivery, JobRecord
from edge.engine.shell.events import EventBus, first_round_done
from edge.engine.shell.executor import Timeouts
from edge.engine.shell.placement import Placement
from edge.engine.signing import sign_webhook
from edge.logs import job_fields
from edge.metrics import NodeMetrics
from edge.outbound.client import OutboundHttp, read_capped
from edge.outbound.ssrf import refusal_of
from edge.runtime import Runtime
from edge.store import Store, StoreError

log = logging.getLogger("ezthrottle.webhooks")

SIGNATURE_HEADER = "X-EZThrottle-Signature"
# A receiver's answer body is read up to this and dropped: enough for any acknowledgement, never a memory risk.
RECEIVER_REPLY_BYTES_MAX = 64 * 1024


@dataclass(slots=True)
class _PendingJob:
    """What the deliverer holds of a job whose deliveries are pending: small, whatever the response's size."""

    account_id: str
    status: str
    quorum: int
    finished_at_ms: int
    deliveries: list[Delivery]


class WebhookDeliverer:
    """Delivers pending webhooks in due order with bounded concurrency."""

    def __init__(
        self, *, config: Config, runtime: Runtime, store: Store, outbound: OutboundHttp, metrics: NodeMetrics
    ) -> None:
        settings = config.webhooks
        self._settings = settings
        self._schedule = DeliverySchedule(settings.schedule_s, settings.repeat_every_s, settings.give_up_after_s)
        self._secrets = {a.id: a.webhook_secret for a in config.accounts if a.webhook_secret}
        self._secret_of: Callable[[str], str | None] = self._secrets.get
        self._runtime = runtime
        self._store = store
        self._outbound = outbound
        self._timeout = httpx.Timeout(settings.timeout_s)
        self._metrics = metrics
        self._due: SortedList = SortedList()  # (due monotonic time, seq, job id, delivery index)
        self._jobs: dict[str, _PendingJob] = {}
        self._seq = count()
        self._changed = trio.Event()
        self._placement: Placement | None = None
        self._is_copy: Callable[[str], bool] = lambda queue_key: False
        self._on_final: Callable[[str], Awaitable[None]] | None = None
        self._events: EventBus | None = None

    def report_to(self, events: EventBus) -> None:
        """Publish each try to `events` (the job's event stream, edge/engine/shell/events.py)."""
        self._events = events

    def replicate_with(self, *, is_copy: Callable[[str], bool], on_final: Callable[[str], Awaitable[None]]) -> None:
        """In a cluster with replicas: leave the webhooks of jobs held here as copies to their owner, and call
        `on_final(job_id)` once a job's webhook outcome is final, so the copies learn it (a takeover must not
        deliver again what was delivered)."""
        self._is_copy, self._on_final = is_copy, on_final

    def place_in_regions(self, placement: Placement) -> None:
        """Deliver webhooks that name regions through `placement`'s nodes (a cluster with regions)."""
        self._placement = placement

    def sign_with(self, secret_of: Callable[[str], str | None]) -> None:
        """Sign with `secret_of(account_id)` when it gives a secret (the secrets set through the API, shared by
        every node: edge/placement/webhook_secrets.py), else with the account's `webhook_secret` from the config."""
        configured = self._secrets
        self._secret_of = lambda account_id: secret_of(account_id) or configured.get(account_id)

    def attach(self, record: JobRecord) -> JobRecord:
        """A copy of a job that just finished, with one pending delivery per webhook (saved by the caller)."""
        return first_deliveries(record, self._schedule, self._runtime.wall_ms())

    def schedule(self, record: JobRecord) -> None:
        """Queue every pending delivery of a saved record."""
        if record.job_id in self._jobs:
            return
        self._jobs[record.job_id] = _PendingJob(
            account_id=record.account_id,
            status=record.status,
            quorum=record.spec.webhook_quorum,
            finished_at_ms=record.finished_at_ms or self._runtime.wall_ms(),
            deliveries=list(record.deliveries),
        )
        for index, delivery in enumerate(record.deliveries):
            if delivery.state == "pending":
                self._schedule_one(record.job_id, index, delivery)

    def _schedule_one(self, job_id: str, index: int, delivery: Delivery) -> None:
        now, wall_ms = trio.current_time(), self._runtime.wall_ms()
        next_at_ms = delivery.next_at_ms or wall_ms
        self._due.add((now + max(0, next_at_ms - wall_ms) / 1000, next(self._seq), job_id, index))
        self._changed.set()

    def pending(self) -> int:
        return len(self._due)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for record in await self._store.jobs_with_pending_deliveries():
            if not self._is_copy(record.queue_key):
                self.schedule(record)
        slots = trio.Semaphore(self._settings.concurrency)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                if self._due and self._due[0][0] <= now:
                    _due, _seq, job_id, index = self._due.pop(0)
                    await slots.acquire()
                    nursery.start_soon(self._deliver_and_release, job_id, index, slots)
                    continue
                self._changed = trio.Event()
                with trio.move_on_at(self._due[0][0] if self._due else float("inf")):
                    await self._changed.wait()

    async def _deliver_and_release(self, job_id: str, index: int, slots: trio.Semaphore) -> None:
        try:
            await self._deliver(job_id, index)
        finally:
            slots.release()

    async def _deliver(self, job_id: str, index: int) -> None:
        job = self._jobs[job_id]
        try:
            record = await self._store.get_job(job_id)
        except StoreError:
            log.exception("could not read job %s for its webhook; trying again later", job_id, extra=job_fields(job_id))
            record = None
        if record is None:
            self._retry_later(job_id, index)
            return
        hooks = record.spec.webhooks
        regions = hooks[index].regions if index < len(hooks) else ()
        body = webhook_payload(record)
        accepted, status, error = await self._post(job.deliveries[index].url, body, job.account_id, regions)
        del record  # the response may be large: hold it no longer than the try
        wall_ms = self._runtime.wall_ms()
        delivery = advance(
            job.deliveries[index],
            accepted=accepted,
            status=status,
            error=error,
            wall_ms=wall_ms,
            finished_at_ms=job.finished_at_ms,
            schedule=self._schedule,
        )
        job.deliveries[index] = delivery
        result = "delivered" if accepted else "gave_up" if delivery.state == "failed" else "retry"
        self._metrics.webhook_deliveries.labels(result).inc()
        # The receiver's status only: its URL, like the job's, may hold a credential.
        log.debug("webhook %d of job %s: %s (status %s)", index, job_id, result, status, extra=job_fields(job_id))
        job_outcome = outcome(job.deliveries, job.quorum)
        try:
            await self._store.save_delivery(job_id, index, delivery, job_outcome, wall_ms)
        except StoreError:
            # Not durable: a restart before a later save redelivers from the stored state (at-least-once).
            log.exception("could not save the webhook state of job %s", job_id, extra=job_fields(job_id))
        self._publish(job_id, job, index, result, status, error)
        if delivery.state == "pending":
            self._schedule_one(job_id, index, delivery)
        elif job_outcome != "pending":
            del self._jobs[job_id]
            if self._on_final is not None:
                await self._on_final(job_id)

    def _publish(
        self, job_id: str, job: _PendingJob, index: int, result: str, status: int | None, error: str | None
    ) -> None:
        """Tell the job's readers how a try went; once every webhook was tried, the job's events end."""
        if self._events is None:
            return
        delivery = job.deliveries[index]
        next_at_ms = delivery.next_at_ms if delivery.state == "pending" else None
        self._events.publish(
            job_id,
            job.account_id,
            "webhook",
            index=index,
            result=result,
            status_code=status,
            error=error,
            next_at_ms=next_at_ms,
        )
        if first_round_done(job.deliveries):
            self._events.end(job_id, job.account_id, status=job.status, webhooks=outcome(job.deliveries, job.quorum))

    def _retry_later(self, job_id: str, index: int) -> None:
        """The record could not be read: try again after the schedule's first retry step."""
        steps = self._schedule.schedule_s
        wait_ms = int((steps[1] if len(steps) > 1 else self._schedule.repeat_every_s) * 1000)
        delivery = self._jobs[job_id].deliveries[index]
        self._schedule_one(job_id, index, Delivery(url=delivery.url, next_at_ms=self._runtime.wall_ms() + wait_ms))

    async def _post(
        self, url: str, body: bytes, account_id: str, regions: Sequence[str] = ()
    ) -> tuple[bool, int | None, str | None]:
        """One try: (accepted, the receiver's status, the error when no answer came)."""
        headers = {"Content-Type": "application/json"}  # User-Agent: edge/outbound/client.py DEFAULT_HEADERS
        secret = self._secret_of(account_id)
        if secret:
            headers[SIGNATURE_HEADER] = sign_webhook(secret, body, int(self._runtime.wall_clock()))
        if regions and self._placement is not None:
            view = self._placement.view()
            remote = [region for region in regions if region in view.up]
            if view.local not in regions and remote:
                return await self._post_from(remote, url, headers, body)
        try:
            with trio.fail_after(self._settings.timeout_s):
                async with self._outbound.stream(
                    "POST", url, headers=headers, content=body, timeout=self._timeout
                ) as response:
                    # Only the status counts; the body is read (up to a bound) so the connection can be reused.
                    await read_capped(response, RECEIVER_REPLY_BYTES_MAX)
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            return False, None, _describe_error(exc)
        return 200 <= response.status_code < 300, response.status_code, None

    async def _post_from(
        self, regions: Sequence[str], url: str, headers: dict[str, str], body: bytes
    ) -> tuple[bool, int | None, str | None]:
        """Deliver through a node of each of `regions` at once; the first 2xx wins and cancels the others."""
        assert self._placement is not None
        placement, timeout_s = self._placement, self._settings.timeout_s
        results: list[AttemptResult] = []
        async with trio.open_nursery() as legs:

            async def leg(region: str) -> None:
                result = await placement.runner(region, url).execute(
                    method="POST",
                    url=url,
                    headers=headers,
                    body=body.decode(),
                    timeouts=Timeouts(timeout_s, timeout_s, timeout_s),
                )
                results.append(result)
                if result.status_code is not None and 200 <= result.status_code < 300:
                    legs.cancel_scope.cancel()

            for region in regions:
                legs.start_soon(leg, region)
        best = next((r for r in results if r.status_code is not None and 200 <= r.status_code < 300), None)
        best = best or next((r for r in results if r.status_code is not None), results[0] if results else None)
        if best is None or best.status_code is None:
            return False, None, best.error if best is not None else "no region could deliver it"
        return 200 <= best.status_code < 300, best.status_code, None


def _describe_error(exc: BaseException) -> str:
    refused = refusal_of(exc)
    if refused is not None:
        return f"target refused: {refused.reason}"
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
