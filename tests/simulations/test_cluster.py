"""Real ClusterMembers on the simulated network and virtual time: convergence, crash detection, partitions,
restarts, and the same seed giving the same trace, in this process and in others."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from cluster import MemberState, SwimConfig
from simulations.cluster import SimulatedCluster, crash_detection, live_names
from simulations.determinism import Simulation, run_simulation, wait_for
from simulations.network import LinkFaults, SimulatedNetwork, open_simulated_network
from tests.simulations.replay import replay_output

LAN = SwimConfig.lan()
MEMBERS = 5
NAMES = [f"m{index}" for index in range(MEMBERS)]


def crash_run(seed: int) -> tuple[tuple[float, float], str]:
    result = run_simulation(lambda simulation: crash_detection(simulation, member_count=MEMBERS, config=LAN), seed=seed)
    return result.value, result.trace.hexdigest()


def on_cluster(
    scenario: Callable[[SimulatedCluster, SimulatedNetwork], Awaitable[None]], *, seed: int, faults: LinkFaults
) -> None:
    """Start MEMBERS members seeded with the first, wait until they converge, then run `scenario`."""

    async def main(simulation: Simulation) -> None:
        async with (
            open_simulated_network(rng=simulation.rng_for("network"), trace=simulation.trace, faults=faults) as net,
            trio.open_nursery() as nursery,
        ):
            cluster = SimulatedCluster(simulation=simulation, network=net, nursery=nursery, config=LAN)
            await cluster.start(NAMES[0])
            for name in NAMES[1:]:
                await cluster.start(name, seeds=[cluster.address(NAMES[0])])
            await wait_for(cluster.converged, timeout_s=30, what="converged")
            await scenario(cluster, net)
            nursery.cancel_scope.cancel()

    run_simulation(main, seed=seed)


def test_members_converge_and_a_crash_is_detected_within_the_bound() -> None:
    (converge_s, detect_s), _digest = crash_run(seed=1)
    assert converge_s <= 2 * LAN.push_pull_interval
    assert 0 < detect_s <= LAN.detection_bound(MEMBERS)


def test_the_same_seed_replays_the_same_trace_and_another_seed_does_not() -> None:
    first, second, other = crash_run(seed=7), crash_run(seed=7), crash_run(seed=8)
    assert first == second
    assert first[1] != other[1]


def test_a_run_replays_identically_in_other_processes_under_other_hash_seeds() -> None:
    _times, digest = crash_run(seed=7)
    for hash_seed in ("1", "2"):
        arguments = ["-m", "simulations.cluster", "--seed", "7", "--members", str(MEMBERS)]
        assert replay_output(arguments, hash_seed=hash_seed)[0] == digest


def test_a_partitioned_member_is_declared_dead_and_rejoins_after_the_heal() -> None:
    async def scenario(cluster: SimulatedCluster, network: SimulatedNetwork) -> None:
        isolated = "m3"
        others = [cluster.host(name) for name in NAMES if name != isolated]
        network.partition([cluster.host(isolated)], others)
        await wait_for(
            lambda: cluster.all_see(isolated, MemberState.DEAD) and live_names(cluster.member(isolated)) == {isolated},
            timeout_s=2 * LAN.detection_bound(MEMBERS),
            what="cut off on both sides",
        )
        assert all(live_names(cluster.member(name)) == set(NAMES) - {isolated} for name in NAMES if name != isolated)
        network.heal()
        await wait_for(cluster.converged, timeout_s=2 * LAN.reconnect_interval, what="healed")

    on_cluster(scenario, seed=3, faults=LinkFaults())


def test_a_restarted_member_rejoins_on_its_old_address() -> None:
    async def scenario(cluster: SimulatedCluster, _network: SimulatedNetwork) -> None:
        cluster.crash("m2")
        await wait_for(lambda: cluster.all_see("m2", MemberState.DEAD), timeout_s=60, what="m2 dead")
        await cluster.start("m2", seeds=[cluster.address("m0")])
        await wait_for(cluster.converged, timeout_s=30, what="m2 back")
        restarted = cluster.member("m0").members()
        assert [info.state for info in restarted if info.node == "m2"] == [MemberState.ALIVE]

    on_cluster(scenario, seed=4, faults=LinkFaults())


def test_loss_duplication_and_jitter_still_converge_and_agree_on_owners() -> None:
    async def scenario(cluster: SimulatedCluster, network: SimulatedNetwork) -> None:
        await trio.sleep(20)  # twenty probe rounds on a bad network: no member may be falsely declared dead
        assert cluster.converged()
        owners = [[cluster.member(name).owner_of(f"key-{index}") for index in range(50)] for name in NAMES]
        assert all(view == owners[0] for view in owners)
        stats = network.statistics()
        assert stats.packets_lost > 0 and stats.packets_duplicated > 0

    on_cluster(scenario, seed=5, faults=LinkFaults(loss=0.05, duplication=0.05, delay_min_s=0.001, delay_max_s=0.05))
