"""Header rewriting, as pure functions: what goes upstream, what comes back, and the RateLimit fields."""

from __future__ import annotations

from edge.proxy.headers import (
    downstream_response_headers,
    rate_limit_headers,
    retry_after_header,
    upstream_request_headers,
)
from scheduler import RateLimitStatus


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    sent = upstream_request_headers(
        [
            (b"host", b"api.example"),
            (b"connection", b"keep-alive, X-Session"),
            (b"x-session", b"abc"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"trailer", b"x-sum"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2c"),
            (b"proxy-authorization", b"Basic eA=="),
            (b"proxy-connection", b"keep-alive"),
            (b"expect", b"100-continue"),
            (b"x-api-key", b"k"),
            (b"accept", b"*/*"),
            (b"accept", b"text/plain"),
        ],
        client_host="10.1.2.3",
        scheme="https",
    )
    assert sent == [
        (b"host", b"api.example"),
        (b"x-api-key", b"k"),
        (b"accept", b"*/*"),
        (b"accept", b"text/plain"),
        (b"forwarded", b"for=10.1.2.3;proto=https;host=api.example"),
        (b"x-forwarded-for", b"10.1.2.3"),
    ]


def test_forwarding_headers_append_to_earlier_hops_in_one_line() -> None:
    sent = dict(
        upstream_request_headers(
            [
                (b"host", b"api.example:8443"),
                (b"forwarded", b"for=192.0.2.1"),
                (b"forwarded", b'for="[2001:db8::1]"'),
                (b"x-forwarded-for", b"192.0.2.1"),
                (b"x-forwarded-for", b"2001:db8::1"),
            ],
            client_host="::1",
            scheme="http",
        )
    )
    assert sent[b"forwarded"] == b'for=192.0.2.1, for="[2001:db8::1]", for="[::1]";proto=http;host="api.example:8443"'
    assert sent[b"x-forwarded-for"] == b"192.0.2.1, 2001:db8::1, ::1"


def test_http2_pseudo_headers_are_dropped_and_authority_becomes_host() -> None:
    sent = upstream_request_headers(
        [(b":method", b"GET"), (b":path", b"/x"), (b":authority", b"api.example"), (b":scheme", b"http")],
        client_host=None,
        scheme="http",
    )
    assert sent == [
        (b"host", b"api.example"),
        (b"forwarded", b"for=unknown;proto=http;host=api.example"),
        (b"x-forwarded-for", b"unknown"),
    ]


def test_response_loses_hop_by_hop_headers_and_the_upstream_date() -> None:
    returned = downstream_response_headers(
        [
            (b"Content-Type", b"application/json"),
            (b"Connection", b"close, X-Internal"),
            (b"X-Internal", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
    )
    assert returned == [(b"content-type", b"application/json"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


def test_rate_limit_fields_follow_the_ietf_draft() -> None:
    status = RateLimitStatus(quota=10, window_s=2, remaining=3, reset_s=1.2)
    assert rate_limit_headers(status) == [
        (b"ratelimit-policy", b'"per-key";q=10;w=2'),
        (b"ratelimit", b'"per-key";r=3;t=2'),
    ]


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert retry_after_header(0.0) == (b"retry-after", b"1")
    assert retry_after_header(0.2) == (b"retry-after", b"1")
    assert retry_after_header(2.01) == (b"retry-after", b"3")
