"""The node-to-node API: request signatures, and the HTTP/2 stream-reset fix it depends on."""

from __future__ import annotations

from functools import partial

import httpx
import trio

from cluster import Keyring
from edge.http.server import serve_asgi
from edge.placement.peers import sign_request, verify_request
from edge.vendor import httpcore as httpcore_patch
from tests.e2e.support import read_body, respond

KEY, OTHER = b"k" * 32, b"o" * 32


def test_signatures_verify_only_for_the_same_request_key_and_time():
    ring = Keyring(KEY)
    header = sign_request(ring, method="POST", path="/internal/v1/jobs", body=b"x", wall_s=1000)
    ok = partial(verify_request, method="POST", path="/internal/v1/jobs", body=b"x")
    assert ok(ring, header, wall_s=1010)
    assert ok(Keyring(OTHER, KEY), header, wall_s=1000)  # rotation: any accepted key verifies
    assert not ok(Keyring(OTHER), header, wall_s=1000)
    assert not ok(ring, header, wall_s=1000 + 31)  # outside the clock-skew window: a replay
    assert not verify_request(ring, header, method="POST", path="/internal/v1/handoff", body=b"x", wall_s=1000)
    assert not verify_request(ring, header, method="POST", path="/internal/v1/jobs", body=b"y", wall_s=1000)
    for garbage in ("", "t=,v1=", "t=1000,v1=zz", "t=99999999999999999999,v1=00", "v1=00"):
        assert not ok(ring, garbage, wall_s=1000)


async def test_cancelled_http2_requests_do_not_exhaust_the_connection(nursery: trio.Nursery):
    """encode/httpcore#1022: without the reset, 100 cancelled streams make every later request fail."""

    async def slow_app(scope, receive, send):
        if scope["type"] != "http":
            return
        await read_body(receive)
        if scope["path"] == "/slow":
            await trio.sleep(10)
        await respond(send, 200, b"ok")

    httpcore_patch.install()  # what run_node does for a node's peer client; this client is a bare one
    bound = await nursery.start(partial(serve_asgi, slow_app, bind="127.0.0.1:0"))
    transport = httpx.AsyncHTTPTransport(http1=False, http2=True)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{bound[0]}") as client:
        assert (await client.get("/fast")).http_version == "HTTP/2"
        for _ in range(130):
            with trio.move_on_after(0.005):
                await client.get("/slow")
        with trio.fail_after(5):
            response = await client.get("/fast")
    assert response.status_code == 200 and response.http_version == "HTTP/2"
