"""Header rewriting for the inbound proxy: pure functions over ASGI header lists (lower-case byte names).

Requests keep every end-to-end header, Host included (the upstream sees the name the client asked for, as
Caddy and Traefik do by default), and gain the proxy's hop in `Forwarded` (RFC 7239) and `X-Forwarded-For`.
Each is *one* combined line, earlier hops first: plenty of parsers read only the first line of a repeated
header, and an appended second line would hide this hop from them.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the message, so they are dropped both
ways: Connection and every header it names, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade and any
Proxy-*. Also dropped: `Expect` (the front end has already answered a 100-continue, so the upstream must not be
asked again), HTTP/2 pseudo-headers (`:authority` becomes Host when the request has none), and the
upstream's `Date` (the front end always sends its own, and two Date lines are invalid).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Final

from scheduler import RateLimitStatus

Header = tuple[bytes, bytes]

HOP_BY_HOP: Final = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
_DROPPED_FROM_REQUESTS: Final = frozenset({b"expect"})
_DROPPED_FROM_RESPONSES: Final = frozenset({b"date"})
# RFC 7230 token characters: a Forwarded value made only of these needs no quotes.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The IETF RateLimit policy name the proxy reports each key's own limit under.
RATE_LIMIT_POLICY_NAME: Final = "per-key"


def _connection_tokens(headers: Iterable[Header]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def _is_hop_by_hop(name: bytes, named_by_connection: set[bytes]) -> bool:
    return name in HOP_BY_HOP or name.startswith(b"proxy-") or name in named_by_connection


def _forwarded_value(value: str) -> bytes:
    """A Forwarded parameter value: bare when it is a token, else quoted (IPv6 in brackets, host:port)."""
    raw = value.encode("latin-1")
    if _TOKEN.fullmatch(raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _node(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def upstream_request_headers(headers: Iterable[Header], *, client_host: str | None, scheme: str) -> list[Header]:
    """The headers to send upstream for a request that arrived with `headers` from `client_host`."""
    headers = list(headers)
    named = _connection_tokens(headers)
    kept: list[Header] = []
    authority: bytes | None = None
    has_host = False
    forwarded: list[bytes] = []
    forwarded_for: list[bytes] = []
    for name, value in headers:
        if name.startswith(b":"):
            if name == b":authority":
                authority = value
            continue
        if _is_hop_by_hop(name, named) or name in _DROPPED_FROM_REQUESTS:
            continue
        if name == b"forwarded":
            forwarded.append(value.strip())
        elif name == b"x-forwarded-for":
            forwarded_for.append(value.strip())
        else:
            has_host = has_host or name == b"host"
            kept.append((name, value))
    host = next((value for name, value in kept if name == b"host"), authority)
    if not has_host and authority is not None:
        kept.append((b"host", authority))
    client = client_host or "unknown"
    hop = b"for=" + _forwarded_value(_node(client)) + b";proto=" + scheme.encode("ascii")
    if host is not None:
        hop += b";host=" + _forwarded_value(host.decode("latin-1"))
    kept.append((b"forwarded", b", ".join([*forwarded, hop])))
    kept.append((b"x-forwarded-for", b", ".join([*forwarded_for, client.encode("latin-1")])))
    return kept


def downstream_response_headers(headers: Iterable[Header]) -> list[Header]:
    """The upstream's response headers as the client gets them, names in lower case (the upstream's spelling
    arrives as sent; HTTP/2 requires lower case)."""
    headers = [(name.lower(), value) for name, value in headers]
    named = _connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if not _is_hop_by_hop(name, named) and name not in _DROPPED_FROM_RESPONSES
    ]


def rate_limit_headers(status: RateLimitStatus) -> list[Header]:
    """The IETF RateLimit / RateLimit-Policy fields (draft-ietf-httpapi-ratelimit-headers) for one key."""
    name = RATE_LIMIT_POLICY_NAME
    reset_s = math.ceil(status.reset_s)
    return [
        (b"ratelimit-policy", f'"{name}";q={status.quota};w={status.window_s}'.encode()),
        (b"ratelimit", f'"{name}";r={status.remaining};t={reset_s}'.encode()),
    ]


def retry_after_header(seconds: float) -> Header:
    """Retry-After in whole seconds, never 0: "come back now" would invite an immediate retry storm."""
    return (b"retry-after", str(max(1, math.ceil(seconds))).encode())
