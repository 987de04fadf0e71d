"""A short run of each fuzz target (bench/fuzz.py runs 100,000 inputs each), and the harness's own guards."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from bench.fuzz import TARGETS, Refused, Target, fuzz

INPUTS = 400


@pytest.mark.parametrize("make", TARGETS, ids=lambda make: make.__name__.removesuffix("_target"))
def test_no_input_crashes_or_hangs_and_inputs_reach_past_the_first_check(make: Callable[[], Target]):
    report = fuzz(make(), INPUTS, seed=7)
    assert (report.failures, report.hangs) == (0, 0), report.examples
    assert report.inputs == INPUTS and report.accepted > INPUTS // 50 and report.refused > INPUTS // 50


def test_the_harness_counts_refusals_failures_and_hangs_apart():
    def run(value: int) -> None:
        if value == 0:
            raise Refused
        if value == 1:
            raise KeyError("an undocumented error")
        if value == 2:
            while True:  # a hang: the guard interrupts it
                pass

    inputs = itertools.cycle(range(4))
    report = fuzz(Target("planted", "run", lambda _rng: next(inputs), run), 20, hang_s=0.05)
    assert (report.accepted, report.refused, report.failures, report.hangs) == (5, 5, 5, 5)
    assert report.examples and any(example.startswith("hang") for example in report.examples)
