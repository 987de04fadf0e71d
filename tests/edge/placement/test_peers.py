"""The node-to-node API: request signatures, forward batches, and the HTTP/2 stream-reset fix it depends on."""

from __future__ import annotations

from collections import deque
from functools import partial

import httpx
import pytest
import trio

from cluster import Keyring
from edge.http.server import serve_asgi
from edge.placement.peers import (
    FORWARD_BATCH_BYTES_MAX,
    FORWARD_BATCH_RECORDS_MAX,
    BadSignature,
    _Forward,
    _next_batch,
    is_loopback,
    sign_request,
    verify_head,
)
from edge.vendor import httpcore as httpcore_patch
from tests.e2e.support import read_body, respond

KEY, OTHER = b"k" * 32, b"o" * 32


def test_signatures_verify_only_for_the_same_request_key_and_time():
    ring = Keyring(KEY)
    header = sign_request(ring, method="POST", path="/internal/v1/jobs", body=b"x", wall_s=1000)
    head = partial(verify_head, method="POST", path="/internal/v1/jobs")
    head(ring, header, wall_s=1010).check_body(b"x")
    head(Keyring(OTHER, KEY), header, wall_s=1000).check_body(b"x")  # rotation: any accepted key verifies
    with pytest.raises(BadSignature, match="not signed by a key"):
        head(Keyring(OTHER), header, wall_s=1000)
    with pytest.raises(BadSignature, match="31 s off"):  # outside the clock-skew window: a replay
        head(ring, header, wall_s=1000 + 31)
    with pytest.raises(BadSignature, match="not signed by a key"):
        verify_head(ring, header, method="POST", path="/internal/v1/handoff", wall_s=1000)
    with pytest.raises(BadSignature, match="not signed by a key"):
        verify_head(ring, header, method="PUT", path="/internal/v1/jobs", wall_s=1000)
    for other_body in (b"y", b"xx", b""):  # the head verifies; the body is not the one it names
        with pytest.raises(BadSignature, match="not the one signed"):
            head(ring, header, wall_s=1000).check_body(other_body)
    # The declared length and digest are under the tag: another body's, with this tag, do not verify.
    other = sign_request(ring, method="POST", path="/internal/v1/jobs", body=b"yy", wall_s=1000)
    with pytest.raises(BadSignature, match="not signed by a key"):
        head(ring, other.rpartition(",v2=")[0] + ",v2=" + header.rpartition(",v2=")[2], wall_s=1000)
    v1 = f"t=1000,v1={'0' * 64}"  # the scheme before the body digest, which signed the whole body
    garbage = ("", "t=,n=,b=,v2=", "t=1000,n=1,b=zz,v2=00", "t=99999999999999999999,n=1", v1, header.upper())
    for bad in garbage:
        with pytest.raises(BadSignature):
            head(ring, bad, wall_s=1000)


def forwards(*sizes: int, abandoned: tuple[int, ...] = ()) -> deque[_Forward]:
    lane = deque(_Forward(bytes(size)) for size in sizes)
    for index in abandoned:
        lane[index].abandoned = True
    return lane


@pytest.mark.parametrize(
    ("lane", "taken", "left"),
    [
        (forwards(), 0, 0),
        (forwards(10, 10, 10), 3, 0),
        (forwards(*[1] * (FORWARD_BATCH_RECORDS_MAX + 5)), FORWARD_BATCH_RECORDS_MAX, 5),  # at most so many
        (forwards(FORWARD_BATCH_BYTES_MAX // 2, FORWARD_BATCH_BYTES_MAX // 2, 1), 2, 1),  # within the bytes
        (forwards(FORWARD_BATCH_BYTES_MAX * 2, 1), 1, 1),  # the first goes however large; no second past it
        (forwards(10, 10, 10, abandoned=(0, 2)), 1, 0),  # taken back by their callers: never sent
    ],
)
def test_a_batch_takes_the_oldest_waiting_within_its_bounds(lane: deque[_Forward], taken: int, left: int):
    before = [forward for forward in lane if not forward.abandoned]
    batch = _next_batch(lane)
    assert batch == before[:taken] and len(lane) == left
    assert not any(forward.abandoned for forward in batch)


def test_only_loopback_callers_are_loopback():
    for host in ("127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.99.0.1", "::ffff:10.99.0.1", "192.168.1.5", "fdaa::3", "0.0.0.0", "localhost", "", None):
        assert not is_loopback(host), host


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
