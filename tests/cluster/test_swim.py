"""SwimNode end to end over an instant in-memory wire: join, probe paths, relays, refutation, leave."""

from __future__ import annotations

import dataclasses
from random import Random

import pytest

from cluster import InsecureClusterError, MemberState, SendPacket, SwimConfig, SwimNode
from cluster.codec import MalformedMessage
from cluster.messages import Ack, Dead, IndirectPing, Message, Nack, Ping, PushPull, Suspect

from .helpers import KEYRING, Delivery, Dropper, Peer, Wire, address_of, alive, never

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def cluster(*names: str, config: SwimConfig | None = None) -> Wire:
    wire = Wire(config)
    for name in names:
        wire.add(name)
    wire.connect(*names)
    return wire


def kinds(deliveries: list[Delivery]) -> list[str]:
    return [type(message).__name__ for delivery in deliveries for message in delivery.messages]


def test_join_is_a_push_pull_that_teaches_both_sides() -> None:
    wire = Wire()
    a, b = wire.add("a"), wire.add("b")
    a.join([address_of("b"), address_of("a")])  # a seed list may include ourselves: skipped
    assert a.statistics().streams_opened == 1
    wire.flush(0.0)
    assert {m.node for m in a.members()} == {m.node for m in b.members()} == {"a", "b"}
    assert [event.kind.value for event in wire.events["a"]] == ["joined"]
    assert [event.kind.value for event in wire.events["b"]] == ["joined"]
    assert b.members()[0].api_address == "http://a"


def test_gossip_spreads_a_join_to_members_the_joiner_never_contacted() -> None:
    wire = cluster("a", "b", "c", "d")
    wire.run_until(2.0)
    for name in "abcd":
        assert {m.node for m in wire.nodes[name].members() if m.state is ALIVE} == set("abcd")


def test_a_node_without_a_key_refuses_to_join_unless_insecure() -> None:
    wire = Wire()
    lonely = wire.add("a", keyring=None)
    with pytest.raises(InsecureClusterError):
        lonely.join([address_of("b")])
    config = SwimConfig.lan()
    dev = [
        SwimNode(
            node_id=name,
            address=address_of(name),
            config=config,
            rng=Random(1),
            keyring=None,
            epoch=1,
            now=0.0,
            insecure=True,
        )
        for name in ("x", "y")
    ]
    dev[0].join([address_of("y")])
    (stream,) = dev[0].drain_actions()
    reply = dev[1].handle_stream(stream.data, 0.0)  # type: ignore[attr-defined]
    assert reply is not None and dev[0].handle_stream(reply, 0.0) is None
    assert [m.node for m in dev[0].members()] == ["x", "y"]
    # And a keyed node ignores unkeyed traffic.
    assert wire.add("b").handle_stream(stream.data, 0.0) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "overrides", [{"node_id": ""}, {"node_id": "n" * 200}, {"region": "r" * 100}, {"address": ("127.0.0.1", 0)}]
)
def test_an_identity_the_wire_would_refuse_is_refused_at_construction(overrides: dict[str, object]) -> None:
    arguments: dict[str, object] = {"node_id": "a", "address": address_of("a"), "region": "iad"}
    arguments.update(overrides)
    with pytest.raises(MalformedMessage):
        SwimNode(**arguments, config=SwimConfig.lan(), rng=Random(1), keyring=KEYRING, epoch=1, now=0.0)  # type: ignore[arg-type]


def test_a_direct_ack_completes_the_probe() -> None:
    wire = cluster("a", "b")
    wire.run_until(3.0)
    stats = wire.nodes["a"].statistics()
    assert stats.probes >= 2 and stats.probes_failed == 0
    assert kinds(wire.delivered).count("Ack") >= stats.probes
    assert "IndirectPing" not in kinds(wire.delivered)


def drop_direct_pings_from_a(source: str, destination: str, messages: list[Message]) -> bool:
    return source == "a" and any(isinstance(m, Ping) for m in messages)


def test_a_lost_ping_is_recovered_through_indirect_probes() -> None:
    wire = cluster("a", "b", "c", "d")
    wire.run_until(1.2, drop_direct_pings_from_a)
    relayed = kinds(wire.delivered)
    assert relayed.count("IndirectPing") >= 2  # to two relays, since the target is the third member
    a = wire.nodes["a"]
    assert a.statistics().probes_failed == 0
    assert all(m.state is ALIVE for m in a.members())
    assert a.statistics().health_score == 0


def first_failed_probe(wire: Wire, drop: Dropper = never) -> None:
    """Run until node a's first probe fails (within a few probe passes), and stop right there: the next probe,
    which starts in the same tick, is not answered yet."""
    a = wire.nodes["a"]
    wire.run_until(10.0, drop, stop=lambda: a.statistics().probes_failed > 0)
    assert a.statistics().probes_failed == 1


def test_a_crashed_member_is_suspected_and_the_relays_nack() -> None:
    wire = cluster("a", "b", "c", "d")
    del wire.nodes["b"]  # crash
    first_failed_probe(wire)
    a = wire.nodes["a"]
    assert {m.node: m.state for m in a.members()}["b"] is SUSPECT
    assert "Nack" in kinds(wire.delivered)
    assert a.statistics().health_score == 0  # every relay answered: the fault is not ours


def test_missing_nacks_raise_our_own_health_score() -> None:
    wire = cluster("a", "b", "c", "d")
    del wire.nodes["b"]
    first_failed_probe(wire, lambda source, destination, messages: any(isinstance(m, Nack) for m in messages))
    assert wire.nodes["a"].statistics().health_score == 2  # two relays, no nack from either


def test_without_relays_a_failed_probe_costs_one_point_of_health() -> None:
    wire = cluster("a", "b")
    del wire.nodes["b"]
    first_failed_probe(wire)
    assert wire.nodes["a"].statistics().health_score == 1


def test_a_suspected_member_hears_it_and_refutes() -> None:
    wire = cluster("a", "b", "c")
    # A forged packet comes from a stranger: a member's own name would collide with its replay window.
    Peer("x").send(wire.nodes["a"], Suspect(node="b", incarnation=1, accuser="x", accuser_incarnation=1), now=0.5)
    assert {m.node: m.state for m in wire.nodes["a"].members()}["b"] is SUSPECT
    wire.run_until(3.0)
    for name in "abc":
        b = {m.node: m for m in wire.nodes[name].members()}["b"]
        assert (b.state, b.incarnation) == (ALIVE, 2)
    assert [e.kind.value for e in wire.events["a"] if e.member.node == "b"][-2:] == ["suspect", "updated"]


def test_a_suspect_is_told_directly_when_probed() -> None:
    wire = cluster("a", "b")
    Peer("x").send(wire.nodes["a"], Suspect(node="b", incarnation=1, accuser="x", accuser_incarnation=1), now=0.0)
    wire.run_until(
        1.1, lambda source, _destination, messages: source == "a" and Ping(seq=1, target="b") not in messages
    )
    ping_to_b = [d.messages for d in wire.delivered if d.source == "a" and Ping(seq=1, target="b") in d.messages]
    # Besides the gossiped accusation by x, the ping carries a's own, so b can refute before gossip reaches it.
    assert Suspect(node="b", incarnation=1, accuser="a", accuser_incarnation=1) in ping_to_b[0]


def test_relaying_for_others_acks_and_nacks() -> None:
    config = dataclasses.replace(SwimConfig.lan(), relays_max=1)
    wire = cluster("a", "b", config=config)
    a, requester = wire.nodes["a"], Peer("x")
    request = IndirectPing(seq=77, target="b", target_address=address_of("b"), want_nack=True)
    requester.send(a, request, now=0.0)
    requester.send(a, dataclasses.replace(request, seq=78), now=0.0)  # over relays_max: refused
    wire.flush(0.0)
    assert a.statistics().relays_refused == 1
    assert Ack(seq=77) in [m for d in wire.undelivered for m in d.messages]
    del wire.nodes["b"]
    requester.send(a, dataclasses.replace(request, seq=79), now=1.0)
    wire.flush(1.0)
    assert a.next_deadline() <= 1.0 + config.relay_timeout
    wire.tick("a", 1.0 + config.relay_timeout)
    assert Nack(seq=79) in [m for d in wire.undelivered for m in d.messages]


def test_a_ping_for_someone_else_gets_no_answer_and_one_from_the_dead_is_told() -> None:
    wire = cluster("a", "b")
    a = wire.nodes["a"]
    Peer("z").send(a, Ping(seq=1, target="somebody-else"), now=0.0)
    assert a.drain_actions() == []
    c = Peer("c")
    c.send(a, alive("c"), Dead(node="c", incarnation=1, accuser="b", accuser_incarnation=1), now=0.0)
    a.drain_actions()
    c.send(a, Ping(seq=2, target="a"), now=0.0)
    wire.flush(0.0)
    answer = [m for d in wire.undelivered for m in d.messages]
    assert Ack(seq=2) in answer
    assert Dead(node="c", incarnation=1, accuser="a", accuser_incarnation=1) in answer


def test_a_graceful_leave_reaches_everyone_as_left_not_dead() -> None:
    wire = cluster("a", "b", "c")
    wire.run_until(1.0)
    a = wire.nodes["a"]
    probes = a.statistics().probes
    a.leave(1.0)
    a.leave(1.0)  # idempotent
    assert not a.leave_complete
    wire.run_until(3.0)
    assert a.leave_complete
    assert a.local_member.state is LEFT
    assert a.statistics().probes == probes  # a leaving member stops probing
    for name in "bc":
        assert {m.node: m.state for m in wire.nodes[name].members()}["a"] is LEFT
        assert "dead" not in [e.kind.value for e in wire.events[name]]


def test_leaving_alone_completes_at_once() -> None:
    node = Wire().add("a")
    node.leave(0.0)
    assert node.leave_complete


def test_streams_answer_requests_only() -> None:
    wire = cluster("a", "b")
    b, peer = wire.nodes["b"], Peer("z")
    assert b.handle_stream(b"garbage", 0.0) is None
    assert b.handle_stream(peer.stream(PushPull(members=(), is_reply=True)), 0.0) is None
    reply = b.handle_stream(peer.stream(PushPull(members=(), is_reply=False)), 0.0)
    assert reply is not None
    assert b.statistics().drops.unsupported_version == 1  # b"g..." is no envelope version


def test_a_rotated_keyring_is_used_at_once() -> None:
    wire = cluster("a", "b")
    new_key = bytes(range(200, 232))
    wire.inspect_keyring = KEYRING.with_key(new_key)
    wire.nodes["a"].set_keyring(KEYRING.with_key(new_key).with_primary(new_key))
    Peer("c", keyring=KEYRING.with_key(new_key).with_primary(new_key)).send(wire.nodes["a"], alive("c"), now=0.0)
    assert "c" in {m.node for m in wire.nodes["a"].members()}
    # b has not learnt the new key yet: a's packets are refused there (and counted).
    wire.run_until(1.5)
    assert wire.nodes["b"].statistics().drops.unauthenticated > 0


def test_timers_are_idempotent_and_the_deadline_moves_forward() -> None:
    wire = cluster("a", "b")
    a = wire.nodes["a"]
    deadline = a.next_deadline()
    a.tick(deadline)
    a.tick(deadline)
    assert a.next_deadline() > deadline
    assert repr(a).startswith("<SwimNode a: 2 live, 0 dead, 0 left | health 0 |")


def test_queued_updates_are_packed_into_datagrams_of_at_most_1400_bytes() -> None:
    wire = cluster("a", "b")
    a, peer = wire.nodes["a"], Peer("x")
    for batch in range(10):
        peer.send(a, *(alive(f"m{batch}-{index}") for index in range(10)), now=0.0)
    a.drain_actions()
    a.tick(a.next_deadline())
    sizes = [len(action.data) for action in a.drain_actions() if isinstance(action, SendPacket)]
    assert sizes and max(sizes) <= SwimConfig.lan().packet_bytes_max
    assert max(sizes) > 1200  # filled, not one update per datagram
