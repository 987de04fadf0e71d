"""Invariants: what must hold in every run, checked every virtual second (safety) and at the end (liveness).

Safety, throughout (the first violation stops the run):
- "no-acked-job-lost": every job a node acknowledged is, at every check, on some node's disk (its `MemoryStoreData`)
  or in a running node's queues, unless its webhooks already reported it terminal. Only a planted bug or a real
  durability bug can break it: the design acknowledges after `insert_job`, and a hand-off deletes after the
  receiver made the job durable.
- "upstream-limit": over every window of LIMIT_WINDOW_S seconds during which membership stayed settled, the
  calls a provider saw for one credential are at most `rate × W + 2 + 2 × (senders − 1)`. Why that tolerance:
  one owner paces a key with GCRA at the provider's rate and burst 1, so it sends at most `1 + rate × W` in any
  window (scheduler/gcra.py); arrivals add at most one more, since the request leg's jitter (a few ms) can pull
  one send into the window; and each other node that sent for the key in the window (a hand-over finishing its
  in-flight attempts, a node that took the key over and gave it back) brings a fresh pacer, at most one send
  each time, two times at most in a window. Windows that overlap unsettled membership are not judged: during
  a partition both sides own the key (split ownership is the design's stated limit), and while a crash is
  being detected ownership moves.
- "one-active-queue": once membership has been settled for SETTLE_S (two hand-off sweeps, edge/placement/routing.py),
  each queue key has a running queue task on at most one node (each node's `QueueManager`). Unclustered nodes have no
  membership to settle, so this applies to clustered worlds only.
Membership is "settled" at a check when every running node sees exactly the running nodes as live, no partition
is in place, and no node's membership view changed since the previous check.

Liveness, at the end of the drain:
- every acknowledged job is terminal, or pending with a reason (queued on a running node, or on the disk of a node
  that is down or has yet to hand it over); one that no disk, no queue and no GET through any node knows is lost;
- "webhook-quorum": every terminal job with webhooks was accepted by at least its quorum of receivers, or its
  record says deliveries are still being retried;
- "membership-converges": unless a fault is never healed, every running node sees the same live members.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import final

import trio

from edge.placement.routing import HANDOFF_SWEEP_S

from .runtime import SIMULATED_EPOCH_S
from .workload import TERMINAL, JobEntry, Ledger
from .world import World

LIMIT_WINDOW_S = 10.0
SETTLE_S = 2 * HANDOFF_SWEEP_S


@final
@dataclass(frozen=True, kw_only=True)
class Violation:
    """An invariant that did not hold: which, when (virtual seconds), and the evidence."""

    invariant: str
    at_s: float
    detail: str


class InvariantViolated(Exception):
    def __init__(self, violation: Violation) -> None:
        super().__init__(f"{violation.invariant} at t={violation.at_s:.3f}: {violation.detail}")
        self.violation = violation


@final
class Invariants:
    """The checks of the module docstring, over one world and its clients' ledger."""

    def __init__(self, world: World, ledger: Ledger) -> None:
        self._world = world
        self._ledger = ledger
        self._versions: dict[str, int] = {}
        self.settled_since = 0.0
        self.pending_reasons: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<Invariants settled since {self.settled_since:.1f} | {len(self._ledger.open)} open jobs>"

    def _fail(self, invariant: str, detail: str) -> None:
        violation = Violation(invariant=invariant, at_s=trio.current_time(), detail=detail)
        self._world.simulation.trace.record(f"violation {invariant}: {detail}")
        raise InvariantViolated(violation)

    # -- throughout --------------------------------------------------------------------------------------------

    def check(self) -> None:
        """The safety checks, once; raises InvariantViolated."""
        now = trio.current_time()
        self._observe_membership(now)
        self._no_acked_job_lost()
        self._upstream_limits(now)
        if self._world.clustered and now - self.settled_since >= SETTLE_S:
            self._one_active_queue()

    def _observe_membership(self, now: float) -> None:
        versions = {}
        for node in self._world.running_nodes():
            assert node.running is not None
            if node.running.membership is not None:
                versions[node.name] = node.running.membership.version
        changed = versions != self._versions
        self._versions = versions
        if changed or self._world.network.blocked or not self._world.converged():
            self.settled_since = now

    def _no_acked_job_lost(self) -> None:
        for job_id, entry in self._ledger.open.items():
            if not self._held(job_id):
                self._fail("no-acked-job-lost", _lost(entry))

    def _held(self, job_id: str) -> bool:
        if self._world.durable_job(job_id) is not None:
            return True
        return any(node.running.manager.live_job(job_id) for node in self._world.running_nodes() if node.running)

    def _upstream_limits(self, now: float) -> None:
        window_start = now - LIMIT_WINDOW_S
        if self.settled_since > window_start:
            return
        for provider in self._world.providers.values():
            for credential, arrivals in provider.arrivals.items():
                first = bisect.bisect_left(arrivals, window_start, key=lambda arrival: arrival.at)
                calls = len(arrivals) - first
                senders = {arrival.source for arrival in arrivals[first:]}
                allowed = provider.rate_limit_rps * LIMIT_WINDOW_S + 2 + 2 * (len(senders) - 1)
                if calls > allowed:
                    self._fail(
                        "upstream-limit",
                        f"{provider.name} saw {calls} calls for {credential!r} in {LIMIT_WINDOW_S:g} s (limit "
                        f"{provider.rate_limit_rps:g}/s, tolerance {allowed:g}) from {', '.join(sorted(senders))}",
                    )

    def _one_active_queue(self) -> None:
        running_on: dict[str, list[str]] = {}
        for node in self._world.running_nodes():
            assert node.running is not None
            for queue in node.running.manager.queues_with_prefix(""):
                if queue["active"]:
                    running_on.setdefault(queue["queue_key"], []).append(node.name)
        for key, nodes in running_on.items():
            if len(nodes) > 1:
                self._fail("one-active-queue", f"queue {key} runs on {', '.join(nodes)} with membership settled")

    # -- at the end -------------------------------------------------------------------------------------------

    async def final(self, *, faults_never_healed: list[str]) -> None:
        """The liveness checks, after the drain; records why each unfinished job is still pending."""
        self._settle_from_disks()
        for entry in list(self._ledger.open.values()):
            reason = self._pending_reason(entry.job_id)
            if reason is None and await self._world.find_job(entry.job_id, entry.tenant) is None:
                self._fail("no-acked-job-lost", _lost(entry))
            self.pending_reasons[reason or "found through the API only"] += 1
        self._webhook_quorum()
        if not faults_never_healed and not self._world.converged():
            views = {
                node.name: sorted(info.node for info in node.running.membership.live_members())
                for node in self._world.running_nodes()
                if node.running is not None and node.running.membership is not None
            }
            self._fail("membership-converges", f"views still differ after the drain: {views}")

    def _settle_from_disks(self) -> None:
        """Jobs whose webhooks never reported (none configured, or all refused) but whose record is terminal."""
        for entry in list(self._ledger.open.values()):
            found = self._world.durable_job(entry.job_id)
            if found is not None and found[1].status in TERMINAL and found[1].finished_at_ms is not None:
                self._ledger.mark_terminal(entry, found[1].status, found[1].finished_at_ms / 1000 - SIMULATED_EPOCH_S)

    def _pending_reason(self, job_id: str) -> str | None:
        for node in self._world.running_nodes():
            assert node.running is not None
            if node.running.manager.live_job(job_id) is not None:
                return "queued on a running node"
        found = self._world.durable_job(job_id)
        if found is None:
            return None
        node = self._world.nodes[found[0]]
        return "on the disk of a node that is down" if node.running is None else "on a disk, awaiting hand-off"

    def _webhook_quorum(self) -> None:
        for entry in self._ledger.jobs.values():
            if entry.status is None or entry.receivers == 0:
                continue
            if len(entry.accepted_by) >= min(entry.quorum, entry.receivers):
                continue
            found = self._world.durable_job(entry.job_id)
            if found is not None and found[1].webhook_outcome == "pending":
                self.pending_reasons["webhooks still being retried"] += 1
                continue
            outcome = found[1].webhook_outcome if found else "no record"
            self._fail(
                "webhook-quorum",
                f"job {entry.job_id} ({entry.status}) was accepted by {sorted(entry.accepted_by)}, quorum "
                f"{entry.quorum} of {entry.receivers}; its record says {outcome!r}",
            )


def _lost(entry: JobEntry) -> str:
    return (
        f"job {entry.job_id} of {entry.tenant}, acknowledged by {entry.node} at t={entry.acked_at:.3f}, is on no "
        "node's disk and in no node's queues"
    )
