"""The counters on the wire: `Counters` and push-pull's `counters` field, round trips, old peers, and garbage."""

from __future__ import annotations

from random import Random

import msgpack
import pytest

from cluster import CounterEntry, MemberState, SharedEntry
from cluster.codec import MalformedMessage, counter_entry_bytes, decode_message, encode_message
from cluster.counters import COUNTER_ENTRY_WIRE_BYTES_MAX, COUNTER_NAME_BYTES_MAX, COUNTER_VALUE_MAX
from cluster.envelope import Channel, Envelope
from cluster.messages import NODE_ID_BYTES_MAX, Counters, MemberInfo, MessageType, Ping, PushPull

from .helpers import KEYRING, Peer

USAGE = "usage:acme:2025-01"


def counter(name: str = USAGE, node: str = "n1", value: int = 7) -> CounterEntry:
    return CounterEntry(name=name, node=node, value=value)


def round_trip(message: object) -> object:
    return decode_message(msgpack.unpackb(encode_message(message)))  # type: ignore[arg-type]


def test_the_tag_is_appended_after_every_older_one() -> None:
    assert int(MessageType.COUNTERS) == 10 and max(MessageType) is MessageType.COUNTERS
    assert int(MessageType.SHARED) == 9  # unchanged


@pytest.mark.parametrize("value", [0, 1, 127, 128, 2**32, COUNTER_VALUE_MAX])
def test_a_counters_message_round_trips(value: int) -> None:
    message = Counters(entries=(counter(value=value), counter(name="ü" * 20, node="n2", value=1)))
    assert round_trip(message) == message


def test_a_counters_message_may_carry_no_entry_or_many() -> None:
    assert round_trip(Counters(entries=())) == Counters(entries=())
    many = Counters(entries=tuple(counter(name=f"c{i}", value=i) for i in range(50)))
    assert round_trip(many) == many


def test_a_push_pull_carries_the_counters_after_the_shared_map() -> None:
    member = MemberInfo(
        node="b", address=("127.0.0.2", 7946), region="", api_address="", incarnation=3, state=MemberState.ALIVE
    )
    shared = (SharedEntry(key="k", value=True, wall_ms=5, node="b"),)
    counters = (counter(), counter(node="n2", value=COUNTER_VALUE_MAX))
    message = PushPull(members=(member,), is_reply=True, shared=shared, counters=counters)
    assert round_trip(message) == message
    wire = msgpack.unpackb(encode_message(message))
    assert wire[0] == 8 and len(wire) == 5 and wire[4] == [[USAGE, "n1", 7], [USAGE, "n2", COUNTER_VALUE_MAX]]


def test_a_push_pull_from_a_peer_that_predates_the_counters_still_merges() -> None:
    """Both appended fields may be missing; each takes its default instead of failing the stream."""
    member = [["b", ["127.0.0.2", 7946], "", "", 1, 0]]
    without_counters = decode_message([8, member, False, [["k", 1, 5, "b"]]])
    assert isinstance(without_counters, PushPull) and without_counters.counters == ()
    assert without_counters.shared == (SharedEntry(key="k", value=1, wall_ms=5, node="b"),)
    oldest = decode_message([8, member, False])
    assert isinstance(oldest, PushPull) and oldest.shared == () and oldest.counters == ()


def test_an_old_member_skips_the_tag_and_a_new_one_ignores_fields_from_the_future() -> None:
    assert decode_message([99, "from a later version"]) is None  # how an old member sees our tag 10
    item = [10, [[USAGE, "n1", 7, "a field from the future"]], "and another"]
    assert decode_message(item) == Counters(entries=(counter(),))
    future_push_pull = [8, [], False, [], [[USAGE, "n1", 7]], "a sixth field"]
    decoded = decode_message(future_push_pull)
    assert isinstance(decoded, PushPull) and decoded.counters == (counter(),)


@pytest.mark.parametrize(
    "item",
    [
        [10],  # no entries
        [10, "not a list"],
        [10, [[USAGE, "n1"]]],  # an entry short of its value
        [10, ["not an entry"]],
        [10, [[1, "n1", 7]]],  # name not text
        [10, [[b"usage", "n1", 7]]],  # name as bytes
        [10, [[USAGE, "", 7]]],  # empty node
        [10, [[USAGE, "n" * (NODE_ID_BYTES_MAX + 1), 7]]],  # node over the node id bound
        [10, [[USAGE, "n1", -1]]],  # a negative count
        [10, [[USAGE, "n1", 2**64]]],  # over 64 bits
        [10, [[USAGE, "n1", True]]],  # a bool count
        [10, [[USAGE, "n1", 1.0]]],  # a float count
        [8, [], False, [], "not a list"],  # push-pull counters not a list
        [8, [], False, [], [[USAGE, "n1"]]],
    ],
)
def test_malformed_counter_data_is_refused(item: list[object]) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(item)


def test_bounds_are_the_maps_not_the_wires() -> None:
    """A name over the map's bound decodes (a later version may allow it); the map alone drops it."""
    name = "n" * (COUNTER_NAME_BYTES_MAX + 1)
    decoded = decode_message([10, [[name, "n1", 7]]])
    assert isinstance(decoded, Counters) and decoded.entries[0].name == name


def test_the_largest_entry_matches_its_wire_bound_and_fits_a_datagram_beside_a_ping() -> None:
    largest = CounterEntry(name="c" * COUNTER_NAME_BYTES_MAX, node="n" * NODE_ID_BYTES_MAX, value=COUNTER_VALUE_MAX)
    assert counter_entry_bytes(largest) == COUNTER_ENTRY_WIRE_BYTES_MAX - 2  # both str8 headers are 2, not 3
    assert len(encode_message(Counters(entries=(largest,)))) == counter_entry_bytes(largest) + 3
    sealed = Peer("n" * 128).packet(Ping(seq=2**64 - 1, target="t" * 128), Counters(entries=(largest,) * 3))
    assert len(sealed) <= 1400


def test_a_datagram_with_a_malformed_counters_message_is_dropped_and_counted_not_raised() -> None:
    receiver = Envelope(
        sender="receiver", epoch=1, keyring=KEYRING, insecure=False, packet_bytes_max=1400, stream_bytes_max=1 << 20
    )
    sender = Peer("a")
    data = sender.envelope.seal(Channel.PACKET, [msgpack.packb([10, [[USAGE, "a", -3]]])])
    assert receiver.open(Channel.PACKET, data) is None
    assert receiver.statistics().malformed == 1


def test_random_structures_under_the_counter_tags_never_raise_anything_but_malformed() -> None:
    rng = Random(12)
    good: list[object] = [0, 2**64 - 1, "c", "n1", USAGE]
    bad: list[object] = [-1, b"\x00", [], {}, "", None, True, 1.5]

    def field() -> object:
        return rng.choice(good if rng.random() < 0.85 else bad)

    def entry_like() -> object:
        return [field() for _ in range(rng.choice([2, 3, 3, 3, 4]))] if rng.random() < 0.95 else field()

    outcomes = {"decoded": 0, "malformed": 0}
    for _ in range(3000):
        entries = [entry_like() for _ in range(rng.randrange(0, 3))]
        item: list[object] = [10, entries] if rng.random() < 0.5 else [8, [], False, [], entries]
        try:
            decoded = decode_message(msgpack.unpackb(msgpack.packb(item)))
        except MalformedMessage:
            outcomes["malformed"] += 1
        else:
            assert isinstance(decoded, Counters | PushPull)
            outcomes["decoded"] += 1
    assert min(outcomes.values()) > 300  # both outcomes were exercised
