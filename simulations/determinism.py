"""Run real node code on virtual time with a reproducible task order, and fingerprint what happened.

This is the only module that touches trio's private scheduling knobs (stack-notes.md, "Deterministic simulation
inside one trio.run"). trio shuffles every batch of runnable tasks on purpose, with `trio._core._run._r`; with
`_ALLOW_DETERMINISTIC_SCHEDULING` set it first sorts the batch by task creation order and then shuffles it with
that same RNG, so seeding the RNG fixes the whole schedule. Both names are private, which is why trio is pinned
(pyproject.toml) and why a version check refuses to run on any other trio.

A run is reproducible when everything it reads comes from here or from the seed: virtual time from the
`MockClock` (autojump at 0: time jumps to the next deadline as soon as every task is blocked), randomness from
`Simulation.rng_for`, the network from simulations.network / simulations.http. Things that still break it: real
I/O, threads (`trio.to_thread`: virtual time jumps while the thread works), `time.time()`, and iteration over sets
of strings (PYTHONHASHSEED). The subprocess test runs under a different PYTHONHASHSEED to catch the last one.

The trace is the run's fingerprint: code under test appends events, each stamped with the virtual time, and the
trace keeps a running SHA-256 over all of them plus the most recent few for a failure report. Two runs with the
same seed must give the same digest; that is the determinism check. A run that fails raises its exception with a
note naming the seed, the virtual time and the last events, so any failure can be replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, final

import trio
import trio._core._run as trio_run
import trio.testing

# The trio release whose private scheduler this module was written against (see the module docstring).
TRIO_VERSION_PINNED = "0.35.0"
# How often `wait_for` checks its condition, in virtual seconds: fine enough to time a failure detection to a tenth
# of a LAN probe interval, coarse enough to cost nothing next to the code under test.
POLL_INTERVAL_S = 0.1
# Events kept verbatim for a failure report; every event still goes into the digest.
TRACE_TAIL_EVENTS = 1000
# Of those, how many a failed run's exception shows.
FAILURE_EVENTS_SHOWN = 20

T = TypeVar("T")


def derive_seed(seed: int, label: str) -> int:
    """A 64-bit seed for one subsystem, stable across processes (a hash of text, never Python's `hash`)."""
    digest = hashlib.sha256(f"{seed}/{label}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@contextlib.contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Make trio's task order a function of `seed` inside the block; put trio's own state back after it."""
    if trio.__version__ != TRIO_VERSION_PINNED:
        raise RuntimeError(
            f"the simulator drives trio {TRIO_VERSION_PINNED}'s private scheduler, but trio {trio.__version__} "
            "is installed: check trio._core._run still has _ALLOW_DETERMINISTIC_SCHEDULING and _r, then re-pin"
        )
    saved_flag = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = trio_run._r.getstate()
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(derive_seed(seed, "trio-scheduler"))
    try:
        yield
    finally:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag  # type: ignore[misc]
        trio_run._r.setstate(saved_state)


@final
class Trace:
    """Events stamped with virtual time: a running digest over all of them and the most recent ones verbatim."""

    __slots__ = ("_digest", "_event_count", "_tail")

    def __init__(self, *, tail_events: int = TRACE_TAIL_EVENTS) -> None:
        self._digest = hashlib.sha256()
        self._event_count = 0
        self._tail: deque[str] = deque(maxlen=tail_events)

    def __repr__(self) -> str:
        return f"<Trace {self._event_count} events | {self.hexdigest()[:16]}>"

    @property
    def event_count(self) -> int:
        return self._event_count

    def record(self, event: str) -> None:
        """Append `event` (one line of text, built only from deterministic values) at the current virtual time."""
        line = f"{trio.current_time()!r} {event}"
        self._digest.update(line.encode())
        self._digest.update(b"\n")
        self._event_count += 1
        self._tail.append(line)

    def tail(self) -> list[str]:
        """The most recent events, oldest first, as recorded (virtual time, then the event)."""
        return list(self._tail)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


async def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Virtual seconds until `condition` held, checked every POLL_INTERVAL_S; AssertionError after `timeout_s`."""
    started = trio.current_time()
    for _poll in range(math.ceil(timeout_s / POLL_INTERVAL_S) + 1):
        if condition():
            return trio.current_time() - started
        await trio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"not {what} after {timeout_s} s of virtual time")


@final
class Simulation:
    """What a simulated run gets from the harness: its seed, the clock, the trace and per-subsystem RNGs."""

    __slots__ = ("clock", "seed", "trace")

    def __init__(self, *, seed: int, clock: trio.testing.MockClock, trace: Trace) -> None:
        self.seed = seed
        self.clock = clock
        self.trace = trace

    def rng_for(self, label: str) -> random.Random:
        """A fresh RNG for one subsystem: adding a draw in one never shifts the others' (TigerBeetle's split)."""
        return random.Random(derive_seed(self.seed, label))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult(Generic[T]):
    """What `main` returned, the trace it left, and how much virtual time passed."""

    value: T
    trace: Trace
    virtual_s: float


def run_simulation(
    main: Callable[[Simulation], Awaitable[T]], *, seed: int, instruments: Sequence[trio.abc.Instrument] = ()
) -> SimulationResult[T]:
    """Run `main` in a fresh `trio.run` on virtual time, with the task order fixed by `seed`.

    `instruments` watch the scheduler (bench.simulator_speed counts its work with one); they must not change what
    the run does. Must be called outside any trio run (a test using it is a plain `def`, not `async def`)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    simulation = Simulation(seed=seed, clock=clock, trace=Trace())
    try:
        with deterministic_scheduling(seed):
            value = trio.run(main, simulation, clock=clock, instruments=instruments)
    except BaseException as exc:
        # The seed first: with it the run replays exactly; the last events say where it was.
        recent = "\n".join(simulation.trace.tail()[-FAILURE_EVENTS_SHOWN:])
        exc.add_note(f"simulation seed={seed}, failed at virtual time {clock.current_time()!r}; last events:\n{recent}")
        raise
    return SimulationResult(value=value, trace=simulation.trace, virtual_s=clock.current_time())
