"""Members on real loopback sockets with a fast protocol config, started and crashed inside one test's nursery."""

from __future__ import annotations

import math
import socket
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from random import Random

import trio

from cluster import CounterEntry, Keyring, MemberState, SharedEntry, SwimConfig
from cluster.shell import ClusterMember, ShellSettings
from edge.runtime import Resolver, Runtime, system_resolver

KEYRING = Keyring(bytes(range(100, 132)))
# Detection in about a second on loopback: probes every 200 ms, a suspicion lasts 0.6..1.8 s.
FAST = SwimConfig(
    probe_interval=0.2,
    probe_timeout=0.08,
    indirect_checks=1,
    suspicion_mult=3,
    suspicion_max_timeout_mult=3,
    retransmit_mult=2,
    gossip_interval=0.05,
    gossip_to_the_dead_time=5.0,
    push_pull_interval=2.0,
    reconnect_interval=1.0,
)
QUICK_JOIN = ShellSettings(stream_timeout_s=1.0, join_backoff_initial_s=0.05, join_backoff_max_s=0.4)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def make_runtime(seed: int, resolver: Resolver = system_resolver) -> Runtime:
    return Runtime(wall_clock=time.time, rng=Random(seed), resolver=resolver)


def endpoint(member: ClusterMember) -> str:
    """The member's gossip address as seed text."""
    host, port = member.local.address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Running:
    """A started member and the scope that crashes it: cancelling ends its tasks and closes its sockets."""

    member: ClusterMember
    scope: trio.CancelScope

    @property
    def name(self) -> str:
        return self.member.local.node

    def crash(self) -> None:
        self.scope.cancel()


async def start(
    nursery: trio.Nursery,
    name: str,
    *,
    seeds: Sequence[str] = (),
    bind: str = "127.0.0.1:0",
    advertise: str | None = None,
    keyring: Keyring | None = KEYRING,
    insecure: bool = False,
    runtime: Runtime | None = None,
    settings: ShellSettings = QUICK_JOIN,
    shared_entries: Iterable[SharedEntry] = (),
    on_shared_change: Callable[[SharedEntry], None] | None = None,
    counter_entries: Iterable[CounterEntry] = (),
    on_counter_change: Callable[[CounterEntry], None] | None = None,
) -> Running:
    member = ClusterMember(
        node_id=name,
        bind=bind,
        advertise=advertise,
        region="test",
        api_address=f"http://{name}.test",
        config=FAST,
        keyring=keyring,
        insecure=insecure,
        seeds=seeds,
        runtime=runtime or make_runtime(zlib.crc32(name.encode())),
        settings=settings,
        shared_entries=shared_entries,
        on_shared_change=on_shared_change,
        counter_entries=counter_entries,
        on_counter_change=on_counter_change,
    )
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await member.run(task_status=task_status)

    await nursery.start(run)
    return Running(member, scope)


async def start_cluster(nursery: trio.Nursery, names: Sequence[str]) -> list[Running]:
    """The first member is every other's seed; returns once every member sees all of them live."""
    first = await start(nursery, names[0])
    others = [await start(nursery, name, seeds=[endpoint(first.member)]) for name in names[1:]]
    running = [first, *others]
    await wait_until(lambda: all(live_view(r.member) == set(names) for r in running), timeout_s=5, what="converged")
    return running


def states(member: ClusterMember) -> dict[str, MemberState]:
    return {info.node: info.state for info in member.members()}


def live_view(member: ClusterMember) -> set[str]:
    return {info.node for info in member.live_members()}


async def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 0.02) -> float:
    """Poll `condition` (a bounded number of times) and return the seconds until it held."""
    started = trio.current_time()
    for _ in range(math.ceil(timeout_s / poll_s) + 1):
        if condition():
            return trio.current_time() - started
        if trio.current_time() - started > timeout_s:
            break
        await trio.sleep(poll_s)
    raise AssertionError(f"not {what} after {timeout_s} s")
