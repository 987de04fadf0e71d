"""What happens to each job on this node, kept in memory for a while: the source of GET /api/v1/jobs/{id}/events
and of the dashboard's recent jobs and charts.

The queue tasks, the webhook deliverer and the hand-off publish (`publish`, `end`, `moved`); a reader asks for
the events after a sequence number and may wait for more (`read`). A reader holds a cursor, not a queue of its
own, so a slow reader costs nothing and a late one gets the history it missed from the job's ring. Bounds:
- EVENTS_PER_JOB_MAX per job, a ring: a reader that falls further behind misses the oldest;
- JOBS_MAX jobs: the one longest without an event is forgotten first (its waiting readers are woken and told);
- READERS_PER_JOB_MAX and READERS_MAX readers waiting at once: more are refused (`TooManyReaders`).

The bus is a view, never a source of truth: nothing in the engine reads it, and it starts empty after a restart
(a resumed job's history here begins with its `queued`). A job's events end with `end` (it is final and each of
its webhooks was tried once) or `moved` (another node holds it now); after `end` nothing more is kept.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import trio

from edge.engine.records import Delivery

EVENTS_PER_JOB_MAX: Final = 64
JOBS_MAX: Final = 4096
READERS_PER_JOB_MAX: Final = 32
READERS_MAX: Final = 1024
ATTEMPTS_SHOWN: Final = 10  # attempts per job in `recent`

TrackState = Literal["open", "ended", "moved"]
# What a job is doing, by the last event that says so (`recent`); other kinds leave it as it was.
_STATUS_OF_KIND: Final = {"queued": "queued", "dispatched": "running", "retry_scheduled": "queued", "moved": "moved"}
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))

# Told of every event as it is published: (account id, kind, the event's fields). The dashboard's charts count them.
Observer = Callable[[str, str, Mapping[str, Any]], None]


class TooManyReaders(Exception):
    """READERS_PER_JOB_MAX or READERS_MAX readers are waiting already."""


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """One event: its place in the job's sequence on this node, its kind, and the whole event (`doc`; `data` is it
    as JSON, encoded only when read: most events of a busy node are never read)."""

    seq: int
    kind: str
    doc: dict[str, Any]

    @property
    def data(self) -> bytes:
        return _COMPACT_JSON.encode(self.doc).encode()


@dataclass(frozen=True, slots=True)
class EventBatch:
    """What a read found: the events after the cursor, whether this node keeps the job's events at all, and
    whether they are over here (`ended`: the job is final; `moved`: read on at the job's new holder)."""

    events: list[PublishedEvent]
    tracked: bool = True
    state: TrackState = "open"


UNTRACKED: Final = EventBatch([], tracked=False)


@dataclass(slots=True)
class _Track:
    account_id: str
    events: deque[PublishedEvent] = field(default_factory=lambda: deque(maxlen=EVENTS_PER_JOB_MAX))
    last_seq: int = 0
    state: TrackState = "open"
    status: str = "queued"
    updated_at_ms: int = 0
    readers: int = 0
    # Made when a reader waits, not per event: most jobs' events are never read, and every publish notifies.
    changed: trio.Event | None = None

    def after(self, seq: int) -> list[PublishedEvent]:
        return [event for event in self.events if event.seq > seq]

    def notify(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    async def wait_changed(self) -> None:
        if self.changed is None:
            self.changed = trio.Event()
        await self.changed.wait()


def first_round_done(deliveries: Iterable[Delivery]) -> bool:
    """Whether every webhook of a finished job was tried at least once: where a job's event stream ends. Retries
    of one that failed can go on for a day; the job's record shows them."""
    return all(delivery.tries > 0 or delivery.state != "pending" for delivery in deliveries)


class EventBus:
    """The bounded per-job event rings of one node (see the module docstring)."""

    def __init__(self, *, node: str, wall_ms: Callable[[], int]) -> None:
        self.node = node
        self._wall_ms = wall_ms
        self._tracks: OrderedDict[str, _Track] = OrderedDict()  # least recently published first
        self._readers = 0
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    @property
    def readers(self) -> int:
        """Readers waiting now (a disconnected client's must go back to 0)."""
        return self._readers

    def state_of(self, job_id: str) -> TrackState | None:
        """Where the job's events stand here; None when this node keeps none."""
        track = self._tracks.get(job_id)
        return None if track is None else track.state

    # -- publishing ---------------------------------------------------------------------------------------------

    def publish(self, job_id: str, account_id: str, kind: str, **fields: Any) -> None:
        """Add an event to the job's ring and wake its readers. Nothing is kept after the job's `end`, and an event
        after `moved` means the job is back."""
        track = self._tracks.get(job_id)
        if track is None:
            track = self._start(job_id, account_id)
        elif track.state == "ended":
            return
        else:
            self._tracks.move_to_end(job_id)
        wall_ms = self._wall_ms()
        track.last_seq += 1
        doc = {"type": kind, "job_id": job_id, "seq": track.last_seq, "at_ms": wall_ms, "node": self.node, **fields}
        track.events.append(PublishedEvent(track.last_seq, kind, doc))
        track.state = "ended" if kind == "end" else "moved" if kind == "moved" else "open"
        track.status = fields["status"] if kind == "finished" else _STATUS_OF_KIND.get(kind, track.status)
        track.updated_at_ms = wall_ms
        track.notify()
        for observer in self._observers:
            observer(account_id, kind, fields)

    def end(self, job_id: str, account_id: str, **fields: Any) -> None:
        """The job's last event here: it is final, and each of its webhooks was tried once."""
        self.publish(job_id, account_id, "end", **fields)

    def moved(self, job_id: str, account_id: str, to_node: str) -> None:
        """The job was handed over to `to_node`: its readers go on reading there."""
        self.publish(job_id, account_id, "moved", to=to_node)

    def _start(self, job_id: str, account_id: str) -> _Track:
        if len(self._tracks) >= JOBS_MAX:
            _forgotten, oldest = self._tracks.popitem(last=False)
            oldest.notify()  # its readers find it gone, and fall back on the job's record
        track = self._tracks[job_id] = _Track(account_id)
        return track

    # -- reading ------------------------------------------------------------------------------------------------

    async def read(self, job_id: str, after: int, wait_s: float) -> EventBatch:
        """The job's events after `after`; when there are none yet and the job's events go on here, wait up to
        `wait_s` for more. TooManyReaders when the readers' bounds are reached."""
        track = self._tracks.get(job_id)
        if track is None:
            return UNTRACKED
        if track.last_seq <= after and track.state == "open" and wait_s > 0:
            if track.readers >= READERS_PER_JOB_MAX or self._readers >= READERS_MAX:
                raise TooManyReaders
            track.readers += 1
            self._readers += 1
            try:
                with trio.move_on_after(wait_s):
                    await track.wait_changed()
            finally:
                track.readers -= 1
                self._readers -= 1
            if self._tracks.get(job_id) is not track:
                return UNTRACKED
        return EventBatch(track.after(after), state=track.state)

    def recent(self, account_id: str | None, limit: int) -> list[dict[str, Any]]:
        """The jobs most recently active here (of one account, or all), newest first, with their last attempts."""
        found: list[dict[str, Any]] = []
        for job_id in reversed(self._tracks):
            track = self._tracks[job_id]
            if account_id is not None and track.account_id != account_id:
                continue
            attempts = [dict(event.doc) for event in track.events if event.kind == "attempt"]
            found.append(
                {
                    "job_id": job_id,
                    "account_id": track.account_id,
                    "status": track.status,
                    "updated_at_ms": track.updated_at_ms,
                    "node": self.node,
                    "attempts": attempts[-ATTEMPTS_SHOWN:],
                }
            )
            if len(found) >= limit:
                break
        return found
