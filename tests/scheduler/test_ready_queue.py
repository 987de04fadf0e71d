"""ReadyQueue: eligibility order, FIFO among equals, re-push, removal, checked against a reference model."""

from __future__ import annotations

import math
from random import Random

import pytest

from scheduler.ready_queue import ReadyQueue


def drain(queue: ReadyQueue, now: float) -> list[str]:
    popped = []
    for _ in range(len(queue) + 1):
        job_id = queue.pop_ready(now)
        if job_id is None:
            return popped
        popped.append(job_id)
    raise AssertionError("pop_ready returned more jobs than were queued")


def test_empty_queue() -> None:
    queue = ReadyQueue()
    assert (len(queue), queue.next_eligible_at(), queue.pop_ready(1e9)) == (0, None, None)
    assert "job" not in queue
    assert queue.remove("job") is False


def test_only_eligible_jobs_pop_earliest_first() -> None:
    queue = ReadyQueue()
    queue.push("later", 20.0)
    queue.push("soon", 5.0)
    queue.push("now", 1.0)
    assert queue.next_eligible_at() == 1.0
    assert queue.pop_ready(0.5) is None
    assert drain(queue, 5.0) == ["now", "soon"]
    assert queue.next_eligible_at() == 20.0
    assert queue.pop_ready(19.999) is None
    assert queue.pop_ready(20.0) == "later"
    assert len(queue) == 0


def test_fifo_among_jobs_eligible_at_the_same_instant() -> None:
    queue = ReadyQueue()
    for job_id in ["c", "a", "b", "z"]:
        queue.push(job_id, 3.0)
    assert drain(queue, 3.0) == ["c", "a", "b", "z"]


def test_past_eligibility_still_orders_by_time() -> None:
    queue = ReadyQueue()
    queue.push("retry-due-at-2", 2.0)
    queue.push("new-at-0", 0.0)
    assert drain(queue, 10.0) == ["new-at-0", "retry-due-at-2"]


def test_repush_replaces_the_entry() -> None:
    queue = ReadyQueue()
    queue.push("a", 1.0)
    queue.push("b", 1.0)
    queue.push("a", 1.0)  # rescheduled to the same instant: goes behind b
    queue.push("c", 50.0)
    queue.push("c", 0.5)  # moved earlier
    assert len(queue) == 3
    assert drain(queue, 1.0) == ["c", "b", "a"]


def test_remove_takes_a_job_out_from_anywhere() -> None:
    queue = ReadyQueue()
    for index, job_id in enumerate(["a", "b", "c", "d"]):
        queue.push(job_id, float(index))
    assert queue.remove("c") is True
    assert queue.remove("c") is False
    assert "c" not in queue and "b" in queue
    assert queue.remove("a") is True
    assert queue.next_eligible_at() == 1.0
    assert drain(queue, 10.0) == ["b", "d"]


def test_rejects_nan_eligibility() -> None:
    with pytest.raises(ValueError, match="eligible_at"):
        ReadyQueue().push("a", math.nan)


def test_repr_is_a_status_line() -> None:
    queue = ReadyQueue()
    queue.push("a", 4.5)
    assert repr(queue) == "ReadyQueue(1 waiting, next eligible at 4.5)"


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_reference_model_under_random_operations(seed: int) -> None:
    rng = Random(seed)
    queue = ReadyQueue()
    model: dict[str, tuple[float, int]] = {}  # job id -> (eligible_at, push order)
    pushes = 0
    now = 0.0
    for _ in range(400):
        roll = rng.random()
        job_id = f"job-{rng.randint(0, 30)}"
        if roll < 0.5:
            eligible_at = now + rng.choice([0.0, 0.0, rng.uniform(-1.0, 5.0)])
            queue.push(job_id, eligible_at)
            model[job_id] = (eligible_at, pushes)
            pushes += 1
        elif roll < 0.65:
            assert queue.remove(job_id) is (model.pop(job_id, None) is not None)
        else:
            now += rng.uniform(0.0, 1.0)
            due = [(at, order, jid) for jid, (at, order) in model.items() if at <= now]
            expected = min(due)[2] if due else None
            assert queue.pop_ready(now) == expected
            if expected is not None:
                del model[expected]
        assert len(queue) == len(model)
        assert queue.next_eligible_at() == (min(at for at, _ in model.values()) if model else None)
        assert (job_id in queue) is (job_id in model)
