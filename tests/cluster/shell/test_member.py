"""ClusterMember on real loopback sockets: joining, ownership, leaving, crashing, restarting, and refusing strangers."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import trio

from cluster import InsecureClusterError, Keyring, MemberState
from cluster.messages import Alive
from cluster.shell import ClusterMember, ShellSettings
from edge.runtime import Resolver
from tests.cluster.helpers import Peer

from .support import (
    FAST,
    KEYRING,
    QUICK_JOIN,
    endpoint,
    ipv6_loopback_available,
    live_view,
    make_runtime,
    start,
    start_cluster,
    states,
    wait_until,
)

KEYS = [f"user-{i}:key-{i}" for i in range(300)]


def owners(member: ClusterMember) -> dict[str, str]:
    owner_of = {key: member.owner_of(key) for key in KEYS}
    assert all(owner is not None for owner in owner_of.values())
    return {key: owner.node for key, owner in owner_of.items() if owner is not None}


async def test_members_join_through_one_seed_converge_and_agree_on_owners(nursery: trio.Nursery) -> None:
    running = await start_cluster(nursery, ["a", "b", "c", "d"])
    members = [r.member for r in running]

    views = [owners(member) for member in members]
    assert all(view == views[0] for view in views)
    assert set(views[0].values()) == {"a", "b", "c", "d"}  # 300 keys spread over all four
    # Joining took push-pull streams alone; probes follow within an interval or two.
    await wait_until(
        lambda: all(m.statistics().packets_received * m.statistics().packets_sent > 0 for m in members),
        timeout_s=2,
        what="probing",
    )
    for member in members:
        assert {info.api_address for info in member.live_members()} == {f"http://{n}.test" for n in "abcd"}
        stats = member.statistics()
        assert stats.exchanges_completed + stats.streams_served > 0
        assert stats.swim.drops.unauthenticated == stats.swim.drops.malformed == 0
    assert members[1].statistics().join_attempts >= 1
    assert "4 live of 4 known" in repr(members[0])


async def test_wait_changed_wakes_on_a_join(nursery: trio.Nursery) -> None:
    first = await start(nursery, "a")
    version = first.member.version
    assert first.member.owner_of("k") == first.member.local  # alone, it owns everything
    await start(nursery, "b", seeds=[endpoint(first.member)])
    with trio.fail_after(3):
        changed = await first.member.wait_changed(version)
    assert changed > version
    await wait_until(lambda: live_view(first.member) == {"a", "b"}, timeout_s=3, what="b live at a")


async def test_graceful_leave_is_seen_as_left_and_its_keys_move(nursery: trio.Nursery) -> None:
    a, b, c = await start_cluster(nursery, ["a", "b", "c"])

    with trio.fail_after(5):
        assert await c.member.leave(timeout_s=3)
    c.crash()
    await wait_until(
        lambda: all(states(r.member).get("c") is MemberState.LEFT for r in (a, b)), timeout_s=3, what="c left"
    )
    await trio.sleep(FAST.detection_bound(3) / 2)  # gone silent after leaving: still left, never dead
    for survivor in (a, b):
        assert states(survivor.member)["c"] is MemberState.LEFT
        assert set(owners(survivor.member).values()) == {"a", "b"}
    assert owners(a.member) == owners(b.member)


async def test_a_crashed_member_is_declared_dead_within_the_bound_and_only_its_keys_move(
    nursery: trio.Nursery,
) -> None:
    running = await start_cluster(nursery, ["a", "b", "c", "d"])
    survivors = [r.member for r in running[:3]]
    before = owners(survivors[0])
    assert "d" in before.values()

    running[3].crash()
    bound = FAST.detection_bound(4)
    elapsed = await wait_until(
        lambda: all(states(member)["d"] is MemberState.DEAD for member in survivors),
        timeout_s=bound + 2,
        what="d dead everywhere",
    )
    assert elapsed <= bound

    after = [owners(member) for member in survivors]
    assert after[0] == after[1] == after[2]
    assert "d" not in after[0].values()
    assert {key: node for key, node in before.items() if node != "d"}.items() <= after[0].items()


async def test_a_restarted_member_rejoins_with_the_same_id(nursery: trio.Nursery) -> None:
    a, b, c = await start_cluster(nursery, ["a", "b", "c"])
    port = c.member.local.address[1]
    c.crash()
    await wait_until(
        lambda: all(states(r.member)["c"] is MemberState.DEAD for r in (a, b)),
        timeout_s=FAST.detection_bound(3) + 2,
        what="c dead",
    )

    await trio.sleep(0.01)  # a later boot: a larger epoch from the wall clock
    again = await start(nursery, "c", bind=f"127.0.0.1:{port}", seeds=[endpoint(a.member)])
    await wait_until(
        lambda: all(live_view(r.member) == {"a", "b", "c"} for r in (a, b, again)), timeout_s=5, what="c back"
    )
    # It refuted its death with a higher incarnation; its new packets were not taken for replays.
    assert {info.node: info.incarnation for info in a.member.members()}["c"] > 1
    assert a.member.statistics().swim.drops.replayed == 0


async def test_a_member_with_the_wrong_key_cannot_join_and_is_counted(nursery: trio.Nursery) -> None:
    a, b = await start_cluster(nursery, ["a", "b"])
    intruder = await start(nursery, "mallory", seeds=[endpoint(a.member)], keyring=Keyring(b"\x07" * 32))

    await wait_until(
        lambda: (
            a.member.statistics().swim.drops.unauthenticated >= 2 and intruder.member.statistics().exchanges_failed >= 2
        ),
        timeout_s=3,
        what="the intruder refused twice",
    )
    assert "mallory" not in states(a.member) and "mallory" not in states(b.member)
    assert live_view(intruder.member) == {"mallory"}
    assert live_view(a.member) == {"a", "b"}


async def test_no_keyring_refuses_to_start_unless_insecure(nursery: trio.Nursery) -> None:
    member = ClusterMember(
        node_id="a", bind="127.0.0.1:0", config=FAST, keyring=None, seeds=["127.0.0.1:7946"], runtime=make_runtime(1)
    )
    with pytest.raises(InsecureClusterError, match="keyring"):
        await member.run()

    first = await start(nursery, "a", keyring=None, insecure=True)
    second = await start(nursery, "b", keyring=None, insecure=True, seeds=[endpoint(first.member)])
    await wait_until(lambda: live_view(second.member) == {"a", "b"}, timeout_s=3, what="insecure pair joined")


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
async def test_members_on_ipv6_loopback(nursery: trio.Nursery) -> None:
    first = await start(nursery, "a", bind="[::1]:0")
    second = await start(nursery, "b", bind="[::1]:0", seeds=[endpoint(first.member)])
    await wait_until(
        lambda: live_view(first.member) == live_view(second.member) == {"a", "b"}, timeout_s=3, what="joined"
    )
    assert {info.address[0] for info in first.member.members()} == {"::1"}


async def test_wildcard_bind_with_an_advertise_address(nursery: trio.Nursery) -> None:
    first = await start(nursery, "a", bind="0.0.0.0:0", advertise="127.0.0.1:0")
    assert first.member.local.address[0] == "127.0.0.1"
    second = await start(nursery, "b", seeds=[endpoint(first.member)])
    await wait_until(
        lambda: live_view(first.member) == live_view(second.member) == {"a", "b"}, timeout_s=3, what="joined"
    )


async def test_a_dns_seed_is_retried_until_it_resolves_and_our_own_address_is_skipped(nursery: trio.Nursery) -> None:
    """Fly's `<app>.internal` shape: one name, every machine's address, the same port everywhere."""
    first = await start(nursery, "a")
    port = first.member.local.address[1]
    lookups: list[str] = []

    async def flaky_dns(host: str) -> list[str]:
        lookups.append(host)
        if len(lookups) <= 2:
            raise OSError("temporary failure in name resolution")
        return ["127.0.0.2", "127.0.0.1"]  # ourselves first

    second = await start(
        nursery, "b", bind=f"127.0.0.2:{port}", seeds=["cluster.test.internal"], runtime=make_runtime(2, flaky_dns)
    )
    await wait_until(lambda: live_view(first.member) == {"a", "b"}, timeout_s=4, what="joined by name")
    assert set(lookups) == {"cluster.test.internal"} and len(lookups) >= 3
    stats = second.member.statistics()
    assert stats.join_attempts >= 3
    assert stats.swim.streams_opened >= 1 and stats.exchanges_failed == 0  # never pushed to itself


async def test_groups_that_found_only_each_other_in_dns_merge_once_it_names_them_all(nursery: trio.Nursery) -> None:
    """Machines started together may each see only their own group under `<app>.internal`: a joined member resolves
    its seed names again and joins the addresses no live member has."""
    a = await start(nursery, "a")
    port = a.member.local.address[1]
    c = await start(nursery, "c", bind=f"127.0.0.3:{port}")
    answers = {"b": ["127.0.0.1", "127.0.0.2"], "d": ["127.0.0.3", "127.0.0.4"]}

    def dns_of(name: str) -> Resolver:
        async def dns(host: str) -> list[str]:
            return answers[name]

        return dns

    settings = dataclasses.replace(QUICK_JOIN, rediscover_interval_s=0.2)
    for name, host in (("b", "127.0.0.2"), ("d", "127.0.0.4")):
        runtime = make_runtime(ord(name), dns_of(name))
        await start(nursery, name, bind=f"{host}:{port}", seeds=["app.internal"], runtime=runtime, settings=settings)
    await wait_until(
        lambda: live_view(a.member) == {"a", "b"} and live_view(c.member) == {"c", "d"}, timeout_s=3, what="two groups"
    )

    answers["d"] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    await wait_until(lambda: live_view(a.member) == live_view(c.member) == set("abcd"), timeout_s=3, what="merged")


async def test_addresses_learned_from_gossip_are_checked_before_anything_is_sent_there(nursery: trio.Nursery) -> None:
    """A key holder (here a forged, correctly signed packet) advertises members at a multicast group and at DNS's
    port: the member takes them in, but never sends them a byte."""
    a = await start(nursery, "a")
    forger = Peer("forger", keyring=KEYRING)
    ghosts = [
        Alive(node="ghost-multicast", incarnation=1, address=("224.0.0.251", 7946), region="", api_address=""),
        Alive(node="ghost-dns", incarnation=1, address=("127.0.0.1", 53), region="", api_address=""),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(forger.packet(*ghosts), a.member.local.address)
    await wait_until(lambda: {"ghost-multicast", "ghost-dns"} <= set(states(a.member)), timeout_s=2, what="ghosts in")
    await wait_until(
        lambda: a.member.statistics().packets_refused_address >= 2, timeout_s=2, what="probes to ghosts refused"
    )
    stats = a.member.statistics()
    assert stats.swim.packets_sent >= 2  # the core did want to probe and gossip them...
    assert stats.packets_sent == stats.transport.packet_send_errors == 0  # ...and nothing left the socket


async def test_garbage_on_both_ports_is_dropped_counted_and_harmless(nursery: trio.Nursery) -> None:
    a, b = await start_cluster(nursery, ["a", "b"])
    host, port = a.member.local.address

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for datagram in (b"", b"\x00", b"\x01" + os.urandom(200), os.urandom(3000), b"\x01\x95\x01"):
            udp.sendto(datagram, (host, port))
    for stream_bytes in (
        (60).to_bytes(4, "big") + os.urandom(60),  # a frame of garbage: the envelope drops it
        (1 << 31).to_bytes(4, "big"),  # announces 2 GiB: refused unread
        (100).to_bytes(4, "big") + b"short",  # cut short
    ):
        tcp = await trio.open_tcp_stream(host, port)
        async with tcp:
            await tcp.send_all(stream_bytes)
            await tcp.send_eof()
            with trio.fail_after(2):
                assert await tcp.receive_some(100) == b""  # closed without a reply

    def counted() -> bool:
        stats = a.member.statistics()
        envelope_drops = stats.swim.drops.malformed + stats.swim.drops.unsupported_version
        envelope_drops += stats.swim.drops.unauthenticated + stats.swim.drops.oversize
        return envelope_drops >= 6 and stats.transport.stream_frames_refused >= 2

    await wait_until(counted, timeout_s=3, what="garbage counted")
    stats = a.member.statistics()
    assert stats.swim.drops.oversize >= 1 and stats.transport.stream_timeouts == 0
    # Still a working member: a newcomer joins through it.
    c = await start(nursery, "c", seeds=[endpoint(a.member)])
    await wait_until(
        lambda: all(live_view(r.member) == {"a", "b", "c"} for r in (a, b, c)), timeout_s=4, what="c joined"
    )


async def test_a_silent_stream_times_out_and_is_counted(nursery: trio.Nursery) -> None:
    a = await start(nursery, "a", settings=ShellSettings(stream_timeout_s=0.2))
    host, port = a.member.local.address
    tcp = await trio.open_tcp_stream(host, port)
    async with tcp:
        with trio.fail_after(2):
            assert await tcp.receive_some(100) == b""  # the member hung up on us
    await wait_until(lambda: a.member.statistics().transport.stream_timeouts == 1, timeout_s=1, what="counted")


def test_bad_addresses_fail_at_construction() -> None:
    def member(**overrides: object) -> ClusterMember:
        options: dict = {"node_id": "a", "bind": "127.0.0.1:0", "config": FAST, "keyring": KEYRING}
        return ClusterMember(runtime=make_runtime(1), **{**options, **overrides})

    for bind in ("localhost:7946", "127.0.0.1", "127.0.0.1:80", "[::1]:99999"):
        with pytest.raises(ValueError):
            member(bind=bind)
    with pytest.raises(ValueError, match="advertise"):
        member(bind="0.0.0.0:7946")  # a wildcard needs an advertise address
    with pytest.raises(ValueError, match="advertise"):
        member(bind="0.0.0.0:7946", advertise="224.0.0.1:7946")
    with pytest.raises(ValueError):
        member(seeds=["10.0.0.1:53"])
    with pytest.raises(RuntimeError, match="not started"):
        _ = member().local


async def test_a_node_id_the_wire_would_drop_fails_the_start_plainly() -> None:
    member = ClusterMember(node_id="x" * 200, bind="127.0.0.1:0", config=FAST, keyring=KEYRING, runtime=make_runtime(1))
    with pytest.raises(ValueError):
        await member.run()
