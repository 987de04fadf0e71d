"""Usage convergence: how long one G-counter increment on one node takes to reach every node, in virtual time.

Plans' usage (edge/placement/usage.py) lives on grow-only counters carried by the gossip (cluster/counters.py): an
increment raises the node's own entry, which rides in the retransmit queue on its pings and gossip rounds (and in
every push-pull). How soon the other nodes count it is how stale their view of an account's usage (and of the
escrow ledger they pick lenders by) can be. This measures it on the real `SwimNode` cores on
`cluster.testing.SimCluster` (simulated network, one seed), with the timings of the production default profile:
`[cluster] profile = "lan"` (edge/config.py), i.e. `SwimConfig.lan()`: a probe every 1 s, gossip every 0.2 s to 3
members, push-pull every 30 s (stretched above 32 members), each update retransmitted 4 x ceil(log10(N + 1))
times. The network delays datagrams 0.5-2 ms (the harness's default).

Per cluster size and loss rate: the members join and settle, then INCREMENTS times a random member adds 1 to its
entry of one usage counter, and the run steps STEP_S of virtual time at a time until every running member's view
holds that entry's new value (or INCREMENT_TIMEOUT_S passes: reported as not converged). From the increment to the
last member is "every node"; from the increment to each member, "each node". Increments are RANDOM_GAP_S apart at
most (drawn uniformly), one at a time, so their phases against the gossip ticker are spread and they never overlap.

Run alone: `python -m bench.usage_convergence` (prints JSON).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from random import Random
from typing import Any

from cluster import SwimConfig
from cluster.broadcast import retransmit_limit
from cluster.swim import push_pull_interval
from cluster.testing import SimCluster

PROFILE = "lan"  # edge/config.py ClusterConfig.profile's default
CONFIG = SwimConfig.lan()
COUNTER = "usage|acme|2026-01"
INCREMENTS = {3: 300, 100: 150}
STEP_S = 0.005  # the measurement's resolution
RANDOM_GAP_S = 1.0
INCREMENT_TIMEOUT_S = 120.0
SETTLE_S = 30.0  # after the joins, until the join gossip has drained


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def measure(member_count: int, loss: float, *, increments: int, seed: int) -> dict[str, Any]:
    """One cluster size at one loss rate: join, settle, then `increments` increments, each timed to every node."""
    sim = SimCluster(seed=seed, config=CONFIG, loss=loss)
    picker = Random(seed)
    for _ in range(member_count):
        sim.add_node()
        sim.run_for(0.02)
    converged_at = sim.run_until_true(sim.converged, timeout=120.0, step=0.5)
    sim.run_for(SETTLE_S)

    every_node: list[float] = []
    each_node: list[float] = []
    unconverged = 0
    for _ in range(increments):
        sim.run_for(picker.uniform(0.0, RANDOM_GAP_S))
        origin = picker.choice(sim.running)
        entry = sim.add_counter(origin, COUNTER)
        started = sim.now
        waiting = {name for name in sim.running if name != origin}
        while waiting and sim.now - started < INCREMENT_TIMEOUT_S:
            sim.run_for(STEP_S)
            arrived = {name for name in waiting if sim.node(name).counters().own(COUNTER, origin) >= entry.value}
            each_node += [sim.now - started] * len(arrived)
            waiting -= arrived
        if waiting:
            unconverged += 1
        else:
            every_node.append(sim.now - started)
    return {
        "members": member_count,
        "loss": loss,
        "converged_after_join_s": None if converged_at is None else round(converged_at, 2),
        "increments": increments,
        "unconverged": unconverged,
        "every_node_s": {
            "median": round(statistics.median(every_node), 3) if every_node else None,
            "p99": round(_percentile(every_node, 0.99), 3) if every_node else None,
            "max": round(max(every_node), 3) if every_node else None,
        },
        "each_node_s": {
            "median": round(statistics.median(each_node), 3) if each_node else None,
            "p99": round(_percentile(each_node, 0.99), 3) if each_node else None,
        },
        "retransmits": retransmit_limit(CONFIG.retransmit_mult, member_count),
    }


def run(*, sizes: tuple[int, ...] = (3, 100), losses: tuple[float, ...] = (0.0, 0.1), seed: int = 1) -> dict[str, Any]:
    """Every (size, loss) combination, in the shape `python -m bench` renders (title, about, targets, commands,
    rows, checks, notes), with the raw figures under `measurements`."""
    started = time.perf_counter()
    results = []
    for member_count in sizes:
        for loss in losses:
            run_started = time.perf_counter()
            increments = INCREMENTS.get(member_count, min(INCREMENTS.values()))
            result = measure(member_count, loss, increments=increments, seed=seed)
            result["wall_s"] = round(time.perf_counter() - run_started, 1)
            results.append(result)
    rows = [
        {
            "members": str(r["members"]),
            "loss": f"{r['loss']:.0%}",
            "increments": str(r["increments"]),
            "every node: median / p99 / max (s)": f"{r['every_node_s']['median']} / {r['every_node_s']['p99']}"
            f" / {r['every_node_s']['max']}",
            "each node: median / p99 (s)": f"{r['each_node_s']['median']} / {r['each_node_s']['p99']}",
            "retransmits per update": str(r["retransmits"]),
        }
        for r in results
    ]
    return {
        "title": "Usage convergence: one G-counter increment reaching every node (virtual time)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"node": "cluster.swim:SwimNode", "network": "cluster.testing:SimCluster", "profile": PROFILE},
        "commands": ["python -m bench usage_convergence", "python -m bench.usage_convergence"],
        "rows": rows,
        "checks": {
            f"increments that never reached every node (timeout {INCREMENT_TIMEOUT_S:g} s)": sum(
                r["unconverged"] for r in results
            ),
        },
        "notes": [
            f"Virtual seconds of the production default profile, {PROFILE!r} (SwimConfig.lan(): probe"
            f" {CONFIG.probe_interval:g} s, gossip {CONFIG.gossip_interval:g} s to {CONFIG.gossip_nodes} members,"
            f" push-pull {CONFIG.push_pull_interval:g} s), seed {seed}, resolution {STEP_S * 1000:g} ms. An"
            " increment waits for the origin's next gossip round (every 0.2 s), then spreads epidemically to 3"
            " members a round; pings piggyback it too. Push-pull (30 s) only repairs what loss dropped.",
            "'every node' is per increment, until the last member counts it; 'each node' is per (increment,"
            " member). Increments are one at a time on an idle cluster: under load the retransmit queue carries"
            " one entry per (counter, node), the latest value, so a busy counter does not queue behind itself.",
            "A max far above the p99 is an increment whose every retransmit toward some member was lost: that"
            " member counts it only at its next push-pull with a member that has it (each member starts one every"
            + "".join(
                f" {push_pull_interval(CONFIG.push_pull_interval, size):g} s at {size} members," for size in sizes
            )
            + " with a random peer), or at the origin's next change of that entry.",
        ],
        "measurements": {"usage_convergence": results, "wall_s": round(time.perf_counter() - started, 1)},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
