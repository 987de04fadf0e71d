"""The CPU model: what a node's processor costs, so a simulated node saturates as a real one does.

On virtual time CPU is free, so without this a simulated node never runs out of capacity and a sweep over node
counts cannot say how many nodes a workload needs. Here every operation the real code performs costs the CPU time
it was measured to cost on a real machine (a `Calibration`), and a node's operations queue for its cores
(`CpuQueue`): first come, first served, one operation per core at a time. Past capacity the queue grows, and with
it latency, timeouts, shed load and refusals, which is how saturation shows on a real node.

Pure: `CpuQueue.charge` takes the current (virtual) time and returns when the work is done; the full model's shell
waits until then on trio's virtual clock, the fast model's event loop schedules an event at it. A calibration is a
JSON file (`Calibration.load` / `save`), written by `ezthrottle simulate --calibrate` on the machine to model;
`bundled_calibration()` is the one shipped with the code, with the machine it was measured on.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, final

CALIBRATION_FORMAT: Final = 1
BUNDLED_CALIBRATION_PATH: Final = Path(__file__).with_name("calibration.json")
# A run's series of each node's CPU utilisation: booked CPU over its cores' time in each sample (both models).
CPU_SERIES_PREFIX: Final = "cpu_utilisation/"


class Operation(enum.Enum):
    """A unit of work the real node code does, as the calibration names it."""

    SUBMIT = "submit"  # accept one job: parse, validate, commit, answer 201
    FORWARD = "forward"  # pass one submission on to its key's owner (the entry node's share)
    ACCEPT = "accept"  # take one forwarded submission as its key's owner: commit, answer (the owner's share)
    ATTEMPT = "attempt"  # one outbound call of a job, response handled and saved
    WEBHOOK = "webhook"  # one webhook delivery try
    PROXY = "proxy"  # one inbound request proxied to the protected upstream
    REFUSAL = "refusal"  # one inbound request refused (429 / 503) without reaching the upstream
    GOSSIP = "gossip"  # one gossip datagram sent or received
    REPLICATE = "replicate"  # one record kept on a successor (a copy of a key's saved job), per record of a call


class CalibrationError(ValueError):
    """A calibration file that cannot be used: wrong format, an unknown operation, a negative cost."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """CPU seconds per operation, and where they were measured (shown in every report that uses them).

    `costs_s` were measured with `concurrency` operations in flight; `solo_costs_s`, if given, with one at a time.
    They differ (by about 2x on the development machine): a node busy with many operations batches their group
    commits, their replication calls and their HTTP/2 frames, and wakes its event loop once for several of them.
    `cost_at` interpolates between the two by how many of a node's operations are in flight, as a fixed part per
    operation plus a shared part split among them (a + b / in_flight), and goes no further than measured: from
    `concurrency` in flight on, `costs_s`. Without solo costs every operation costs `costs_s` whatever the load."""

    costs_s: Mapping[Operation, float]
    machine: str
    measured_at: str
    cores: int = 1  # the modelled node's cores, unless a scenario says otherwise
    notes: Mapping[str, Any] = field(default_factory=dict)  # how each cost was measured, for the reader
    concurrency: int = 1  # operations in flight while `costs_s` were measured
    solo_costs_s: Mapping[Operation, float] = field(default_factory=dict)  # one at a time; empty: not measured

    def __post_init__(self) -> None:
        for costs in (self.costs_s, self.solo_costs_s) if self.solo_costs_s else (self.costs_s,):
            missing = set(Operation) - set(costs)
            if missing:
                raise CalibrationError(f"no cost for {', '.join(sorted(op.value for op in missing))}")
            if any(cost < 0 for cost in costs.values()):
                raise CalibrationError("costs must not be negative")
        if self.cores < 1:
            raise CalibrationError("cores must be at least 1")
        if self.concurrency < 1 or (self.solo_costs_s and self.concurrency < 2):
            raise CalibrationError("concurrency must be at least 1, and at least 2 beside solo costs")
        object.__setattr__(self, "costs_s", MappingProxyType(dict(self.costs_s)))
        object.__setattr__(self, "solo_costs_s", MappingProxyType(dict(self.solo_costs_s)))
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))

    def cost_s(self, operation: Operation) -> float:
        """The cost with `concurrency` operations in flight."""
        return self.costs_s[operation]

    def cost_at(self, operation: Operation, in_flight: int) -> float:
        """The cost with `in_flight` of the node's operations in flight, this one included (see the class)."""
        loaded = self.costs_s[operation]
        if not self.solo_costs_s:
            return loaded
        solo = self.solo_costs_s[operation]
        shared = (solo - loaded) / (1 - 1 / self.concurrency)  # b: solo = a + b, loaded = a + b / concurrency
        fixed = solo - shared
        if fixed < 0:  # the loaded cost is under 1/concurrency of the solo one: all of it shared
            fixed, shared = 0.0, solo
        return max(0.0, fixed + shared / min(max(1, in_flight), self.concurrency))

    def at_speed(self, speed: float) -> Calibration:
        """The same machine `speed` times as fast (0.5: every operation takes twice as long), for a machine faster
        or slower than the measured one, or a share of one that other work keeps busy."""
        if speed <= 0:
            raise CalibrationError("speed must be > 0")
        costs = {operation: cost / speed for operation, cost in self.costs_s.items()}
        solo = {operation: cost / speed for operation, cost in self.solo_costs_s.items()}
        notes = {**self.notes, "speed": speed} if speed != 1 else self.notes
        return dataclasses.replace(self, costs_s=costs, solo_costs_s=solo, notes=notes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "machine": self.machine,
            "measured_at": self.measured_at,
            "cores": self.cores,
            "costs_s": {op.value: cost for op, cost in self.costs_s.items()},
            "concurrency": self.concurrency,
            "solo_costs_s": {op.value: cost for op, cost in self.solo_costs_s.items()},
            "notes": dict(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        if data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(
                f"calibration format {data.get('format')!r}, this version reads {CALIBRATION_FORMAT}"
            )
        try:
            costs = {Operation(name): float(cost) for name, cost in data["costs_s"].items()}
            solo = {Operation(name): float(cost) for name, cost in (data.get("solo_costs_s") or {}).items()}
            return cls(
                costs_s=costs,
                machine=str(data["machine"]),
                measured_at=str(data["measured_at"]),
                cores=int(data.get("cores", 1)),
                notes=data.get("notes") or {},
                concurrency=int(data.get("concurrency", 1)),
                solo_costs_s=solo,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"not a calibration: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: {exc}") from None
        return cls.from_json(data)


def bundled_calibration() -> Calibration:
    """The calibration shipped with the code (its `machine` says where it was measured)."""
    return Calibration.load(BUNDLED_CALIBRATION_PATH)


@final
class CpuQueue:
    """One node's cores: operations are served first come, first served, each on the core that frees first.

    `charge(now, cost_s)` books the work and returns the time it finishes; nothing runs, the caller waits until
    then. Work booked while every core is busy starts when one frees, so its wait is the queueing delay of a
    saturated node. `busy_s` is the CPU time booked so far, for utilisation figures.
    """

    __slots__ = ("_free_at", "busy_s", "cores")

    def __init__(self, cores: int) -> None:
        if cores < 1:
            raise ValueError("a node has at least one core")
        self.cores = cores
        self._free_at = [0.0] * cores  # a heap: when each core is next free
        self.busy_s = 0.0

    def charge(self, now: float, cost_s: float) -> float:
        """Book `cost_s` of CPU from `now` (a core's earliest free time, if later); return when it is done."""
        start = max(now, self._free_at[0])
        done = start + cost_s
        heapq.heapreplace(self._free_at, done)
        self.busy_s += cost_s
        return done

    def backlog_s(self, now: float) -> float:
        """How long new work would wait for a core at `now`."""
        return max(0.0, self._free_at[0] - now)

    def reset(self, now: float) -> None:
        """A restarted node: booked work is gone (the process died with it); the counters stay."""
        self._free_at = [now] * self.cores
