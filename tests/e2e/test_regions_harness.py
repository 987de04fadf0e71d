"""The multi-region harness (tests/e2e/regions.py) does what later tests rely on.

- `RegionUpstream` tells regions apart by source address, answers per region and path (httpbin's `/status/<code>`
  and `/delay/<s>` included) and sees a client hang up before its answer.
- `start_region_cluster`: three real processes in three regions form one cluster, each member showing its region;
  a job reaches the upstream from the region of the node that ran it (today the key's owner: GET /api/v1/queues
  names it); a SIGKILLed node's region leaves the live members, and `restart()` brings it back.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.regions import (
    UNKNOWN_REGION,
    RegionUpstream,
    members_in,
    region_sources,
    source_address,
    start_region_cluster,
)


def client_from(source: str, timeout_s: float = 5.0) -> httpx.AsyncClient:
    """A client whose connections leave from `source`, as a node's do with `[http_client] source_address`."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source), timeout=timeout_s)


async def test_the_upstream_answers_by_region_and_path_and_sees_hang_ups(nursery: trio.Nursery) -> None:
    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    iad, lax = source_address(0), source_address(1)
    assert region_sources() == {iad: "iad", lax: "lax", source_address(2): "ord"}
    upstream.behave(region="lax", status=503, headers={"Retry-After": "1"})
    upstream.behave(path="/teapot", status=418, body="short and stout")
    upstream.behave(region="lax", path="/teapot", delay_s=0.05)  # lax's /teapot: 503 (its region rule), late
    async with client_from(iad) as from_iad, client_from(lax) as from_lax:
        plain = await from_iad.post(f"{url}/charge?x=1", content=b"payload")
        assert plain.status_code == 200
        assert plain.json() == {"region": "iad", "method": "POST", "path": "/charge", "status": 200}
        assert (await from_iad.get(f"{url}/status/500")).status_code == 500  # httpbin's meaning of the path
        assert (await from_iad.get(f"{url}/status/204")).content == b""
        teapot = await from_iad.get(f"{url}/teapot")
        assert (teapot.status_code, teapot.text) == (418, "short and stout")
        refused = await from_lax.get(f"{url}/teapot")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.text == "short and stout"  # the body still comes from the (any region, /teapot) rule
        started = trio.current_time()
        assert (await from_lax.get(f"{url}/delay/0.2")).status_code == 503
        assert trio.current_time() - started >= 0.2
        with pytest.raises(httpx.ReadTimeout):
            await from_iad.get(f"{url}/delay/5", timeout=0.3)  # hangs up long before the answer
    async with httpx.AsyncClient() as unbound:
        assert (await unbound.get(f"{url}/who")).json()["region"] == UNKNOWN_REGION
    visits = await upstream.wait_for(count=8, timeout_s=5)
    assert [(v.region, v.path, v.status) for v in visits] == [
        ("iad", "/charge", 200),
        ("iad", "/status/500", 500),
        ("iad", "/status/204", 204),
        ("iad", "/teapot", 418),
        ("lax", "/teapot", 503),
        ("lax", "/delay/0.2", 503),
        ("iad", "/delay/5", 200),
        (UNKNOWN_REGION, "/who", 200),
    ]
    assert visits[0].body == b"payload" and visits[0].query == "x=1" and visits[0].client[0] == iad
    assert visits[4].ended is not None and visits[4].ended - visits[4].started >= 0.05
    hung_up = visits[6]
    assert hung_up.disconnected and not hung_up.answered
    assert hung_up.disconnected_at is not None and 0.25 <= hung_up.disconnected_at - hung_up.started < 2
    assert all(visit.answered for index, visit in enumerate(visits) if index != 6)


@pytest.mark.slow
async def test_three_regions_form_a_cluster_and_the_upstream_sees_where_an_attempt_ran(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    began = trio.current_time()
    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    cluster = await start_region_cluster(nursery, tmp_path)
    formed_s = trio.current_time() - began
    assert upstream.regions_by_source == cluster.regions_by_source

    # Every node sees the three members alive, each with its own region.
    expected = {node.node_id: node.region for node in cluster}
    assert expected == {"iad-1": "iad", "lax-1": "lax", "ord-1": "ord"}
    for node in cluster:
        view = await cluster.view(node)
        assert view["node"] == node.node_id
        assert members_in(view) == expected

    # A job submitted to one node runs on the key's owner: the upstream sees the owner's region.
    entry = cluster["lax"]
    job_id = await cluster.submit({"url": f"{url}/status/201", "method": "POST", "body": "hello"}, via=entry)
    doc = await cluster.wait_finished(job_id, via=cluster["ord"])  # reads find the job on any node
    assert doc["status"] == "success", doc
    (queue,) = await cluster.queues(via=entry)
    owner = cluster.node_by_id(queue["node"])
    (visit,) = await upstream.wait_for(count=1)
    assert (visit.region, visit.path, visit.status, visit.body) == (owner.region, "/status/201", 201, b"hello")
    assert visit.client[0] == owner.source_address and visit.answered

    # A SIGKILLed node's region leaves the live members of the others; restarted, it is back.
    victim = cluster["iad"]
    await victim.kill()
    assert not victim.running
    survivors = [region for region in cluster.regions if region != "iad"]
    views = await cluster.wait_live(survivors)
    assert set(views) == set(survivors)
    assert all("iad" not in members_in(view, ("alive", "suspect")).values() for view in views.values())
    await victim.restart()
    await cluster.wait_alive()
    assert victim.starts == 2
    print(f"cluster formed in {formed_s:.1f} s; whole test {trio.current_time() - began:.1f} s")
