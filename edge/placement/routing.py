"""Where a job lives in the cluster: one owner per queue key, forwarding to it, and handing queues over.

The owner of a queue key is chosen by rendezvous hashing over the live members (`cluster.Rendezvous`, through the
membership shell's `owner_of`): every node computes the same owner from the same view, with no coordination
messages. A node alone (no cluster configured) owns everything, and this module reduces to calling the local
`QueueManager`.

- Intake: a job whose key another node owns is forwarded to it (`PeerClient.submit`); the client hears 201/200
  only after the owner made the job durable. If the owner cannot be reached, the router waits for membership to
  change (the owner may have died) and tries the new owner, until `forward_deadline_s`; then 503 + Retry-After.
  A forward that timed out may still have been committed by the owner; the client's retry with the same
  idempotency key then gets 200 and the same job, never a second one. An owner whose store failed says so (503);
  no other owner will come, so the client hears 503 store-unavailable + Retry-After at once.
- Hand-off: after every membership change (and on a periodic sweep, in case a transfer failed), each node takes
  the queued jobs of keys it no longer owns out of its queues, sends them to their owner, and deletes them only
  after the owner accepted them (transfer, then delete; the receiver dedupes by idempotency key), unless this node
  is among the key's replicas (edge/placement/replication.py), which keep them as copies. A job that is in
  flight finishes here first and moves on its next retry, so each key settles to one active queue.
- Reads: a job is looked up locally, then on every other live member. So are its events (`read_events`): a reader
  keeps a cursor on the member that holds them (the one whose queue has or had the job), long-polls it, and looks
  again when the job moved on (a hand-off publishes `moved`) or its holder cannot be reached.
- Workflows (edge/engine/workflow.py) reach across nodes through this router (`WorkflowLinks`): a step job that
  ends reports to the owner of its root's key, and a step its root stops is stopped on whichever member holds it.
  Both are hints: the root also looks its open steps up (`find`) every few seconds, so a lost one costs a delay.
  Steps and follow-ups are created on the root's node, in the same commit as the root's change, and the
  hand-off moves those of keys owned elsewhere at once (`hand_off_soon`).

A receiver accepts every forwarded or handed-over job even when its own view of ownership differs: durable first,
and its own hand-off moves the job on if needed. Views that disagree for a moment cost a hop, never a job.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from cluster import MemberInfo
from edge.engine.records import JobRecord
from edge.engine.shell.events import UNTRACKED, EventBatch
from edge.engine.shell.queues import QueueManager
from edge.logs import job_fields
from edge.placement.peers import PeerClient, PeerError, PeerStoreError
from edge.problems import Problem, store_unavailable
from edge.store import Store

log = logging.getLogger("ezthrottle.routing")

HANDOFF_SWEEP_S = 5.0  # how often queues are re-checked for keys owned elsewhere, besides membership changes
HANDOFF_RETRY_S = 1.0  # the next check after a failed transfer (a new member may not serve its API yet)
EVENTS_RETRY_S = 1.0  # the pause before a holder of job events that did not answer is asked again
FORWARD_RETRY_S = 0.5  # the longest wait between two forwarding tries while membership has not changed


class Membership(Protocol):
    """What routing needs from the cluster shell."""

    @property
    def local(self) -> MemberInfo: ...

    @property
    def version(self) -> int: ...

    def owner_of(self, key: str) -> MemberInfo | None: ...

    def live_members(self) -> list[MemberInfo]: ...

    async def wait_changed(self, after_version: int) -> int: ...


@dataclass(slots=True)
class EventCursor:
    """Where a reader of one job's events is: the API address of the member that holds them (`HERE` for this node,
    None until found) and the last sequence number read there."""

    address: str | None = None
    after: int = 0

    def lose(self) -> None:
        """The holder is gone or the job moved on: look for the job's events again, from their start."""
        self.address, self.after = None, 0


HERE = ""  # `EventCursor.address` of this node


def owns_key(membership: Membership | None, key: str) -> bool:
    if membership is None:
        return True
    owner = membership.owner_of(key)
    return owner is None or owner.node == membership.local.node


class JobRouter:
    """Routes the job API's calls to the node that holds the job (see the module docstring)."""

    def __init__(
        self,
        *,
        manager: QueueManager,
        store: Store,
        membership: Membership | None = None,
        peers: PeerClient | None = None,
        forward_deadline_s: float = 10.0,
        holds_copy: Callable[[str], bool] = lambda key: False,
    ) -> None:
        """`holds_copy(key)`: this node is among the key's replicas, so a hand-off keeps the jobs as copies."""
        self._holds_copy = holds_copy
        self._manager = manager
        self._store = store
        self._membership = membership
        self._peers = peers
        self._forward_deadline_s = forward_deadline_s
        self._hand_off_wanted = trio.Event()

    def owns(self, key: str) -> bool:
        return owns_key(self._membership, key)

    def _others(self) -> list[MemberInfo]:
        if self._membership is None:
            return []
        local = self._membership.local.node
        return [m for m in self._membership.live_members() if m.node != local]

    async def submit(self, record: JobRecord) -> tuple[JobRecord, bool]:
        if self._membership is None or self._peers is None:
            return await self._manager.submit(record)
        with trio.move_on_after(self._forward_deadline_s):
            while True:
                owner = self._membership.owner_of(record.queue_key)
                if owner is None or owner.node == self._membership.local.node:
                    return await self._manager.submit(record)
                version = self._membership.version
                try:
                    return await self._peers.submit(owner.api_address, record)
                except PeerStoreError:
                    raise store_unavailable(
                        f"the job could not be made durable on {owner.node}, the queue's owner (its store failed); "
                        "it was not accepted"
                    ) from None
                except PeerError as exc:
                    log.warning("forwarding to %s failed (%s); waiting for membership to settle", owner.node, exc)
                with trio.move_on_after(FORWARD_RETRY_S):
                    await self._membership.wait_changed(version)
        raise Problem(
            503,
            "Owner unavailable",
            "the node that owns this queue could not be reached in time; the job was not accepted",
            kind="owner-unavailable",
            headers={"Retry-After": "2"},
        )

    async def find(self, job_id: str) -> JobRecord | None:
        record = self._manager.live_job(job_id) or await self._store.get_job(job_id)
        if record is not None or self._peers is None:
            return record
        for member in self._others():
            try:
                found = await self._peers.find(member.api_address, job_id)
            except PeerError:
                continue
            if found is not None:
                return found
        return None

    async def read_events(self, job_id: str, cursor: EventCursor, wait_s: float) -> EventBatch:
        """The job's next events after `cursor`, waiting up to `wait_s` for more at the member holding them; once the
        cursor has no holder, the first member that keeps them (this node first) answers with everything it kept.
        UNTRACKED when no member keeps them. A holder the job moved away from, or one that cannot be reached and is
        no longer a member, sends the cursor looking again on the next call (one that is still a member is asked
        again, after EVENTS_RETRY_S, so that its events are not read twice). TooManyReaders when the holder takes no
        more readers."""
        if cursor.address is None:
            found = await self._find_events(job_id)
            if found is None:
                return UNTRACKED
            cursor.address, batch = found
        else:
            try:
                batch = await self._events_at(cursor.address, job_id, cursor.after, wait_s)
            except PeerError:
                if cursor.address not in {member.api_address for member in self._others()}:
                    cursor.lose()
                await trio.sleep(EVENTS_RETRY_S)
                return EventBatch([])
        if batch.events:
            cursor.after = batch.events[-1].seq
        if not batch.tracked or batch.state == "moved":
            cursor.lose()
        return batch

    async def _find_events(self, job_id: str) -> tuple[str, EventBatch] | None:
        """The first member keeping the job's events as their holder (not one the job moved away from), and those."""
        members = self._others() if self._peers is not None else []
        for address in [HERE, *(member.api_address for member in members)]:
            try:
                batch = await self._events_at(address, job_id, 0, 0)
            except PeerError:
                continue
            if batch.tracked and batch.state != "moved":
                return address, batch
        return None

    async def _events_at(self, address: str, job_id: str, after: int, wait_s: float) -> EventBatch:
        if address == HERE:
            return await self._manager.events.read(job_id, after, wait_s)
        assert self._peers is not None
        return await self._peers.events(address, job_id, after=after, wait_s=wait_s)

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job wherever it waits; None when no node could cancel it. A 503 Problem when a member
        whose store failed may hold it (it did not cancel it, and none of the others has it)."""
        if self._manager.live_job(job_id) is not None or self._peers is None:
            return await self._manager.cancel(job_id)
        store_failed_on = None
        for member in self._others():
            try:
                cancelled, found = await self._peers.cancel(member.api_address, job_id)
            except PeerStoreError:
                store_failed_on = member.node
                continue
            except PeerError:
                continue
            if found:
                return cancelled if cancelled is not None and cancelled.status == "cancelled" else None
        if store_failed_on is not None:
            raise store_unavailable(f"the cancel could not be made durable on {store_failed_on} (its store failed)")
        return None

    async def stop(self, job_id: str) -> None:
        """Stop a step job on whichever other member holds it (the local manager found it not here)."""
        if self._peers is None:
            return
        for member in self._others():
            try:
                if await self._peers.stop(member.api_address, job_id):
                    return
            except PeerError as exc:
                log.warning("could not ask %s to stop job %s (%s)", member.node, job_id, exc, extra=job_fields(job_id))

    async def report(self, step: JobRecord) -> None:
        """Tell the owner of the step's root key that the step ended (best effort: the root also checks)."""
        if self._membership is None or self._peers is None or step.parent_key is None:
            return
        owner = self._membership.owner_of(step.parent_key)
        if owner is None or owner.node == self._membership.local.node:
            return  # the root is in transit to this node, or gone: its own check finds the step
        try:
            await self._peers.report(owner.api_address, step)
        except PeerError as exc:
            log.info(
                "could not report step %s to %s (%s); its root will look it up",
                step.job_id,
                owner.node,
                exc,
                extra=job_fields(step.job_id, step.queue_key),
            )

    def hand_off_soon(self) -> None:
        self._hand_off_wanted.set()

    async def dashboard_parts(
        self, account_id: str | None, local_part: Callable[[str | None], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Every live member's part of the dashboard (edge/http/dashboard.py), this node's first: for one account,
        or (None) for the operator. A member that does not answer is listed by name, as `unreachable`."""
        parts = [local_part(account_id)]
        for member in self._others():
            if self._peers is None:
                break
            try:
                parts.append(await self._peers.dashboard(member.api_address, account_id))
            except PeerError:
                parts.append({"node": member.node, "unreachable": True})
        return parts

    async def queues(self, prefix: str) -> list[dict[str, Any]]:
        """The queues with a key prefix on every live node, each marked with the node that runs it."""
        local = self._membership.local.node if self._membership else None
        found = [{**q, "node": local} for q in self._manager.queues_with_prefix(prefix)]
        for member in self._others():
            if self._peers is None:
                break
            try:
                found += [{**q, "node": member.node} for q in await self._peers.queues(member.api_address, prefix)]
            except PeerError:
                continue
        return found

    async def hand_off_forever(self) -> None:
        """Move queued jobs of keys owned elsewhere to their owner, after every membership change."""
        if self._membership is None or self._peers is None:
            return
        version = self._membership.version
        pause_s = HANDOFF_SWEEP_S
        membership = self._membership
        while True:
            with trio.move_on_after(pause_s):
                async with trio.open_nursery() as waiting:

                    async def membership_changed() -> None:
                        nonlocal version
                        version = await membership.wait_changed(version)
                        waiting.cancel_scope.cancel()

                    async def jobs_created() -> None:
                        await self._hand_off_wanted.wait()
                        waiting.cancel_scope.cancel()

                    waiting.start_soon(membership_changed)
                    waiting.start_soon(jobs_created)
            self._hand_off_wanted = trio.Event()
            self._manager.ownership_changed()
            _moved, failed = await self.hand_off_once()
            pause_s = HANDOFF_RETRY_S if failed else HANDOFF_SWEEP_S

    async def hand_off_once(self) -> tuple[int, int]:
        """One transfer round; returns how many jobs moved and how many stay because their transfer failed."""
        assert self._membership is not None and self._peers is not None
        by_owner: dict[str, list[JobRecord]] = defaultdict(list)
        addresses: dict[str, str] = {}
        for record in self._manager.detach(lambda key: not self.owns(key)):
            owner = self._membership.owner_of(record.queue_key)
            assert owner is not None
            by_owner[owner.node].append(record)
            addresses[owner.node] = owner.api_address
        moved = failed = 0
        for node, records in by_owner.items():
            try:
                await self._peers.hand_off(addresses[node], records)
            except PeerError as exc:
                log.warning("hand-off of %d jobs to %s failed (%s); keeping them", len(records), node, exc)
                self._manager.reattach(records)
                failed += len(records)
                continue
            await self._store.delete_jobs([r.job_id for r in records if not self._holds_copy(r.queue_key)])
            for record in records:
                self._manager.events.moved(record.job_id, record.account_id, node)
            moved += len(records)
            log.info("handed %d queued jobs over to %s", len(records), node)
        return moved, failed
