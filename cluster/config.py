"""Tunables of the SWIM/Lifeguard core, with memberlist's LAN, WAN and local presets.

Durations are seconds of the caller's monotonic clock. Settings that scale with the cluster size N (the number
of live members, this node included) have their formula in the field comment; the formula itself is a pure
function beside the mechanism that uses it (suspicion.py, broadcast.py, swim.py), so each is tested with a
table there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from .broadcast import retransmit_limit
from .suspicion import suspicion_timeout_bounds


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SwimConfig:
    """One node's protocol settings. Every member of a cluster should run the same preset."""

    # One member is probed per interval, in randomized round-robin order. Lifeguard stretches it by the local
    # health multiplier: probe_interval * (health score + 1). memberlist LAN: 1 s.
    probe_interval: float = 1.0
    # Wait this long for a direct ack, then ask `indirect_checks` members to probe for us; the rest of the
    # interval is the indirect window. Stretched like probe_interval. memberlist LAN: 500 ms.
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    # Suspicion timeout: min = suspicion_mult * max(1, log10 N) * probe_interval, max =
    # suspicion_max_timeout_mult * min; it falls from max toward min as independent confirmations arrive
    # (suspicion_mult - 2 of them reach min). LAN, N=10: 4 s..24 s; N=100: 8 s..48 s.
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    # Each update is sent retransmit_mult * ceil(log10(N + 1)) times in all: N=10 -> 8, N=100 -> 12.
    retransmit_mult: int = 4
    # Every gossip_interval, queued updates go to gossip_nodes random members (more than one per round so an
    # update reaches everyone in O(log N) rounds).
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    # Dead and left members still get gossip this long, so a member declared dead by mistake hears it and
    # refutes. Left members are forgotten after it.
    gossip_to_the_dead_time: float = 30.0
    # Full-state exchange with one random live member, for anti-entropy. Above 32 members the interval grows
    # to push_pull_interval * (ceil(log2 N - log2 32) + 1), so the cluster's total push-pull traffic stays
    # bounded.
    push_pull_interval: float = 30.0
    # A dead (not left) member gets a push-pull attempt from one random member every reconnect_interval, so a
    # healed partition merges again even when each side has declared the other dead; it is forgotten after
    # reconnect_timeout. Serf's defaults: 30 s and 24 h.
    reconnect_interval: float = 30.0
    reconnect_timeout: float = 24 * 3600.0
    # The local health score runs from 0 to awareness_max_multiplier - 1. memberlist: 8.
    awareness_max_multiplier: int = 8
    # A datagram never exceeds this (memberlist's UDP buffer; safe under the 1500-byte Ethernet MTU with
    # IPv6 and UDP headers).
    packet_bytes_max: int = 1400
    # A push-pull stream never exceeds this: about 60,000 members of full state.
    stream_bytes_max: int = 8 * 1024 * 1024
    # Indirect probes this node runs for others at once; more requests are refused (and counted).
    relays_max: int = 1024

    def __post_init__(self) -> None:
        durations = (
            self.probe_interval,
            self.probe_timeout,
            self.gossip_interval,
            self.gossip_to_the_dead_time,
            self.push_pull_interval,
            self.reconnect_interval,
            self.reconnect_timeout,
        )
        if min(durations) <= 0:
            raise ValueError("every duration must be positive")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout must be shorter than probe_interval (the rest is the indirect window)")
        if min(self.indirect_checks, self.gossip_nodes, self.retransmit_mult, self.awareness_max_multiplier) < 1:
            raise ValueError("indirect_checks, gossip_nodes, retransmit_mult, awareness_max_multiplier must be >= 1")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ValueError("suspicion multipliers must be >= 1")
        if self.packet_bytes_max < 512 or self.stream_bytes_max < self.packet_bytes_max:
            raise ValueError("packet_bytes_max must be >= 512 and stream_bytes_max >= packet_bytes_max")

    @property
    def relay_timeout(self) -> float:
        """How long a relay waits for the target's ack before it sends the requester a nack.

        0.8 * min(probe_timeout, probe_interval - probe_timeout): short enough that the nack reaches the
        requester inside its indirect window, so a missing nack really means trouble near the requester
        (Lifeguard).
        """
        return 0.8 * min(self.probe_timeout, self.probe_interval - self.probe_timeout)

    def detection_bound(self, member_count: int) -> float:
        """Seconds from a crash until every one of `member_count` members has declared it dead, on a network
        without loss and with every health score at 0. The sum of:
        - 4 probe intervals until some member probes the crashed one and that probe fails (each of the N - 1
          others probes it once per pass of its shuffled order, so the first probe usually comes in the first
          interval);
        - the max suspicion timeout, which holds when nobody confirms; confirmations only shorten it, and its
          slack over the min absorbs a first probe that comes late;
        - retransmit_limit gossip rounds for the `Dead` to reach everyone.
        """
        _min_timeout, max_timeout = suspicion_timeout_bounds(
            suspicion_mult=self.suspicion_mult,
            max_timeout_mult=self.suspicion_max_timeout_mult,
            member_count=member_count,
            probe_interval=self.probe_interval,
        )
        gossip = retransmit_limit(self.retransmit_mult, member_count) * self.gossip_interval
        return 4 * self.probe_interval + max_timeout + gossip

    @classmethod
    def lan(cls) -> SwimConfig:
        """memberlist's DefaultLANConfig: one data centre, sub-millisecond round trips."""
        return cls()

    @classmethod
    def wan(cls) -> SwimConfig:
        """memberlist's DefaultWANConfig: members across regions, round trips of 100s of milliseconds."""
        return cls(
            probe_interval=5.0,
            probe_timeout=3.0,
            suspicion_mult=6,
            gossip_interval=0.5,
            gossip_nodes=4,
            gossip_to_the_dead_time=60.0,
            push_pull_interval=60.0,
            reconnect_interval=60.0,
        )

    @classmethod
    def local(cls) -> SwimConfig:
        """memberlist's DefaultLocalConfig: loopback or one host, fast detection, fewer retransmits."""
        return cls(
            probe_timeout=0.2,
            indirect_checks=1,
            suspicion_mult=3,
            retransmit_mult=2,
            gossip_interval=0.1,
            gossip_to_the_dead_time=15.0,
            push_pull_interval=15.0,
            reconnect_interval=15.0,
        )
