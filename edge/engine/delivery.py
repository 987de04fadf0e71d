"""Webhook delivery decisions: the payload, each delivery's retry schedule, and the job's webhook outcome.

A finished job gets one `Delivery` per webhook (`first_deliveries`). After every try the shell
(edge/engine/shell/webhooks.py) asks `advance` for the delivery's next state: delivered on any 2xx, else the next
try on the schedule (at once, 1 min, 5 min, 15 min, 1 h, then every `repeat_every_s`), or given up once the next try
would fall more than `give_up_after_s` after the job finished. The job's outcome (`outcome`) stays "pending" while
any delivery is, then is "delivered" when at least `webhook_quorum` of the quorum-voting webhooks accepted the
result (capped at the number of voters; with no voters, every webhook counts as one), else "failed".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge.engine.records import Delivery, JobRecord

WebhookOutcome = Literal["none", "pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class DeliverySchedule:
    """When a failed delivery is tried again (the node's `[webhooks]` settings)."""

    schedule_s: tuple[float, ...] = (0, 60, 300, 900, 3600)
    repeat_every_s: float = 3600
    give_up_after_s: float = 86_400


def webhook_payload(record: JobRecord) -> bytes:
    """The contract's webhook body; identical on every try of every webhook of the job."""
    doc: dict[str, Any] = {
        "job_id": record.job_id,
        "idempotent_key": record.idempotent_key,
        "status": record.status,
        "response": record.response,
        "metadata": dict(record.spec.metadata),
    }
    if record.error:
        doc["error"] = record.error
    if record.steps:
        doc["step"] = record.won_step  # which step of the fallback chain won (None: none did)
    return json.dumps(doc, separators=(",", ":")).encode()


def first_deliveries(record: JobRecord, schedule: DeliverySchedule, wall_ms: int) -> JobRecord:
    """A copy of a job that just finished with one pending delivery per webhook, due at the schedule's first step."""
    first_at = (record.finished_at_ms or wall_ms) + int((schedule.schedule_s[0] if schedule.schedule_s else 0) * 1000)
    deliveries = [
        Delivery(url=hook.url, has_quorum_vote=hook.has_quorum_vote, next_at_ms=first_at)
        for hook in record.spec.webhooks
    ]
    return record.evolve(deliveries=deliveries, webhook_outcome="pending" if deliveries else "none")


def advance(
    delivery: Delivery,
    *,
    accepted: bool,
    status: int | None,
    error: str | None,
    wall_ms: int,
    finished_at_ms: int,
    schedule: DeliverySchedule,
) -> Delivery:
    """The delivery's state after one more try that got `status` (or `error`, when no answer came)."""
    tries = delivery.tries + 1
    if accepted:
        return dataclasses.replace(
            delivery, tries=tries, state="delivered", next_at_ms=None, last_status=status, last_error=None
        )
    steps = schedule.schedule_s
    wait_s = steps[tries] if tries < len(steps) else schedule.repeat_every_s
    next_at_ms = wall_ms + int(wait_s * 1000)
    if next_at_ms > finished_at_ms + int(schedule.give_up_after_s * 1000):
        return dataclasses.replace(
            delivery, tries=tries, state="failed", next_at_ms=None, last_status=status, last_error=error
        )
    return dataclasses.replace(delivery, tries=tries, next_at_ms=next_at_ms, last_status=status, last_error=error)


def outcome(deliveries: Sequence[Delivery], quorum: int) -> WebhookOutcome:
    if not deliveries:
        return "none"
    if any(d.state == "pending" for d in deliveries):
        return "pending"
    return "delivered" if quorum_reached(deliveries, quorum) else "failed"


def quorum_reached(deliveries: Sequence[Delivery], quorum: int) -> bool:
    voters = [d for d in deliveries if d.has_quorum_vote] or list(deliveries)
    needed = min(quorum or 1, len(voters))
    return sum(1 for d in voters if d.state == "delivered") >= needed
