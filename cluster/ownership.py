"""Which member owns a queue key: rendezvous (highest-random-weight) hashing over the live members.

Every node computes the same owner from the same member list, with no coordination messages: each (member,
key) pair gets a pseudo-random weight and the heaviest member wins. When a member goes, only the keys it owned
move (about 1/N of them), each to its runner-up, so they spread evenly over the rest; a member that joins
takes about 1/(N+1) of the keys, a little from everyone. Unlike a ring there are no virtual nodes to tune
(gubernator uses 512 per peer to even out its ring).

Weights come from BLAKE2b, so every process, version and platform agrees (Python's `hash()` is salted per
process). A lookup costs one hash per member: fine for the tens of members of one cluster; callers that route
many jobs cache the owner per key and drop the cache when membership changes.

Which members count is the caller's choice; the node passes alive and suspect ones (`MemberState.is_live`), so
a suspicion that is refuted moves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import final


def _member_prefix(member: str) -> hashlib.blake2b:
    """A hasher primed with the member id; a lookup copies it and adds the key."""
    encoded = member.encode()
    # Length-prefixed, so no (member, key) pair can collide with another by shifting bytes between the two.
    return hashlib.blake2b(len(encoded).to_bytes(2, "big") + encoded, digest_size=8)


@final
class Rendezvous:
    """Owner lookup over a fixed member list; build a new one when membership changes."""

    __slots__ = ("_prefixes",)

    def __init__(self, members: Iterable[str]) -> None:
        self._prefixes = [(member, _member_prefix(member)) for member in sorted(set(members))]

    def __repr__(self) -> str:
        return f"<Rendezvous: {len(self._prefixes)} members>"

    @property
    def members(self) -> list[str]:
        return [member for member, _prefix in self._prefixes]

    def owner(self, key: str | bytes) -> str | None:
        """The member with the highest weight for `key` (ties to the larger id), or None with no members."""
        data = key.encode() if isinstance(key, str) else key
        best: tuple[int, str] | None = None
        for member, prefix in self._prefixes:
            hasher = prefix.copy()
            hasher.update(data)
            candidate = (int.from_bytes(hasher.digest(), "big"), member)
            if best is None or candidate > best:
                best = candidate
        return None if best is None else best[1]

    def ranked(self, key: str | bytes, count: int) -> list[str]:
        """The `count` heaviest members for `key`, heaviest first: the owner, then its successors.

        The second is exactly the member that `owner` names once the first is gone (removing a member changes no
        other member's weight), which is why replicas go to this order: a takeover finds the jobs already there."""
        data = key.encode() if isinstance(key, str) else key
        weighted = []
        for member, prefix in self._prefixes:
            hasher = prefix.copy()
            hasher.update(data)
            weighted.append((int.from_bytes(hasher.digest(), "big"), member))
        weighted.sort(reverse=True)
        return [member for _weight, member in weighted[:count]]


def spread_over_machines(ranked: Sequence[str], machine_of: Callable[[str], str], count: int) -> list[str]:
    """The `count` holders of a key whose members in rendezvous order are `ranked`: the owner (`ranked[0]`), then
    in that order the first member of each machine not holding a copy yet, and only when there are fewer machines
    than `count` the rest in that order. So the copies of a key outlive the loss of a machine whenever there are
    enough machines, and a node of several worker processes (edge/workers.py) alone still keeps a copy on another
    worker.

    The owner's first successor is then not always the member that owns the key after the owner dies (a sibling on
    the owner's machine may be); that member pulls the copies before it runs the key, as any new owner does
    (edge/placement/replication.py)."""
    chosen: list[str] = []
    machines: set[str] = set()
    for member in ranked:
        if len(chosen) == count:
            return chosen
        machine = machine_of(member)
        if machine not in machines:
            chosen.append(member)
            machines.add(machine)
    for member in ranked:
        if len(chosen) == count:
            break
        if member not in chosen:
            chosen.append(member)
    return chosen
