"""Gossip benchmark: failure detection, dissemination and traffic of the SWIM core, in virtual time.

Runs the real `SwimNode` cores on `cluster.testing.SimCluster` (simulated network, one seed), so the figures are
protocol figures: seconds of virtual time and bytes on the simulated wire, not the speed of this machine. For
each cluster size and loss rate it reports, beside memberlist's bounds computed from its formulas (LAN preset):
- failure detection: from a crash until each survivor declares the node dead (median and p99 over every
  (crash, survivor) pair), and until the last survivor does;
- false positives: `dead` verdicts about nodes that were never crashed;
- dissemination: from a new node's join until every member lists it;
- traffic: datagram and push-pull bytes per second per node in steady state.
Also the ownership spread and movement of rendezvous hashing (100,000 keys over 10 nodes).

1,000 nodes is left out of the default run: the 1,000 joins' gossip storm alone took over 4 minutes of wall time
in this single-threaded simulator, beyond the 60 s budget. `run(sizes=(1000,))` still works.

Run alone: `python -m bench.gossip` (prints JSON).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from random import Random
from typing import Any

from cluster import MemberState, Rendezvous, SwimConfig
from cluster.broadcast import retransmit_limit
from cluster.suspicion import suspicion_timeout_bounds
from cluster.testing import SimCluster

LAN = SwimConfig.lan()
CRASHES_PER_RUN = 5
JOINS_PER_RUN = 3
TRAFFIC_WINDOW_S = 60.0
SETTLE_S = 30.0  # after the joins, until the join gossip has drained
OWNERSHIP_KEYS = 100_000


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def memberlist_bounds(member_count: int) -> dict[str, float]:
    """memberlist's default (LAN) figures for N members: suspicion timeouts, retransmits, detection window."""
    minimum, maximum = suspicion_timeout_bounds(
        suspicion_mult=LAN.suspicion_mult,
        max_timeout_mult=LAN.suspicion_max_timeout_mult,
        member_count=member_count,
        probe_interval=LAN.probe_interval,
    )
    return {
        "suspicion_timeout_min_s": minimum,
        "suspicion_timeout_max_s": maximum,
        "retransmits": retransmit_limit(LAN.retransmit_mult, member_count),
        # One failed probe interval, then the suspicion timeout: all confirmations in (min) or none (max).
        "detection_fastest_s": LAN.probe_interval + minimum,
        "detection_slowest_s": LAN.probe_interval + maximum,
    }


def _first_times(sim: SimCluster, kind: str, node: str, since: float, start: int) -> dict[str, float]:
    """Per observer, the first `kind` event about `node` in the trace from index `start`."""
    first: dict[str, float] = {}
    for entry in sim.trace[start:]:
        if entry.kind == kind and entry.node == node and entry.observer not in first:
            first[entry.observer] = entry.at - since
    return first


def measure(member_count: int, loss: float, *, seed: int) -> dict[str, Any]:
    """One cluster size at one loss rate: join, settle, measure traffic, joins and crashes."""
    sim = SimCluster(seed=seed, config=LAN, loss=loss)
    picker = Random(seed)
    for _ in range(member_count):
        sim.add_node()
        sim.run_for(0.02)
    converged_at = sim.run_until_true(sim.converged, timeout=120.0, step=0.5)
    sim.run_for(SETTLE_S)

    packets_before, streams_before = dict(sim.packet_bytes_sent), dict(sim.stream_bytes_sent)
    sim.run_for(TRAFFIC_WINDOW_S)
    running = sim.running
    packet_rate = sum(sim.packet_bytes_sent[n] - packets_before[n] for n in running) / TRAFFIC_WINDOW_S / len(running)
    stream_rate = sum(sim.stream_bytes_sent[n] - streams_before[n] for n in running) / TRAFFIC_WINDOW_S / len(running)

    join_spread: list[float] = []
    for _ in range(JOINS_PER_RUN):
        start, joined_at = len(sim.trace), sim.now
        newcomer = sim.add_node()
        if sim.run_until_true(sim.converged, timeout=60.0, step=0.5) is not None:
            join_spread.append(max(_first_times(sim, "joined", newcomer, joined_at, start).values()))
        sim.run_for(5.0)

    detection: list[float] = []
    detection_everywhere: list[float] = []
    crashed: set[str] = set()
    for _ in range(CRASHES_PER_RUN):
        victim = picker.choice([name for name in sim.running if name != "n000"])
        start, crashed_at = len(sim.trace), sim.now
        sim.crash(victim)
        crashed.add(victim)
        survivors = sim.running

        def everyone_knows(victim: str = victim, survivors: list[str] = survivors) -> bool:
            return all(sim.view(name).get(victim) is MemberState.DEAD for name in survivors)

        sim.run_until_true(everyone_knows, timeout=3 * LAN.detection_bound(len(survivors) + 1), step=0.5)
        times = _first_times(sim, "dead", victim, crashed_at, start)
        detection += [times[name] for name in survivors if name in times]
        if len(times) >= len(survivors):
            detection_everywhere.append(max(times[name] for name in survivors))
        sim.run_for(5.0)

    verdicts = Counter(entry.kind for entry in sim.trace if entry.node not in crashed)
    return {
        "members": member_count,
        "loss": loss,
        "converged_after_join_s": None if converged_at is None else round(converged_at, 2),
        "detection_s": {
            "median": round(statistics.median(detection), 2) if detection else None,
            "p99": round(_percentile(detection, 0.99), 2) if detection else None,
            "everywhere_median": round(statistics.median(detection_everywhere), 2) if detection_everywhere else None,
            "samples": len(detection),
            "undetected_crashes": CRASHES_PER_RUN - len(detection_everywhere),
        },
        # Verdicts about members never crashed, counted per observer: every suspect report was refuted unless
        # a dead verdict followed it.
        "false_positives": {"dead_verdicts": verdicts["dead"], "suspect_reports": verdicts["suspect"]},
        "join_reaches_everyone_s": {
            "median": round(statistics.median(join_spread), 2) if join_spread else None,
            "max": round(max(join_spread), 2) if join_spread else None,
        },
        "bytes_per_s_per_node": {"packets": round(packet_rate), "push_pull": round(stream_rate)},
        "memberlist_lan": memberlist_bounds(member_count),
        "our_detection_bound_s": round(LAN.detection_bound(member_count), 2),
    }


def ownership() -> dict[str, float]:
    """Rendezvous spread (max / mean keys per node) and the share of keys that move when one of 10 leaves."""
    nodes = [f"node-{index}" for index in range(10)]
    keys = [f"user-{index}:key" for index in range(OWNERSHIP_KEYS)]
    full, without_one = Rendezvous(nodes), Rendezvous(nodes[1:])
    before = [full.owner(key) for key in keys]
    after = [without_one.owner(key) for key in keys]
    counts = Counter(before)
    mean = len(keys) / len(nodes)
    return {
        "keys": len(keys),
        "nodes": len(nodes),
        "max_over_mean": round(max(counts.values()) / mean, 4),
        "min_over_mean": round(min(counts.values()) / mean, 4),
        "moved_when_one_leaves": round(sum(b != a for b, a in zip(before, after, strict=True)) / len(keys), 4),
        "ideal_moved": round(1 / len(nodes), 4),
    }


def run(*, sizes: tuple[int, ...] = (10, 100), losses: tuple[float, ...] = (0.0, 0.1), seed: int = 1) -> dict[str, Any]:
    """Every (size, loss) combination and the ownership figures, in the shape `python -m bench` renders (title,
    about, targets, commands, rows, checks, notes), with the raw figures under `measurements`."""
    started = time.perf_counter()
    results = []
    for member_count in sizes:
        for loss in losses:
            run_started = time.perf_counter()
            result = measure(member_count, loss, seed=seed)
            result["wall_s"] = round(time.perf_counter() - run_started, 1)
            results.append(result)
    spread = ownership()
    rows = [
        {
            "members": str(r["members"]),
            "loss": f"{r['loss']:.0%}",
            "detection median / p99 (s)": f"{r['detection_s']['median']} / {r['detection_s']['p99']}",
            "dead everywhere, median (s)": str(r["detection_s"]["everywhere_median"]),
            "memberlist LAN window (s)": f"{r['memberlist_lan']['detection_fastest_s']:g}"
            f"..{r['memberlist_lan']['detection_slowest_s']:g}",
            "false dead verdicts": str(r["false_positives"]["dead_verdicts"]),
            "join reaches all, median (s)": str(r["join_reaches_everyone_s"]["median"]),
            "bytes/s per node (packets + push-pull)": f"{r['bytes_per_s_per_node']['packets']:,}"
            f" + {r['bytes_per_s_per_node']['push_pull']:,}",
        }
        for r in results
    ]
    return {
        "title": "Cluster gossip: failure detection, dissemination, traffic (virtual time)",
        "about": __doc__.strip().splitlines()[0],
        "targets": {"node": "cluster.swim:SwimNode", "network": "cluster.testing:SimCluster", "preset": "LAN"},
        "commands": ["python -m bench.gossip"],
        "rows": rows,
        "checks": {
            "crashes never declared dead everywhere": sum(r["detection_s"]["undetected_crashes"] for r in results),
            "rendezvous max / mean keys per node (100,000 keys, 10 nodes)": spread["max_over_mean"],
            "keys moved when 1 of 10 nodes leaves (ideal 0.1)": spread["moved_when_one_leaves"],
        },
        "notes": [
            f"{CRASHES_PER_RUN} crashes and {JOINS_PER_RUN} joins per row, seed {seed}; detection samples are"
            " every (crash, survivor) pair. The memberlist window is one probe interval plus its suspicion"
            " timeout min (all confirmations) .. max (none).",
            "1,000 members is not in the default run: its joins alone took over 4 minutes of wall time in this"
            " single-threaded simulator. `run(sizes=(1000,))` measures it.",
        ],
        "measurements": {"gossip": results, "ownership": spread, "wall_s": round(time.perf_counter() - started, 1)},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
