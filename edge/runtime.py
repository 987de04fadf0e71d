"""What a node takes from the outside world, injected in one place.

Node code never calls `time.time()`, the global `random`, `socket.getaddrinfo` or opens its own HTTP transport:
it asks its `Runtime`. Production builds one from the real world (`Runtime.real()`); the simulator builds one from
virtual time, a seeded RNG and simulated networks, and the same node code runs unchanged. Monotonic time is not
here: shells read it from `trio.current_time()`, which the simulator already controls through its clock.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import trio

if TYPE_CHECKING:
    from cluster.shell.transport import TransportFactory

# An async resolver: host -> list of IP address strings (v4 and v6). Raises OSError when the name does not resolve.
Resolver = Callable[[str], Awaitable[list[str]]]


def system_wall_clock() -> float:
    """Unix time in seconds from the system clock: the real `Runtime.wall_clock`, and the HTTP servers' Date."""
    return time.time()


async def system_resolver(host: str) -> list[str]:
    """Resolve with the OS resolver in a worker thread (trio.socket.getaddrinfo)."""
    infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The injected world of one node.

    - `wall_clock`: unix time in seconds (float). Job timestamps, `retry_at`, HTTP dates, webhook signatures.
    - `rng`: the only source of randomness (jitter, ids).
    - `resolver`: DNS for the SSRF guard.
    - `transport`: the httpx transport for outbound calls (jobs, webhooks, other nodes); None means real sockets.
    - `cluster_transport`: how the cluster member opens its gossip transport; None means real UDP and TCP.
    """

    wall_clock: Callable[[], float]
    rng: random.Random
    resolver: Resolver
    transport: httpx.AsyncBaseTransport | None = None
    cluster_transport: TransportFactory | None = None

    @classmethod
    def real(cls) -> Runtime:
        return cls(wall_clock=system_wall_clock, rng=random.Random(), resolver=system_resolver)

    def wall_ms(self) -> int:
        return int(self.wall_clock() * 1000)
