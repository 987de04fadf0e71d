"""run_simulation: virtual time, a schedule fixed by the seed, and a trace digest that shows both."""

from __future__ import annotations

import pytest
import trio
import trio._core._run as trio_run

from simulations.determinism import Simulation, Trace, derive_seed, run_simulation, wait_for

TASKS = 12
ROUNDS = 5


async def racing_tasks(simulation: Simulation) -> float:
    """Tasks woken in the same batch record in whatever order trio runs them: the trace shows the schedule."""

    async def worker(name: int) -> None:
        for round_number in range(ROUNDS):
            await trio.sleep(1.0)  # every worker wakes in the same batch
            simulation.trace.record(f"worker {name} round {round_number}")

    async with trio.open_nursery() as nursery:
        for name in range(TASKS):
            nursery.start_soon(worker, name)
    return trio.current_time()


def test_virtual_time_passes_without_waiting() -> None:
    result = run_simulation(racing_tasks, seed=1)
    assert result.value == ROUNDS * 1.0
    assert result.virtual_s == ROUNDS * 1.0
    assert result.trace.event_count == TASKS * ROUNDS
    assert result.trace.tail()[0].startswith("1.0 worker ")


def test_same_seed_same_schedule_and_different_seed_different_schedule() -> None:
    digests = [run_simulation(racing_tasks, seed=seed).trace.hexdigest() for seed in (7, 7, 8)]
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_trio_scheduler_state_is_restored_after_a_run() -> None:
    state_before = trio_run._r.getstate()
    # pytest-trio turns the flag on for the whole session when hypothesis is installed; the run restores it.
    flag_before = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    run_simulation(racing_tasks, seed=3)
    assert trio_run._ALLOW_DETERMINISTIC_SCHEDULING is flag_before
    assert trio_run._r.getstate() == state_before


def test_rngs_are_split_by_label_and_stable() -> None:
    simulation_a = Simulation(seed=5, clock=trio.testing.MockClock(), trace=Trace())
    simulation_b = Simulation(seed=5, clock=trio.testing.MockClock(), trace=Trace())
    assert simulation_a.rng_for("network").random() == simulation_b.rng_for("network").random()
    assert simulation_a.rng_for("network").random() != simulation_a.rng_for("cluster").random()
    assert derive_seed(5, "network") == 0xEE8032F53523CEBF  # pinned: a replay in another process must agree


def test_trace_keeps_a_bounded_tail_but_hashes_everything() -> None:
    async def record_many(_simulation: Simulation) -> tuple[str, list[str]]:
        short = Trace(tail_events=3)
        full = Trace()
        for index in range(10):
            short.record(f"event {index}")
            full.record(f"event {index}")
        return short.hexdigest() + full.hexdigest(), short.tail()

    result = run_simulation(record_many, seed=0)
    digests, tail = result.value
    assert digests[:64] == digests[64:]
    assert tail == ["0.0 event 7", "0.0 event 8", "0.0 event 9"]


def test_wait_for_reports_the_virtual_time_taken_and_gives_up_on_time() -> None:
    async def main(_simulation: Simulation) -> float:
        deadline = trio.current_time() + 2.05
        taken = await wait_for(lambda: trio.current_time() >= deadline, timeout_s=5, what="two seconds")
        with pytest.raises(AssertionError, match="not never after 1 s"):
            await wait_for(lambda: False, timeout_s=1, what="never")
        return taken

    assert run_simulation(main, seed=0).value == pytest.approx(2.1)


def test_a_failed_run_names_its_seed_and_its_last_events() -> None:
    async def failing(simulation: Simulation) -> None:
        await trio.sleep(3)
        simulation.trace.record("about to fail")
        raise ValueError("invariant violated")

    with pytest.raises(ValueError, match="invariant violated") as failure:
        run_simulation(failing, seed=42)
    (note,) = failure.value.__notes__
    assert note.startswith("simulation seed=42, failed at virtual time 3.0; last events:")
    assert note.endswith("3.0 about to fail")
