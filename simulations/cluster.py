"""Real `ClusterMember`s (cluster/shell) on one simulated network and virtual time: start, crash, restart.

Each member gets its own loopback host (127.0.1.N, kept across restarts) and the gossip port, a Runtime drawn from
the seed (simulations/runtime.py), and the cluster's keyring, also drawn from the seed. A crash cancels the
member's tasks: its transport unbinds and its in-memory state is gone; a restart is a new `ClusterMember` on the
same address with a fresh RNG stream (a new boot), as a restarted process would be.

`crash_detection` is the first scenario, and `python -m simulations.cluster --seed N` runs it and prints the trace
digest, which is how the tests check that a run replays identically in another process.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import final

import trio

from cluster import Keyring, MemberState, SwimConfig
from cluster.shell import ClusterMember, ShellSettings

from .determinism import Simulation, run_simulation, wait_for
from .network import SimulatedNetwork, open_simulated_network
from .runtime import simulated_runtime

GOSSIP_PORT = 7946
# Hosts 127.0.1.1 .. 127.0.1.254: loopback addresses, never bound as real sockets.
MEMBERS_MAX = 254
DEFAULT_SETTINGS = ShellSettings()


def live_names(member: ClusterMember) -> set[str]:
    return {info.node for info in member.live_members()}


@final
class SimulatedCluster:
    """Members by name on one network, each run in its own cancel scope inside the caller's nursery."""

    __slots__ = ("_boots", "_config", "_hosts", "_keyring", "_network", "_nursery", "_running", "_settings", "_sim")

    def __init__(
        self,
        *,
        simulation: Simulation,
        network: SimulatedNetwork,
        nursery: trio.Nursery,
        config: SwimConfig,
        settings: ShellSettings = DEFAULT_SETTINGS,
    ) -> None:
        self._sim = simulation
        self._network = network
        self._nursery = nursery
        self._config = config
        self._settings = settings
        self._keyring = Keyring(simulation.rng_for("cluster/keyring").randbytes(32))
        self._hosts: dict[str, str] = {}
        self._boots: dict[str, int] = {}
        self._running: dict[str, tuple[ClusterMember, trio.CancelScope]] = {}

    def __repr__(self) -> str:
        return f"<SimulatedCluster {len(self._running)} running of {len(self._hosts)} | {self._network!r}>"

    def address(self, name: str) -> str:
        """The member's gossip address as seed text (host:port)."""
        return f"{self._hosts[name]}:{GOSSIP_PORT}"

    def host(self, name: str) -> str:
        return self._hosts[name]

    def member(self, name: str) -> ClusterMember:
        return self._running[name][0]

    async def start(self, name: str, *, seeds: Sequence[str] = ()) -> ClusterMember:
        """Start (or restart) `name`; returns once it is bound and serving, not once it has joined."""
        if name in self._running:
            raise RuntimeError(f"{name} is already running")
        if name not in self._hosts:
            if len(self._hosts) >= MEMBERS_MAX:
                raise ValueError(f"at most {MEMBERS_MAX} members fit on 127.0.1.0/24")
            self._hosts[name] = f"127.0.1.{len(self._hosts) + 1}"
        boot = self._boots[name] = self._boots.get(name, 0) + 1
        member = ClusterMember(
            node_id=name,
            bind=self.address(name),
            region="sim",
            api_address=f"{self._hosts[name]}:8080",
            config=self._config,
            keyring=self._keyring,
            seeds=seeds,
            runtime=simulated_runtime(self._sim, f"{name}/boot-{boot}"),
            transport_factory=self._network.open_transport,
            settings=self._settings,
        )
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[ClusterMember] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await member.run(task_status=task_status)

        await self._nursery.start(run)
        self._running[name] = (member, scope)
        self._sim.trace.record(f"cluster start {name} boot {boot}")
        return member

    def crash(self, name: str) -> None:
        """Stop `name` at once, without a leave: it simply goes silent."""
        _member, scope = self._running.pop(name)
        scope.cancel()
        self._sim.trace.record(f"cluster crash {name}")

    def converged(self) -> bool:
        """Every running member sees exactly the running members as live."""
        expected = set(self._running)
        return all(live_names(member) == expected for member, _scope in self._running.values())

    def all_see(self, name: str, state: MemberState) -> bool:
        """Every running member other than `name` knows `name` in `state`."""
        return all(
            any(info.node == name and info.state is state for info in member.members())
            for other, (member, _scope) in self._running.items()
            if other != name
        )


async def crash_detection(simulation: Simulation, *, member_count: int, config: SwimConfig) -> tuple[float, float]:
    """Start `member_count` members (all seeded with the first), wait until they converge, crash the last, and
    wait until every other one has declared it dead. Returns (seconds to converge, seconds to detect)."""
    async with (
        open_simulated_network(rng=simulation.rng_for("network"), trace=simulation.trace) as network,
        trio.open_nursery() as nursery,
    ):
        cluster = SimulatedCluster(simulation=simulation, network=network, nursery=nursery, config=config)
        names = [f"m{index}" for index in range(member_count)]
        await cluster.start(names[0])
        for name in names[1:]:
            await cluster.start(name, seeds=[cluster.address(names[0])])
        converge_s = await wait_for(cluster.converged, timeout_s=60, what="converged")
        simulation.trace.record(f"cluster converged after {converge_s!r} s")
        victim = names[-1]
        cluster.crash(victim)
        detect_s = await wait_for(
            lambda: cluster.all_see(victim, MemberState.DEAD),
            timeout_s=2 * config.detection_bound(member_count),
            what=f"{victim} declared dead",
        )
        simulation.trace.record(f"cluster {victim} dead everywhere after {detect_s!r} s")
        nursery.cancel_scope.cancel()
    return converge_s, detect_s


def main(argv: Sequence[str] | None = None) -> None:
    """Run `crash_detection` for one seed and print the trace digest, event count and virtual time."""
    parser = argparse.ArgumentParser(prog="python -m simulations.cluster", description=main.__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--members", type=int, default=5)
    args = parser.parse_args(argv)
    result = run_simulation(
        lambda simulation: crash_detection(simulation, member_count=args.members, config=SwimConfig.lan()),
        seed=args.seed,
    )
    print(result.trace.hexdigest(), result.trace.event_count, repr(result.virtual_s))


if __name__ == "__main__":
    main()
