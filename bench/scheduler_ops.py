"""Scheduler throughput: enqueue + dequeue operations per second with 100 and with 100,000 active keys.

Goal from the issue: >= 200k ops/s at 100,000 keys. Every key is kept backlogged (two requests outstanding)
on a saturated 64-slot scheduler across all three tiers; each step completes the oldest running request (a
dequeue: the scheduler picks a tier and a key and grants the next request) and submits a new one for the same
key (an enqueue), so the number of active keys stays constant. One step counts as two operations.

Python speed varies between machines, so the same run also times a plain `heapq` push + pop loop on a heap of
the same size (the cheapest possible priority queue, no fairness at all) and reports the ratio. Timings are
process CPU time, best of `REPEATS` rounds: on a shared 2-core machine wall time mostly measures the
neighbours. Virtual time only: `now` advances by a fixed step, nothing sleeps.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Any

from scheduler.fair import Admitted, FairScheduler, KeyPolicy, SchedulerPolicy, Ticket
from scheduler.tiers import TIERS_BY_PRIORITY

GOAL_OPS_PER_S = 200_000
GOAL_ACTIVE_KEYS = 100_000
ACTIVE_KEYS = (100, GOAL_ACTIVE_KEYS)
CAPACITY = 64
STEPS = 100_000
REPEATS = 3
NOW_STEP_S = 1e-5
POLICIES = {tier: KeyPolicy(tier=tier) for tier in TIERS_BY_PRIORITY}


def _saturated(active_keys: int) -> tuple[FairScheduler, deque[Ticket], float]:
    """A scheduler with every key backlogged; returns it, the running tickets oldest first, and `now`."""
    scheduler = FairScheduler(
        SchedulerPolicy(
            capacity=CAPACITY,
            key_concurrency_share_max=1.0,
            queue_length_max=2 * active_keys,
            queue_wait_s_max=1e9,
        )
    )
    running: deque[Ticket] = deque()
    now = 0.0
    for _ in range(2):
        for index in range(active_keys):
            verdict = scheduler.submit(f"key-{index}", POLICIES[TIERS_BY_PRIORITY[index % 3]], now=now)
            if isinstance(verdict, Admitted):
                running.append(verdict.ticket)
    return scheduler, running, now


def scheduler_ops_per_s(active_keys: int, steps: int = STEPS, repeats: int = REPEATS) -> float:
    """Best of `repeats` rounds of `steps` steps on one saturated scheduler (built once: that is the slow
    part at 100,000 keys)."""
    scheduler, running, now = _saturated(active_keys)
    submit, complete = scheduler.submit, scheduler.complete
    best_s = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(steps):
            now += NOW_STEP_S
            ticket = running.popleft()
            for grant in complete(ticket, now=now):
                running.append(grant.ticket)
            verdict = submit(ticket.key, POLICIES[ticket.tier], now=now)
            if isinstance(verdict, Admitted):
                running.append(verdict.ticket)
        best_s = min(best_s, time.process_time() - started)
    statistics = scheduler.statistics(top_keys=0)
    # Still saturated with every key active: the loop measured what it claims to.
    assert statistics.inflight == CAPACITY and statistics.keys_tracked == active_keys
    return 2 * steps / best_s


def heapq_ops_per_s(size: int, steps: int = STEPS, repeats: int = REPEATS) -> float:
    """The baseline, measured like the scheduler: best of `repeats` rounds on one heap of `size` entries."""
    heap = [(float(i), i, None) for i in range(size)]
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    best_s = float("inf")
    for round_index in range(repeats):
        offset = size + round_index * steps
        started = time.process_time()
        for step in range(steps):
            push(heap, (offset + step, step, None))
            pop(heap)
        best_s = min(best_s, time.process_time() - started)
    return 2 * steps / best_s


def run() -> dict[str, Any]:
    """Measure both sizes; the result has the shape `python -m bench` renders (title, about, targets,
    commands, preformatted rows) plus the raw figures under `measurements`."""
    measurements: dict[str, float | bool] = {}
    rows: list[dict[str, str]] = []
    for active_keys in ACTIVE_KEYS:
        ops = scheduler_ops_per_s(active_keys)
        baseline = heapq_ops_per_s(active_keys)
        measurements[f"scheduler_ops_per_s_{active_keys}_keys"] = round(ops)
        measurements[f"heapq_ops_per_s_{active_keys}"] = round(baseline)
        measurements[f"scheduler_to_heapq_ratio_{active_keys}_keys"] = round(ops / baseline, 3)
        rows.append(
            {
                "active keys": f"{active_keys:,}",
                "scheduler ops/s (CPU)": f"{ops:,.0f}",
                "heapq push+pop ops/s (CPU)": f"{baseline:,.0f}",
                "scheduler / heapq": f"{ops / baseline:.3f}",
                "goal": f">= {GOAL_OPS_PER_S:,}: {'met' if ops >= GOAL_OPS_PER_S else 'missed'}"
                if active_keys == GOAL_ACTIVE_KEYS
                else "-",
            }
        )
    measurements["meets_goal"] = measurements[f"scheduler_ops_per_s_{GOAL_ACTIVE_KEYS}_keys"] >= GOAL_OPS_PER_S
    return {
        "title": "Fair scheduler: enqueue + dequeue operations per second",
        "about": __doc__.strip().splitlines()[0],
        "targets": {
            "scheduler": "scheduler.fair:FairScheduler",
            "baseline": "heapq.heappush + heapq.heappop",
        },
        "commands": ["python -m bench.scheduler_ops"],
        "rows": rows,
        "measurements": measurements,
    }


if __name__ == "__main__":
    print(run())
