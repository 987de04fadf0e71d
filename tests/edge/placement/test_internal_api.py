"""The internal API's front door, over real sockets: callers are judged on the request head before any body is read,
a cluster without keys serves loopback callers only, and a peer's failing store is a 503 end to end."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import msgpack
import pytest
import trio

from cluster import Keyring
from edge.config import load_config
from edge.http.api import INTERNAL_BODY_BYTES_MAX
from edge.node import Node, run_node
from edge.placement.peers import AUTH_HEADER, CONTENT_TYPE, PeerClient, PeerError, sign_request
from edge.problems import PROBLEM_TYPE_BASE
from edge.runtime import Runtime
from edge.store import StoreError
from tests.e2e.support import auth, free_port, write_config
from tests.edge.placement.off_loopback import OFF_LOOPBACK
from tests.edge.placement.support import node_config, start, wait_members

OLD, NEW, FOREIGN = b"o" * 32, b"n" * 32, b"f" * 32
PATH = "/internal/v1/queues"
SENT_BYTES = 4096  # of the declared body, sent with the head; the node must answer without waiting for the rest
LATER = 4_000_000_000_000  # retry_at far in the future: jobs stay queued


async def solo_node(nursery: trio.Nursery, tmp_path: Path, cluster: str) -> Node:
    """A cluster of one member (so the internal API is served), its API on loopback."""
    extra = f'[cluster]\nbind = "127.0.0.1:{free_port()}"\nprofile = "local"\n{cluster}'
    config = load_config(write_config(tmp_path, extra), env={"EZTHROTTLE_SERVER_LISTEN": f"127.0.0.1:{free_port()}"})
    return await nursery.start(run_node, config, Runtime.real())


def keys_setting(*keys: bytes) -> str:
    return f"keys = {json.dumps([key.hex() for key in keys])}\n"


def head_of(size: int, keyring: Keyring, *, wall_s: float) -> str:
    """The auth header a caller with `keyring` sends for a body of `size` bytes."""
    return sign_request(keyring, method="POST", path=PATH, body=bytes(size), wall_s=wall_s)


async def over_http1(address: str, headers: dict[str, str], declared: int) -> tuple[int, dict[str, Any]]:
    """Send a head declaring `declared` body bytes and the first SENT_BYTES of them; the answer that comes back
    before any more is sent, once the node has closed the connection. Then the node takes no more of the body."""
    host, port = address.rsplit(":", 1)
    lines = [f"POST {PATH} HTTP/1.1", f"Host: {address}", f"Content-Length: {declared}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + bytes(SENT_BYTES))
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(5):  # the rest is not taken
            for _ in range(declared // 65536):
                await stream.send_all(bytes(65536))
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def over_http2(address: str, headers: dict[str, str], declared: int) -> tuple[int, dict[str, Any]]:
    """The same over h2c (as peers speak it): the answer arrives while the stream still owes most of its body."""
    host, port = address.rsplit(":", 1)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    request = [(":method", "POST"), (":path", PATH), (":scheme", "http"), (":authority", address)]
    connection.send_headers(1, [*request, ("content-length", str(declared)), *headers.items()])
    connection.send_data(1, bytes(SENT_BYTES))
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(connection.data_to_send())
        status, body, ended = 0, b"", False
        with trio.fail_after(5):
            while not ended:
                for event in connection.receive_data(await stream.receive_some()):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                    ended |= isinstance(event, h2.events.StreamEnded | h2.events.StreamReset)
                await stream.send_all(connection.data_to_send())
    return status, json.loads(body)


@pytest.mark.parametrize("send", [over_http1, over_http2], ids=["http1", "h2c"])
async def test_callers_without_a_valid_head_are_answered_before_their_body_is_read(
    nursery: trio.Nursery,
    tmp_path: Path,
    send: Callable[[str, dict[str, str], int], Awaitable[tuple[int, dict[str, Any]]]],
):
    node = await solo_node(nursery, tmp_path, keys_setting(OLD))
    now = Runtime.real().wall_clock()
    huge = INTERNAL_BODY_BYTES_MAX  # what the node would buffer for a valid call
    for headers, declared, status, reason in (
        ({}, huge, 401, "no X-EZThrottle-Cluster header"),
        ({AUTH_HEADER: "t=1,v1=00"}, huge, 401, "malformed"),
        ({AUTH_HEADER: head_of(huge, Keyring(FOREIGN), wall_s=now)}, huge, 401, "not signed by a key"),
        ({AUTH_HEADER: head_of(huge, Keyring(OLD), wall_s=now - 300)}, huge, 401, "s off this node's clock"),
        ({AUTH_HEADER: head_of(huge + 1, Keyring(OLD), wall_s=now)}, huge + 1, 413, "over"),  # a peer, too much
    ):
        answered, problem = await send(node.bound[0], {"Content-Type": CONTENT_TYPE, **headers}, declared)
        assert answered == status and reason in problem["detail"], problem
    async with httpx.AsyncClient(base_url=node.base_url) as client:  # the node serves on
        assert (await client.get("/healthz")).status_code == 200


async def test_any_key_of_the_ring_signs_and_a_body_must_be_the_one_signed(nursery: trio.Nursery, tmp_path: Path):
    """Rotation: the node accepts NEW (its primary) and OLD; a caller still signing with OLD, or already with NEW,
    is served, one signing with a key the ring does not hold is not."""
    node = await solo_node(nursery, tmp_path, keys_setting(NEW, OLD))
    for keyring, served in ((Keyring(OLD), True), (Keyring(NEW, OLD), True), (Keyring(FOREIGN, OLD), False)):
        peers = PeerClient(keyring=keyring, runtime=Runtime.real(), timeout_s=5.0, nursery=nursery)
        try:
            if served:
                assert await peers.queues(node.bound[0], "acme|") == []
            else:
                with pytest.raises(PeerError, match="HTTP 401"):
                    await peers.queues(node.bound[0], "acme|")
        finally:
            await peers.aclose()
    body = msgpack.packb({"prefix": "acme|"})
    signed = head_of(len(body), Keyring(OLD), wall_s=Runtime.real().wall_clock())
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        for other in (msgpack.packb({"prefix": "acmf|"}), body[:-1]):
            refused = await client.post(PATH, content=other, headers={AUTH_HEADER: signed})
            assert refused.status_code == 401 and "not the one signed" in refused.json()["detail"]
        longer = await client.post(PATH, content=body + b"\0", headers={AUTH_HEADER: signed})
        assert longer.status_code == 413  # nothing past the signed length is read


async def test_without_keys_only_loopback_callers_are_served(nursery: trio.Nursery, tmp_path: Path, caplog):
    node = await solo_node(nursery, tmp_path, "insecure = true\n")
    assert "the internal API answers loopback callers only" in caplog.text
    body = msgpack.packb({"prefix": "acme|"})
    for client_host, status in (("10.99.0.1", 403), ("::ffff:10.99.0.1", 403), ("127.0.0.1", 200), ("::1", 200)):
        transport = httpx.ASGITransport(app=node.app, client=(client_host, 40000))  # the scope's `client`
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            answer = await client.post(PATH, content=body)
        assert answer.status_code == status, (client_host, answer.text)
        if status == 403:
            problem = answer.json()
            assert problem["type"] == PROBLEM_TYPE_BASE + "cluster-keys-required" and client_host in problem["detail"]
    async with httpx.AsyncClient(base_url=node.base_url) as client:  # a real socket on 127.0.0.1
        assert (await client.post(PATH, content=body)).status_code == 200


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
async def test_without_keys_a_caller_off_loopback_is_refused_over_a_real_socket(tmp_path: Path):
    """In a network namespace of its own (so this host's addresses are untouched), a node listening on every address
    is called from 127.0.0.1 and from OFF_LOOPBACK."""
    command = ["unshare", "--net", sys.executable, "-m", "tests.edge.placement.off_loopback", str(tmp_path)]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0 and b"unshare failed" in done.stderr:
        pytest.skip("cannot create a network namespace here")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    answers = json.loads(done.stdout)
    assert answers["loopback"] == 200
    refused = answers["off_loopback"]
    assert refused["status"] == 403 and refused["type"] == PROBLEM_TYPE_BASE + "cluster-keys-required"
    assert OFF_LOOPBACK in refused["detail"] and "cluster.keys" in refused["detail"]


def fill_disk(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write to `store` fails from now on, as SQLite's do on a full disk."""

    async def full(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database or disk is full")

    for write in ("insert_job", "save_job", "merge_jobs"):
        monkeypatch.setattr(store, write, full)


async def test_a_failing_store_on_a_peer_is_a_503_with_retry_after_at_once(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """b's disk is full. A job whose key b owns (forwarded to it) and one whose key a owns (b keeps its copy) are
    both refused by a as its own failing store would be, long before the forwarding deadline; so is a cancel."""
    gossip = {"a": free_port(), "b": free_port()}
    a, _ = await start(nursery, node_config(tmp_path, "a", gossip, forward_deadline_s=5.0))
    b, _ = await start(nursery, node_config(tmp_path, "b", gossip))
    await wait_members(a, 2)
    await wait_members(b, 2)
    jobs = [{"url": f"http://127.0.0.1:9/k{i}", "headers": {"X-Api-Key": f"k{i}"}, "retry_at": LATER} for i in range(8)]
    async with httpx.AsyncClient(base_url=a.base_url) as client:
        queued = [(await client.post("/api/v1/jobs", json=job, headers=auth())).json()["job_id"] for job in jobs]
        owned_by_b = [b.manager.live_job(job_id) is not None for job_id in queued]
        # A new job (another idempotency key) in the queue of a job b runs, and in the queue of one a runs.
        again = {held: {**jobs[owned_by_b.index(held)], "idempotent_key": "while-full"} for held in (True, False)}
        fill_disk(b.store, monkeypatch)
        for on_b, job in again.items():
            started = trio.current_time()
            refused = await client.post("/api/v1/jobs", json=job, headers=auth())
            assert trio.current_time() - started < 1.0  # not the 5 s spent waiting for another owner
            problem = refused.json()
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5", problem
            assert problem["type"] == PROBLEM_TYPE_BASE + "store-unavailable", problem
            assert ("the queue's owner" if on_b else "keeps copies of this queue") in problem["detail"], problem
        cancel = await client.delete(f"/api/v1/jobs/{queued[owned_by_b.index(True)]}", headers=auth())
        assert cancel.status_code == 503 and cancel.json()["type"] == PROBLEM_TYPE_BASE + "store-unavailable"
        monkeypatch.undo()  # space again: the same jobs go through
        for job in again.values():
            assert (await client.post("/api/v1/jobs", json=job, headers=auth())).status_code in (200, 201)


async def test_a_forward_batch_that_is_not_msgpack_records_is_refused_whole(nursery: trio.Nursery, tmp_path: Path):
    """A signed `jobs` call whose records are not msgpack blobs (a buggy peer) is a 400, and nothing is queued."""
    node = await solo_node(nursery, tmp_path, keys_setting(NEW))
    path = "/internal/v1/jobs"
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        for records in ([1, 2], [b"\xc1"], "not a list"):
            body = msgpack.packb({"records": records}, use_bin_type=True)
            signed = sign_request(Keyring(NEW), method="POST", path=path, body=body, wall_s=Runtime.real().wall_clock())
            headers = {AUTH_HEADER: signed, "Content-Type": CONTENT_TYPE}
            refused = await client.post(path, content=body, headers=headers)
            assert refused.status_code == 400, (records, refused.text)
    assert node.manager.statistics()["jobs"] == 0
