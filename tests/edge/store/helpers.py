"""Records for store tests, shaped like what the API and the queue tasks write."""

from __future__ import annotations

from typing import Literal

from edge.engine.records import Attempt, Delivery, JobRecord, JobStatus
from edge.engine.spec import JobSpec

CREATED_AT_MS = 1_763_674_210_055


def make_record(
    job_id: str,
    *,
    account_id: str = "acct-1",
    idempotent_key: str | None = None,
    created_at_ms: int = CREATED_AT_MS,
    body: str = '{"amount": 42}',
) -> JobRecord:
    """A freshly accepted job; its idempotent key defaults to one derived from the job id."""
    return JobRecord(
        job_id=job_id,
        account_id=account_id,
        idempotent_key=idempotent_key if idempotent_key is not None else f"key-{job_id}",
        queue_key=f"{account_id}|127.0.0.1",
        spec=JobSpec.from_wire(
            {
                "url": "http://127.0.0.1:9/v1/charges",
                "method": "POST",
                "headers": {"content-type": "application/json"},
                "body": body,
                "metadata": {"order": 42},
                "webhooks": [{"url": "http://127.0.0.1:9/hook", "has_quorum_vote": True}],
            }
        ),
        created_at_ms=created_at_ms,
        deadline_at_ms=created_at_ms + 86_400_000,
    )


def finish(
    record: JobRecord,
    *,
    status: JobStatus = "success",
    finished_at_ms: int,
    webhook_outcome: Literal["none", "pending", "delivered", "failed"] = "delivered",
) -> JobRecord:
    """Give the record the history of a job that ran twice (a 429, then the final answer) and was reported."""
    record.status = status
    record.attempts = [
        Attempt(at_ms=finished_at_ms - 2_000, duration_ms=31.5, status_code=429, delay_s=1.5, delay_reason="429"),
        Attempt(at_ms=finished_at_ms - 10, duration_ms=9.25, status_code=200 if status == "success" else 500),
    ]
    record.retries_used = 1
    record.response = {"status_code": 200, "headers": {"content-type": "application/json"}, "body": "{}"}
    record.finished_at_ms = finished_at_ms
    record.updated_at_ms = finished_at_ms
    record.deliveries = [
        Delivery(url="http://127.0.0.1:9/hook", state="delivered", tries=1, last_status=200),
        Delivery(
            url="http://127.0.0.1:9/audit",
            has_quorum_vote=False,
            state="pending",
            tries=2,
            next_at_ms=finished_at_ms + 60_000,
            last_error="connect timeout",
        ),
    ]
    record.webhook_outcome = webhook_outcome
    return record
