"""The jobs waiting in one queue, each with the time it becomes eligible (now, after a backoff, a `retry_at`).

Why a SortedList of (eligible_at, seq, job_id) and not a heap: jobs get cancelled, deduplicated and
rescheduled while they wait, and a SortedList removes an arbitrary entry in O(log n) where a heap needs a
linear search or tombstones. `seq` keeps FIFO order among jobs eligible at the same instant and makes every
tuple unique, so job ids are never compared.
"""

from __future__ import annotations

import math

from sortedcontainers import SortedList

_Entry = tuple[float, int, str]


class ReadyQueue:
    """Waiting job ids; `pop_ready` hands out the earliest eligible one, FIFO among equals."""

    __slots__ = ("_entries", "_entry_by_job", "_next_seq")

    def __init__(self) -> None:
        self._entries: SortedList[_Entry] = SortedList()
        self._entry_by_job: dict[str, _Entry] = {}
        self._next_seq = 0

    def push(self, job_id: str, eligible_at: float, *, seq: int | None = None) -> int:
        """Queue `job_id` from `eligible_at` on; pushing an id already queued reschedules it (to the back of
        its new instant). Returns the job's place among equals (`seq`); passing a place it was given before puts
        it back exactly there (a job that keeps its place in line)."""
        if math.isnan(eligible_at):
            raise ValueError(f"eligible_at must be a number, got {eligible_at!r} for {job_id!r}")
        self.remove(job_id)
        if seq is None:
            seq = self._next_seq
            self._next_seq += 1
        entry = (eligible_at, seq, job_id)
        self._entries.add(entry)
        self._entry_by_job[job_id] = entry
        return seq

    def remove(self, job_id: str) -> bool:
        """Drop a waiting job (cancelled, or claimed elsewhere); False if it was not queued."""
        entry = self._entry_by_job.pop(job_id, None)
        if entry is None:
            return False
        self._entries.remove(entry)
        return True

    def pop_ready(self, now: float) -> str | None:
        """The earliest job eligible at `now`, removed from the queue; None if none is eligible yet."""
        if not self._entries or self._entries[0][0] > now:
            return None
        _eligible_at, _seq, job_id = self._entries.pop(0)
        del self._entry_by_job[job_id]
        return job_id

    def next_eligible_at(self) -> float | None:
        """When the earliest job becomes eligible (possibly in the past); None when the queue is empty."""
        return self._entries[0][0] if self._entries else None

    def __len__(self) -> int:
        return len(self._entry_by_job)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entry_by_job

    def __repr__(self) -> str:
        return f"ReadyQueue({len(self)} waiting, next eligible at {self.next_eligible_at()})"
