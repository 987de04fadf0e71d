"""The gossip benchmark still runs and its small configuration reports sane figures."""

from __future__ import annotations

from bench import gossip


def test_a_small_gossip_benchmark_detects_every_crash_without_false_positives() -> None:
    result = gossip.measure(10, 0.0, seed=3)
    detection = result["detection_s"]
    assert detection["undetected_crashes"] == 0
    # 10 members + 3 joined; each of the 5 crashes is reported by every survivor: 12 + 11 + 10 + 9 + 8.
    assert (gossip.JOINS_PER_RUN, gossip.CRASHES_PER_RUN, detection["samples"]) == (3, 5, 50)
    bounds = result["memberlist_lan"]
    assert bounds["detection_fastest_s"] <= detection["median"] <= result["our_detection_bound_s"]
    assert result["false_positives"]["dead_verdicts"] == 0
    assert 0 < result["join_reaches_everyone_s"]["median"] < 2.0
    assert result["bytes_per_s_per_node"]["packets"] > 0
