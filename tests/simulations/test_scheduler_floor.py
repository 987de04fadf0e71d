"""bench.simulator_speed's ceiling: counting a run's scheduling work, and trio alone replaying that work."""

from __future__ import annotations

from bench.simulator_speed import SchedulerWork, scheduler_floor
from simulations.determinism import run_simulation
from tests.simulations.test_determinism import ROUNDS, TASKS, racing_tasks


def test_an_instrument_counts_the_work_of_a_run_without_changing_it() -> None:
    work = SchedulerWork()
    counted = run_simulation(racing_tasks, seed=5, instruments=[work])
    assert counted.trace.hexdigest() == run_simulation(racing_tasks, seed=5).trace.hexdigest()
    # The workers wake together once per round; each of their wake-ups is a step.
    assert work.time_jumps >= ROUNDS
    assert work.steps >= TASKS * ROUNDS
    assert work.spawns >= TASKS


def test_the_floor_replays_the_counted_work_over_the_same_virtual_span() -> None:
    wanted = {"steps": 20_000, "spawns": 3_000, "time_jumps": 5_000}
    floor = scheduler_floor(wanted, virtual_s=30.0)
    replayed = floor["work"]
    for name, count in wanted.items():
        assert abs(replayed[name] - count) <= 0.05 * count, (name, replayed)
    assert 30.0 * 0.8 <= floor["virtual_s"] <= 30.0 * 1.3  # the sleepers end near it, the last a little after
    assert floor["speed_x"] > 0
