"""Durable records: what the store keeps for every accepted job.

A `JobRecord` is the unit of durability. The API creates it from a validated job (`edge.engine.spec`), the store commits
it before the client hears 201, the queue task updates it after every attempt, and the webhook deliverer after
every delivery. Records serialise to plain dicts (`to_wire` / `from_wire`) so that any store, the cluster's
hand-off and the simulator can carry them without knowing their shape.

Times are wall-clock unix milliseconds (`*_ms`): they survive a restart and cross machines. The monotonic Trio
clock is used only for pacing inside one process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from edge.engine.spec import JobSpec

JobStatus = Literal["queued", "running", "success", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"success", "failed", "cancelled"})

DeliveryState = Literal["pending", "delivered", "failed"]

# A job retried under a 429 storm for its whole deadline (24 h) may make thousands of attempts, and the record is
# rewritten on every save: only the first few (how it started) and the last few (how it is going) are kept, and
# `attempts_total` counts them all.
ATTEMPTS_FIRST_KEPT: Final = 3
ATTEMPTS_LAST_KEPT: Final = 10


@dataclass(slots=True)
class Attempt:
    """One outbound try: when, where (`region`, None on the key's owner for a job without regions), what came back,
    what it meant for the job (`outcome`), and the wait chosen after it (and why).

    `outcome`: "won" (the success that decided the job), "failed", "retried" (again in place), "rate_limited" (the
    queue waits), "rerouted" (the next attempt goes to another region), "cancelled" (a race's loser), "succeeded"
    (one region of a fanout)."""

    at_ms: int
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    delay_s: float | None = None
    delay_reason: str | None = None
    region: str | None = None
    outcome: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "outcome": self.outcome,
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


StepStateName = Literal["running", "succeeded", "failed", "cancelled"]


@dataclass(slots=True)
class StepState:
    """One step of a fallback chain, as the workflow's root records it (edge/engine/workflow.py).

    Step 0 is the root's own request, step N the N-th nested `fallback_job`; each runs as a job of its own
    (`job_id`), in the queue of its own key. What it ended with is copied here when it reports back."""

    index: int
    job_id: str
    state: StepStateName = "running"
    started_at_ms: int = 0
    finished_at_ms: int | None = None
    status_code: int | None = None
    error: str | None = None
    attempts_total: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "job_id": self.job_id,
            "state": self.state,
            "started_at_ms": self.started_at_ms,
            "finished_at_ms": self.finished_at_ms,
            "status_code": self.status_code,
            "error": self.error,
            "attempts_total": self.attempts_total,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StepState:
        return cls(**_known(cls, data))


@dataclass(slots=True)
class JobRecord:
    """An accepted job and everything that happened to it.

    `spec` is the normalised job as the API validated it (see `edge.engine.spec.JobSpec.to_wire`), kept as a dict so
    that fields added by later versions survive a round trip through an older store.
    """

    job_id: str
    account_id: str
    idempotent_key: str
    queue_key: str
    spec: JobSpec
    created_at_ms: int
    deadline_at_ms: int
    status: JobStatus = "queued"
    updated_at_ms: int = 0
    next_attempt_at_ms: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    retries_used: int = 0
    attempts_total: int = 0
    reroutes_used: int = 0
    # Regions a reroute moved the job away from; the next attempts go elsewhere (bounded by the job's regions).
    regions_tried: list[str] = field(default_factory=list)
    # A fanout's responses so far, by region (the contract's `response` is the first named region's).
    region_responses: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] | None = None
    error: str | None = None
    finished_at_ms: int | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    webhook_outcome: Literal["none", "pending", "delivered", "failed"] = "none"
    # Workflows (edge/engine/workflow.py). A root with a fallback chain lists its steps and, once decided, the one
    # that won; a step job names its root (`parent_id`, and the root's queue key, whose owner holds the root) and
    # its index; a follow-up job (on_success, on_failure) names the job that spawned it.
    steps: list[StepState] = field(default_factory=list)
    won_step: int | None = None
    parent_id: str | None = None
    parent_key: str | None = None
    step: int | None = None
    children: dict[str, str] = field(default_factory=dict)
    # Grows by one on every save by the node that runs the job; a replica keeps the highest it was sent
    # (edge/placement/replication.py), so copies that cross in the network settle on the latest.
    revision: int = 0

    @property
    def is_step(self) -> bool:
        return self.step is not None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def has_pending_deliveries(self) -> bool:
        return self.webhook_outcome == "pending"

    @property
    def attempts_dropped(self) -> int:
        """Attempts made but no longer listed (see ATTEMPTS_FIRST_KEPT)."""
        return max(0, self.attempts_total - len(self.attempts))

    def copy(self) -> JobRecord:
        """An independent copy (the spec, immutable, is shared)."""
        return self.evolve()

    def evolve(self, **changes: Any) -> JobRecord:
        """A copy with `changes` applied; lists are copied, so the copy can be changed without touching this one.

        Written out rather than `dataclasses.replace` (which runs `__init__` again): every attempt's outcome and
        every save builds one, so its cost is on the hot path."""
        copied = object.__new__(JobRecord)
        for name in _SCALAR_FIELDS:
            object.__setattr__(copied, name, getattr(self, name))
        copied.attempts = [dataclasses.replace(a) for a in self.attempts]
        copied.deliveries = [dataclasses.replace(d) for d in self.deliveries]
        copied.regions_tried = list(self.regions_tried)
        copied.region_responses = dict(self.region_responses)
        copied.steps = [dataclasses.replace(s) for s in self.steps]
        copied.children = dict(self.children)
        for name, value in changes.items():
            setattr(copied, name, value)
        return copied

    def attempts_with(self, new: Sequence[Attempt]) -> dict[str, Any]:
        """The changes that record `new` attempts (the legs of one dispatch), keeping the first and last few (see
        ATTEMPTS_FIRST_KEPT): pass them to `evolve` or to a lifecycle transition."""
        attempts = [*self.attempts, *new]
        excess = len(attempts) - (ATTEMPTS_FIRST_KEPT + ATTEMPTS_LAST_KEPT)
        if excess > 0:
            del attempts[ATTEMPTS_FIRST_KEPT : ATTEMPTS_FIRST_KEPT + excess]
        return {"attempts": attempts, "attempts_total": self.attempts_total + len(new)}

    def with_attempt(self, attempt: Attempt, **changes: Any) -> JobRecord:
        """A copy with one more attempt recorded."""
        return self.evolve(**self.attempts_with((attempt,)), **changes)

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "job_id": self.job_id,
            "account_id": self.account_id,
            "idempotent_key": self.idempotent_key,
            "queue_key": self.queue_key,
            "spec": self.spec.shared_wire(),  # read-only: encoders only read it
            "created_at_ms": self.created_at_ms,
            "deadline_at_ms": self.deadline_at_ms,
            "status": self.status,
            "updated_at_ms": self.updated_at_ms,
            "next_attempt_at_ms": self.next_attempt_at_ms,
            "attempts": [a.to_wire() for a in self.attempts],
            "retries_used": self.retries_used,
            "attempts_total": self.attempts_total,
            "reroutes_used": self.reroutes_used,
            "regions_tried": list(self.regions_tried),
            "region_responses": dict(self.region_responses),
            "response": self.response,
            "error": self.error,
            "finished_at_ms": self.finished_at_ms,
            "deliveries": [d.to_wire() for d in self.deliveries],
            "webhook_outcome": self.webhook_outcome,
            "revision": self.revision,
        }
        # Workflow fields only when set: most jobs have none, and every save encodes the record.
        if self.steps:
            wire["steps"] = [s.to_wire() for s in self.steps]
            wire["won_step"] = self.won_step
        if self.parent_id is not None:
            wire.update(parent_id=self.parent_id, parent_key=self.parent_key, step=self.step)
        if self.children:
            wire["children"] = dict(self.children)
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> JobRecord:
        fields = _known(cls, data)
        fields["spec"] = JobSpec.from_wire(data["spec"])
        fields["attempts"] = [Attempt.from_wire(a) for a in data.get("attempts", ())]
        # Records written before attempts were bounded listed every attempt.
        fields.setdefault("attempts_total", len(fields["attempts"]))
        fields["deliveries"] = [Delivery.from_wire(d) for d in data.get("deliveries", ())]
        fields["steps"] = [StepState.from_wire(s) for s in data.get("steps", ())]
        return cls(**fields)


_COPIED_FIELDS: Final = frozenset({"attempts", "deliveries", "regions_tried", "region_responses", "steps", "children"})
_SCALAR_FIELDS: Final = tuple(f.name for f in dataclasses.fields(JobRecord) if f.name not in _COPIED_FIELDS)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The fields this version knows: a record written by a newer version still loads after a downgrade."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {name: value for name, value in data.items() if name in names}
