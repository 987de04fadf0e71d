"""Messages to msgpack and back: `[tag, field, field, ...]`, one schema per message class.

Decoding trusts nothing: every field is type-checked and bounded before a message is built, and anything wrong
raises `MalformedMessage` (envelope.py counts it and drops the datagram). Two rules keep old and new nodes
compatible: message tags are only appended (messages.MessageType), and fields are only appended to a schema,
so a decoder ignores trailing fields it does not know and skips tags it does not know. The other direction
holds too: a field appended after a schema first shipped is marked `appended`, and when a peer that predates
it leaves it out, the message class's default stands in (PushPull's `shared` and `counters`).

Shared-map entries are checked for shape here (a str key, a scalar value, a uint timestamp, a node id) but
not for the map's size bounds: those are shared.py's, which drops and counts an over-bound entry on its own.
A peer whose bounds are wider (a later version) then costs only its over-bound entries, not the datagram or
the whole push-pull that carries them, members included. Counter entries (counters.py) are treated alike: a str
name, a node id and a uint value here, the name's length and the map's size bound there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from .messages import (
    API_ADDRESS_BYTES_MAX,
    HOST_BYTES_MAX,
    NODE_ID_BYTES_MAX,
    REGION_BYTES_MAX,
    Ack,
    Address,
    Alive,
    CounterEntry,
    Counters,
    Dead,
    IndirectPing,
    MemberInfo,
    MemberState,
    Message,
    MessageType,
    Nack,
    Ping,
    PushPull,
    Shared,
    SharedEntry,
    Suspect,
)

UINT_MAX = 2**64 - 1


class MalformedMessage(ValueError):
    """A wire message that does not fit its schema: a bug or an incompatible peer, never our fault."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one field goes to the wire (`encode`) and comes back checked (`decode`)."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    # Added to its schema after the schema shipped: a peer that predates it may leave it out.
    appended: bool = False


def _identity(value: Any) -> Any:
    return value


def _decode_uint(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= UINT_MAX:
        raise MalformedMessage(f"expected an unsigned 64-bit int, got {value!r:.40}")
    return value


def _text(bytes_max: int, *, allow_empty: bool) -> _Kind:
    def decode(value: Any) -> str:
        if type(value) is not str or len(value.encode()) > bytes_max or not (value or allow_empty):
            raise MalformedMessage(f"expected text of at most {bytes_max} bytes, got {value!r:.40}")
        return value

    return _Kind(_identity, decode)


def _decode_flag(value: Any) -> bool:
    if type(value) is not bool:
        raise MalformedMessage(f"expected a bool, got {value!r:.40}")
    return value


_HOST = _text(HOST_BYTES_MAX, allow_empty=False)


def _encode_address(address: Address) -> list[Any]:
    return [address[0], address[1]]


def _decode_address(value: Any) -> Address:
    if type(value) is not list or len(value) != 2:
        raise MalformedMessage(f"expected [host, port], got {value!r:.40}")
    port = _decode_uint(value[1])
    if not 0 < port < 65536:
        raise MalformedMessage(f"port out of range: {port}")
    return (_HOST.decode(value[0]), port)


def _decode_state(value: Any) -> MemberState:
    try:
        return MemberState(_decode_uint(value))
    except ValueError as exc:
        raise MalformedMessage(f"unknown member state {value!r:.40}") from exc


UINT = _Kind(_identity, _decode_uint)
NODE_ID = _text(NODE_ID_BYTES_MAX, allow_empty=False)
REGION = _text(REGION_BYTES_MAX, allow_empty=True)
API_ADDRESS = _text(API_ADDRESS_BYTES_MAX, allow_empty=True)
MACHINE = _Kind(_identity, _text(NODE_ID_BYTES_MAX, allow_empty=True).decode, appended=True)
FLAG = _Kind(_identity, _decode_flag)
ADDRESS = _Kind(_encode_address, _decode_address)
STATE = _Kind(int, _decode_state)

Schema = tuple[tuple[str, _Kind], ...]


def _encode_fields(value: Any, schema: Schema) -> list[Any]:
    return [kind.encode(getattr(value, name)) for name, kind in schema]


def _decode_fields(cls: type[Any], schema: Schema, values: list[Any]) -> Any:
    """Build `cls` from wire values; extra trailing values come from a newer peer and are ignored, missing
    `appended` ones from an older peer take the class default."""
    required = sum(not kind.appended for _name, kind in schema)
    if len(values) < required:
        raise MalformedMessage(f"{cls.__name__} needs {required} fields, got {len(values)}")
    return cls(**{name: kind.decode(value) for (name, kind), value in zip(schema, values, strict=False)})


_MEMBER_INFO_SCHEMA: Schema = (
    ("node", NODE_ID),
    ("address", ADDRESS),
    ("region", REGION),
    ("api_address", API_ADDRESS),
    ("incarnation", UINT),
    ("state", STATE),
    ("machine", MACHINE),
)


def _encode_members(members: tuple[MemberInfo, ...]) -> list[Any]:
    return [_encode_fields(member, _MEMBER_INFO_SCHEMA) for member in members]


def _decode_members(value: Any) -> tuple[MemberInfo, ...]:
    if type(value) is not list:
        raise MalformedMessage("push-pull members must be a list")
    members = []
    for entry in value:
        if type(entry) is not list:
            raise MalformedMessage("a push-pull member must be a list")
        members.append(_decode_fields(MemberInfo, _MEMBER_INFO_SCHEMA, entry))
    return tuple(members)


MEMBERS = _Kind(_encode_members, _decode_members)


def _decode_shared_key(value: Any) -> str:
    if type(value) is not str:
        raise MalformedMessage(f"a shared key must be text, got {value!r:.40}")
    return value


def _decode_shared_value(value: Any) -> Any:
    # Exact types: msgpack yields exactly these for its nil, bool, int, float and str; anything else (bytes,
    # arrays, maps, extension types) is not a register value.
    if type(value) not in (bool, int, float, str, type(None)):
        raise MalformedMessage(f"a shared value must be nil, bool, int, float or text, got {value!r:.40}")
    return value


_SHARED_ENTRY_SCHEMA: Schema = (
    ("key", _Kind(_identity, _decode_shared_key)),
    ("value", _Kind(_identity, _decode_shared_value)),
    ("wall_ms", UINT),
    ("node", NODE_ID),
)


def _encode_shared_entry(entry: SharedEntry) -> list[Any]:
    return _encode_fields(entry, _SHARED_ENTRY_SCHEMA)


def _decode_shared_entry(value: Any) -> SharedEntry:
    if type(value) is not list:
        raise MalformedMessage("a shared entry must be a list")
    entry: SharedEntry = _decode_fields(SharedEntry, _SHARED_ENTRY_SCHEMA, value)
    return entry


def _encode_shared_entries(entries: tuple[SharedEntry, ...]) -> list[Any]:
    return [_encode_shared_entry(entry) for entry in entries]


def _decode_shared_entries(value: Any) -> tuple[SharedEntry, ...]:
    if type(value) is not list:
        raise MalformedMessage("push-pull shared entries must be a list")
    return tuple(_decode_shared_entry(entry) for entry in value)


SHARED_ENTRY = _Kind(_encode_shared_entry, _decode_shared_entry)
SHARED_ENTRIES = _Kind(_encode_shared_entries, _decode_shared_entries, appended=True)


def _decode_counter_name(value: Any) -> str:
    if type(value) is not str:
        raise MalformedMessage(f"a counter name must be text, got {value!r:.40}")
    return value


_COUNTER_ENTRY_SCHEMA: Schema = (
    ("name", _Kind(_identity, _decode_counter_name)),
    ("node", NODE_ID),
    ("value", UINT),
)


def _encode_counter_entry(entry: CounterEntry) -> list[Any]:
    return _encode_fields(entry, _COUNTER_ENTRY_SCHEMA)


def _encode_counter_entries(entries: tuple[CounterEntry, ...]) -> list[Any]:
    return [_encode_counter_entry(entry) for entry in entries]


def _decode_counter_entries(value: Any) -> tuple[CounterEntry, ...]:
    if type(value) is not list:
        raise MalformedMessage("counter entries must be a list")
    entries = []
    for item in value:
        if type(item) is not list:
            raise MalformedMessage("a counter entry must be a list")
        entries.append(_decode_fields(CounterEntry, _COUNTER_ENTRY_SCHEMA, item))
    return tuple(entries)


COUNTER_ENTRIES = _Kind(_encode_counter_entries, _decode_counter_entries)
PUSH_PULL_COUNTERS = _Kind(_encode_counter_entries, _decode_counter_entries, appended=True)

# The wire schema of every message: ONLY APPEND fields, never reorder or remove them.
_SCHEMAS: dict[type[Message], tuple[MessageType, Schema]] = {
    Ping: (MessageType.PING, (("seq", UINT), ("target", NODE_ID))),
    IndirectPing: (
        MessageType.INDIRECT_PING,
        (("seq", UINT), ("target", NODE_ID), ("target_address", ADDRESS), ("want_nack", FLAG)),
    ),
    Ack: (MessageType.ACK, (("seq", UINT),)),
    Nack: (MessageType.NACK, (("seq", UINT),)),
    Suspect: (
        MessageType.SUSPECT,
        (("node", NODE_ID), ("incarnation", UINT), ("accuser", NODE_ID), ("accuser_incarnation", UINT)),
    ),
    Alive: (
        MessageType.ALIVE,
        (
            ("node", NODE_ID),
            ("incarnation", UINT),
            ("address", ADDRESS),
            ("region", REGION),
            ("api_address", API_ADDRESS),
            ("machine", MACHINE),
        ),
    ),
    Dead: (
        MessageType.DEAD,
        (("node", NODE_ID), ("incarnation", UINT), ("accuser", NODE_ID), ("accuser_incarnation", UINT)),
    ),
    PushPull: (
        MessageType.PUSH_PULL,
        (("members", MEMBERS), ("is_reply", FLAG), ("shared", SHARED_ENTRIES), ("counters", PUSH_PULL_COUNTERS)),
    ),
    Shared: (MessageType.SHARED, (("entry", SHARED_ENTRY),)),
    Counters: (MessageType.COUNTERS, (("entries", COUNTER_ENTRIES),)),
}
_BY_TAG: dict[int, tuple[type[Message], Schema]] = {int(tag): (cls, schema) for cls, (tag, schema) in _SCHEMAS.items()}


def shared_entry_bytes(entry: SharedEntry) -> int:
    """The bytes `entry` takes inside a push-pull's shared list (to fit a push-pull into its stream bound)."""
    return len(msgpack.packb(_encode_shared_entry(entry)))


def counter_entry_bytes(entry: CounterEntry) -> int:
    """The bytes `entry` takes inside a push-pull's counters list (to fit a push-pull into its stream bound)."""
    return len(msgpack.packb(_encode_counter_entry(entry)))


def encode_message(message: Message) -> bytes:
    """One message as a msgpack array; a batch is these arrays concatenated under one array header."""
    tag, schema = _SCHEMAS[type(message)]
    return msgpack.packb([int(tag), *_encode_fields(message, schema)])


def decode_message(item: Any) -> Message | None:
    """One unpacked message, or None for a tag from a newer protocol (skipped, not an error)."""
    if type(item) is not list or not item or type(item[0]) is not int:
        raise MalformedMessage(f"a message must be [tag, fields...], got {item!r:.40}")
    entry = _BY_TAG.get(item[0])
    if entry is None:
        return None
    cls, schema = entry
    message: Message = _decode_fields(cls, schema, item[1:])
    return message
