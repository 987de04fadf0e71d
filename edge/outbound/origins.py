"""URLs as httpx parses them: one remembered parse for requests and the SSRF check, and the canonical origin.

The canonical origin, the one spelling of an origin that queue keys and `[targets]` lookups share, is
`scheme://host[:port]`: the host as httpx sends it (lower case, IDNA-encoded, IPv6 in brackets), the scheme's
default port left out. httpx is the parser that makes the requests, so two spellings of one host
("https://Bücher.de" and "https://xn--bcher-kva.de") are one origin here exactly when they are one host on the
wire: one queue, one rate limit.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

import httpx

# Distinct (scheme, authority) pairs remembered; jobs reuse a few origins, and a miss only costs one parse.
AUTHORITIES_CACHED = 4096
# Parsed URLs remembered: forwards and webhooks repeat theirs, and jobs mostly call a few endpoints.
URLS_CACHED = 1024


@functools.lru_cache(maxsize=URLS_CACHED)
def parsed_url(url: str) -> httpx.URL:
    """`url` parsed by httpx (httpx.InvalidURL if it cannot be). httpx.URL is immutable, and parsing is most of the
    cost of building a request, so recent ones are kept; the SSRF check reads the same parse the request uses."""
    return httpx.URL(url)


def parse_http_url(text: str) -> httpx.URL:
    """`text` parsed by httpx, or ValueError when it is not an http(s) URL with a host and a valid port."""
    try:
        parsed = parsed_url(text)
    except httpx.InvalidURL as exc:
        raise ValueError(str(exc)) from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError("not an http(s) URL with a host")
    if parsed.port is not None and parsed.port > 65535:
        raise ValueError("port out of range")
    return parsed


def canonical_origin(parsed: httpx.URL) -> str:
    """The origin of an already parsed URL."""
    host = parsed.raw_host.decode("ascii")
    bracketed = f"[{host}]" if ":" in host else host
    default_port = 443 if parsed.scheme == "https" else 80
    port = "" if parsed.port in (None, default_port) else f":{parsed.port}"
    return f"{parsed.scheme}://{bracketed}{port}"


def origin_of(url: str) -> str:
    """The origin of `url`; ValueError if it has none. Only the authority is parsed by httpx, and remembered."""
    parts = urlsplit(url)
    return _origin_of_authority(parts.scheme.lower(), parts.netloc)


@functools.lru_cache(maxsize=AUTHORITIES_CACHED)
def _origin_of_authority(scheme: str, authority: str) -> str:
    return canonical_origin(parse_http_url(f"{scheme}://{authority}"))
