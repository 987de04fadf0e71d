"""A job's status as data: one table of the transitions allowed, and the only function that changes a status.

Everything that affects a job's status lives here; what triggers each event is decided elsewhere (the queue core,
edge/engine/queue.py). The table is small on purpose: a job waits (`queued`), an attempt is out (`running`), and
it ends once (`success`, `failed`, `cancelled`). Two events exist for what happens outside an attempt:

- `RESUME`: a node takes up a job it did not see finish (a restart found it `running`, or another node handed it
  over), so it waits again. At-least-once: the attempt that was out may run again, made safe by idempotency keys.
- `EXPIRE`: the job's deadline passed before its next attempt could start.

A terminal status never changes again, and an event a state does not expect (cancelling a running job, a second
result for a finished one) raises `IllegalTransition` naming the job, its state and the event: that is a bug in the
caller, never something to paper over.

          DISPATCH           SUCCEED
  queued ---------> running --------> success
   |  ^  <---------    |   \\  FAIL
   |  |    RETRY,      |    '-------> failed <-- EXPIRE (queued or running)
   |  |    RESUME      |
   |  '-- RESUME       '-- RESUME
   '------ CANCEL ------------------> cancelled
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


TRANSITIONS: Final[dict[tuple[JobStatus, JobEvent], JobStatus]] = {
    ("queued", JobEvent.DISPATCH): "running",
    ("queued", JobEvent.CANCEL): "cancelled",
    ("queued", JobEvent.EXPIRE): "failed",
    ("queued", JobEvent.RESUME): "queued",
    ("running", JobEvent.RETRY): "queued",
    ("running", JobEvent.SUCCEED): "success",
    ("running", JobEvent.FAIL): "failed",
    ("running", JobEvent.EXPIRE): "failed",
    ("running", JobEvent.RESUME): "queued",
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
