"""Regions with real processes: three `ezthrottle serve` in three regions (tests/e2e/regions.py), each with its own
source address, and an upstream that tells regions apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.e2e.regions import RegionUpstream, Visit, start_region_cluster

LIMITS = "[defaults]\nrps = 1000\nmax_concurrent = 8\nmax_retries = 2\n"


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
