"""Regions with real processes: three `ezthrottle serve` in three regions (tests/e2e/regions.py), each with its own
source address, and an upstream that tells regions apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.e2e.regions import RegionUpstream, Visit, start_region_cluster
from tests.e2e.support import WebhookSink, serve

LIMITS = "[defaults]\nrps = 1000\nmax_concurrent = 8\nmax_retries = 2\n"
FAST_WEBHOOKS = "[webhooks]\nschedule_s = [0, 0.2, 0.2]\nrepeat_every_s = 0.2\ngive_up_after_s = 10\n"


@pytest.mark.slow
async def test_a_race_is_won_by_the_fastest_region_and_survives_kill_9_of_the_owner(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=LIMITS)
    upstream.behave(region="iad", path="/race", delay_s=0.05)
    upstream.behave(region="lax", path="/race", delay_s=0.6)
    upstream.behave(region="ord", path="/race", delay_s=1.5)

    job_id = await cluster.submit({"url": f"{url}/race", "regions": ["iad", "lax", "ord"], "idempotent_key": "r"})
    view = await cluster.wait_finished(job_id)
    assert view["status"] == "success"
    outcomes = {a["region"]: a["outcome"] for a in view["attempts"]}
    assert outcomes == {"iad": "won", "lax": "cancelled", "ord": "cancelled"}
    visits = await upstream.wait_for(lambda seen: len(_finished(seen, "/race")) == 3, timeout_s=5)
    by_region = {v.region: v for v in _finished(visits, "/race")}
    won = by_region["iad"].ended
    assert won is not None
    for loser in ("lax", "ord"):
        # The losers hung up on the upstream soon after the win, long before their answers were due.
        at = by_region[loser].disconnected_at
        assert at is not None and not by_region[loser].answered and at - won < 0.3

    # kill -9 of the owner in the middle of a race: the job is durable on the owner's disk, so when the owner comes
    # back it resumes the job and races again (at-least-once for the attempt in flight), and it finishes once.
    for region in ("iad", "lax", "ord"):
        upstream.behave(region=region, path="/slow-race", delay_s=2.0)
    job = {"url": f"{url}/slow-race", "regions": ["iad", "lax", "ord"], "idempotent_key": "k9"}
    job_id = await cluster.submit(job)
    await upstream.wait_for(lambda seen: len([v for v in seen if v.path == "/slow-race"]) == 3, timeout_s=10)
    owners = {q["node"] for q in await cluster.queues() if q["in_flight"]}
    assert len(owners) == 1
    owner = cluster.node_by_id(owners.pop())
    await owner.kill()
    await owner.restart()
    view = await cluster.wait_finished(job_id, timeout_s=60)
    assert view["status"] == "success" and view["attempts_total"] == 3  # only the race after the restart is recorded
    assert sum(1 for a in view["attempts"] if a["outcome"] == "won") == 1
    visits = await upstream.wait_for(lambda seen: len(_finished(seen, "/slow-race")) == 6, timeout_s=10)
    assert sorted(v.region for v in _finished(visits, "/slow-race")) == ["iad", "iad", "lax", "lax", "ord", "ord"]


def _finished(visits: list[Visit], path: str) -> list[Visit]:
    return [visit for visit in visits if visit.path == path and visit.finished]


@pytest.mark.slow
async def test_a_fallback_chain_across_owners_survives_kill_9_and_spawns_its_follow_up_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The primary fails on one origin; its on_error fallback targets another origin, so it is paced by that
    origin's queue on that key's owner. The root's owner is killed with -9 while the fallback runs, and restarted:
    the root learns how its step ended, succeeds once, and spawns its on_success child once."""
    primary, fallback, sink = RegionUpstream(), RegionUpstream(), WebhookSink()
    primary_url, fallback_url = await primary.serve(nursery), await fallback.serve(nursery)
    hook = await serve(nursery, sink)
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=LIMITS + FAST_WEBHOOKS)
    job = {
        "url": f"{primary_url}/status/500",
        "idempotent_key": "chain-k9",
        "webhooks": [{"url": f"{hook}/root"}],
        "fallback_job": {"url": f"{fallback_url}/delay/3", "trigger": {"type": "on_error", "codes": [500]}},
        "on_success": {"url": f"{primary_url}/child", "webhooks": [{"url": f"{hook}/child"}]},
    }
    root_id = await cluster.submit(job)
    await fallback.wait_for(lambda seen: len(seen) == 1, timeout_s=10)
    queues = await cluster.queues()
    owner_of = {q["origin"]: q["node"] for q in queues if q["depth"] or q["in_flight"] or q["workflows"]}
    fallback_owner = cluster.node_by_id(owner_of[fallback_url])
    # The step ran where its own key lives, not on the root's node.
    assert fallback.visits[0].region == fallback_owner.region
    root_owner = cluster.node_by_id(owner_of[primary_url])
    await root_owner.kill()
    await root_owner.restart()

    view = await cluster.wait_finished(root_id, timeout_s=60)
    assert view["status"] == "success" and view["won_step"] == 1, view
    child_id = view["children"]["on_success"]
    child = await cluster.wait_finished(child_id, timeout_s=30)
    assert child["status"] == "success" and child["parent_id"] == root_id
    with trio.fail_after(20):
        while len(sink.received) < 2:
            await trio.sleep(0.1)
    await trio.sleep(1.0)  # time for a duplicate to show up, if there were one
    by_path = sorted(payload["job_id"] for payload in sink.payloads())
    assert by_path == sorted([root_id, child_id]), sink.payloads()
    assert [v.path for v in primary.visits].count("/child") == 1


@pytest.mark.slow
async def test_a_rerouted_job_resumes_where_it_was_after_kill_9_of_its_owner(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """iad answers 500, so the job moves on; while its attempt runs in the next region the owner is killed with -9.
    Restarted, the owner resumes the job from its record: it remembers it left iad, so it never goes back there."""
    upstream = RegionUpstream()
    url = await upstream.serve(nursery)
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=LIMITS)
    upstream.behave(region="iad", path="/moved", status=500)
    upstream.behave(region="lax", path="/moved", delay_s=3.0)
    upstream.behave(region="ord", path="/moved", delay_s=3.0)
    job_id = await cluster.submit({"url": f"{url}/moved", "regions": ["iad"], "idempotent_key": "moved-k9"})
    await upstream.wait_for(lambda seen: len(seen) == 2, timeout_s=10)
    assert upstream.visits[0].region == "iad" and upstream.visits[1].region != "iad"
    [owner_id] = {q["node"] for q in await cluster.queues() if q["in_flight"]}
    owner = cluster.node_by_id(owner_id)
    await owner.kill()
    await owner.restart()
    view = await cluster.wait_finished(job_id, timeout_s=60)
    assert view["status"] == "success", view
    assert "iad" in view["regions_tried"] and view["attempts"][-1]["region"] != "iad"
    assert [v.region for v in upstream.visits].count("iad") == 1  # never back to the region it left

    # A strict job that fails in iad spawns its on_failure child once, and never its on_success.
    upstream.behave(region="iad", path="/fails", status=502)
    job = {
        "url": f"{url}/fails",
        "regions": ["iad"],
        "region_policy": "strict",
        "on_success": {"url": f"{url}/never"},
        "on_failure": {"url": f"{url}/alert", "idempotent_key": "alert-1"},
    }
    failed_id = await cluster.submit(job)
    failed = await cluster.wait_finished(failed_id, timeout_s=30)
    assert failed["status"] == "failed" and list(failed["children"]) == ["on_failure"]
    child = await cluster.wait_finished(failed["children"]["on_failure"], timeout_s=30)
    assert child["status"] == "success" and child["idempotent_key"] == "alert-1"
    await trio.sleep(0.5)
    paths = [v.path for v in upstream.visits]
    assert paths.count("/alert") == 1 and "/never" not in paths
