"""A real node with `log_format = "json"` at DEBUG, through one job carrying a bearer token, answered with a session
cookie and signed by a webhook secret: every line is one JSON object naming the node, its region, and for the job's
lines the job and its queue; and no key, token, secret or credential fingerprint appears in what the process wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from edge.logs import queue_digest
from simulations.actors import Receive, Scope, Send, header, read_body, respond
from tests.e2e.support import WebhookSink, free_port, serve, wait_ready

ACCOUNT_KEY = "ck_live_logs_0123456789abcdef"
BEARER = "sk_live_bearer_0123456789abcdef"
WEBHOOK_SECRET = "whsec_logs_0123456789abcdef"
CLUSTER_KEY = "5e" * 32
URL_SECRET = "query_secret_0123456789"  # a job URL may carry a credential in its query
HOOK_SECRET = "hook_path_secret_0123456789"  # and a webhook URL in its path (Slack's do)
COOKIE_SECRET = "session_secret_0123456789"


@dataclass
class CookieSettingProvider:
    """An upstream that records the credential it is sent and answers with a session cookie."""

    authorizations: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        self.authorizations.append(header(scope, "authorization") or "")
        cookie = f"session={COOKIE_SECRET}; HttpOnly"
        await respond(send, 200, b'{"ok": true}', [("content-type", "application/json"), ("set-cookie", cookie)])


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
data_dir = "{tmp_path / "data"}"
node_id = "node-json"
log_format = "json"

[security]
allow_private_targets = true

[cluster]
bind = "127.0.0.1:{free_port()}"
keys = ["{CLUSTER_KEY}"]
region = "test-region"

[[accounts]]
id = "acme"
key = "{ACCOUNT_KEY}"
webhook_secret = "{WEBHOOK_SECRET}"
"""
    )
    return path


async def test_json_lines_name_the_job_and_never_a_secret(tmp_path: Path, nursery: trio.Nursery) -> None:
    upstream, sink = CookieSettingProvider(), WebhookSink()
    upstream_url, sink_url = await serve(nursery, upstream), await serve(nursery, sink)
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("EZTHROTTLE_", "FLY_"))}
    log = tmp_path / "node.log"
    command = [
        sys.executable,
        "-m",
        "edge",
        "serve",
        "--config",
        str(write_config(tmp_path, port)),
        "--log-level",
        "DEBUG",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ACCOUNT_KEY}"}
        ) as client:
            await wait_ready(process, port, log)
            job = {
                "url": f"{upstream_url}/v1/charges?api_key={URL_SECRET}",
                "method": "POST",
                "headers": {"Authorization": f"Bearer {BEARER}"},
                "body": "amount=4200",
                "webhooks": [{"url": f"{sink_url}/hooks/{HOOK_SECRET}"}],
            }
            created = await client.post("/api/v1/jobs", json=job)
            assert created.status_code == 201, created.text
            job_id = created.json()["job_id"]
            with trio.fail_after(10):
                await sink.arrived.wait()
            (queue,) = (await client.get("/api/v1/queues")).json()["queues"]
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await trio.to_thread.run_sync(process.wait)
    # The secrets were really in play: the provider got the token, the receiver a signed webhook.
    assert upstream.authorizations == [f"Bearer {BEARER}"]
    assert "x-ezthrottle-signature" in sink.received[0][0]

    text = log.read_text()
    fingerprint = queue["queue_key"].rsplit("|", 1)[1]
    for secret in (
        ACCOUNT_KEY,
        BEARER,
        WEBHOOK_SECRET,
        CLUSTER_KEY,
        URL_SECRET,
        HOOK_SECRET,
        COOKIE_SECRET,
        fingerprint,
    ):
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "event", "message"} <= set(line) for line in lines)
    assert all((line["node"], line["region"]) == ("node-json", "test-region") for line in lines)
    about_job = {line["event"]: line for line in lines if line.get("job_id") == job_id}
    assert {"job %s accepted", "job %s finished: %s", "webhook %d of job %s: %s (status %s)"} <= set(about_job)
    assert about_job["job %s finished: %s"]["queue"] == queue_digest(queue["queue_key"])
    assert about_job["job %s finished: %s"]["message"] == f"job {job_id} finished: success"
    assert process.returncode == 0
