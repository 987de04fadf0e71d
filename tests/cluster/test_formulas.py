"""The scaling formulas, checked against tables (memberlist's published figures where it has them)."""

from __future__ import annotations

import math

import pytest

from cluster.awareness import Awareness
from cluster.broadcast import retransmit_limit
from cluster.config import SwimConfig
from cluster.suspicion import remaining_suspicion_time, suspicion_timeout_bounds
from cluster.swim import push_pull_interval


@pytest.mark.parametrize(
    ("confirmations", "needed", "elapsed", "expected"),
    [
        (0, 3, 0.0, 30.0),  # nobody agrees yet: the max
        (1, 3, 2.0, 14.0),  # log(2)/log(4) = 1/2 of the way to the min: 16 s, 2 s gone
        (2, 3, 3.0, 4.81),  # log(3)/log(4): 7.81 s (floored to whole ms), 3 s gone
        (3, 3, 4.0, -2.0),  # all confirmations in: the min, already overdue
        (4, 3, 5.0, -3.0),  # more than needed never goes below the min
        (5, 3, 10.0, -8.0),
        (0, 0, 1.0, 1.0),  # no confirmations expected: the min from the start
        (7, 0, 0.0, 2.0),
    ],
)
def test_remaining_suspicion_time(confirmations: int, needed: int, elapsed: float, expected: float) -> None:
    assert remaining_suspicion_time(confirmations, needed, elapsed, 2.0, 30.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("members", "minimum", "maximum"),
    [
        (1, 4.0, 24.0),  # log10 below 1 is clamped: small clusters get the base timeout
        (5, 4.0, 24.0),
        (10, 4.0, 24.0),  # memberlist LAN, N=10: 4 s .. 24 s
        (100, 8.0, 48.0),  # N=100: 8 s .. 48 s
        (1000, 12.0, 72.0),
    ],
)
def test_suspicion_bounds_lan(members: int, minimum: float, maximum: float) -> None:
    lan = SwimConfig.lan()
    bounds = suspicion_timeout_bounds(
        suspicion_mult=lan.suspicion_mult,
        max_timeout_mult=lan.suspicion_max_timeout_mult,
        member_count=members,
        probe_interval=lan.probe_interval,
    )
    assert bounds == pytest.approx((minimum, maximum))


@pytest.mark.parametrize(("members", "limit"), [(1, 4), (9, 4), (10, 8), (99, 8), (100, 12), (1000, 16)])
def test_retransmit_limit(members: int, limit: int) -> None:
    assert retransmit_limit(4, members) == limit  # memberlist: N=10 -> 8, N=100 -> 12


@pytest.mark.parametrize(("members", "interval"), [(1, 30.0), (32, 30.0), (33, 60.0), (64, 60.0), (65, 90.0)])
def test_push_pull_interval_grows_past_32_members(members: int, interval: float) -> None:
    assert push_pull_interval(30.0, members) == interval


@pytest.mark.parametrize(
    ("deltas", "score", "scaled"),
    [([], 0, 0.5), ([1, 1], 2, 1.5), ([5, 5], 7, 4.0), ([3, -1, -5], 0, 0.5), ([-1], 0, 0.5)],
)
def test_awareness_is_clamped_and_scales_timeouts(deltas: list[int], score: int, scaled: float) -> None:
    awareness = Awareness(max_multiplier=8)
    for delta in deltas:
        awareness.apply_delta(delta)
    assert awareness.score == score
    assert awareness.scale(0.5) == scaled


def test_presets_match_memberlist() -> None:
    lan, wan, local = SwimConfig.lan(), SwimConfig.wan(), SwimConfig.local()
    assert (lan.probe_interval, lan.probe_timeout, lan.indirect_checks, lan.gossip_interval) == (1.0, 0.5, 3, 0.2)
    assert (lan.suspicion_mult, lan.suspicion_max_timeout_mult, lan.retransmit_mult) == (4, 6, 4)
    assert (wan.probe_interval, wan.probe_timeout, wan.suspicion_mult, wan.push_pull_interval) == (5.0, 3.0, 6, 60.0)
    assert (local.probe_timeout, local.indirect_checks, local.suspicion_mult, local.retransmit_mult) == (0.2, 1, 3, 2)


@pytest.mark.parametrize("config", [SwimConfig.lan(), SwimConfig.wan(), SwimConfig.local()])
def test_a_relay_nacks_inside_the_requesters_indirect_window(config: SwimConfig) -> None:
    window = config.probe_interval - config.probe_timeout
    assert 0 < config.relay_timeout < window
    assert config.relay_timeout <= config.probe_timeout


def test_detection_bound_adds_probe_suspicion_and_gossip() -> None:
    lan = SwimConfig.lan()
    # 20 members: 4 intervals + 6 * 4 * log10(20) s of suspicion + 8 rounds of 0.2 s.
    assert lan.detection_bound(20) == pytest.approx(4.0 + 24 * math.log10(20) + 1.6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"probe_timeout": 1.0},
        {"probe_interval": 0.0},
        {"gossip_nodes": 0},
        {"suspicion_mult": 0},
        {"packet_bytes_max": 100},
        {"stream_bytes_max": 1000},
    ],
)
def test_config_refuses_nonsense(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SwimConfig(**overrides)  # type: ignore[arg-type]
