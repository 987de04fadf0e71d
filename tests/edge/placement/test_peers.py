"""The node-to-node API: request signatures, forward batches, and the HTTP/2 stream-reset fix it depends on."""

from __future__ import annotations

from collections import deque
from functools import partial

import pytest

from cluster import Keyring
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
