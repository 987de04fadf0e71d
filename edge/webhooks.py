"""Signed, durable webhook delivery of finished jobs.

A finished job carries one `Delivery` per webhook. The deliverer tries each on the configured schedule (at once,
1 min, 5 min, 15 min, 1 h, then hourly, giving up 24 h after the job finished), saving the record after every try,
so a restart resumes exactly the deliveries still pending (`Store.jobs_with_pending_deliveries`). A delivery
succeeds on any 2xx. The job's `webhook_outcome` stays "pending" while any delivery is, then becomes "delivered"
when at least `webhook_quorum` of the quorum-voting webhooks accepted the result, else "failed".

The payload is the public contract's; with an account webhook secret it is signed as
`X-EZThrottle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>` (`edge.signing`), which the
public SDK's verifier accepts.
"""

from __future__ import annotations

import json
import logging
from itertools import count

import httpx
import trio
from sortedcontainers import SortedList

from edge.config import Config
from edge.metrics import NodeMetrics
from edge.outbound import OutboundHttp, read_capped
from edge.records import Delivery, JobRecord
from edge.runtime import Runtime
from edge.signing import sign_webhook
from edge.ssrf import TargetRefused, check_url
from edge.store import Store, StoreError

log = logging.getLogger("ezthrottle.webhooks")

SIGNATURE_HEADER = "X-EZThrottle-Signature"
# A receiver's answer body is read up to this and dropped: enough for any acknowledgement, never a memory risk.
RECEIVER_REPLY_BYTES_MAX = 64 * 1024


def webhook_payload(record: JobRecord) -> bytes:
    """The contract's webhook body; identical on every try of every webhook of the job."""
    doc = {
        "job_id": record.job_id,
        "idempotent_key": record.idempotent_key,
        "status": record.status,
        "response": record.response,
        "metadata": record.spec.get("metadata") or {},
    }
    if record.error:
        doc["error"] = record.error
    return json.dumps(doc, separators=(",", ":")).encode()


class WebhookDeliverer:
    """Delivers pending webhooks in due order with bounded concurrency."""

    def __init__(
        self, *, config: Config, runtime: Runtime, store: Store, outbound: OutboundHttp, metrics: NodeMetrics
    ) -> None:
        self._settings = config.webhooks
        self._allow_private = config.security.allow_private_targets
        self._secrets = {a.id: a.webhook_secret for a in config.accounts if a.webhook_secret}
        self._runtime = runtime
        self._store = store
        self._outbound = outbound
        self._timeout = httpx.Timeout(config.webhooks.timeout_s)
        self._metrics = metrics
        self._due: SortedList = SortedList()  # (due monotonic time, seq, record, delivery index)
        self._seq = count()
        self._changed = trio.Event()

    def attach(self, record: JobRecord) -> None:
        """Give a job that just finished one pending delivery per webhook (before its record is saved)."""
        first_at = record.finished_at_ms or self._runtime.wall_ms()
        first_at += int(self._settings.schedule_s[0] * 1000) if self._settings.schedule_s else 0
        record.deliveries = [
            Delivery(url=hook["url"], has_quorum_vote=hook["has_quorum_vote"], next_at_ms=first_at)
            for hook in record.spec["webhooks"]
        ]
        record.webhook_outcome = "pending" if record.deliveries else "none"

    def schedule(self, record: JobRecord) -> None:
        """Queue every pending delivery of a saved record."""
        for index, delivery in enumerate(record.deliveries):
            if delivery.state == "pending":
                self._schedule_one(record, index)

    def _schedule_one(self, record: JobRecord, index: int) -> None:
        now, wall_ms = trio.current_time(), self._runtime.wall_ms()
        next_at_ms = record.deliveries[index].next_at_ms or wall_ms
        self._due.add((now + max(0, next_at_ms - wall_ms) / 1000, next(self._seq), record, index))
        self._changed.set()

    def pending(self) -> int:
        return len(self._due)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for record in await self._store.jobs_with_pending_deliveries():
            self.schedule(record)
        slots = trio.Semaphore(self._settings.concurrency)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                if self._due and self._due[0][0] <= now:
                    _due, _seq, record, index = self._due.pop(0)
                    await slots.acquire()
                    nursery.start_soon(self._deliver_and_release, record, index, slots)
                    continue
                self._changed = trio.Event()
                with trio.move_on_at(self._due[0][0] if self._due else float("inf")):
                    await self._changed.wait()

    async def _deliver_and_release(self, record: JobRecord, index: int, slots: trio.Semaphore) -> None:
        try:
            await self._deliver(record, index)
        finally:
            slots.release()

    async def _deliver(self, record: JobRecord, index: int) -> None:
        delivery = record.deliveries[index]
        body = webhook_payload(record)
        headers = {"Content-Type": "application/json"}  # User-Agent: edge/outbound.py DEFAULT_HEADERS
        secret = self._secrets.get(record.account_id)
        if secret:
            headers[SIGNATURE_HEADER] = sign_webhook(secret, body, int(self._runtime.wall_clock()))
        delivery.tries += 1
        try:
            await check_url(delivery.url, resolver=self._runtime.resolver, allow_private=self._allow_private)
            with trio.fail_after(self._settings.timeout_s):
                async with self._outbound.stream(
                    "POST", delivery.url, headers=headers, content=body, timeout=self._timeout
                ) as response:
                    # Only the status counts; the body is read (up to a bound) so the connection can be reused.
                    await read_capped(response, RECEIVER_REPLY_BYTES_MAX)
            delivery.last_status, delivery.last_error = response.status_code, None
            accepted = 200 <= response.status_code < 300
        except (httpx.HTTPError, trio.TooSlowError, TargetRefused) as exc:
            delivery.last_status, delivery.last_error = None, _describe_error(exc)
            accepted = False
        self._advance(record, delivery, accepted)
        try:
            await self._store.save_job(record)
        except StoreError:
            # Not durable: try the save again with the next delivery of this record; a restart before then
            # redelivers from the stored state (at-least-once).
            log.exception("could not save the webhook state of job %s", record.job_id)
        if delivery.state == "pending":
            self._schedule_one(record, index)

    def _advance(self, record: JobRecord, delivery: Delivery, accepted: bool) -> None:
        """Move one delivery along its schedule and recompute the job's outcome."""
        wall_ms = self._runtime.wall_ms()
        if accepted:
            delivery.state, delivery.next_at_ms = "delivered", None
            self._metrics.webhook_deliveries.labels("delivered").inc()
        else:
            schedule = self._settings.schedule_s
            wait_s = schedule[delivery.tries] if delivery.tries < len(schedule) else self._settings.repeat_every_s
            next_at_ms = wall_ms + int(wait_s * 1000)
            give_up_at_ms = (record.finished_at_ms or wall_ms) + int(self._settings.give_up_after_s * 1000)
            if next_at_ms > give_up_at_ms:
                delivery.state, delivery.next_at_ms = "failed", None
                self._metrics.webhook_deliveries.labels("gave_up").inc()
            else:
                delivery.next_at_ms = next_at_ms
                self._metrics.webhook_deliveries.labels("retry").inc()
        if any(d.state == "pending" for d in record.deliveries):
            record.webhook_outcome = "pending"
        else:
            record.webhook_outcome = "delivered" if quorum_reached(record) else "failed"
        record.updated_at_ms = wall_ms


def quorum_reached(record: JobRecord) -> bool:
    """At least `webhook_quorum` quorum-voting webhooks accepted (capped at the number of voters; with no
    voters, every webhook counts as one)."""
    voters = [d for d in record.deliveries if d.has_quorum_vote] or record.deliveries
    needed = min(record.spec.get("webhook_quorum") or 1, len(voters))
    return sum(1 for d in voters if d.state == "delivered") >= needed


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, TargetRefused):
        return f"target refused: {exc.reason}"
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
