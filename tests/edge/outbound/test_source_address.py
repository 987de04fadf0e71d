"""`[http_client] source_address`: every outbound connection of a node (job attempts, webhook deliveries) leaves from
that local address, on the plain transport and through the SSRF guard alike.

On Linux all of 127.0.0.0/8 is loopback, so a node bound to 127.0.0.11 reaches a real server on 127.0.0.1, and the
server's ASGI scope shows `client == ("127.0.0.11", port)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from edge.outbound.ssrf import guarded_transport
from simulations.actors import Receive, Scope, Send, read_body, respond
from tests.e2e.support import auth, serve, start_node
from tests.edge.outbound.test_ssrf import RedirectingOpener

SOURCE = "127.0.0.11"


@dataclass
class Recorder:
    """Answers 200 and keeps the ASGI `client` (address, port) of every request, by path."""

    clients: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        host, port = scope["client"]
        self.clients.setdefault(scope["path"], []).append((host, port))
        self.arrived.set()
        await respond(send, 200, b"{}", [("content-type", "application/json")])


async def wait_for_webhook(client: httpx.AsyncClient, job_id: str) -> dict:
    with trio.fail_after(15):
        while True:
            doc = (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).json()
            if doc["webhooks"]["outcome"] in ("delivered", "failed"):
                return doc
            await trio.sleep(0.05)


@pytest.mark.parametrize(("setting", "seen"), [(SOURCE, SOURCE), (None, "127.0.0.1")])
async def test_jobs_and_webhooks_leave_from_the_source_address(
    nursery: trio.Nursery, tmp_path: Path, setting: str | None, seen: str
) -> None:
    upstream, sink = Recorder(), Recorder()
    upstream_url, sink_url = await serve(nursery, upstream), await serve(nursery, sink)
    extra = "" if setting is None else f'[http_client]\nsource_address = "{setting}"\n'
    node = await start_node(nursery, tmp_path, extra)
    assert node.config.http_client.source_address == setting
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        job = {"url": f"{upstream_url}/charge", "webhooks": [{"url": f"{sink_url}/hook"}]}
        created = await client.post("/api/v1/jobs", json=job, headers=auth())
        assert created.status_code == 201, created.text
        doc = await wait_for_webhook(client, created.json()["job_id"])
    assert doc["status"] == "success" and doc["webhooks"]["outcome"] == "delivered", doc
    (job_client,) = upstream.clients["/charge"]
    (hook_client,) = sink.clients["/hook"]
    assert job_client[0] == seen and hook_client[0] == seen
    assert job_client[1] > 0 and hook_client[1] > 0  # an ephemeral port picked by the kernel, not a fixed one


async def test_the_ssrf_guard_passes_the_source_address_to_the_socket(nursery: trio.Nursery) -> None:
    """With the policy on, loopback is refused, so the guard's sockets are opened by a redirecting opener (as in
    test_ssrf.py): it receives the vetted public address and the source address, and really connects from that
    source."""
    upstream = Recorder()
    port = int((await serve(nursery, upstream)).rsplit(":", 1)[1])
    backend = RedirectingOpener(port)

    async def resolve(host: str) -> list[str]:
        assert host == "public.test"
        return ["93.184.215.14"]

    transport = guarded_transport(
        allow_private=False,
        resolver=resolve,
        max_connections=4,
        max_keepalive_connections=2,
        keepalive_expiry_s=5,
        local_address=SOURCE,
        open_tcp=backend,
    )
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        response = await client.get("http://public.test/v1/ping")
    assert response.status_code == 200
    assert backend.connected == [("93.184.215.14", 80)] and backend.local_addresses == [SOURCE]
    assert [host for host, _port in upstream.clients["/v1/ping"]] == [SOURCE]
