"""The counters through ClusterMember on real loopback sockets: adds spread, callbacks fire, restarts restore."""

from __future__ import annotations

import pytest
import trio

from cluster import CounterEntry
from cluster.shell import ClusterMember

from .support import FAST, KEYRING, endpoint, live_view, make_runtime, start, wait_until

USAGE = "usage:acme:2025-01"


async def test_adds_on_every_member_reach_every_member_and_every_callback_fires(nursery: trio.Nursery) -> None:
    seen: dict[str, list[CounterEntry]] = {name: [] for name in "abc"}
    a = await start(nursery, "a", on_counter_change=seen["a"].append)
    b = await start(nursery, "b", seeds=[endpoint(a.member)], on_counter_change=seen["b"].append)
    c = await start(nursery, "c", seeds=[endpoint(a.member)], on_counter_change=seen["c"].append)
    members = [r.member for r in (a, b, c)]
    await wait_until(lambda: all(live_view(m) == {"a", "b", "c"} for m in members), timeout_s=5, what="converged")

    before = b.member.counter_version
    added = a.member.add_counter(USAGE, 2)
    assert added == CounterEntry(name=USAGE, node="a", value=2)
    assert seen["a"] == [added]  # synchronously, before add_counter returned
    with trio.fail_after(3):
        after = await b.member.wait_counters_changed(before)
    assert after > before and b.member.counter_total(USAGE) == 2
    b.member.add_counter(USAGE)
    c.member.add_counter(USAGE, 4)
    await wait_until(lambda: all(m.counter_total(USAGE) == 7 for m in members), timeout_s=3, what="totals agree")
    assert [m.counter_own(USAGE) for m in members] == [2, 1, 4]
    assert all(m.counter_totals("usage:") == {USAGE: 7} for m in members)
    assert {entry.node for entry in seen["c"]} == {"a", "b", "c"}  # told about every entry to save it


async def test_a_member_restarted_with_its_saved_entries_goes_on_from_them(nursery: trio.Nursery) -> None:
    a = await start(nursery, "a")
    saved = [CounterEntry(name=USAGE, node="b", value=10), CounterEntry(name=USAGE, node="a", value=1)]
    b = await start(nursery, "b", seeds=[endpoint(a.member)], counter_entries=saved)
    assert (b.member.counter_own(USAGE), b.member.counter_total(USAGE)) == (10, 11)  # before it heard anyone
    assert b.member.add_counter(USAGE, 1).value == 11
    await wait_until(lambda: a.member.counter_total(USAGE) == 12, timeout_s=3, what="a learned b's entries")


async def test_a_failing_callback_is_counted_and_the_member_carries_on(nursery: trio.Nursery) -> None:
    def broken_store(entry: CounterEntry) -> None:
        raise OSError("disk full")

    a = await start(nursery, "a", on_counter_change=broken_store)
    b = await start(nursery, "b", seeds=[endpoint(a.member)])
    await wait_until(lambda: live_view(a.member) == {"a", "b"}, timeout_s=3, what="joined")
    a.member.add_counter(USAGE)
    b.member.add_counter(USAGE)
    await wait_until(lambda: a.member.counter_total(USAGE) == b.member.counter_total(USAGE) == 2, timeout_s=3, what="2")
    assert a.member.statistics().counter_callback_errors == 2  # its own add and the one it learned
    assert b.member.statistics().counter_callback_errors == 0


async def test_add_counter_refuses_what_the_map_would_and_needs_a_running_member(nursery: trio.Nursery) -> None:
    idle = ClusterMember(node_id="x", bind="127.0.0.1:0", config=FAST, keyring=KEYRING, runtime=make_runtime(1))
    with pytest.raises(RuntimeError, match="not started"):
        idle.add_counter(USAGE, 1)
    a = await start(nursery, "a")
    with pytest.raises(ValueError, match="refused"):
        a.member.add_counter("k" * 1000, 1)
    with pytest.raises(ValueError, match="refused"):
        a.member.add_counter(USAGE, -1)
    assert a.member.counter_total(USAGE) == 0 and a.member.counter_version == 0
