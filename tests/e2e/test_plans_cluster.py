"""A plan's quota on three real processes: submissions to every node at ten times what the quota allows are accepted
exactly up to quota + overage cluster-wide, also with one node partitioned off during the run (escrow:
edge/placement/usage.py, cluster/escrow.py)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
import trio

from edge.placement.usage import month_end_ms
from tests.e2e import partition
from tests.e2e.regions import RegionCluster, members_in, start_region_cluster
from tests.e2e.support import auth

QUOTA, OVERAGE = 50, 10
ALLOWANCE = QUOTA + OVERAGE
PLANS = f"""
[plans.pro]
monthly_requests = {QUOTA}
overage_requests_max = {OVERAGE}
[cluster]
forward_deadline_s = 3.0
# The quota alone: with replicas, a submission whose successor is cut off is answered 503 while its job (and
# the right it spent) stays on the owner and counts; replication under partitions is still open work.
replicas = 1
"""
ROUNDS_MAX = 30  # submission rounds after the burst, until every node refuses for the rest of the month


UNCERTAIN = (0, 503)  # no answer, or the owner could not be reached in time: it may still have taken the job


async def _submit(client: httpx.AsyncClient, tag: str) -> int:
    """One job with a credential of its own (so keys, and their owners, spread over the nodes); its status."""
    job = {
        "url": "http://127.0.0.1:9/x",
        "retry_at": 4_000_000_000_000,
        "idempotent_key": tag,
        "headers": {"Authorization": f"Bearer user-{tag}"},
    }
    try:
        return (await client.post("/api/v1/jobs", json=job, headers=auth())).status_code
    except httpx.TransportError:
        return 0


async def _burst(clients: Sequence[httpx.AsyncClient], count: int, prefix: str) -> tuple[int, Counter[int]]:
    """`count` submissions at once, spread over the nodes; how many were accepted, and every status seen. A
    submission whose answer was uncertain is sent again with its idempotency key until it is not: a 200 then says
    the first one was accepted after all (README, "Cluster": a forward that timed out may have been committed)."""
    statuses: Counter[int] = Counter()
    accepted = 0

    async def one(index: int) -> None:
        nonlocal accepted
        client, tag = clients[index % len(clients)], f"{prefix}-{index}"
        status = await _submit(client, tag)
        statuses[status] += 1
        for _retry in range(20):
            if status not in UNCERTAIN:
                break
            await trio.sleep(0.5)
            status = await _submit(client, tag)
        assert status not in UNCERTAIN, (tag, status)
        accepted += status in (200, 201)

    async with trio.open_nursery() as burst:
        for index in range(count):
            burst.start_soon(one, index)
    return accepted, statuses


async def _drain(clients: Sequence[httpx.AsyncClient], prefix: str) -> int:
    """Submit one job per node per round until every node refuses it for the month; the 201s it took."""
    accepted = 0
    month_end = month_end_ms(int(time.time() * 1000))
    for round_index in range(ROUNDS_MAX):
        refused_for_the_month = 0
        for index, client in enumerate(clients):
            job = {
                "url": "http://127.0.0.1:9/x",
                "retry_at": 4_000_000_000_000,
                "idempotent_key": f"{prefix}-{round_index}-{index}",
            }
            answer = await client.post("/api/v1/jobs", json=job, headers=auth())
            accepted += answer.status_code == 201
            if answer.status_code == 429 and answer.json().get("retry_at") == month_end:
                refused_for_the_month += 1
        if refused_for_the_month == len(clients):
            return accepted
        await trio.sleep(1.0)
    raise AssertionError(f"the nodes still accepted or deferred after {ROUNDS_MAX} rounds")


async def _alive(client: httpx.AsyncClient) -> set[str]:
    view = (await client.get("/api/v1/cluster", headers=auth())).json()
    return set(members_in(view))


async def _jobs_held(client: httpx.AsyncClient) -> int:
    """The account's jobs waiting in every node's queues: what the stores hold, whatever the answers said."""
    queues = (await client.get("/api/v1/queues", headers=auth())).json()["queues"]
    return sum(queue["depth"] for queue in queues)


async def _usage_everywhere(clients: Sequence[httpx.AsyncClient], expected: int) -> None:
    with trio.fail_after(20):
        while True:
            counts = [(await client.get("/api/v1/usage", headers=auth())).json()["count"] for client in clients]
            if counts == [expected] * len(clients):
                return
            await trio.sleep(0.2)


@pytest.mark.slow
async def test_exactly_the_allowance_is_accepted_cluster_wide(nursery: trio.Nursery, tmp_path: Path) -> None:
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=PLANS)
    async with _clients(cluster) as clients:
        accepted, statuses = await _burst(clients, 10 * ALLOWANCE, "burst")
        assert accepted <= ALLOWANCE and statuses[500] == 0, statuses
        accepted += await _drain(clients, "drain")
        assert accepted == ALLOWANCE, statuses
        await _usage_everywhere(clients, ALLOWANCE)
        assert await _jobs_held(clients[0]) == ALLOWANCE


@pytest.mark.slow
async def test_a_partition_during_the_run_never_overshoots(nursery: trio.Nursery, tmp_path: Path, cgroup: Path) -> None:
    cluster = await start_region_cluster(nursery, tmp_path, extra_config=PLANS, cgroups={"ord": cgroup})
    async with _clients(cluster) as clients:
        before, _statuses = await _burst(clients, ALLOWANCE // 3, "before")  # the genesis: every node holds a share
        with partition.cut_off(cluster["ord"]):
            during, statuses = await _burst(clients, 10 * ALLOWANCE, "during")
            assert before + during <= ALLOWANCE, statuses
            # The split was real: each side had declared the other gone by the end of the burst.
            assert "ord-1" not in await _alive(clients[0]) and await _alive(clients[2]) == {"ord-1"}
        await cluster.wait_alive()
        accepted = before + during + await _drain(clients, "after")
        assert accepted == ALLOWANCE, statuses
        await _usage_everywhere(clients, ALLOWANCE)
        assert await _jobs_held(clients[0]) == ALLOWANCE


@contextlib.asynccontextmanager
async def _clients(cluster: RegionCluster) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(partition.client(node)) for node in cluster]
