"""A node's place in the cluster: start its membership, wait to join, describe the cluster for the API.

The protocol lives in cluster/ (the sans-I/O SWIM core and its Trio shell); job placement lives in
edge/placement/routing.py. This module only turns `[cluster]` settings into a running `ClusterMember`.

Why a node waits to join before its queues run: until it has heard from its peers, a node believes it is alone
and so owns every key, and would run queues that another node runs too. With seeds configured it waits until it
sees a peer, or `cluster.join_wait_s` passes (the first node of a new cluster, or every seed down), before the queue
manager resumes its jobs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from cluster import CounterEntry, Keyring, SharedEntry, SwimConfig
from cluster.shell import ClusterMember
from cluster.shell.transport import open_socket_transport
from edge.config import ClusterConfig, Config, split_listen
from edge.engine.shell.queues import QueueManager
from edge.runtime import Runtime

log = logging.getLogger("ezthrottle.cluster")

NODE_ID_FILENAME = "node-id"
_PROFILES = {"lan": SwimConfig.lan, "wan": SwimConfig.wan, "local": SwimConfig.local}


def swim_config(settings: ClusterConfig) -> SwimConfig:
    return _PROFILES[settings.profile]()


def keyring_of(settings: ClusterConfig) -> Keyring | None:
    return Keyring(*settings.keys) if settings.keys else None


def node_id(config: Config, runtime: Runtime) -> str:
    """`server.node_id`, else an id generated once and kept in the data dir, so a restart is the same member."""
    if config.server.node_id:
        return config.server.node_id
    path: Path = config.server.data_dir / NODE_ID_FILENAME
    if path.exists():
        return path.read_text().strip()
    generated = f"node-{runtime.rng.getrandbits(48):012x}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated + "\n")
    return generated


def api_address(config: Config) -> str:
    """The job API address other members forward to: `cluster.api_advertise`, else `server.listen`."""
    if config.cluster.api_advertise:
        return config.cluster.api_advertise
    host, port = split_listen(config.server.listen)
    if port == 0 or host in ("0.0.0.0", "::", ""):
        raise ValueError(
            f"server.listen {config.server.listen!r} is not an address other members can reach; "
            "set cluster.api_advertise"
        )
    return config.server.listen


async def start_membership(
    nursery: trio.Nursery,
    config: Config,
    runtime: Runtime,
    *,
    shared_entries: Iterable[SharedEntry] = (),
    on_shared_change: Callable[[SharedEntry], None] | None = None,
    counter_entries: Iterable[CounterEntry] = (),
    on_counter_change: Callable[[CounterEntry], None] | None = None,
) -> ClusterMember:
    """Start this node's member in `nursery` and wait (bounded) until it has joined its peers.

    `shared_entries` are the shared settings saved by this node (edge/placement/shared_state.py), and
    `on_shared_change` is told about every change, to save it; `counter_entries` and `on_counter_change` are the
    same for the counters (edge/placement/counters.py)."""
    settings = config.cluster
    assert settings.bind is not None
    member = ClusterMember(
        node_id=node_id(config, runtime),
        bind=settings.bind,
        advertise=settings.advertise,
        region=settings.region or "",
        api_address=api_address(config),
        machine=settings.machine or "",
        config=swim_config(settings),
        keyring=keyring_of(settings),
        insecure=settings.insecure,
        seeds=settings.seeds,
        runtime=runtime,
        transport_factory=runtime.cluster_transport or open_socket_transport,
        shared_entries=shared_entries,
        on_shared_change=on_shared_change,
        counter_entries=counter_entries,
        on_counter_change=on_counter_change,
    )
    await nursery.start(member.run)
    if settings.seeds:
        with trio.move_on_after(settings.join_wait_s) as waiting:
            version = member.version
            while len(member.live_members()) < 2:
                version = await member.wait_changed(version)
        if waiting.cancelled_caught:
            log.warning("no cluster peer answered within %ss; running alone until one does", settings.join_wait_s)
    log.info("cluster member %s: %d live members", member.local.node, len(member.live_members()))
    return member


def describe_cluster(member: ClusterMember, config: Config, manager: QueueManager) -> dict[str, Any]:
    """GET /api/v1/cluster: the members, and which member this node believes owns each key it holds."""
    members = member.members()
    stats = member.statistics()
    held = manager.queue_keys()
    owners: dict[str, int] = {}
    for key in held:
        owner = member.owner_of(key)
        name = owner.node if owner else "-"
        owners[name] = owners.get(name, 0) + 1
    return {
        "enabled": True,
        "node": member.local.node,
        "version": member.version,
        "detection_bound_s": swim_config(config.cluster).detection_bound(max(2, len(members))),
        # The partition rule (cluster/lease.py): whether this node holds the majority lease now, and how long a
        # fallen member's keys wait before their new owner runs them.
        "runs_keys": member.runs_keys(),
        "takeover_wait_s": round(member.takeover_wait_s(), 3),
        "members": [
            {
                "node": m.node,
                "state": m.state.name.lower(),
                "incarnation": m.incarnation,
                "region": m.region,
                "machine": m.machine,
                "api_address": m.api_address,
                "gossip_address": f"{m.address[0]}:{m.address[1]}",
            }
            for m in members
        ],
        "ownership": {"queue_keys_held": len(held), "owner_counts": owners},
        "dropped_packets": dataclasses.asdict(stats.swim.drops),
    }
