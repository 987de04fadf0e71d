"""The job event bus: history for late readers, waiting readers woken, and every bound held."""

from __future__ import annotations

import json
from itertools import count

import pytest
import trio
import trio.testing

from edge.engine.records import Delivery
from edge.engine.shell import events
from edge.engine.shell.events import UNTRACKED, EventBus, TooManyReaders, first_round_done


def bus() -> EventBus:
    clock = count(1_000)
    return EventBus(node="n1", wall_ms=lambda: next(clock))


def kinds(batch: events.EventBatch) -> list[str]:
    return [event.kind for event in batch.events]


async def test_a_late_reader_gets_the_history_and_a_waiting_one_is_woken(autojump_clock: trio.abc.Clock):
    b = bus()
    b.publish("j1", "acme", "queued", not_before_ms=None)
    b.publish("j1", "acme", "dispatched", regions=[None])
    history = await b.read("j1", 0, 0)
    assert kinds(history) == ["queued", "dispatched"] and history.tracked and history.state == "open"
    first = json.loads(history.events[0].data)
    assert first == {"type": "queued", "job_id": "j1", "seq": 1, "at_ms": 1_000, "node": "n1", "not_before_ms": None}

    with trio.move_on_after(0.5) as waited:
        await b.read("j1", 2, 10)
    assert waited.cancelled_caught  # nothing new: the reader waits (up to its wait_s)

    async with trio.open_nursery() as nursery:

        async def publish_later() -> None:
            await trio.sleep(1)
            b.publish("j1", "acme", "attempt", status_code=200, outcome="won")

        nursery.start_soon(publish_later)
        started = trio.current_time()
        woken = await b.read("j1", 2, 10)
        assert kinds(woken) == ["attempt"] and trio.current_time() - started == pytest.approx(1)
    assert (await b.read("j1", 3, 2)).events == [] and b.readers == 0  # timed out, and no longer counted


async def test_the_end_is_final_and_a_move_hands_readers_on():
    b = bus()
    b.publish("j1", "acme", "queued")
    b.moved("j1", "acme", "n2")
    assert (await b.read("j1", 0, 5)).state == "moved" and b.state_of("j1") == "moved"
    b.publish("j1", "acme", "queued")  # the job came back
    assert b.state_of("j1") == "open"
    b.publish("j1", "acme", "finished", status="success", status_code=200, error=None)
    b.end("j1", "acme", status="success", webhooks="none")
    b.publish("j1", "acme", "webhook", index=0, result="retry")  # a retry after the end: not kept
    ended = await b.read("j1", 0, 5)  # returns at once: no more events will come
    assert kinds(ended) == ["queued", "moved", "queued", "finished", "end"] and ended.state == "ended"
    assert await b.read("unknown", 0, 5) is UNTRACKED


async def test_a_job_keeps_only_its_latest_events():
    b = bus()
    for i in range(events.EVENTS_PER_JOB_MAX + 5):
        b.publish("j1", "acme", "attempt", n=i)
    kept = (await b.read("j1", 0, 0)).events
    assert len(kept) == events.EVENTS_PER_JOB_MAX and kept[0].seq == 6 and kept[-1].seq == events.EVENTS_PER_JOB_MAX + 5


async def test_the_job_longest_quiet_is_forgotten_and_its_readers_told(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(events, "JOBS_MAX", 3)
    b = bus()
    for job_id in ("j1", "j2", "j3"):
        b.publish(job_id, "acme", "queued")
    b.publish("j1", "acme", "dispatched")  # j1 is active again: j2 is now the quietest
    async with trio.open_nursery() as nursery:
        told: list[events.EventBatch] = []

        async def wait_on_j2() -> None:
            told.append(await b.read("j2", 1, 60))

        nursery.start_soon(wait_on_j2)
        await trio.testing.wait_all_tasks_blocked()
        b.publish("j4", "acme", "queued")
    assert told == [UNTRACKED]
    assert [b.state_of(job_id) for job_id in ("j1", "j2", "j3", "j4")] == ["open", None, "open", "open"]


async def test_readers_are_bounded_per_job_and_in_all(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(events, "READERS_PER_JOB_MAX", 2)
    monkeypatch.setattr(events, "READERS_MAX", 3)
    b = bus()
    for job_id in ("j1", "j2"):
        b.publish(job_id, "acme", "queued")
    async with trio.open_nursery() as nursery:
        for job_id in ("j1", "j1", "j2"):
            nursery.start_soon(b.read, job_id, 1, 60)
        await trio.testing.wait_all_tasks_blocked()
        assert b.readers == 3
        with pytest.raises(TooManyReaders):
            await b.read("j1", 1, 60)  # this job's bound
        b.publish("j3", "acme", "queued")
        with pytest.raises(TooManyReaders):
            await b.read("j3", 1, 60)  # the node's bound
        assert (await b.read("j1", 0, 60)).events  # a read with events to give never waits, so always goes
        nursery.cancel_scope.cancel()
    assert b.readers == 0


def test_recent_jobs_are_newest_first_per_account_with_their_attempts():
    b = bus()
    seen: list[tuple[str, str]] = []
    b.observe(lambda account_id, kind, fields: seen.append((account_id, kind)))
    b.publish("j1", "acme", "queued")
    b.publish("j2", "other", "queued")
    b.publish("j1", "acme", "dispatched", regions=["iad"])
    b.publish("j1", "acme", "attempt", region="iad", status_code=429, outcome="rate_limited")
    b.publish("j3", "acme", "queued")
    recent = b.recent("acme", 10)
    assert [(job["job_id"], job["status"]) for job in recent] == [("j3", "queued"), ("j1", "running")]
    assert [attempt["status_code"] for attempt in recent[1]["attempts"]] == [429]
    assert [job["job_id"] for job in b.recent(None, 2)] == ["j3", "j1"]
    assert seen[:2] == [("acme", "queued"), ("other", "queued")] and len(seen) == 5


def test_a_stream_ends_once_every_webhook_was_tried():
    assert first_round_done([])
    assert not first_round_done([Delivery(url="u"), Delivery(url="v", tries=1)])
    assert first_round_done([Delivery(url="u", tries=1), Delivery(url="v", state="failed")])
