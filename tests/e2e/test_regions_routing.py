"""Where jobs run across regions, with real processes: three `ezthrottle serve` in iad, lax and ord
(tests/e2e/regions.py), each calling out from its own source address, so the upstream knows which region ran an
attempt.

- a job naming one region runs there, whichever node took it and whichever node owns its key;
- a reroute code moves a fallback job to another region, and a strict job never leaves its regions;
- a fanout runs once in every region and keeps every region's answer;
- with one attempt at a time (the key's `max_concurrent = 1`), a race naming several regions is a single attempt,
  and region health, not list order, chooses where it goes: a region 20x slower gets only its first measurement
  (and the odd probe);
- a region whose only node was killed is routed around (fallback) or refused with a reason (strict).
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.regions import RegionCluster, RegionNode, RegionUpstream, Visit, start_region_cluster
from tests.e2e.support import auth

LIMITS = "[defaults]\nrps = 1000\nmax_concurrent = 8\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.2\n"
ALL = ["iad", "lax", "ord"]


def _on(visits: list[Visit], path: str) -> list[Visit]:
    return [visit for visit in visits if visit.path == path]


def _attempts(view: dict[str, Any]) -> list[tuple[str | None, str | None, int | None]]:
    return [(a["region"], a["outcome"], a["status_code"]) for a in view["attempts"]]


async def _owner(cluster: RegionCluster, queue_key: str) -> RegionNode:
    """The node that owns `queue_key` now (GET /api/v1/queues, which asks every node)."""
    owners = {q["node"] for q in await cluster.queues() if q["queue_key"] == queue_key}
    assert len(owners) == 1, (queue_key, owners)
    return cluster.node_by_id(owners.pop())


async def _regions(node: RegionNode) -> dict[str, Any]:
    """GET /api/v1/regions on `node`."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{node.base_url}/api/v1/regions", headers=auth())
    response.raise_for_status()
    return dict(response.json())


@pytest.mark.slow
async def test_named_region_placement_reroute_strict_and_fanout(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=LIMITS)

    # 1. `regions: ["lax"]`, submitted to ord: it runs in lax. Each credential is its own queue key, so keys land
    # on different owners; keep going until one is owned outside lax, so the attempt went owner -> lax node.
    owners: list[str] = []
    for index in range(8):
        job = {
            "url": f"{url}/placed",
            "headers": {"Authorization": f"Bearer tenant-{index}"},
            "regions": ["lax"],
            "idempotent_key": f"placed-{index}",
        }
        view = await cluster.wait_finished(await cluster.submit(job, via=cluster["ord"]))
        assert view["status"] == "success", view
        assert _attempts(view) == [("lax", "won", 200)], view["attempts"]
        assert '"region": "lax"' in view["response"]["body"]  # the upstream's answer names who called it
        owners.append((await _owner(cluster, view["queue_key"])).region)
        if owners[-1] != "lax":
            break
    assert [visit.region for visit in _on(upstream.visits, "/placed")] == ["lax"] * len(owners)
    assert owners[-1] != "lax", f"every key was owned in lax: {owners}"

    # 2. A 500 in iad (200 elsewhere): a fallback job naming only iad is rerouted at once and succeeds elsewhere.
    upstream.behave(region="iad", path="/flaky", status=500)
    view = await cluster.wait_finished(await cluster.submit({"url": f"{url}/flaky", "regions": ["iad"]}))
    assert view["status"] == "success", view
    [(first, first_outcome, first_status), (winner, won, winner_status)] = _attempts(view)
    assert (first, first_outcome, first_status) == ("iad", "rerouted", 500), view["attempts"]
    assert winner in ("lax", "ord") and (won, winner_status) == ("won", 200), view["attempts"]
    assert [(v.region, v.status) for v in _on(upstream.visits, "/flaky")] == [("iad", 500), (winner, 200)]

    # The same 500 with `region_policy: "strict"`: no other region may take it, so the 500 is final, in iad.
    strict = {"url": f"{url}/flaky", "regions": ["iad"], "region_policy": "strict", "idempotent_key": "strict"}
    view = await cluster.wait_finished(await cluster.submit(strict, via=cluster["lax"]))
    assert view["status"] == "failed", view
    assert _attempts(view) == [("iad", "failed", 500)], view["attempts"]
    # ... and when 500 is also a retry code, it is retried in place: every try in iad, none elsewhere.
    retrying = strict | {"idempotent_key": "strict-retry", "retry_policy": {"retry_codes": [500], "max_retries": 2}}
    view = await cluster.wait_finished(await cluster.submit(retrying, via=cluster["ord"]))
    assert view["status"] == "failed", view
    assert _attempts(view) == [("iad", "retried", 500)] * 2 + [("iad", "failed", 500)], view["attempts"]
    flaky = _on(upstream.visits, "/flaky")
    assert [(v.region, v.status) for v in flaky[2:]] == [("iad", 500)] * 4, flaky

    # 3. Fanout: once in every region, the job succeeds, and every region's own answer is kept.
    fanout = {"url": f"{url}/fan", "regions": ALL, "execution_mode": "fanout"}
    view = await cluster.wait_finished(await cluster.submit(fanout, via=cluster["iad"]))
    assert view["status"] == "success", view
    assert sorted(_attempts(view)) == [(region, "succeeded", 200) for region in ALL], view["attempts"]
    await upstream.wait_for(lambda seen: sum(v.finished for v in _on(seen, "/fan")) == 3, timeout_s=5)
    assert sorted(v.region for v in _on(upstream.visits, "/fan") if v.answered) == ALL
    await trio.sleep(0.3)  # a duplicate leg, if there were one, would show up by now
    assert len(_on(upstream.visits, "/fan")) == 3
    responses = view["region_responses"]
    assert sorted(responses) == ALL, responses
    for region, response in responses.items():
        assert response["status_code"] == 200 and f'"region": "{region}"' in response["body"], (region, response)


@pytest.mark.slow
async def test_health_keeps_single_attempts_away_from_a_slow_region(nursery: trio.Nursery, tmp_path: Path) -> None:
    """`max_concurrent = 1` for the origin: a race over three regions then has one slot, so each job is a single
    attempt in the region health ranks first (edge/engine/legs.py, `plan_legs`). lax answers 20x slower than iad
    and ord. lax is named first, so list order would pick it every time."""
    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    one_at_a_time = f'[targets."{url}"]\nmax_concurrent = 1\n'
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=LIMITS + one_at_a_time)
    upstream.behave(path="/work", delay_s=0.05)
    upstream.behave(region="lax", path="/work", delay_s=1.0)

    jobs = 20
    job_ids = []
    for index in range(jobs):
        job = {"url": f"{url}/work", "regions": ["lax", "iad", "ord"], "idempotent_key": f"work-{index}"}
        job_ids.append(await cluster.submit(job, via=cluster.nodes[index % 3]))
    views = [await cluster.wait_finished(job_id, timeout_s=60) for job_id in job_ids]
    for view in views:
        # One slot: a single attempt (no race legs), which succeeded.
        assert view["status"] == "success" and len(view["attempts"]) == 1, view
        assert view["attempts"][0]["outcome"] == "won", view["attempts"]
    visits = await upstream.wait_for(lambda seen: sum(v.finished for v in _on(seen, "/work")) == jobs, timeout_s=10)
    work = sorted(_on(visits, "/work"), key=lambda visit: visit.started)
    assert len(work) == jobs and all(visit.answered for visit in work), work
    # Never two at once: each attempt started after the one before had ended.
    for before, after in pairwise(work):
        assert before.ended is not None and after.started >= before.ended - 0.01, (before, after)
    regions = Counter(visit.region for visit in work)

    # lax is measured once, early (a region never measured costs nothing, so each gets a first attempt); from then
    # on its ~1 s is far outside the 25% tie band of iad's and ord's ~50 ms, and only a random probe (5% of
    # dispatches, shared with the other candidate: ~2.5% each) sends a job there. List order would send all 20 to
    # lax, round-robin 6 or 7; health sends 1, and more than 4 probes would take a 1-in-10,000 draw.
    assert regions["lax"] <= 5, [visit.region for visit in work]
    assert regions["iad"] >= 1 and regions["ord"] >= 1 and regions.total() == jobs, regions

    # The owner's health view says why: lax's latency for this origin is far above iad's and ord's.
    owner = await _owner(cluster, views[0]["queue_key"])
    status = await _regions(owner)
    health = {entry["region"]: entry["origins"].get(url) for entry in status["regions"]}
    assert all(health[region] is not None for region in ALL), status
    slow, fast = health["lax"]["latency_ms"], max(health["iad"]["latency_ms"], health["ord"]["latency_ms"])
    # 20x apart at the upstream; a loaded machine (the suite's other worker) inflates the fast regions' latency.
    assert slow >= 900 and slow > 3 * fast, health
    assert all(health[region]["error_rate"] == 0 for region in ALL), health
    assert {entry["region"]: entry["up"] for entry in status["regions"]} == dict.fromkeys(ALL, True), status


@pytest.mark.slow
async def test_a_killed_region_is_routed_around_or_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=LIMITS)

    # While lax is up, a strict job naming lax runs there.
    strict = {"url": f"{url}/strict", "regions": ["lax"], "region_policy": "strict", "retry_policy": {"max_retries": 1}}
    view = await cluster.wait_finished(await cluster.submit(strict | {"idempotent_key": "before"}))
    assert view["status"] == "success" and _attempts(view) == [("lax", "won", 200)], view
    assert [visit.region for visit in upstream.visits] == ["lax"]

    await cluster["lax"].kill()
    await cluster.wait_live({"iad", "ord"})
    for node in (cluster["iad"], cluster["ord"]):
        up = {entry["region"]: entry["up"] for entry in (await _regions(node))["regions"]}
        assert up.get("lax", False) is False and up["iad"] and up["ord"], (node.region, up)

    # A fallback job naming lax runs in another region, at once (lax is down: no attempt is even tried there).
    fallback = {"url": f"{url}/fallback", "regions": ["lax"]}
    view = await cluster.wait_finished(await cluster.submit(fallback, via=cluster["ord"]))
    assert view["status"] == "success", view
    [(region, outcome, status)] = _attempts(view)
    assert region in ("iad", "ord") and (outcome, status) == ("won", 200), view["attempts"]
    assert [visit.region for visit in _on(upstream.visits, "/fallback")] == [region]

    # A strict job naming only lax: no region can take it; it fails (after its one retry), saying why.
    view = await cluster.wait_finished(await cluster.submit(strict | {"idempotent_key": "after"}, via=cluster["iad"]))
    assert view["status"] == "failed", view
    assert "lax" in (view["error"] or "") and "up" in view["error"], view
    assert all(a["status_code"] is None and a["region"] != "lax" for a in view["attempts"]), view["attempts"]
    assert len(view["attempts"]) == 2, view["attempts"]  # the first try and its one retry
    assert len(upstream.visits) == 2  # nothing more reached the upstream
