"""O(log n)-ish: a hundred times more active keys must not make an operation anywhere near a hundred times
slower. Measured in process CPU time, best of three rounds, so other processes on the machine matter
little."""

from __future__ import annotations

from bench.scheduler_ops import scheduler_ops_per_s


def test_cost_per_operation_grows_slowly_with_the_number_of_active_keys() -> None:
    few = scheduler_ops_per_s(500, steps=5_000)
    many = scheduler_ops_per_s(50_000, steps=5_000)
    # Measured about 1.5x on a 2-core machine (cache misses, deeper sorted lists); linear would be ~100x.
    assert few / many < 4.0
