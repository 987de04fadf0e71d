"""What the upstream receives and what the client gets back, over real sockets on both sides of the proxy."""

from __future__ import annotations

import json

import pytest
import trio

from tests.edge.proxy.support import harness, protect_keys

KEY = "cust_rated_0123456789"


async def test_method_target_and_end_to_end_headers_arrive_with_forwarding_added() -> None:
    async with harness() as h:
        response = await h.client.request(
            "PATCH",
            "/headers/a%2Fb?q=1&q=2&x=%20y",
            content=b'{"n": 1}',
            headers={
                "content-type": "application/json",
                "x-api-key": "whatever",
                "x-forwarded-for": "203.0.113.7",
                "connection": "x-hop",
                "x-hop": "dropped",
                "proxy-authorization": "Basic eA==",
            },
        )
        front = h.proxy.server.bound[0]
    seen = response.json()
    headers = dict(seen["headers"])
    assert seen["method"] == "PATCH"
    assert seen["target"] == "/headers/a%2Fb?q=1&q=2&x=%20y"  # percent-encoding untouched
    assert headers["content-type"] == "application/json" and headers["x-api-key"] == "whatever"
    assert headers["content-length"] == "8"
    assert headers["host"] == front  # the name the client asked for
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["forwarded"] == f'for=127.0.0.1;proto=http;host="{front}"'
    assert "x-hop" not in headers and "proxy-authorization" not in headers and "connection" not in headers
    assert response.headers["x-upstream"] == "1"


async def test_hop_by_hop_response_headers_are_dropped() -> None:
    async with harness() as h:
        response = await h.client.get("/hop-by-hop")
    assert response.status_code == 200
    assert response.headers["x-kept"] == "1"
    for dropped in ("x-private", "keep-alive", "proxy-authenticate"):
        assert dropped not in response.headers
    assert len(response.headers.get_list("date")) == 1


async def test_http2_clients_are_served_and_forwarded_over_http1() -> None:
    async with harness(http2=True) as h:
        responses = [await h.client.get(f"/headers?n={n}") for n in range(3)]
        front = h.proxy.server.bound[0]
    assert {r.http_version for r in responses} == {"HTTP/2"}
    seen = json.loads(responses[2].text)
    headers = dict(seen["headers"])
    assert seen["target"] == "/headers?n=2"
    assert headers["host"] == front
    assert not any(name.startswith(":") for name in headers)


async def test_upstream_connections_are_kept_alive_and_reused() -> None:
    async with harness() as h:
        for _ in range(20):
            assert (await h.client.get("/work")).status_code == 200
    assert h.upstream.started == 20
    assert len(h.upstream.connections) == 1


@pytest.mark.parametrize("target", [b"http://example.com/", b"/path?q=1#fragment"], ids=["absolute", "fragment"])
async def test_targets_that_are_not_plain_paths_are_refused(target: bytes) -> None:
    # Absolute form above all: forwarding it would make the listener an open proxy.
    async with harness() as h, await trio.open_tcp_stream(*h.proxy.server.host_port) as stream:
        await stream.send_all(b"GET " + target + b" HTTP/1.1\r\nhost: example.com\r\n\r\n")
        with trio.fail_after(5):
            head = await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"application/problem+json" in head
    assert h.upstream.started == 0


async def test_successful_responses_carry_the_callers_ratelimit_fields() -> None:
    keys = protect_keys([{"key": KEY, "tier": "paid", "rate_per_s": 10.0, "burst": 5}])
    async with harness(keys=keys) as h:
        first = await h.client.get("/work", headers={"x-api-key": KEY})
        second = await h.client.get("/work", headers={"x-api-key": KEY})
        anonymous = await h.client.get("/work")
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"per-key";q=10;w=1'  # burst 5, then 10/s: 10 a second
    assert first.headers["ratelimit"].startswith('"per-key";r=4;')
    assert int(second.headers["ratelimit"].split("r=")[1].split(";")[0]) <= 4
    assert "ratelimit" not in anonymous.headers  # no rate, no fields
