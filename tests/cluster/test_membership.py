"""Every membership transition, as a table: (table before, message) -> (state, incarnation, events, re-gossip).

The table before each case: we are "me" (incarnation 1); b is alive at 5, c alive at 1, e alive at 3, and d is
dead at 1 (declared by c).
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

import pytest

from cluster.actions import Action, MemberEvent
from cluster.awareness import Awareness
from cluster.broadcast import BroadcastQueue
from cluster.codec import encode_message
from cluster.config import SwimConfig
from cluster.lease import RunGate
from cluster.membership import Member, Membership
from cluster.messages import Alive, Dead, MemberInfo, MemberState, Message, Suspect
from cluster.probe import ProbeRing

from .helpers import address_of, alive

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
CONFIG = SwimConfig.lan()


@dataclass
class Table:
    membership: Membership
    outbox: list[Action]
    queue: BroadcastQueue
    awareness: Awareness

    def apply(self, message: Message, now: float = 1.0) -> None:
        if isinstance(message, Alive):
            self.membership.apply_alive(message, now)
        elif isinstance(message, Suspect):
            self.membership.apply_suspect(message, now)
        else:
            assert isinstance(message, Dead)
            self.membership.apply_dead(message, now)

    def state(self, node: str) -> tuple[MemberState, int] | None:
        member = self.membership.members.get(node)
        return None if member is None else (member.state, member.incarnation)

    def events(self) -> list[str]:
        kinds = [action.kind.value for action in self.outbox if isinstance(action, MemberEvent)]
        self.outbox.clear()
        return kinds

    def gossip(self) -> list[bytes]:
        """Every distinct update queued for re-gossip since the last call (the queue is emptied)."""
        sent: list[bytes] = []
        while batch := self.queue.take(1 << 20, member_count=10):
            sent += batch
        return list(dict.fromkeys(sent))


def suspect(node: str, incarnation: int, accuser: str, accuser_incarnation: int = 1) -> Suspect:
    return Suspect(node=node, incarnation=incarnation, accuser=accuser, accuser_incarnation=accuser_incarnation)


def dead(node: str, incarnation: int, accuser: str, accuser_incarnation: int = 1) -> Dead:
    return Dead(node=node, incarnation=incarnation, accuser=accuser, accuser_incarnation=accuser_incarnation)


def new_table() -> Table:
    local = Member(
        node="me",
        address=address_of("me"),
        region="r",
        api_address="http://me",
        incarnation=1,
        state=ALIVE,
        state_changed_at=0.0,
    )
    outbox: list[Action] = []
    queue = BroadcastQueue(CONFIG.retransmit_mult)
    awareness = Awareness(CONFIG.awareness_max_multiplier)
    membership = Membership(
        local=local,
        config=CONFIG,
        outbox=outbox,
        broadcasts=queue,
        awareness=awareness,
        probe_ring=ProbeRing(Random(1)),
        gate=RunGate(node="me", probe_interval=CONFIG.probe_interval, probe_timeout=CONFIG.probe_timeout),
    )
    table = Table(membership, outbox, queue, awareness)
    for message in (alive("b", 5), alive("c"), alive("d"), alive("e", 3), dead("d", 1, "c")):
        table.apply(message, now=0.0)
    table.events()
    table.gossip()
    return table


CASES: list[tuple[str, Message, str, tuple[MemberState, int] | None, list[str], bool]] = [
    # (case, message, about, expected (state, incarnation), events, re-gossiped)
    ("alive, older incarnation", alive("b", 4), "b", (ALIVE, 5), [], False),
    ("alive, same incarnation", alive("b", 5), "b", (ALIVE, 5), [], False),
    ("alive, newer incarnation", alive("b", 6), "b", (ALIVE, 6), [], True),
    ("alive, newer, new metadata", alive("b", 6, region="lax"), "b", (ALIVE, 6), ["updated"], True),
    (
        "alive from another address while alive (id conflict)",
        Alive(node="b", incarnation=9, address=("127.0.0.9", 9), region="r", api_address="http://b"),
        "b",
        (ALIVE, 5),
        [],
        False,
    ),
    ("alive, unknown node", alive("z", 2), "z", (ALIVE, 2), ["joined"], True),
    ("alive for the dead, same incarnation", alive("d", 1), "d", (DEAD, 1), [], False),
    ("alive for the dead, newer", alive("d", 2), "d", (ALIVE, 2), ["joined"], True),
    ("suspect, older incarnation", suspect("b", 4, "c"), "b", (ALIVE, 5), [], False),
    ("suspect", suspect("b", 5, "c"), "b", (SUSPECT, 5), ["suspect"], True),
    ("suspect, newer incarnation", suspect("b", 7, "c"), "b", (SUSPECT, 7), ["suspect"], True),
    ("suspect, unknown node", suspect("z", 1, "c"), "z", None, [], False),
    ("suspect the dead", suspect("d", 1, "c"), "d", (DEAD, 1), [], False),
    ("suspect, accuser we hold dead", suspect("b", 5, "d"), "b", (ALIVE, 5), [], False),
    ("suspect, accuser's older life", suspect("b", 5, "e", 2), "b", (ALIVE, 5), [], False),
    ("suspect, accuser unknown to us", suspect("b", 5, "stranger"), "b", (SUSPECT, 5), ["suspect"], True),
    ("dead, older incarnation", dead("b", 4, "c"), "b", (ALIVE, 5), [], False),
    ("dead", dead("b", 5, "c"), "b", (DEAD, 5), ["dead"], True),
    ("dead, newer incarnation", dead("b", 6, "c"), "b", (DEAD, 6), ["dead"], True),
    ("leave", dead("b", 5, "b", 5), "b", (LEFT, 5), ["left"], True),
    ("dead, accuser we hold dead", dead("b", 5, "d"), "b", (ALIVE, 5), [], False),
    ("dead, already dead", dead("d", 1, "c"), "d", (DEAD, 1), [], False),
    ("dead, unknown node", dead("z", 1, "c"), "z", None, [], False),
]


@pytest.mark.parametrize(
    ("message", "about", "expected", "events", "gossiped"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_transition(
    message: Message, about: str, expected: tuple[MemberState, int] | None, events: list[str], gossiped: bool
) -> None:
    table = new_table()
    table.apply(message)
    assert table.state(about) == expected
    assert table.events() == events
    assert (encode_message(message) in table.gossip()) is gossiped


SELF_CASES: list[tuple[str, Message, int]] = [
    # (case, message about us, our incarnation after it)
    ("identical alive", alive("me", 1, api_address="http://me"), 1),
    ("older alive", alive("me", 0), 1),
    ("alive with other metadata", alive("me", 1, region="elsewhere", api_address="http://me"), 2),
    ("newer alive", alive("me", 4), 5),
    ("suspect", suspect("me", 1, "c"), 2),
    ("suspect by an accuser we hold dead", suspect("me", 1, "d"), 2),
    ("suspect, far ahead", suspect("me", 8, "c"), 9),
    ("dead", dead("me", 1, "c"), 2),
    ("suspect, older incarnation", suspect("me", 0, "c"), 1),
]


@pytest.mark.parametrize(("message", "incarnation"), [c[1:] for c in SELF_CASES], ids=[c[0] for c in SELF_CASES])
def test_accusations_about_us_are_refuted(message: Message, incarnation: int) -> None:
    table = new_table()
    table.apply(message)
    assert table.state("me") == (ALIVE, incarnation)
    assert table.events() == []
    refuted = incarnation > 1
    refutation = Alive(
        node="me", incarnation=incarnation, address=address_of("me"), region="r", api_address="http://me"
    )
    assert (encode_message(refutation) in table.gossip()) is refuted
    assert table.awareness.score == (1 if refuted else 0)  # being accused hints we were slow


def test_while_leaving_we_do_not_refute() -> None:
    table = new_table()
    membership = table.membership
    membership.leaving = True
    membership.apply_dead(membership.dead_by_us(membership.local), 1.0)
    assert table.state("me") == (LEFT, 1)
    assert table.events() == ["left"]
    for message in (suspect("me", 1, "c"), dead("me", 1, "c"), alive("me", 5)):
        table.apply(message)
    assert table.state("me") == (LEFT, 1)


def test_a_refuted_suspicion_is_cancelled_and_reported() -> None:
    table = new_table()
    table.apply(suspect("b", 5, "c"))
    table.apply(alive("b", 6), now=2.0)
    assert table.state("b") == (ALIVE, 6)
    assert table.events() == ["suspect", "updated"]
    assert table.membership.next_suspicion_deadline() is None


def test_the_suspicion_timer_declares_dead_and_confirmations_shorten_it() -> None:
    table = new_table()
    table.apply(suspect("b", 5, "c"), now=10.0)
    # 4 live members: timeouts 4 s .. 24 s, and N - 2 = 2 independent confirmations reach the min.
    assert table.membership.next_suspicion_deadline() == 34.0
    table.gossip()
    table.apply(suspect("b", 5, "c"), now=11.0)  # the accuser again: no confirmation, no re-gossip
    assert table.gossip() == []
    table.apply(suspect("b", 5, "e", 3), now=11.0)
    assert table.gossip() == [encode_message(suspect("b", 5, "e", 3))]
    assert 14.0 < table.membership.next_suspicion_deadline() < 34.0  # type: ignore[operator]
    table.apply(suspect("b", 5, "me"), now=12.0)
    assert table.membership.next_suspicion_deadline() == 14.0
    table.membership.expire_suspicions(13.9)
    assert table.state("b") == (SUSPECT, 5)
    table.membership.expire_suspicions(14.0)
    assert table.state("b") == (DEAD, 5)
    assert table.events() == ["suspect", "dead"]
    assert encode_message(dead("b", 5, "me", 1)) in table.gossip()


def test_push_pull_merges_through_the_same_rules() -> None:
    table = new_table()

    def info(node: str, incarnation: int, state: MemberState) -> MemberInfo:
        return MemberInfo(
            node=node,
            address=address_of(node),
            region="r",
            api_address=f"http://{node}",
            incarnation=incarnation,
            state=state,
        )

    remote = [
        info("me", 1, DEAD),  # told we are dead: refute (first, so it does not re-arm c's suspicion below)
        info("e", 3, ALIVE),  # the sender itself, which dates its accusations
        info("b", 6, ALIVE),
        info("c", 1, DEAD),  # a remote death becomes a suspicion by the sender, never an instant death
        info("y", 1, ALIVE),
        info("d", 1, LEFT),  # we already hold d dead: ignored
    ]
    table.membership.merge(remote, "e", 1.0)
    assert [table.state(node) for node in ("b", "c", "y", "d", "me")] == [
        (ALIVE, 6),
        (SUSPECT, 1),
        (ALIVE, 1),
        (DEAD, 1),
        (ALIVE, 2),
    ]
    assert table.events() == ["suspect", "joined"]
    assert table.membership.suspicions["c"].accuser == "e"


def test_learning_we_were_declared_dead_restarts_our_suspicions() -> None:
    table = new_table()
    table.apply(suspect("b", 5, "me"), now=0.0)
    before = table.membership.suspicions["b"].deadline
    table.gossip()
    table.apply(dead("me", 1, "c"), now=10.0)
    assert table.membership.suspicions["b"].deadline == pytest.approx(before + 10.0)
    # Re-gossiped in our name and at our new incarnation, so nobody discredits it.
    assert encode_message(suspect("b", 5, "me", 2)) in table.gossip()


def test_left_members_are_forgotten_before_dead_ones() -> None:
    table = new_table()
    table.apply(dead("b", 5, "b", 5), now=1.0)
    table.membership.reap(1.0 + CONFIG.gossip_to_the_dead_time + 1)
    assert table.state("b") is None
    assert table.state("d") == (DEAD, 1)
    table.membership.reap(CONFIG.reconnect_timeout + 1)
    assert table.state("d") is None
    assert "d" not in table.membership.fallen_peers
