"""A job's status as data: one table of the transitions allowed, and the only function that changes a status.

Everything that affects a job's status lives here; what triggers each event is decided elsewhere (the queue core,
edge/engine/queue.py). The table is small on purpose: a job waits (`queued`), an attempt is out (`running`), and
it ends once (`success`, `failed`, `cancelled`). Two events exist for what happens outside an attempt:

- `RESUME`: a node takes up a job it did not see finish (a restart found it `running`, or another node handed it
  over), so it waits again. At-least-once: the attempt that was out may run again, made safe by idempotency keys.
- `EXPIRE`: the job's deadline passed before its next attempt could start.
- `STOP`: the job's workflow no longer needs it (another step of its fallback chain won, or the chain's
  `on_failure_timeout_ms` passed): it ends `cancelled`, also while an attempt is out (the shell cancels that
  attempt). A client's `CANCEL` reaches only a job that is still waiting.

A terminal status never changes again, and an event a state does not expect (a client cancelling a running job,
a second result for a finished one) raises `IllegalTransition` naming the job, its state and the event: that is a
bug in the caller, never something to paper over.

          DISPATCH           SUCCEED
  queued ---------> running --------> success
   |  ^  <---------    |   \\  FAIL
   |  |    RETRY,      |    '-------> failed <-- EXPIRE (queued or running)
   |  |    RESUME      |
   |  '-- RESUME       '-- RESUME
   '------ CANCEL, STOP ------------> cancelled <-- STOP (running)
"""

from __future__ import annotations

import enum
from typing import Final

from edge.engine.records import TERMINAL_STATUSES, JobRecord, JobStatus


class JobEvent(enum.Enum):
    DISPATCH = "dispatch"
    RETRY = "retry"
    SUCCEED = "succeed"
    FAIL = "fail"
    EXPIRE = "expire"
    CANCEL = "cancel"
    RESUME = "resume"
    STOP = "stop"


TRANSITIONS: Final[dict[tuple[JobStatus, JobEvent], JobStatus]] = {
    ("queued", JobEvent.DISPATCH): "running",
    ("queued", JobEvent.CANCEL): "cancelled",
    ("queued", JobEvent.EXPIRE): "failed",
    ("queued", JobEvent.RESUME): "queued",
    ("queued", JobEvent.STOP): "cancelled",
    ("running", JobEvent.RETRY): "queued",
    ("running", JobEvent.SUCCEED): "success",
    ("running", JobEvent.FAIL): "failed",
    ("running", JobEvent.EXPIRE): "failed",
    ("running", JobEvent.RESUME): "queued",
    ("running", JobEvent.STOP): "cancelled",
}


class IllegalTransition(RuntimeError):
    """An event the job's state does not allow: a bug in the caller."""

    def __init__(self, job_id: str, status: str, event: JobEvent) -> None:
        super().__init__(f"job {job_id}: {event.value} is not allowed while it is {status}")
        self.job_id = job_id
        self.status = status
        self.event = event


def next_status(job_id: str, status: JobStatus, event: JobEvent) -> JobStatus:
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(job_id, status, event) from None


def transition(record: JobRecord, event: JobEvent, **changes: object) -> JobRecord:
    """A copy of `record` after `event`, with `changes` applied; `record` itself is left as it was."""
    return record.evolve(status=next_status(record.job_id, record.status, event), **changes)


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def finished(wall_ms: int) -> dict[str, object]:
    """The changes that close a job at `wall_ms`: pass them to `transition` with a terminal event."""
    return {"finished_at_ms": wall_ms, "updated_at_ms": wall_ms, "next_attempt_at_ms": None}
