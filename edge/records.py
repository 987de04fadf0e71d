"""Durable records: what the store keeps for every accepted job.

A `JobRecord` is the unit of durability. The API creates it from a validated job (`edge.jobs`), the store commits
it before the client hears 201, the queue task updates it after every attempt, and the webhook deliverer after
every delivery. Records serialise to plain dicts (`to_wire` / `from_wire`) so that any store, the cluster's
hand-off and the simulator can carry them without knowing their shape.

Times are wall-clock unix milliseconds (`*_ms`): they survive a restart and cross machines. The monotonic Trio
clock is used only for pacing inside one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JobStatus = Literal["queued", "running", "success", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"success", "failed", "cancelled"})

DeliveryState = Literal["pending", "delivered", "failed"]


@dataclass(slots=True)
class Attempt:
    """One outbound try: when, what came back, and the wait chosen after it (and why)."""

    at_ms: int
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    delay_s: float | None = None
    delay_reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "duration_ms": self.duration_ms,
            "status_code": self.status_code,
            "error": self.error,
            "delay_s": self.delay_s,
            "delay_reason": self.delay_reason,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Attempt:
        return cls(**_known(cls, data))


@dataclass(slots=True)
class Delivery:
    """The state of one webhook delivery of a finished job."""

    url: str
    has_quorum_vote: bool = True
    state: DeliveryState = "pending"
    tries: int = 0
    next_at_ms: int | None = None
    last_status: int | None = None
    last_error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "has_quorum_vote": self.has_quorum_vote,
            "state": self.state,
            "tries": self.tries,
            "next_at_ms": self.next_at_ms,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Delivery:
        return cls(**_known(cls, data))


@dataclass(slots=True)
class JobRecord:
    """An accepted job and everything that happened to it.

    `spec` is the normalised job as the API validated it (see `edge.jobs.JobSpec.to_wire`), kept as a dict so
    that fields added by later versions survive a round trip through an older store.
    """

    job_id: str
    account_id: str
    idempotent_key: str
    queue_key: str
    spec: dict[str, Any]
    created_at_ms: int
    deadline_at_ms: int
    status: JobStatus = "queued"
    updated_at_ms: int = 0
    next_attempt_at_ms: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    retries_used: int = 0
    response: dict[str, Any] | None = None
    error: str | None = None
    finished_at_ms: int | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    webhook_outcome: Literal["none", "pending", "delivered", "failed"] = "none"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def has_pending_deliveries(self) -> bool:
        return self.webhook_outcome == "pending"

    def to_wire(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "account_id": self.account_id,
            "idempotent_key": self.idempotent_key,
            "queue_key": self.queue_key,
            "spec": self.spec,
            "created_at_ms": self.created_at_ms,
            "deadline_at_ms": self.deadline_at_ms,
            "status": self.status,
            "updated_at_ms": self.updated_at_ms,
            "next_attempt_at_ms": self.next_attempt_at_ms,
            "attempts": [a.to_wire() for a in self.attempts],
            "retries_used": self.retries_used,
            "response": self.response,
            "error": self.error,
            "finished_at_ms": self.finished_at_ms,
            "deliveries": [d.to_wire() for d in self.deliveries],
            "webhook_outcome": self.webhook_outcome,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> JobRecord:
        fields = _known(cls, data)
        fields["attempts"] = [Attempt.from_wire(a) for a in data.get("attempts", ())]
        fields["deliveries"] = [Delivery.from_wire(d) for d in data.get("deliveries", ())]
        return cls(**fields)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The fields this version knows: a record written by a newer version still loads after a downgrade."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {name: value for name, value in data.items() if name in names}
