"""Codec and envelope: round trips, compatibility rules, and everything a hostile network can send."""

from __future__ import annotations

from random import Random

import msgpack
import pytest

from cluster.codec import MalformedMessage, decode_message, encode_message
from cluster.envelope import REPLAY_WINDOW, Channel, Envelope
from cluster.keyring import TAG_BYTES, InsecureClusterError, Keyring
from cluster.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberInfo,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    Suspect,
)

from .helpers import KEY, KEYRING, Peer, inspect

OTHER_KEY = bytes(range(100, 132))

EVERY_MESSAGE: list[Message] = [
    Ping(seq=1, target="b"),
    IndirectPing(seq=2**64 - 1, target="b", target_address=("::1", 7946), want_nack=True),
    Ack(seq=3),
    Nack(seq=4),
    Suspect(node="b", incarnation=5, accuser="c", accuser_incarnation=2),
    Alive(node="b", incarnation=6, address=("127.0.0.1", 7946), region="iad", api_address="http://[::1]:8080"),
    Alive(node="b-w1", incarnation=6, address=("127.0.0.1", 7947), region="", api_address="", machine="b"),
    Dead(node="b", incarnation=7, accuser="b", accuser_incarnation=7),
    PushPull(
        members=(
            MemberInfo(
                node="b", address=("127.0.0.2", 1), region="", api_address="", incarnation=1, state=MemberState.LEFT
            ),
            MemberInfo(
                node="c-w0",
                address=("127.0.0.2", 2),
                region="",
                api_address="",
                incarnation=1,
                state=MemberState.ALIVE,
                machine="c",
            ),
        ),
        is_reply=False,
    ),
]


def envelope(sender: str = "receiver", *, keyring: Keyring | None = KEYRING, insecure: bool = False) -> Envelope:
    return Envelope(
        sender=sender, epoch=1, keyring=keyring, insecure=insecure, packet_bytes_max=1400, stream_bytes_max=1 << 20
    )


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda message: type(message).__name__)
def test_every_message_round_trips(message: Message) -> None:
    assert decode_message(msgpack.unpackb(encode_message(message))) == message


def test_a_member_from_a_peer_that_predates_machines_has_none() -> None:
    """`machine` was appended to Alive and to push-pull members: an older peer's messages leave it out."""
    alive = decode_message([6, "b", 1, ["127.0.0.1", 7946], "iad", ""])
    assert isinstance(alive, Alive) and alive.machine == ""
    push_pull = decode_message([8, [["b", ["127.0.0.1", 1], "", "", 1, 0]], False])
    assert isinstance(push_pull, PushPull) and push_pull.members[0].machine == ""


def test_unknown_tags_are_skipped_and_extra_trailing_fields_ignored() -> None:
    """Both compatibility rules: a newer peer may add message types and append fields."""
    assert decode_message([200, "anything"]) is None
    assert decode_message([3, 9, "a field from the future"]) == Ack(seq=9)


@pytest.mark.parametrize(
    "item",
    [
        [],
        "not a list",
        [True, 1],  # a bool is not a tag
        [1, 1],  # ping without a target
        [1, -1, "b"],  # negative seq
        [1, True, "b"],  # bool where an int belongs
        [1, 2**64, "b"],  # beyond uint64
        [1, 1, ""],  # empty node id
        [1, 1, "x" * 129],  # node id too long
        [2, 1, "b", ["::1"], True],  # address without port
        [2, 1, "b", ["::1", 0], True],  # port 0
        [2, 1, "b", ["::1", 70000], True],
        [2, 1, "b", ["::1", 7946], 1],  # int where a bool belongs
        [6, "b", 1, ["h", 1], "r" * 65, ""],  # region too long
        [8, [["b", ["h", 1], "", "", 1, 9]], False],  # unknown member state
        [8, "members", False],
        [8, ["not a member"], False],
    ],
)
def test_malformed_messages_are_refused(item: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(item)


def test_a_sealed_packet_opens_with_its_sender_and_messages() -> None:
    sender = Peer("a")
    receiver = envelope()
    opened = receiver.open(Channel.PACKET, sender.packet(Ping(seq=1, target="receiver"), Ack(seq=2)))
    assert opened is not None
    assert (opened.sender, opened.messages) == ("a", [Ping(seq=1, target="receiver"), Ack(seq=2)])


def test_garbage_never_raises_and_is_counted() -> None:
    rng = Random(42)
    receiver = envelope()
    insecure_receiver = envelope(keyring=None, insecure=True)
    valid = Peer("a").packet(*EVERY_MESSAGE[:7])
    inputs = [rng.randbytes(rng.randrange(0, 300)) for _ in range(3000)]
    inputs += [b"\x01" + rng.randbytes(rng.randrange(0, 300)) for _ in range(3000)]  # right version byte
    for _ in range(3000):  # valid datagrams with a few bytes flipped, truncated or extended
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        inputs.append(bytes(mutated)[: rng.randrange(1, len(mutated) + 1)] + rng.randbytes(rng.randrange(0, 3)))
    for data in inputs:
        assert receiver.open(Channel.PACKET, data) is None
        insecure_receiver.open(Channel.PACKET, data)  # no MAC: the parser itself meets the garbage
    drops = receiver.statistics()
    assert drops.unauthenticated + drops.unsupported_version + drops.malformed == len(inputs)
    assert insecure_receiver.statistics().malformed > 5000


def test_random_msgpack_in_a_well_formed_insecure_envelope_never_raises() -> None:
    """Past the MAC, the decoder meets arbitrary structures: it must refuse them, not crash."""
    rng = Random(7)
    atoms: list[object] = [0, -1, 2**64 - 1, True, None, 1.5, "", "b", b"\x00", [], {}, ["::1", 1]]

    def random_value(depth: int) -> object:
        if depth > 3 or rng.random() < 0.4:
            return rng.choice(atoms)
        return [random_value(depth + 1) for _ in range(rng.randrange(0, 6))]

    sender = envelope("a", keyring=None, insecure=True)
    receiver = envelope(keyring=None, insecure=True)
    accepted = 0
    for _ in range(3000):
        items = [
            msgpack.packb([rng.randrange(0, 10), *(random_value(1) for _ in range(rng.randrange(0, 7)))])
            for _ in range(rng.randrange(1, 4))
        ]
        accepted += receiver.open(Channel.PACKET, sender.seal(Channel.PACKET, items)) is not None
    drops = receiver.statistics()
    assert accepted + drops.malformed == 3000
    assert drops.malformed > 0 and accepted > 0  # the generator reaches both outcomes


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "unauthenticated"),  # tag flipped
        (lambda data: data[:10] + bytes([data[10] ^ 1]) + data[11:], "unauthenticated"),  # body flipped
        (lambda data: data[: TAG_BYTES - 1], "unauthenticated"),  # too short to hold a tag
        (lambda data: b"\x02" + data[1:], "unsupported_version"),
        (lambda data: b"", "malformed"),
        (lambda data: data + bytes(1400), "oversize"),
    ],
)
def test_tampered_packets_are_dropped_for_the_right_reason(tamper: object, reason: str) -> None:
    receiver = envelope()
    assert receiver.open(Channel.PACKET, tamper(Peer("a").packet(Ack(seq=1)))) is None  # type: ignore[operator]
    assert getattr(receiver.statistics(), reason) == 1


def test_a_packet_under_a_key_outside_the_ring_is_refused() -> None:
    receiver = envelope()
    assert receiver.open(Channel.PACKET, Peer("a", keyring=Keyring(OTHER_KEY)).packet(Ack(seq=1))) is None
    assert receiver.statistics().unauthenticated == 1


def test_key_rotation_in_three_steps_never_breaks_the_cluster() -> None:
    a, b = Peer("a"), envelope("b")
    # Step 1: both accept the new key; a still signs with the old one.
    a.envelope.keyring = KEYRING.with_key(OTHER_KEY)
    b.keyring = KEYRING.with_key(OTHER_KEY)
    assert b.open(Channel.PACKET, a.packet(Ack(seq=1))) is not None
    # Step 2: a signs with the new key; b, not yet switched, still accepts it.
    a.envelope.keyring = a.envelope.keyring.with_primary(OTHER_KEY)  # type: ignore[union-attr]
    assert b.open(Channel.PACKET, a.packet(Ack(seq=2))) is not None
    # Step 3: b drops the old key; new-key traffic flows, old-key traffic is refused.
    b.keyring = Keyring(OTHER_KEY, KEY).without_key(KEY)
    assert b.open(Channel.PACKET, a.packet(Ack(seq=3))) is not None
    assert b.open(Channel.PACKET, Peer("c").packet(Ack(seq=4))) is None
    assert b.statistics().unauthenticated == 1


def test_keyring_rules() -> None:
    ring = Keyring(KEY, OTHER_KEY, KEY)
    assert ring.keys == (KEY, OTHER_KEY) and ring.primary == KEY
    assert ring.with_primary(OTHER_KEY).keys == (OTHER_KEY, KEY)
    assert KEY.hex() not in repr(ring) and "2 key(s)" in repr(ring)
    with pytest.raises(ValueError, match="primary"):
        ring.without_key(KEY)
    with pytest.raises(ValueError):
        Keyring(b"short")
    with pytest.raises(ValueError):
        Keyring(bytes(65))


def test_replays_are_dropped() -> None:
    a, receiver = Peer("a"), envelope()
    first = a.packet(Ack(seq=1))
    assert receiver.open(Channel.PACKET, first) is not None
    assert receiver.open(Channel.PACKET, first) is None
    assert receiver.statistics().replayed == 1


def test_reordering_inside_the_window_is_accepted_but_older_than_the_window_is_not() -> None:
    a, receiver = Peer("a"), envelope()
    packets = [a.packet(Ack(seq=n)) for n in range(REPLAY_WINDOW + 2)]
    assert receiver.open(Channel.PACKET, packets[1]) is not None
    assert receiver.open(Channel.PACKET, packets[0]) is not None  # late, but not seen before
    for packet in packets[2:]:
        assert receiver.open(Channel.PACKET, packet) is not None
    # The window is full of newer counters: a packet older than all of them could be a replay.
    stale = Peer("a").packet(Ack(seq=0))  # a fresh sender object restarts its counter at 1, same epoch
    assert receiver.open(Channel.PACKET, stale) is None
    assert receiver.statistics().replayed == 1


def test_an_earlier_life_of_a_sender_is_refused_once_a_later_one_was_heard() -> None:
    receiver = envelope()
    old_life, new_life = Peer("a", epoch=5), Peer("a", epoch=6)
    captured = old_life.packet(Ack(seq=1))
    assert receiver.open(Channel.PACKET, new_life.packet(Ack(seq=2))) is not None
    assert receiver.open(Channel.PACKET, captured) is None
    assert receiver.open(Channel.PACKET, Peer("a", epoch=6).packet(Ack(seq=3))) is None  # counter 1 again
    assert receiver.statistics().replayed == 2


def test_our_own_traffic_reflected_back_is_dropped() -> None:
    me = Peer("me")
    receiver = envelope("me")
    assert receiver.open(Channel.PACKET, me.packet(Ack(seq=1))) is None
    assert receiver.statistics().replayed == 1


def test_a_stream_cannot_be_replayed_as_a_packet() -> None:
    receiver = envelope()
    stream = Peer("a").stream(PushPull(members=(), is_reply=True))
    assert receiver.open(Channel.PACKET, stream) is None
    assert receiver.statistics().malformed == 1
    assert receiver.open(Channel.STREAM, stream) is not None


def test_insecure_and_secure_envelopes_do_not_talk() -> None:
    secure, insecure = envelope(), envelope(keyring=None, insecure=True)
    assert secure.open(Channel.PACKET, envelope("a", keyring=None, insecure=True).seal(Channel.PACKET, [])) is None
    assert insecure.open(Channel.PACKET, Peer("a").packet(Ack(seq=1))) is None


def test_without_a_key_or_the_insecure_flag_nothing_goes_in_or_out() -> None:
    refusing = envelope(keyring=None, insecure=False)
    assert refusing.open(Channel.PACKET, Peer("a").packet(Ack(seq=1))) is None
    assert refusing.statistics().unauthenticated == 1
    with pytest.raises(InsecureClusterError):
        refusing.seal(Channel.PACKET, [])


def test_unknown_message_types_are_counted_and_the_rest_is_used() -> None:
    sender, receiver = envelope("a"), envelope()
    data = sender.seal(Channel.PACKET, [msgpack.packb([250, "from the future"]), encode_message(Ack(seq=1))])
    assert inspect(data) == [Ack(seq=1)]
    opened = receiver.open(Channel.PACKET, data)
    assert opened is not None and opened.messages == [Ack(seq=1)]
    assert receiver.statistics().unknown_messages == 1
