"""Webhook secrets end to end: the direct API and its refusals, a restart of a lone node, and a two-node cluster in
one process (real UDP gossip, real HTTP/2 between the nodes) where one node signs with what the other was told.
The secrets travel and rest sealed: the tests look for them in the shared map and in every file of the data dirs."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from ezthrottle.webhook_utils import try_verify_with_secrets, verify_webhook_signature

from edge.config import Config
from edge.engine.spec import queue_key, validate_job
from edge.node import Node, run_node
from edge.placement.webhook_secrets import LOCAL_KEY_FILENAME, SHARED_KEY_PREFIX
from edge.runtime import Runtime
from tests.e2e.support import (
    OTHER_KEY,
    WEBHOOK_SECRET,
    RateLimitedUpstream,
    WebhookSink,
    auth,
    free_port,
    serve,
    start_node,
)
from tests.edge.placement.support import node_config, wait_members

FAST_WEBHOOKS = """
[webhooks]
schedule_s = [0, 0.2, 0.2]
repeat_every_s = 0.2
give_up_after_s = 5
"""
PRIMARY = "whsec_api_primary_0123456789"
SECONDARY = "whsec_api_secondary_987654321"
PATH = "/api/v1/webhook-secrets"


def files_under(directory: Path) -> dict[str, bytes]:
    """Every file of a data dir, SQLite's -wal and -shm included."""
    return {str(path): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def assert_nowhere(secret: str, *directories: Path) -> None:
    for directory in directories:
        found = files_under(directory)
        assert found, directory
        for name, content in found.items():
            assert secret.encode() not in content, name


async def wait_webhooks(sink: WebhookSink, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
    with trio.fail_after(timeout_s):
        while len(sink.received) < count:
            await trio.sleep(0.05)
    return sink.payloads()


def signed_with(sink: WebhookSink, index: int, secret: str) -> bool:
    headers, raw = sink.received[index]
    return verify_webhook_signature(raw, headers.get("x-ezthrottle-signature", ""), secret)[0]


async def test_the_direct_api_and_its_refusals(nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level("DEBUG")
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        other = auth(OTHER_KEY)
        missing = await client.get(PATH, headers=other)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        # An account with a config secret shows it, masked, as the one in use.
        configured = (await client.get(PATH, headers=auth())).json()
        assert configured["source"] == "config" and configured["primary_secret"] == "whse****cdef"

        async def refused(body: Any, status: int, field: str | None = None, **kwargs: Any) -> None:
            response = await client.post(PATH, json=body, headers=other, **kwargs)
            assert response.status_code == status, response.text
            if field is not None:
                assert response.json()["field"] == field
            assert "0123456789abcdef" not in response.text

        await refused({}, 422, "primary_secret")
        await refused({"primary_secret": "too-short"}, 422, "primary_secret")
        await refused({"primary_secret": "x" * 65}, 422, "primary_secret")
        await refused({"primary_secret": 1234567890123456789}, 422, "primary_secret")
        await refused({"primary_secret": "0123456789abcdef", "secondary_secret": "short"}, 422, "secondary_secret")
        await refused(["0123456789abcdef"], 422, "body")
        bad_unicode = b'{"primary_secret": "\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800"}'
        response = await client.post(PATH, content=bad_unicode, headers={**other, "content-type": "application/json"})
        assert response.status_code == 422 and response.json()["field"] == "primary_secret"
        response = await client.post(PATH, content=b"{", headers={**other, "content-type": "application/json"})
        assert response.status_code == 400
        response = await client.post(PATH, content=b"primary_secret=x", headers=other)
        assert response.status_code == 415
        assert (await client.post(PATH, json={"primary_secret": PRIMARY})).status_code == 401
        assert (await client.put(PATH, json={"primary_secret": PRIMARY}, headers=other)).status_code == 405
        assert (await client.get(PATH, headers=other)).status_code == 404  # nothing was stored by the refusals

        saved = await client.post(PATH, json={"primary_secret": PRIMARY, "secondary_secret": SECONDARY}, headers=other)
        assert saved.status_code == 200 and saved.json() == {"status": "ok", "message": "Webhook secrets saved"}
        shown = await client.get(PATH, headers=other)
        assert shown.json() == {
            "customer_id": "other",
            "primary_secret": "whse****6789",
            "secondary_secret": "whse****4321",
            "has_secondary": True,
            "source": "api",
        }
        assert PRIMARY not in shown.text and SECONDARY not in shown.text
        # Another account does not see them.
        assert (await client.get(PATH, headers=auth())).json()["source"] == "config"
        deleted = await client.delete(PATH, headers=other)
        assert deleted.json() == {"status": "ok", "message": "Webhook secrets deleted"}
        assert (await client.get(PATH, headers=other)).status_code == 404
        assert (await client.delete(PATH, headers=other)).status_code == 200  # deleting nothing is fine
    assert PRIMARY not in caplog.text and SECONDARY not in caplog.text


async def test_a_lone_node_keeps_them_sealed_across_a_restart(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    data = tmp_path / "data"
    async with trio.open_nursery() as first_life:
        node = await start_node(first_life, tmp_path, FAST_WEBHOOKS)
        async with httpx.AsyncClient(base_url=node.base_url) as client:
            saved = await client.post(PATH, json={"primary_secret": PRIMARY}, headers=auth())
            assert saved.status_code == 200
        assert node.webhook_secrets is not None
        sealed = node.webhook_secrets.sealed("acme")
        assert sealed is not None and PRIMARY not in sealed
        node.stop()
    key_file = data / LOCAL_KEY_FILENAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert_nowhere(PRIMARY, data)

    node = await start_node(nursery, tmp_path, FAST_WEBHOOKS)
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        shown = (await client.get(PATH, headers=auth())).json()
        assert (shown["source"], shown["primary_secret"]) == ("api", "whse****6789")
        job = {"url": f"{up}/after-restart", "webhooks": [{"url": f"{hook}/hook"}]}
        assert (await client.post("/api/v1/jobs", json=job, headers=auth())).status_code == 201
    await wait_webhooks(sink, 1)
    assert signed_with(sink, 0, PRIMARY) and not signed_with(sink, 0, WEBHOOK_SECRET)
    assert PRIMARY not in caplog.text


async def run_in(nursery: trio.Nursery, config: Config) -> tuple[Node, trio.CancelScope]:
    """Start a node in a cancel scope of its own, so a test can stop one node and keep the others."""
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Node]) -> None:
        with scope:
            await run_node(config, Runtime.real(), task_status=task_status)

    return await nursery.start(run), scope


async def test_a_secret_set_on_one_node_signs_the_webhooks_another_node_sends(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    upstream, sink = RateLimitedUpstream(limit_rps=100), WebhookSink()
    up, hook = await serve(nursery, upstream), await serve(nursery, sink)
    gossip = {name: free_port() for name in ("a", "b")}
    configs = {name: node_config(tmp_path, name, gossip, extra=FAST_WEBHOOKS) for name in gossip}
    async with trio.open_nursery() as cluster:
        (a, _), (b, _) = await run_in(cluster, configs["a"]), await run_in(cluster, configs["b"])
        for node in (a, b):
            await wait_members(node, 2)
        assert a.webhook_secrets is not None and b.webhook_secrets is not None and b.membership is not None
        async with httpx.AsyncClient(base_url=a.base_url) as on_a, httpx.AsyncClient(base_url=b.base_url) as on_b:
            saved = await on_a.post(
                PATH, json={"primary_secret": PRIMARY, "secondary_secret": SECONDARY}, headers=auth()
            )
            assert saved.status_code == 200
            with trio.fail_after(10):
                while b.webhook_secrets.signing_secret("acme") != PRIMARY:
                    await trio.sleep(0.05)
            shown = (await on_b.get(PATH, headers=auth())).json()
            assert (shown["source"], shown["secondary_secret"]) == ("api", "whse****4321")

            # A job whose key b owns, submitted to a: b runs it and posts its webhook.
            for i in range(1000):
                job = {"url": f"{up}/from-b", "headers": {"Authorization": f"Bearer c{i}"}}
                key = queue_key(account_id="acme", plan="pro", job=validate_job(job), account_queue=True)
                owner = b.membership.owner_of(key)
                if owner is not None and owner.node == "b":
                    break
            job["webhooks"] = [{"url": f"{hook}/hook"}]
            created = await on_a.post("/api/v1/jobs", json=job, headers=auth())
            assert created.status_code == 201, created.text
            job_id = created.json()["job_id"]
            [payload] = await wait_webhooks(sink, 1)
            assert payload["job_id"] == job_id
            # b ran it (a keeps only a copy: cluster.replicas = 2), so b signed and posted the webhook.
            assert b.manager.live_job(job_id) is None and a.manager.live_job(job_id) is None
            stored = await b.store.get_job(job_id)
            assert stored is not None and stored.status == "success" and len(sink.received) == 1
            assert signed_with(sink, 0, PRIMARY) and not signed_with(sink, 0, WEBHOOK_SECRET)
            headers, raw = sink.received[0]
            assert try_verify_with_secrets(raw, headers["x-ezthrottle-signature"], SECONDARY, PRIMARY) == (
                True,
                "valid_secondary",
            )

            # What travels and rests is sealed: the gossiped value, and every file of both data dirs.
            for node in (a, b):
                assert node.membership is not None
                value = node.membership.shared(SHARED_KEY_PREFIX + "acme")
                assert isinstance(value, str) and PRIMARY not in value and SECONDARY not in value
            assert value == a.webhook_secrets.sealed("acme")  # one value, the same on both

            # A delete on b reaches a; a then signs with the config's secret again.
            await on_a.post(PATH, json={"primary_secret": "whsec_other_account_0001"}, headers=auth(OTHER_KEY))
            with trio.fail_after(10):
                while b.webhook_secrets.signing_secret("other") is None:
                    await trio.sleep(0.05)
            assert (await on_b.delete(PATH, headers=auth(OTHER_KEY))).status_code == 200
            with trio.fail_after(10):
                while a.webhook_secrets.signing_secret("other") is not None:
                    await trio.sleep(0.05)
            assert (await on_a.get(PATH, headers=auth(OTHER_KEY))).status_code == 404
        a.stop()
        b.stop()
    data_dirs = [tmp_path / name / "data" for name in ("a", "b")]
    for data in data_dirs:
        assert not (data / LOCAL_KEY_FILENAME).exists()  # sealed under the cluster key: no key of their own
    assert_nowhere(PRIMARY, *data_dirs)
    assert_nowhere(SECONDARY, *data_dirs)

    # b alone, restarted: its store remembers what the gossip brought it.
    b, _ = await run_in(nursery, configs["b"])
    assert b.webhook_secrets is not None and b.webhook_secrets.signing_secret("acme") == PRIMARY
    assert b.webhook_secrets.signing_secret("other") is None
    assert PRIMARY not in caplog.text and SECONDARY not in caplog.text
