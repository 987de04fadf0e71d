"""Random operation sequences against a model kept outside the scheduler, checking after every step.

Safety: never more in flight than the capacity, nor more per key than its cap; every ticket ends exactly once;
a key's requests start in the order they were submitted. Work conservation: a free slot never coexists with a
queued request that could use it. Memory: the scheduler tracks exactly the keys with something outstanding.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from scheduler.admission import Refused
from scheduler.fair import Admitted, FairScheduler, Grant, KeyPolicy, Queued, SchedulerPolicy, Ticket, TicketState
from scheduler.tiers import TIERS_BY_PRIORITY

CAPACITY = 6
SHARE_MAX = 0.5
KEY_CAP = math.floor(CAPACITY * SHARE_MAX)
POLICIES = {f"key-{index}": KeyPolicy(tier=TIERS_BY_PRIORITY[index % 3], weight=1.0 + index % 4) for index in range(12)}


class Model:
    def __init__(self) -> None:
        self.queued: dict[Ticket, None] = {}  # insertion order = submission order
        self.running: set[Ticket] = set()
        self.ended: set[Ticket] = set()

    def start(self, ticket: Ticket) -> None:
        assert ticket in self.queued, ticket
        # FIFO within a key: nothing of the same key submitted earlier is still waiting.
        earlier = next(t for t in self.queued if t.key == ticket.key)
        assert earlier is ticket
        del self.queued[ticket]
        self.running.add(ticket)

    def end(self, ticket: Ticket) -> None:
        assert ticket not in self.ended
        self.queued.pop(ticket, None)
        self.running.discard(ticket)
        self.ended.add(ticket)


def check(scheduler: FairScheduler, model: Model) -> None:
    statistics = scheduler.statistics(top_keys=len(POLICIES))
    assert statistics.inflight == len(model.running) <= CAPACITY
    assert statistics.queued == len(model.queued)
    running_by_key = Counter(t.key for t in model.running)
    assert max(running_by_key.values(), default=0) <= KEY_CAP
    if len(model.running) < CAPACITY:
        assert all(running_by_key[t.key] >= KEY_CAP for t in model.queued), "idle slot while work waits"
    outstanding_keys = {t.key for t in model.running} | {t.key for t in model.queued}
    assert statistics.keys_tracked == len(outstanding_keys)
    assert all(t.state is TicketState.QUEUED for t in model.queued)
    assert all(t.state is TicketState.ADMITTED for t in model.running)


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    scheduler = FairScheduler(
        SchedulerPolicy(
            capacity=CAPACITY,
            key_concurrency_share_max=SHARE_MAX,
            key_queue_length_max=4,
            queue_length_max=12,
            queue_wait_s_max=1.0,
        )
    )
    model = Model()
    now = 0.0

    def started(grants: list[Grant]) -> None:
        for grant in grants:
            assert grant.waited_s == now - grant.ticket.submitted_at
            model.start(grant.ticket)

    for _ in range(3_000):
        now += rng.expovariate(20.0)
        action = rng.random()
        if action < 0.5:
            key = rng.choice(list(POLICIES))
            verdict = scheduler.submit(key, POLICIES[key], now=now, cost=rng.choice([0.5, 1.0, 3.0]))
            if isinstance(verdict, Admitted):
                model.running.add(verdict.ticket)
            elif isinstance(verdict, Queued):
                model.queued[verdict.ticket] = None
            else:
                assert isinstance(verdict, Refused)
                assert len(model.queued) == 12 or sum(t.key == key for t in model.queued) == 4
        elif action < 0.85 and model.running:
            ticket = rng.choice(sorted(model.running, key=lambda t: t.submitted_at))
            model.end(ticket)
            started(scheduler.complete(ticket, now=now))
        elif action < 0.92 and model.queued:
            ticket = rng.choice(list(model.queued))
            scheduler.cancel(ticket, now=now)
            model.end(ticket)
        else:
            for expired in scheduler.expire(now):
                assert expired.waited_s >= 1.0
                model.end(expired.ticket)
            deadline = scheduler.next_deadline()
            assert deadline is None or deadline > now
        check(scheduler, model)
    assert len(model.ended) > 1_000
