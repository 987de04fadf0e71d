"""Attempts in regions, end to end: three real nodes in one process (real UDP gossip, real HTTP/2 between them), one
per region, each binding its outbound connections to its own loopback source address (`[http_client]
source_address`), so a real upstream on 127.0.0.1 can tell which region ran each attempt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from edge.node import Node
from tests.e2e.regions import DEFAULT_REGIONS, RegionUpstream, source_address
from tests.e2e.support import auth, free_port
from tests.edge.placement.support import node_config, start, wait_members

REGIONS = {region: source_address(index) for index, region in enumerate(DEFAULT_REGIONS)}
# Pacing and concurrency out of the way: a race's three legs start together.
LIMITS = "[defaults]\nrps = 1000\nmax_concurrent = 8\nmax_retries = 0\n"


@dataclass
class Cluster:
    nodes: dict[str, Node]
    scopes: dict[str, trio.CancelScope]
    upstream: RegionUpstream
    url: str
    # A second upstream whose origin allows one attempt in flight: every dispatch is a single leg, placed by health.
    single: RegionUpstream
    single_url: str

    async def submit(self, client: httpx.AsyncClient, **job: Any) -> dict[str, Any]:
        answer = await client.post("/api/v1/jobs", json={"url": f"{self.url}/x", **job}, headers=auth())
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    async def finished(self, client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
        with trio.fail_after(20):
            while True:
                view = (await client.get(f"/api/v1/jobs/{job_id}", headers=auth())).json()
                if view["status"] in ("success", "failed", "cancelled"):
                    return dict(view)
                await trio.sleep(0.05)


@pytest.fixture
async def cluster(nursery: trio.Nursery, tmp_path: Path) -> Cluster:
    upstream, single = RegionUpstream(), RegionUpstream()
    url, single_url = await upstream.serve(nursery), await single.serve(nursery)
    gossip = {region: free_port() for region in REGIONS}
    nodes, scopes = {}, {}
    for region, source in REGIONS.items():
        extra = f'{LIMITS}[http_client]\nsource_address = "{source}"\n'
        extra += f'[targets."{single_url}"]\nmax_concurrent = 1\n'
        config = node_config(tmp_path, region, gossip, region=region, extra=extra)
        nodes[region], scopes[region] = await start(nursery, config)
    for node in nodes.values():
        await wait_members(node, len(REGIONS))
    return Cluster(nodes, scopes, upstream, url, single, single_url)


async def test_an_attempt_runs_in_the_region_the_job_names(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.nodes["iad"].base_url) as client:
        for region in REGIONS:
            job = await cluster.submit(client, regions=[region], idempotent_key=f"in-{region}")
            assert job["status"] == "queued"
            view = await cluster.finished(client, job["job_id"])
            assert view["status"] == "success" and [a["region"] for a in view["attempts"]] == [region]
        regions = (await client.get("/api/v1/regions", headers=auth())).json()
    assert cluster.upstream.regions_seen() == list(REGIONS)
    # The view is the owner's of the node asked; every region is up on every node.
    assert {r["region"] for r in regions["regions"] if r["up"]} == set(REGIONS)


async def test_a_race_is_won_by_the_fastest_region_and_the_losers_are_cut_off(cluster: Cluster) -> None:
    for region, delay_s in {"iad": 0.05, "lax": 0.5, "ord": 1.5}.items():
        cluster.upstream.behave(region=region, delay_s=delay_s)
    async with httpx.AsyncClient(base_url=cluster.nodes["ord"].base_url) as client:
        job = await cluster.submit(client, regions=list(REGIONS), idempotent_key="race")
        assert job["status"] == "racing"
        view = await cluster.finished(client, job["job_id"])
    assert view["status"] == "success" and json.loads(view["response"]["body"])["region"] == "iad"
    outcomes = {a["region"]: a["outcome"] for a in view["attempts"]}
    assert outcomes == {"iad": "won", "lax": "cancelled", "ord": "cancelled"}
    # The job is finished once iad won; the losers' legs are cut off on their own nodes just after, and the
    # upstream sees that within its disconnect watch's delay: wait for every visit to end (lax would answer at 0.5 s,
    # ord at 1.5 s, if nobody cut them off), then judge how.
    seen = await cluster.upstream.wait_for(lambda visits: len(visits) == 3 and all(v.finished for v in visits))
    visits = {visit.region: visit for visit in seen}
    assert sorted(visits) == sorted(REGIONS)  # every region was started
    won_at = visits["iad"].ended
    assert won_at is not None and visits["iad"].answered
    for loser in ("lax", "ord"):
        # The upstream sees each loser hang up, soon after the win, long before its own answer was due.
        disconnected = visits[loser].disconnected_at
        assert disconnected is not None and not visits[loser].answered
        assert disconnected - won_at < 0.4, (loser, disconnected - won_at)


async def test_a_500_reroutes_to_another_region(cluster: Cluster) -> None:
    cluster.upstream.behave(region="iad", status=500)
    async with httpx.AsyncClient(base_url=cluster.nodes["lax"].base_url) as client:
        job = await cluster.submit(client, regions=["iad"], idempotent_key="reroute")
        view = await cluster.finished(client, job["job_id"])
    assert view["status"] == "success"
    attempts = [(a["region"], a["outcome"], a["status_code"]) for a in view["attempts"]]
    assert attempts[0] == ("iad", "rerouted", 500)
    assert attempts[1][0] in ("lax", "ord") and attempts[1][1:] == ("won", 200)
    assert cluster.upstream.regions_seen()[0] == "iad"


async def test_a_strict_job_never_leaves_its_regions(cluster: Cluster) -> None:
    cluster.upstream.behave(region="iad", status=502)
    async with httpx.AsyncClient(base_url=cluster.nodes["ord"].base_url) as client:
        job = await cluster.submit(client, regions=["iad"], region_policy="strict", idempotent_key="strict")
        view = await cluster.finished(client, job["job_id"])
    assert view["status"] == "failed" and view["response"]["status_code"] == 502
    assert cluster.upstream.regions_seen() == ["iad"]


async def test_a_fanout_runs_once_in_every_named_region(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.nodes["iad"].base_url) as client:
        job = await cluster.submit(client, regions=["lax", "ord"], execution_mode="fanout", idempotent_key="fan")
        view = await cluster.finished(client, job["job_id"])
    assert view["status"] == "success"
    assert sorted(cluster.upstream.regions_seen()) == ["lax", "ord"]
    assert sorted(a["region"] for a in view["attempts"]) == ["lax", "ord"]


async def test_a_region_whose_node_is_gone_is_routed_around(cluster: Cluster) -> None:
    cluster.scopes["lax"].cancel()
    for region in ("iad", "ord"):
        await wait_members(cluster.nodes[region], 2)
    async with httpx.AsyncClient(base_url=cluster.nodes["iad"].base_url) as client:
        job = await cluster.submit(client, regions=["lax"], idempotent_key="gone")
        view = await cluster.finished(client, job["job_id"])
        regions = (await client.get("/api/v1/regions", headers=auth())).json()
    assert view["status"] == "success"
    assert [a["region"] for a in view["attempts"]] != ["lax"] and "lax" not in cluster.upstream.regions_seen()
    assert {r["region"] for r in regions["regions"] if r["up"]} == {"iad", "ord"}


async def test_a_slow_region_loses_traffic_within_a_few_jobs(cluster: Cluster) -> None:
    """One region 20x slower than the others: after a few jobs the owner sends it almost nothing."""
    for region, delay_s in {"iad": 0.05, "lax": 0.06, "ord": 1.0}.items():
        cluster.single.behave(region=region, delay_s=delay_s)
    async with httpx.AsyncClient(base_url=cluster.nodes["iad"].base_url) as client:
        for i in range(30):
            answer = await client.post(
                "/api/v1/jobs",
                json={"url": f"{cluster.single_url}/s", "regions": ["ord", "iad", "lax"], "idempotent_key": f"s{i}"},
                headers=auth(),
            )
            assert answer.status_code == 201
            view = await cluster.finished(client, answer.json()["job_id"])
            assert view["status"] == "success" and len(view["attempts"]) == 1  # one leg each: placed by health
    seen = cluster.single.regions_seen()
    assert len(seen) == 30
    # The first jobs measure every region; afterwards the slow one gets at most a probe now and then.
    assert seen[10:].count("ord") <= 2, seen
    assert set(seen[10:]) - {"ord"} == {"iad", "lax"}  # the healthy ones share the traffic


async def test_a_webhook_naming_regions_is_delivered_from_one_of_them(cluster: Cluster, nursery: trio.Nursery) -> None:
    """The job runs on its owner; its webhook naming lax is posted by lax's node (the receiver sees lax's source
    address), signed as usual; one naming the owner's region, or a region that is down, is posted by the owner."""
    receiver = RegionUpstream()
    hook = await receiver.serve(nursery)
    async with httpx.AsyncClient(base_url=cluster.nodes["iad"].base_url) as client:
        job = await cluster.submit(
            client,
            idempotent_key="hooks-in-regions",
            webhooks=[
                {"url": f"{hook}/lax", "regions": ["lax"]},
                {"url": f"{hook}/racing", "regions": ["lax", "ord"]},
                {"url": f"{hook}/nowhere", "regions": ["syd"]},
                {"url": f"{hook}/anywhere"},
            ],
        )
        await cluster.finished(client, job["job_id"])
        visits = await receiver.wait_for(count=4, timeout_s=10)
    owner_region = cluster.upstream.visits[0].region  # the job had no regions: it ran on its key's owner
    by_path: dict[str, list[str]] = {}
    for visit in visits:
        by_path.setdefault(visit.path, []).append(visit.region)
    assert by_path["/lax"] == ["lax"]
    # Both named regions may post (a race; the loser may be cut off before or after the receiver saw it).
    assert set(by_path["/racing"]) <= {"lax", "ord"} and by_path["/racing"]
    assert by_path["/nowhere"] == [owner_region] and by_path["/anywhere"] == [owner_region]
    payload = json.loads(next(v.body for v in visits if v.path == "/lax"))
    assert payload["job_id"] == job["job_id"] and payload["status"] == "success"
    assert "x-ezthrottle-signature" in next(v.headers for v in visits if v.path == "/lax")


async def test_a_slow_first_region_is_hedged_and_the_hedge_wins(cluster: Cluster) -> None:
    """`hedge_after_ms`: a GET naming only iad, which answers in 2 s, starts the healthiest other region after
    200 ms; that one answers at once and wins, and iad's request is cut off. A POST without its idempotency key
    sent upstream is never hedged."""
    cluster.upstream.behave(region="iad", delay_s=2.0)
    async with httpx.AsyncClient(base_url=cluster.nodes["lax"].base_url) as client:
        job = await cluster.submit(client, regions=["iad"], hedge_after_ms=200, idempotent_key="hedged")
        view = await cluster.finished(client, job["job_id"])
        assert view["status"] == "success"
        outcomes = [(a["region"], a["outcome"]) for a in view["attempts"]]
        assert outcomes[0] == ("iad", "cancelled") and outcomes[1][1] == "won" and outcomes[1][0] != "iad"
        first, hedge = cluster.upstream.visits
        assert first.region == "iad" and 0.15 <= hedge.started - first.started < 1.0
        visits = await cluster.upstream.wait_for(lambda seen: all(v.finished for v in seen), timeout_s=5)
        assert visits[0].disconnected and visits[1].answered

        cluster.upstream.reset()
        cluster.upstream.behave(region="iad", delay_s=0.6)
        job = await cluster.submit(client, regions=["iad"], hedge_after_ms=100, method="POST", idempotent_key="post")
        view = await cluster.finished(client, job["job_id"])
    assert view["status"] == "success" and [a["region"] for a in view["attempts"]] == ["iad"]
    assert cluster.upstream.regions_seen() == ["iad"]
