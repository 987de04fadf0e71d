"""Target address policy: a node must not become a proxy into its own network (SSRF).

Jobs name arbitrary URLs, so without a guard anyone with an account could make the node call its loopback
admin ports, the private network behind it or the cloud metadata service (which hands out credentials). The
policy is secure by default: only globally routable unicast addresses are allowed unless the operator sets
`security.allow_private_targets` (for self-hosted setups that call internal services on purpose).

Where the policy is applied:

- at submission, without DNS: IP literals and loopback names (`localhost`, `*.localhost`) are refused by
  edge/http/api.py (`static_refusal`), so an obviously bad target fails fast with a clear error;
- at connect time, for names: `guarded_transport` resolves the name itself, vets every address and connects to a
  vetted IP, so the check is made against the address actually connected to. There is no separate DNS check
  before the request: its answer could change before the connect (DNS rebinding), and the connect-time guard is
  already bounded by the attempt's own timeouts, so it is the single entry point for names.

A name is refused if ANY of its addresses is forbidden: whoever controls the name controls its records, and a
mixed answer is exactly what a rebinding attack looks like.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Iterable
from typing import Protocol

import httpx
import trio

from edge.outbound.keepalive import Connect, KeepAliveTransport, PoolLimits
from edge.runtime import Resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services hand out cloud credentials: the most valuable SSRF target there is. Named first
# so the refusal says why, even where a broader rule (link-local, unique local) would also match.
CLOUD_METADATA_ADDRESSES: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "cloud metadata service (AWS, GCP, Azure, OpenStack, ...)",
    ipaddress.ip_address("fd00:ec2::254"): "cloud metadata service (AWS IPv6)",
    ipaddress.ip_address("100.100.100.200"): "cloud metadata service (Alibaba Cloud)",
}

# Special-purpose ranges (IANA registries, RFC 6890), most specific first: the first match names the rule.
IPV4_FORBIDDEN: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(network), rule)
    for network, rule in (
        ("0.0.0.0/8", "'this network', includes the unspecified address (RFC 1122)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space / carrier-grade NAT (RFC 6598)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.88.99.0/24", "6to4 relay anycast (RFC 7526)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking (RFC 2544)"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved (RFC 1112)"),
    )
)
IPV6_FORBIDDEN: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(network), rule)
    for network, rule in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
        ("100::/64", "discard-only (RFC 6666)"),
        ("2001::/32", "Teredo tunnelling (RFC 4380)"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique local, i.e. private (RFC 4193)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated, RFC 3879)"),
        ("ff00::/8", "multicast"),
    )
)
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
NAT64_WELL_KNOWN_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class TargetRefused(Exception):
    """A target URL (or the address it resolves to) that the policy does not allow."""

    def __init__(self, reason: str, url: str) -> None:
        super().__init__(f"refusing {url}: {reason}")
        self.reason = reason
        self.url = url


def forbidden_reason(ip: str) -> str | None:
    """Why `ip` must not be contacted, naming the address and the rule; None when it is public.

    Text that is not an IP address is refused rather than waved through: the guard fails closed.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            ipv4, form = embedded
            inner = _classify(ipv4, str(ipv4))
            return None if inner is None else f"{ip} is the {form} form of {ipv4}: {inner}"
    return _classify(address, ip)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for, so ::ffff:127.0.0.1 cannot sneak past the IPv4 rules."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address in NAT64_WELL_KNOWN_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF), "NAT64 (RFC 6052)"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    return None


def _classify(address: IPAddress, shown: str) -> str | None:
    """The first rule `address` breaks, naming it as `shown` (the caller's spelling)."""
    if address in CLOUD_METADATA_ADDRESSES:
        return f"{shown} is a {CLOUD_METADATA_ADDRESSES[address]}"
    rules: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = (
        IPV4_FORBIDDEN if isinstance(address, ipaddress.IPv4Address) else IPV6_FORBIDDEN
    )
    for network, rule in rules:
        if address in network:
            return f"{shown} is in {network}: {rule}"
    if isinstance(address, ipaddress.IPv6Address) and address not in IPV6_GLOBAL_UNICAST:
        return f"{shown} is outside {IPV6_GLOBAL_UNICAST}, the only global unicast range (reserved)"
    # Backstop for special-purpose ranges not named above (e.g. 2001:2::/48 benchmarking): Python tracks the
    # IANA registries, so a range registered later is refused without a code change here.
    if not address.is_global:
        return f"{shown} is not globally routable (IANA special-purpose range)"
    return None


async def _vetted_addresses(host: str, url: str, resolver: Resolver) -> list[str]:
    """The addresses `host` stands for, all of them allowed, or TargetRefused naming the first bad one."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        reason = forbidden_reason(host)
        if reason is not None:
            raise TargetRefused(reason, url)
        return [host]
    try:
        addresses = await resolver(host)
    except OSError as exc:
        raise TargetRefused(f"{host} does not resolve ({exc})", url) from exc
    if not addresses:
        raise TargetRefused(f"{host} does not resolve (no addresses)", url)
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None:
            raise TargetRefused(f"{host} resolves to a forbidden address: {reason}", url)
    return addresses


def refusal_of(exc: BaseException) -> TargetRefused | None:
    """The TargetRefused behind an httpx error raised by a guarded transport, if that is what it was.

    Lets the executor fail such a job at once instead of retrying a connect that will never be allowed.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TargetRefused):
            return cause
        cause = cause.__cause__ or cause.__context__  # explicit or implicit chaining, whichever a layer used
    return None


class OpenTcp(Protocol):
    """`trio.open_tcp_stream`'s shape: what the connectors below open sockets with (tests pass their own)."""

    def __call__(self, host: str, port: int, *, local_address: str | None = None) -> Awaitable[trio.SocketStream]: ...


def guarded_connect(resolver: Resolver, *, local_address: str | None, open_tcp: OpenTcp) -> Connect:
    """A `Connect` that only ever connects to vetted IP addresses.

    It resolves the name with the injected resolver, refuses the name if any address is forbidden, and connects to
    the vetted IPs in order (the first that accepts wins). TLS is unaffected: the transport then starts TLS with the
    URL's host as the server name, never the IP connected to, so SNI and certificate checks use the hostname.
    """

    async def connect(host: str, port: int) -> trio.SocketStream:
        addresses = await _vetted_addresses(host, f"{host}:{port}", resolver)  # or TargetRefused
        failures: list[str] = []
        for address in addresses:
            try:
                return await open_tcp(address, port, local_address=local_address)
            except OSError as exc:
                failures.append(f"{address}: {exc}")
        raise OSError("; ".join(failures))

    return connect


def plain_connect(*, local_address: str | None, open_tcp: OpenTcp) -> Connect:
    """A `Connect` without the policy (`security.allow_private_targets`): the system resolver, every address."""

    async def connect(host: str, port: int) -> trio.SocketStream:
        return await open_tcp(host, port, local_address=local_address)

    return connect


def guarded_transport(
    *,
    allow_private: bool,
    resolver: Resolver,
    max_connections: int,
    max_keepalive_connections: int,
    keepalive_expiry_s: float,
    local_address: str | None = None,
    open_tcp: OpenTcp = trio.open_tcp_stream,
) -> httpx.AsyncBaseTransport:
    """The outbound transport for jobs and webhooks: pooled HTTP/1.1 (edge/outbound/keepalive.py), address-checked
    at connect time, its connections bound to `local_address` when one is given.

    With `allow_private` it connects to whatever the name resolves to (the operator opted out of the policy).
    An explicit transport also keeps httpx from routing through proxies named in the environment, which would
    otherwise connect on our behalf, unchecked.
    """
    limits = PoolLimits(
        connections_max=max_connections, idle_max=max_keepalive_connections, idle_expiry_s=keepalive_expiry_s
    )
    if allow_private:
        connect = plain_connect(local_address=local_address, open_tcp=open_tcp)
    else:
        connect = guarded_connect(resolver, local_address=local_address, open_tcp=open_tcp)
    return KeepAliveTransport(connect=connect, limits=limits)
