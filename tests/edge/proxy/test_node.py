"""`ezthrottle serve` runs the job API and every protected listener in one process (one `run_node`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.e2e.support import start_node
from tests.edge.http.servers import running
from tests.edge.proxy.support import Upstream

API_KEY = "cust_node_0123456789ab"


async def test_a_node_serves_the_job_api_and_each_protected_listener(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream_app, other_app = Upstream(), Upstream()
    async with running(upstream_app) as upstream, running(other_app) as other:
        protect = f"""
[[protect]]
name = "api"
listen = "127.0.0.1:0"
upstream = "{upstream.url}"
max_concurrency = 4
[[protect.keys]]
key = "{API_KEY}"
id = "big"
tier = "paid"

[[protect]]
name = "second"
listen = "127.0.0.1:0"
upstream = "{other.url}"
"""
        node = await start_node(nursery, tmp_path, protect)
        async with httpx.AsyncClient() as client:
            proxied = await client.get(f"http://{node.protected['api'][0]}/work", headers={"x-api-key": API_KEY})
            second = await client.get(f"http://{node.protected['second'][0]}/headers")
            health = await client.get(f"{node.base_url}/healthz")
            metrics = (await client.get(f"{node.base_url}/metrics")).text
        node.stop()
    assert proxied.status_code == 200 and upstream_app.served_by_key[API_KEY] == 1
    assert second.status_code == 200 and other_app.started == 1 and upstream_app.started == 1
    assert health.status_code == 200
    assert 'ezthrottle_proxy_admitted_total{key="big",listener="api",tier="paid"} 1.0' in metrics
    assert 'ezthrottle_proxy_capacity{listener="second"} 64.0' in metrics


async def test_a_node_without_protect_sections_has_no_proxy(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = await start_node(nursery, tmp_path)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{node.base_url}/metrics")).text
    node.stop()
    assert node.protected == {}
    assert "ezthrottle_proxy" not in metrics
