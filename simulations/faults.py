"""Faults: apply a scenario's fault schedule to the world at its virtual times, and heal each one on time.

What the design must survive, per fault (the invariants in simulations/invariants.py say what "survive" means):
- crash: a node stops at once (API cut, tasks cancelled, in-memory state gone) and restarts `duration_s` later
  over the same durable store: no acknowledged job may be lost, its keys move to the survivors and back;
- disk loss: a crash whose node restarts with an empty store (or never): with `cluster.replicas` >= 2 no
  acknowledged job may be lost nor a finished one run again, since each is on its key's successors too;
- partition (symmetric or one way): gossip and node-to-node HTTP between the sides stop; split ownership is
  allowed while it lasts (each side owns the keys of the members it cannot see), one queue per key after it heals;
- loss, duplication, delay spikes (with jitter, so datagrams reorder): on every gossip path, and delay spikes on
  node-to-node HTTP too (forwarding, hand-offs); membership must hold or recover;
- upstream outage (everywhere, or from one region's nodes): calls are refused; jobs retry or fail, none is lost;
- 5xx bursts: a share of a provider's answers becomes 503 (retried per the job's policy);
- receiver outage: webhook deliveries are refused and retried on the node's schedule.

Random ("swarm") faults are drawn by `Scenario.with_swarm_faults` from the seed, so this module only ever sees a
fixed schedule. Every fault applied is one readable line in `schedule` (the report's fault schedule) and in the
trace; its heal is in the trace too.
"""

from __future__ import annotations

import dataclasses
from typing import final

import trio

from .network import LinkFaults
from .scenario import FAULT_KINDS, NODE_FAULTS, FaultSpec
from .world import World

# What swarm mode may draw: every kind this module applies.
RANDOM_FAULT_KINDS = FAULT_KINDS
_LINK_FIELD = {"loss": "loss", "duplication": "duplication", "delay": "delay_max_s"}


@final
class FaultInjector:
    """Applies `faults` (times counted from `offset_s`, the start of the workload) to `world`."""

    def __init__(self, world: World, faults: tuple[FaultSpec, ...], *, offset_s: float) -> None:
        self._world = world
        self._faults = faults
        self._offset_s = offset_s
        self._base_links = world.network.faults
        self.schedule: list[str] = []
        self.crashes: list[tuple[float, str]] = []  # (virtual time, node) of every crash applied

    def __repr__(self) -> str:
        return f"<FaultInjector {len(self.schedule)} of {len(self._faults)} faults applied>"

    async def run(self, nursery: trio.Nursery) -> None:
        """Apply and heal every fault at its time; restarts run in `nursery` (a restart waits for its join)."""
        events = []
        for index, fault in enumerate(self._faults):
            events.append((self._offset_s + fault.at_s, 1, index, True))
            if fault.duration_s is not None:
                events.append((self._offset_s + fault.end_s, 0, index, False))
        for at, _order, index, applying in sorted(events):
            await trio.sleep_until(at)
            fault = self._faults[index]
            if applying:
                self._apply(fault)
            else:
                self._heal(fault, nursery)

    def _apply(self, fault: FaultSpec) -> None:
        world = self._world
        line = fault.describe()
        self.schedule.append(line)
        world.simulation.trace.record(f"fault apply {line}")
        if fault.kind in NODE_FAULTS:
            for name in fault.nodes:
                if world.nodes[name].scope is not None:
                    world.crash(name)
                    self.crashes.append((trio.current_time(), name))
                if fault.kind == "disk_loss":
                    world.lose_disk(name)
        elif fault.kind == "partition":
            world.network.partition(*self._sides(fault), one_way=fault.one_way)
        elif fault.kind in _LINK_FIELD:
            world.network.faults = _with_field(world.network.faults, _LINK_FIELD[fault.kind], fault.rate)
        elif fault.kind == "upstream_outage":
            world.provider_outages.add((fault.target, fault.region))
        elif fault.kind == "upstream_errors":
            world.providers[fault.target].error_bursts[fault.region] = fault.rate
        elif fault.kind == "receiver_outage":
            world.receiver_outages.add(fault.target)

    def _heal(self, fault: FaultSpec, nursery: trio.Nursery) -> None:
        world = self._world
        world.simulation.trace.record(f"fault heal {fault.describe()}")
        if fault.kind in NODE_FAULTS:
            for name in fault.nodes:
                if world.nodes[name].scope is None:
                    nursery.start_soon(world.start, name)
        elif fault.kind == "partition":
            world.network.heal(*self._sides(fault), one_way=fault.one_way)
        elif fault.kind in _LINK_FIELD:
            name = _LINK_FIELD[fault.kind]
            world.network.faults = _with_field(world.network.faults, name, getattr(self._base_links, name))
        elif fault.kind == "upstream_outage":
            world.provider_outages.discard((fault.target, fault.region))
        elif fault.kind == "upstream_errors":
            world.providers[fault.target].error_bursts.pop(fault.region, None)
        elif fault.kind == "receiver_outage":
            world.receiver_outages.discard(fault.target)

    def _sides(self, fault: FaultSpec) -> tuple[list[str], list[str]]:
        nodes = self._world.nodes
        others = fault.other_nodes or tuple(name for name in nodes if name not in fault.nodes)
        return [nodes[name].host for name in fault.nodes], [nodes[name].host for name in others]

    def active_at_end(self) -> list[str]:
        """The faults never healed: what the final convergence check must allow for."""
        return [fault.describe() for fault in self._faults if fault.duration_s is None]


def _with_field(links: LinkFaults, name: str, value: float) -> LinkFaults:
    return dataclasses.replace(links, **{name: value})
