"""The shared map on the wire: `Shared` and push-pull's `shared` field, round trips, old peers, and garbage."""

from __future__ import annotations

from random import Random

import msgpack
import pytest

from cluster import MemberState, SharedEntry, SharedValue
from cluster.codec import _SCHEMAS, MalformedMessage, decode_message, encode_message, shared_entry_bytes
from cluster.envelope import Channel, Envelope
from cluster.messages import Alive, MemberInfo, MessageType, Ping, PushPull, Shared
from cluster.shared import SHARED_ENTRY_WIRE_BYTES_MAX, SHARED_KEY_BYTES_MAX, SHARED_VALUE_BYTES_MAX

from .helpers import KEYRING, Peer, Wire, address_of, alive

VALUES: list[SharedValue] = [None, True, False, 0, -1, 2**64 - 1, -(2**63), 0.1, float("inf"), "", "on", "ü" * 40]


def entry(key: str = "account_queue:https://api.stripe.com", value: SharedValue = True) -> SharedEntry:
    return SharedEntry(key=key, value=value, wall_ms=1_700_000_000_123, node="n1")


def test_the_tag_is_appended_after_every_older_one() -> None:
    assert int(MessageType.SHARED) == 9 and list(MessageType).index(MessageType.SHARED) == 8  # after the 8 older ones


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_shared_message_round_trips_every_value_kind(value: SharedValue) -> None:
    message = Shared(entry=entry(value=value))
    decoded = decode_message(msgpack.unpackb(encode_message(message)))
    assert decoded == message
    assert isinstance(decoded, Shared) and type(decoded.entry.value) is type(value)  # 0 stays 0, not False


def test_a_push_pull_carries_the_map_beside_the_members() -> None:
    member = MemberInfo(
        node="b", address=("127.0.0.2", 7946), region="", api_address="", incarnation=3, state=MemberState.ALIVE
    )
    message = PushPull(members=(member,), is_reply=True, shared=tuple(entry(f"k{i}", v) for i, v in enumerate(VALUES)))
    assert decode_message(msgpack.unpackb(encode_message(message))) == message


def test_a_push_pull_from_a_peer_that_predates_the_map_still_merges() -> None:
    """The old schema had two fields; the appended one takes its default instead of failing the stream."""
    old = [int(MessageType.PUSH_PULL), [["b", ["127.0.0.2", 7946], "", "", 1, 0]], False]
    decoded = decode_message(old)
    assert isinstance(decoded, PushPull) and decoded.shared == () and decoded.members[0].node == "b"


def test_fields_a_newer_peer_appends_to_an_entry_are_ignored() -> None:
    item = [int(MessageType.SHARED), ["k", 1, 5, "n1", "a field from the future"], "and another"]
    assert decode_message(item) == Shared(entry=SharedEntry(key="k", value=1, wall_ms=5, node="n1"))


def test_only_trailing_fields_may_be_missing_from_the_wire() -> None:
    """`appended` marks a field an older peer may leave out; one in the middle would shift every later field."""
    for tag, schema in _SCHEMAS.values():
        flags = [kind.appended for _name, kind in schema]
        assert flags == sorted(flags), tag.name


@pytest.mark.parametrize(
    "item",
    [
        [9],  # no entry
        [9, "k"],  # the entry is not a list
        [9, ["k", True, 5]],  # no writer
        [9, [1, True, 5, "n1"]],  # key not text
        [9, [b"k", True, 5, "n1"]],  # key as bytes
        [9, ["k", b"raw", 5, "n1"]],  # bytes value
        [9, ["k", [1, 2], 5, "n1"]],  # array value
        [9, ["k", {"a": 1}, 5, "n1"]],  # map value
        [9, ["k", True, -5, "n1"]],  # negative time
        [9, ["k", True, True, "n1"]],  # bool time
        [9, ["k", True, 1.5, "n1"]],  # float time
        [9, ["k", True, 5, ""]],  # empty writer
        [9, ["k", True, 5, "n" * 129]],  # writer over the node id bound
        [8, [], False, "not a list"],  # push-pull shared is not a list
        [8, [], False, ["not an entry"]],
        [8, [], False, [["k", True, 5]]],  # an entry short of a field
    ],
)
def test_malformed_shared_data_is_refused(item: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(item)


def test_bounds_are_the_maps_not_the_wires() -> None:
    """An entry over the map's bounds decodes (a later version may allow it) and is dropped by the map alone."""
    key = "k" * (SHARED_KEY_BYTES_MAX + 1)
    decoded = decode_message([9, [key, "v" * SHARED_VALUE_BYTES_MAX, 5, "n1"]])
    assert isinstance(decoded, Shared) and decoded.entry.key == key


def test_the_largest_entry_matches_its_wire_bound_and_fits_a_datagram_beside_a_ping() -> None:
    largest = SharedEntry(
        key="k" * SHARED_KEY_BYTES_MAX,
        value="v" * (SHARED_VALUE_BYTES_MAX - 2),  # str8 header: 2 bytes
        wall_ms=2**64 - 1,
        node="n" * 128,
    )
    assert len(msgpack.packb(largest.value)) == SHARED_VALUE_BYTES_MAX
    assert shared_entry_bytes(largest) == SHARED_ENTRY_WIRE_BYTES_MAX - 1  # the node id's header is 2, not 3
    sealed = Peer("n" * 128).packet(Ping(seq=2**64 - 1, target="t" * 128), Shared(entry=largest))
    assert len(sealed) <= 1400


def test_a_datagram_with_a_malformed_shared_message_is_dropped_and_counted_not_raised() -> None:
    receiver = Envelope(
        sender="receiver", epoch=1, keyring=KEYRING, insecure=False, packet_bytes_max=1400, stream_bytes_max=1 << 20
    )
    sender = Peer("a")
    bad = msgpack.packb([9, ["k", b"raw", 5, "a"]])
    data = sender.envelope.seal(Channel.PACKET, [encode_message(alive("a")), bad])
    assert receiver.open(Channel.PACKET, data) is None
    assert receiver.statistics().malformed == 1


def test_random_structures_under_the_shared_tags_never_raise_anything_but_malformed() -> None:
    """Entry-shaped lists whose fields are drawn from good and bad atoms, inside both shared-carrying tags."""
    rng = Random(11)
    good: list[object] = [0, 2**64 - 1, True, None, 1.5, "k", "n1"]
    bad: list[object] = [-1, b"\x00", [], {}, "", [1, 2]]

    def field() -> object:
        return rng.choice(good if rng.random() < 0.85 else bad)

    def entry_like() -> object:
        return [field() for _ in range(rng.choice([3, 4, 4, 4, 5]))] if rng.random() < 0.95 else field()

    outcomes = {"decoded": 0, "malformed": 0}
    for _ in range(3000):
        if rng.random() < 0.5:
            item: list[object] = [9, entry_like()]
        else:
            item = [8, [], rng.choice([True, False, 1]), [entry_like() for _ in range(rng.randrange(0, 3))]]
        try:
            decode_message(msgpack.unpackb(msgpack.packb(item)))
        except MalformedMessage:
            outcomes["malformed"] += 1
        else:
            outcomes["decoded"] += 1
    assert outcomes["malformed"] > 100 and outcomes["decoded"] > 100  # the generator reaches both


def test_a_node_drops_and_counts_an_over_bound_entry_but_uses_the_rest_of_the_datagram() -> None:
    wire = Wire()
    node = wire.add("x")
    peer = Peer("a")
    over = SharedEntry(key="k" * (SHARED_KEY_BYTES_MAX + 1), value=True, wall_ms=5, node="a")
    fine = SharedEntry(key="k", value=True, wall_ms=5, node="a")
    peer.send(node, alive("a"), Shared(entry=over), Shared(entry=fine), now=0.0)
    assert "a" in {member.node for member in node.members()}
    assert node.shared().items() == [("k", True)]
    stats = node.statistics()
    assert (stats.shared_refused, stats.shared_entries, stats.drops.malformed) == (1, 1, 0)


def test_an_unknown_tag_beside_a_shared_message_is_skipped_and_the_write_kept() -> None:
    """How an old member meets a merge kind added later: its tag is unknown, skipped, and counted."""
    wire = Wire()
    node = wire.add("x")
    sender = Peer("a")
    data = sender.envelope.seal(
        Channel.PACKET,
        [msgpack.packb([77, ["counter", {"a": 3}]]), encode_message(Shared(entry=entry()))],
    )
    node.handle_packet(address_of("a"), data, 0.0)
    assert node.shared().get(entry().key) is True
    assert node.statistics().drops.unknown_messages == 1


def test_alive_is_unchanged_by_the_new_tag() -> None:
    message = Alive(node="b", incarnation=1, address=("127.0.0.1", 7946), region="", api_address="")
    assert decode_message(msgpack.unpackb(encode_message(message))) == message
