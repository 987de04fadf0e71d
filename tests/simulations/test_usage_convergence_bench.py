"""The usage-convergence benchmark (bench/usage_convergence.py) still runs, and a small run reports sane figures:
every increment reaches every node, no sooner than the network allows and within a few gossip rounds."""

from __future__ import annotations

from bench import usage_convergence
from bench.__main__ import BENCHMARKS, render_section


def test_a_small_run_sees_every_increment_reach_every_node_within_a_few_gossip_rounds() -> None:
    result = usage_convergence.measure(3, 0.0, increments=40, seed=2)
    assert (result["members"], result["increments"], result["unconverged"]) == (3, 40, 0)
    every, each = result["every_node_s"], result["each_node_s"]
    gossip_s = usage_convergence.CONFIG.gossip_interval
    # The origin's next gossip round (at most one interval away) sends it to both others at once (fan-out 3).
    assert 0 < each["median"] <= every["median"] <= every["p99"] <= every["max"] <= gossip_s + 0.01
    assert result["retransmits"] == 4  # 4 x ceil(log10(3 + 1))


def test_it_renders_as_a_results_section_and_is_registered() -> None:
    assert BENCHMARKS["usage_convergence"] is usage_convergence.run
    result = usage_convergence.run(sizes=(3,), losses=(0.0, 0.1))
    section = render_section(result)
    assert section.startswith("## Usage convergence: one G-counter increment reaching every node (virtual time)")
    assert "| 3 | 10% |" in section and "profile = `lan`" in section
    assert result["checks"] == {"increments that never reached every node (timeout 120 s)": 0}
