"""The member table and the rules that change it. Every change of a member's state happens in this file.

The rules follow memberlist's state.go, in one fixed order per message:

    Alive:   unknown node -> add it | about us -> refute unless it matches us | address conflict -> ignore
             | older or equal incarnation -> ignore | else: cancel suspicion, update, re-gossip, notify
    Suspect: unknown -> ignore | older incarnation -> ignore | discredited accuser -> ignore | already
             suspect -> count a confirmation (re-gossip if new) | not alive -> ignore | about us -> refute
             | else: re-gossip, mark suspect, notify, arm the suspicion timer
    Dead:    unknown -> ignore | older incarnation -> ignore | discredited accuser -> ignore | cancel
             suspicion | already dead/left -> ignore | about us -> refute, unless it is our own leave
             | else: re-gossip, mark dead (left when the node accused itself), notify

A firing suspicion timer first checks that the member is still suspect at the incarnation it was armed for,
then declares it dead through the same Dead rule. Refuting means raising our own incarnation past the
accusation and gossiping `Alive`; only a member itself ever raises its incarnation, which is what makes the
order total.

Discredited accusations (our addition; memberlist has no such rule). An accusation about someone else is
ignored when we hold its accuser dead or left, or when it was made at an older incarnation of the accuser than
we know (`accuser_incarnation`): the accuser had been cut off from us then, so its view was stale. Without
this, when a partition heals the cut-off side's queued `Dead` messages (and suspicion timers that fire just
before it learns it was declared dead) kill healthy members of the other side, who refute and flap, moving
their queue keys twice. For the same reason a member that learns it was declared dead restarts its own
suspicion timers and gossips them again. Accusations about ourselves are always refuted, whoever makes them:
that costs one incarnation.

Push-pull states merge through the same rules: a remote "alive" is an `Alive`, "left" a leave, and a remote
"suspect" or "dead" becomes a `Suspect` by the sender of the push-pull (dated by the sender's own entry),
never an instant death: a partitioned peer may be wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from .actions import Action, MemberEvent, MemberEventKind
from .awareness import Awareness
from .broadcast import BroadcastQueue
from .codec import encode_message
from .config import SwimConfig
from .lease import RunGate
from .messages import Address, Alive, Dead, MemberInfo, MemberState, Message, Suspect
from .probe import ProbeRing
from .suspicion import Suspicion, suspicion_timeout_bounds

if TYPE_CHECKING:
    from random import Random


@final
@dataclass(slots=True, kw_only=True)
class Member:
    """One row of the table (mutable; `info()` is the immutable view)."""

    node: str
    address: Address
    region: str
    api_address: str
    incarnation: int
    state: MemberState
    state_changed_at: float
    machine: str = ""

    def info(self) -> MemberInfo:
        return MemberInfo(
            node=self.node,
            address=self.address,
            region=self.region,
            api_address=self.api_address,
            incarnation=self.incarnation,
            state=self.state,
            machine=self.machine,
        )


@final
class IndexedSet:
    """Insertion, removal and uniform sampling in O(1): the peers we pick gossip and relay targets from."""

    __slots__ = ("_items", "_positions")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._positions: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: str) -> bool:
        return item in self._positions

    def __getitem__(self, index: int) -> str:
        return self._items[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def add(self, item: str) -> None:
        if item not in self._positions:
            self._positions[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        position = self._positions.pop(item, None)
        if position is not None:
            last = self._items.pop()
            if position < len(self._items):
                self._items[position] = last
                self._positions[last] = position

    def sample(self, rng: Random, count: int, *, exclude: str | None = None) -> list[str]:
        """Up to `count` distinct random items, never `exclude`."""
        pool = len(self._items)
        picks = [self._items[i] for i in rng.sample(range(pool), min(count + 1, pool))]
        return [item for item in picks if item != exclude][:count]


@final
class Membership:
    """The table, the suspicion timers and the rules above. Emits `MemberEvent`s and queues re-gossip."""

    __slots__ = (
        "_awareness",
        "_broadcasts",
        "_config",
        "_gate",
        "_outbox",
        "_probe_ring",
        "address_conflicts",
        "fallen_peers",
        "leaving",
        "live_peers",
        "local",
        "members",
        "suspicions",
    )

    def __init__(
        self,
        *,
        local: Member,
        config: SwimConfig,
        outbox: list[Action],
        broadcasts: BroadcastQueue,
        awareness: Awareness,
        probe_ring: ProbeRing,
        gate: RunGate,
    ) -> None:
        self._config = config
        self._gate = gate  # told of every death, recovery and refuted death (lease.py)
        self._outbox = outbox
        self._broadcasts = broadcasts
        self._awareness = awareness
        self._probe_ring = probe_ring
        self.local = local
        self.members: dict[str, Member] = {local.node: local}
        self.live_peers = IndexedSet()  # alive or suspect, not us
        self.fallen_peers = IndexedSet()  # dead or left, until reaped
        self.suspicions: dict[str, Suspicion] = {}
        self.leaving = False
        self.address_conflicts = 0
        self._gossip(local.node, self._alive_of(local))

    @property
    def known_count(self) -> int:
        """The members a majority is counted over (lease.py): every one in the table that has not left."""
        return sum(1 for member in self.members.values() if member.state is not MemberState.LEFT)

    @property
    def live_count(self) -> int:
        """N in the scaling formulas: live members, this node included."""
        return len(self.live_peers) + (1 if self.local.state.is_live else 0)

    # --- the rules ---

    def apply_alive(self, message: Alive, now: float) -> None:
        member = self.members.get(message.node)
        if member is None:
            self._add(message, now)
            return
        if member is self.local:
            if self.leaving or message.incarnation < member.incarnation:
                return
            if message.incarnation == member.incarnation and self._alive_of(member) == message:
                return
            self._refute(message.incarnation)
            return
        if message.address != member.address and member.state.is_live:
            self.address_conflicts += 1  # two processes claim one node id; keep the one we know
            return
        if message.incarnation <= member.incarnation:
            return
        self.suspicions.pop(message.node, None)
        was = member.state
        changed = (message.address, message.region, message.api_address, message.machine) != (
            member.address,
            member.region,
            member.api_address,
            member.machine,
        )
        member.address, member.region, member.api_address, member.machine = (
            message.address,
            message.region,
            message.api_address,
            message.machine,
        )
        member.incarnation = message.incarnation
        self._gossip(member.node, message)
        self._set_state(member, MemberState.ALIVE, now)
        if was is MemberState.DEAD or was is MemberState.LEFT:
            self._notify(MemberEventKind.JOINED, member)
        elif changed or was is MemberState.SUSPECT:
            self._notify(MemberEventKind.UPDATED, member)

    def apply_suspect(self, message: Suspect, now: float) -> None:
        member = self.members.get(message.node)
        if member is None or message.incarnation < member.incarnation:
            return
        if member is not self.local and self._discredited(message.accuser, message.accuser_incarnation):
            return
        suspicion = self.suspicions.get(message.node)
        if suspicion is not None:
            if suspicion.confirm(message.accuser):
                self._gossip(message.node, message)
            return
        if member.state is not MemberState.ALIVE:
            return
        if member is self.local:
            if not self.leaving:
                self._refute(message.incarnation)
            return
        self._gossip(message.node, message)
        member.incarnation = message.incarnation
        self._set_state(member, MemberState.SUSPECT, now)
        self._notify(MemberEventKind.SUSPECT, member)
        self._arm_suspicion(message, now)

    def apply_dead(self, message: Dead, now: float) -> None:
        member = self.members.get(message.node)
        if member is self.local and message.accuser != member.node and not self.leaving:
            # Someone holds us dead (an old incarnation too: they may not have heard our refutation): they may
            # run our keys, so we run none for a while (lease.py).
            self._gate.refuted_death(now, self.known_count)
        if member is None or message.incarnation < member.incarnation:
            return
        accused_by_other = message.accuser != message.node
        if (
            member is not self.local
            and accused_by_other
            and self._discredited(message.accuser, message.accuser_incarnation)
        ):
            return
        self.suspicions.pop(message.node, None)
        if not member.state.is_live:
            return
        if member is self.local and not (self.leaving and message.accuser == member.node):
            if not self.leaving:
                self._refute(message.incarnation)
                self._rearm_suspicions(now)
            return
        self._gossip(message.node, message)
        member.incarnation = message.incarnation
        self._set_state(member, MemberState.DEAD if accused_by_other else MemberState.LEFT, now)
        self._notify(MemberEventKind.DEAD if accused_by_other else MemberEventKind.LEFT, member)

    def merge(self, remote: Iterable[MemberInfo], sender: str, now: float) -> None:
        """Fold `sender`'s push-pull snapshot into the table through the same rules."""
        remote = list(remote)
        sender_incarnation = next((info.incarnation for info in remote if info.node == sender), 0)
        for info in remote:
            if info.state is MemberState.ALIVE:
                self.apply_alive(
                    Alive(
                        node=info.node,
                        incarnation=info.incarnation,
                        address=info.address,
                        region=info.region,
                        api_address=info.api_address,
                        machine=info.machine,
                    ),
                    now,
                )
            elif info.state is MemberState.LEFT:
                leave = Dead(
                    node=info.node,
                    incarnation=info.incarnation,
                    accuser=info.node,
                    accuser_incarnation=info.incarnation,
                )
                self.apply_dead(leave, now)
            elif info.state is MemberState.DEAD and info.node == self.local.node:
                # Told we are dead: take it as such (we refute either way, and it also restarts our timers).
                death = Dead(
                    node=info.node,
                    incarnation=info.incarnation,
                    accuser=sender,
                    accuser_incarnation=sender_incarnation,
                )
                self.apply_dead(death, now)
            else:
                suspicion = Suspect(
                    node=info.node,
                    incarnation=info.incarnation,
                    accuser=sender,
                    accuser_incarnation=sender_incarnation,
                )
                self.apply_suspect(suspicion, now)

    # --- timers ---

    def next_suspicion_deadline(self) -> float | None:
        return min((suspicion.deadline for suspicion in self.suspicions.values()), default=None)

    def expire_suspicions(self, now: float) -> None:
        """Declare dead each member whose suspicion ran out, if still suspect at the armed incarnation."""
        expired = [node for node, suspicion in self.suspicions.items() if suspicion.deadline <= now]
        for node in expired:
            suspicion = self.suspicions.pop(node)
            member = self.members.get(node)
            if (
                member is not None
                and member.state is MemberState.SUSPECT
                and member.incarnation == suspicion.incarnation
            ):
                self.apply_dead(self.dead_by_us(member), now)

    def reap(self, now: float) -> None:
        """Forget left members after gossip_to_the_dead_time and dead ones after reconnect_timeout."""
        # Backwards, because discarding an item moves the last one into its place.
        for index in range(len(self.fallen_peers) - 1, -1, -1):
            node = self.fallen_peers[index]
            member = self.members[node]
            keep_for = (
                self._config.gossip_to_the_dead_time
                if member.state is MemberState.LEFT
                else self._config.reconnect_timeout
            )
            if now - member.state_changed_at > keep_for:
                self.fallen_peers.discard(node)
                del self.members[node]
                self._gate.forget(node)

    # --- helpers ---

    def snapshot(self) -> tuple[MemberInfo, ...]:
        return tuple(member.info() for member in self.members.values())

    def suspect_by_us(self, member: Member) -> Suspect:
        return Suspect(
            node=member.node,
            incarnation=member.incarnation,
            accuser=self.local.node,
            accuser_incarnation=self.local.incarnation,
        )

    def dead_by_us(self, member: Member) -> Dead:
        """Our declaration that `member` is dead; about ourselves, it is our leave."""
        return Dead(
            node=member.node,
            incarnation=member.incarnation,
            accuser=self.local.node,
            accuser_incarnation=self.local.incarnation,
        )

    def _arm_suspicion(self, accusation: Suspect, now: float) -> None:
        count = self.live_count
        needed = self._config.suspicion_mult - 2
        if count - 2 < needed:
            needed = 0  # too few members to expect that many independent confirmations
        min_timeout, max_timeout = suspicion_timeout_bounds(
            suspicion_mult=self._config.suspicion_mult,
            max_timeout_mult=self._config.suspicion_max_timeout_mult,
            member_count=count,
            probe_interval=self._config.probe_interval,
        )
        self.suspicions[accusation.node] = Suspicion(
            accuser=accusation.accuser,
            incarnation=accusation.incarnation,
            needed=needed,
            min_timeout=min_timeout,
            max_timeout=max_timeout,
            started_at=now,
        )

    def _rearm_suspicions(self, now: float) -> None:
        """We were declared dead, so we were cut off: our suspicions grew without news from the other side.
        Restart each from now and gossip it again, so its target hears it and can refute before it fires."""
        for node in list(self.suspicions):
            accusation = self.suspect_by_us(self.members[node])
            self._gossip(node, accusation)
            self._arm_suspicion(accusation, now)

    def _discredited(self, accuser: str, accuser_incarnation: int) -> bool:
        """See the module docstring. Never true for our own accusations or a stranger's."""
        member = self.members.get(accuser)
        if member is None or member is self.local:
            return False
        return not member.state.is_live or accuser_incarnation < member.incarnation

    def _add(self, message: Alive, now: float) -> None:
        member = Member(
            node=message.node,
            address=message.address,
            region=message.region,
            api_address=message.api_address,
            incarnation=message.incarnation,
            state=MemberState.ALIVE,
            state_changed_at=now,
            machine=message.machine,
        )
        self.members[member.node] = member
        self.live_peers.add(member.node)
        self._probe_ring.add(member.node)
        self._gossip(member.node, message)
        self._notify(MemberEventKind.JOINED, member)

    def _refute(self, accused_incarnation: int) -> None:
        """Someone thinks we are suspect, dead or different: outbid them with a higher incarnation."""
        self.local.incarnation = max(self.local.incarnation, accused_incarnation) + 1
        self._awareness.apply_delta(1)  # being suspected hints that we were slow to answer
        self._gossip(self.local.node, self._alive_of(self.local))

    def _set_state(self, member: Member, state: MemberState, now: float) -> None:
        if member.state is not state:
            member.state = state
            member.state_changed_at = now
        if member is self.local:
            return
        if state is MemberState.DEAD:
            self._gate.fell(member.node, now)
        else:
            self._gate.rose(member.node)
        if state.is_live:
            self.live_peers.add(member.node)
            self.fallen_peers.discard(member.node)
        else:
            self.live_peers.discard(member.node)
            self.fallen_peers.add(member.node)

    def _gossip(self, about: str, message: Message) -> None:
        self._broadcasts.enqueue(about, encode_message(message))

    def _notify(self, kind: MemberEventKind, member: Member) -> None:
        self._outbox.append(MemberEvent(kind, member.info()))

    @staticmethod
    def _alive_of(member: Member) -> Alive:
        return Alive(
            node=member.node,
            incarnation=member.incarnation,
            address=member.address,
            region=member.region,
            api_address=member.api_address,
            machine=member.machine,
        )
