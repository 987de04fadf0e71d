"""The injected world of a simulated node (`edge.runtime.Runtime`): virtual wall clock, seeded RNG, fake DNS."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import httpx
import trio

from cluster.shell.transport import TransportFactory
from edge.runtime import Runtime

from .determinism import Simulation

# Virtual time starts at 0; the simulated wall clock starts here (2026-01-01T00:00:00Z), so timestamps, HTTP dates
# and the cluster's boot epochs look like real ones and every run sees the same ones.
SIMULATED_EPOCH_S = 1_767_225_600.0


def simulated_wall_clock() -> float:
    """Unix time in the simulation: the fixed epoch plus virtual time (so it never steps and never drifts)."""
    return SIMULATED_EPOCH_S + trio.current_time()


class StaticResolver:
    """DNS from a fixed table: a name not in it fails like NXDOMAIN. IP literals resolve to themselves."""

    __slots__ = ("_names",)

    def __init__(self, names: Mapping[str, Sequence[str]]) -> None:
        self._names = {name: list(addresses) for name, addresses in names.items()}

    async def __call__(self, host: str) -> list[str]:
        await trio.lowlevel.checkpoint()  # a lookup is a checkpoint in the real resolver too
        if host in self._names:
            return list(self._names[host])
        try:
            return [ipaddress.ip_address(host).compressed]
        except ValueError:
            pass
        raise OSError(f"simulated DNS has no record for {host!r}")


def simulated_runtime(
    simulation: Simulation,
    node: str,
    *,
    names: Mapping[str, Sequence[str]] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    cluster_transport: TransportFactory | None = None,
) -> Runtime:
    """A node's Runtime: its own RNG drawn from the seed by node name, the virtual wall clock, the DNS table,
    and the simulated networks it reaches others through (HTTP, gossip)."""
    return Runtime(
        wall_clock=simulated_wall_clock,
        rng=simulation.rng_for(f"node/{node}"),
        resolver=StaticResolver(names or {}),
        transport=transport,
        cluster_transport=cluster_transport,
    )
