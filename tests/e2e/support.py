"""Real peers for end-to-end tests: a rate-limited upstream and a webhook receiver, both real HTTP servers.

They are ASGI apps served by the project's own `serve_asgi` on 127.0.0.1, so a node under test talks to them over
real sockets exactly as it would talk to Stripe or to a customer's webhook endpoint. A node that must be killed
for real runs as a process of its own (`start_process`).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from edge.config import Config, load_config
from edge.http.server import serve_asgi
from edge.node import Node, run_node
from edge.runtime import Runtime
from simulations.actors import Receive, Scope, Send, header, read_body, respond


@dataclass
class Arrival:
    at: float
    credential: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class RateLimitedUpstream:
    """A provider that enforces `limit_rps` per credential (a fixed-window-free, interval-based limit).

    `style` chooses how it tells clients to slow down:
      - "retry-after": 429 with `Retry-After` (seconds), like most APIs;
      - "plain": 429 with no headers at all, like Stripe;
      - "github": 403/429 plus x-ratelimit-remaining/x-ratelimit-reset (unix seconds);
      - "openai": 429 plus x-ratelimit-remaining-requests/x-ratelimit-reset-requests as a duration ("1s").
    `steer_rps`, when set, is sent back as X-EZTHROTTLE-RPS on every response.
    """

    limit_rps: float = 5.0
    style: str = "retry-after"
    steer_rps: float | None = None
    fail_first: int = 0  # answer the first N requests with `fail_status`
    fail_status: int = 503
    delay_s: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    _next_allowed: dict[str, float] = field(default_factory=dict)

    @property
    def accepted(self) -> list[Arrival]:
        return [a for a in self.arrivals if a.status < 300]

    def accepted_times(self, credential: str | None = None) -> list[float]:
        return [a.at for a in self.accepted if credential is None or a.credential == credential]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        now = trio.current_time()
        credential = header(scope, "authorization") or header(scope, "x-api-key") or "-"
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        status, extra = self._decide(now, credential)
        self.arrivals.append(Arrival(now, credential, scope["method"], scope["path"], headers, body, status))
        if self.delay_s:
            await trio.sleep(self.delay_s)
        if self.steer_rps is not None:
            extra.append(("X-EZTHROTTLE-RPS", str(self.steer_rps)))
        payload = json.dumps({"ok": status < 300, "path": scope["path"]}).encode()
        await respond(send, status, payload, [("content-type", "application/json"), *extra])

    def _decide(self, now: float, credential: str) -> tuple[int, list[tuple[str, str]]]:
        if len(self.arrivals) < self.fail_first:
            return self.fail_status, []
        interval = 1.0 / self.limit_rps
        allowed_at = self._next_allowed.get(credential, 0.0)
        if now + 1e-3 >= allowed_at:
            self._next_allowed[credential] = max(now, allowed_at) + interval
            return 200, []
        wait = allowed_at - now
        if self.style == "plain":
            return 429, []
        if self.style == "github":
            reset = math.ceil(time.time() + wait)
            return 403, [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", str(reset))]
        if self.style == "openai":
            return 429, [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", f"{wait:.3f}s")]
        return 429, [("Retry-After", str(max(1, math.ceil(wait))))]


@dataclass
class WebhookSink:
    """Records every webhook POST; answers `status` (a sequence lets a test fail the first tries)."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body))
        self.arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        await respond(send, status, b"{}", [("content-type", "application/json")])

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _headers, body in self.received]


async def serve(nursery: trio.Nursery, app: Any) -> str:
    """Serve an ASGI app on an ephemeral loopback port; return its base URL."""
    bound = await nursery.start(partial(serve_asgi, app, bind="127.0.0.1:0"))
    return f"http://{bound[0]}"


ACCOUNT_KEY = "ck_test_acme_0123456789"
OTHER_KEY = "ck_test_other_0123456789"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


def write_config(tmp_path: Path, extra: str = "", *, allow_private: bool = True, server_extra: str = "") -> Path:
    path = tmp_path / "ezthrottle.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
data_dir = "{tmp_path / "data"}"
{server_extra}
[security]
allow_private_targets = {str(allow_private).lower()}

[[accounts]]
id = "acme"
key = "{ACCOUNT_KEY}"
plan = "pro"
webhook_secret = "{WEBHOOK_SECRET}"

[[accounts]]
id = "other"
key = "{OTHER_KEY}"
plan = "pro"
{extra}
"""
    )
    return path


async def start_node(nursery: trio.Nursery, tmp_path: Path, extra: str = "", **kwargs: Any) -> Node:
    config: Config = load_config(write_config(tmp_path, extra, **kwargs), env={})
    return await nursery.start(run_node, config, Runtime.real())


async def start_process(config: Path, log: Path, port: int) -> subprocess.Popen:
    """Start `python -m edge serve` on `port` and wait until it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        stdout=open(log, "ab"),  # noqa: SIM115 - the child owns the file
        stderr=subprocess.STDOUT,
    )
    async with httpx.AsyncClient() as client:
        with trio.fail_after(20):
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        return process
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers in child processes, which must be told a port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def auth(key: str = ACCOUNT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def wait_ready(process: subprocess.Popen[bytes], port: int, output: Path, *, timeout_s: float = 20.0) -> None:
    """Poll the GET /readyz of a node process on 127.0.0.1:`port` until it answers 200; fail with the process's
    `output` if it exits first."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        with trio.fail_after(timeout_s):
            while True:
                assert process.poll() is None, output.read_text()
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
