"""Where the other members are: seed strings in, checked IP addresses out, and the rule for who we talk to.

Seeds are configuration text, in these forms:

    10.0.0.5:7946        an IPv4 literal and port
    [fdaa::3]:7946       an IPv6 literal and port (brackets required with a port)
    fdaa::3              a bare IPv6 literal: our own gossip port
    node-a:7946          a DNS name and port
    my-app.internal      a DNS name alone: our own gossip port. On Fly.io `<app>.internal` resolves to the AAAA
                         records of every machine of the app, this one included, so one seed finds everyone.

Names are resolved on every join attempt through the injected resolver (`Runtime.resolver`), never cached: a
redeployed cluster comes back on new addresses. Each attempt is bounded (`resolve_timeout_s` for all seeds at
once, resolved concurrently); a seed that fails or hangs is skipped for that attempt and tried again on the next.
Our own addresses are skipped (a seed list is usually the same on every member). Attempts are spaced by
`backoff_delay`: exponential with "equal jitter", so members restarted together do not knock in lockstep.

Which addresses we send to (`usable_peer_address`). Every destination the shell sends to came from a seed, DNS,
or gossip (a member's advertised address, authenticated by the keyring but typed by whoever configured that
member). It must be
- an IP literal: the core's addresses are literals, and resolving one here would let gossip steer DNS lookups;
- unicast: never unspecified (0.0.0.0, ::), multicast, the IPv4 limited broadcast or the rest of 240.0.0.0/4,
  nor IPv6 link-local (unroutable without a scope id, which the wire does not carry);
- on an unprivileged port (>= GOSSIP_PORT_MIN): members listen on any port they like (several per host in tests),
  so no allowlist of cluster ports is possible, but no member can listen below 1024 either (the shell refuses to
  bind or advertise there), and that keeps a misconfigured member from aiming the cluster's datagrams at DNS (53),
  NTP (123), SNMP (161) and the other classic reflection targets.
What it cannot catch: a subnet's directed broadcast (x.y.z.255 needs the netmask) and a unicast victim on a high
port; the keyring, not this rule, is what keeps strangers from injecting addresses at all.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING

import trio

from cluster.messages import Address

if TYPE_CHECKING:
    import random

log = logging.getLogger("ezthrottle.cluster")

# An async resolver: host name -> IP address strings (v4 and v6); raises OSError when the name does not resolve.
# The same shape as edge.runtime.Resolver, so the node passes `Runtime.resolver` through.
Resolver = Callable[[str], Awaitable[list[str]]]

# Ports below this are privileged: no member binds there, so no member is ever sent anything there.
GOSSIP_PORT_MIN = 1024

# A seed before resolution: a host (IP literal or DNS name) and a port, None for "our own gossip port".
Seed = tuple[str, int | None]


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, a bare host or a bare IPv6 literal -> (host, port or None). Raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [ipv6]:port, got {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a name, an IPv4 literal, or a bare IPv6 literal (more than one colon)
        host, port_text = text, None
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


def ip_literal(host: str) -> str | None:
    """`host` in canonical form if it is an IP literal (IPv4-mapped IPv6 unwrapped to IPv4), else None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


def usable_peer_host(host: str) -> bool:
    """May the shell send to `host`, on a usable port? The rule and its reasons are in the module docstring."""
    literal = ip_literal(host)
    if literal is None:
        return False
    ip = ipaddress.ip_address(literal)
    if ip.is_unspecified or ip.is_multicast:
        return False
    if ip.version == 4:
        return not ip.is_reserved  # 240.0.0.0/4, which holds 255.255.255.255
    return not ip.is_link_local


def usable_peer_address(address: Address) -> bool:
    """May the shell send to `address`? The rule and its reasons are in the module docstring."""
    host, port = address
    return GOSSIP_PORT_MIN <= port <= 65535 and usable_peer_host(host)


def parse_seed(text: str) -> Seed:
    """Check a seed's syntax at start-up, so a typo fails loudly instead of as a node that never joins."""
    host, port = split_host_port(text)
    if port is not None and port < GOSSIP_PORT_MIN:
        raise ValueError(f"seed {text!r}: gossip ports start at {GOSSIP_PORT_MIN}")
    return host, port


async def resolve_seeds(
    seeds: Sequence[Seed],
    *,
    resolver: Resolver,
    default_port: int,
    own: Collection[Address],
    timeout_s: float,
) -> list[Address]:
    """Every usable address the seeds stand for now, in seed order, without duplicates or our own addresses.

    Names are resolved concurrently under one `timeout_s`; one that fails or is still pending then is skipped.
    """
    found: dict[int, list[str]] = {}

    async def resolve(index: int, name: str) -> None:
        try:
            found[index] = await resolver(name)
        except OSError as exc:
            log.warning("cluster seed %r did not resolve: %s", name, exc)

    with trio.move_on_after(timeout_s) as scope:
        async with trio.open_nursery() as nursery:
            for index, (host, _port) in enumerate(seeds):
                if ip_literal(host) is None:
                    nursery.start_soon(resolve, index, host)
                else:
                    found[index] = [host]
    if scope.cancelled_caught:
        log.warning("cluster seeds still resolving after %.1f s; trying the ones that answered", timeout_s)
    skipped = {(ip_literal(host) or host, port) for host, port in own}
    addresses: dict[Address, None] = {}
    for index, (_host, port) in enumerate(seeds):
        for ip in found.get(index, []):
            literal = ip_literal(ip)
            if literal is None:  # a resolver that returned something other than an IP literal
                continue
            address = (literal, port or default_port)
            if address not in skipped and usable_peer_address(address):
                addresses.setdefault(address, None)
    return list(addresses)


def backoff_delay(attempt: int, *, initial_s: float, maximum_s: float, rng: random.Random) -> float:
    """The pause after join attempt number `attempt` (0-based): the base doubles from `initial_s` up to
    `maximum_s`, and the delay is drawn from [base / 2, base] ("equal jitter": never a near-zero retry)."""
    base = min(maximum_s, initial_s * 2 ** min(attempt, 32))
    return rng.uniform(base / 2, base)
