"""The shared map through ClusterMember on real loopback sockets: writes spread, callbacks fire, restarts restore."""

from __future__ import annotations

from random import Random

import pytest
import trio

from cluster import SharedEntry
from cluster.shell import ClusterMember
from edge.runtime import Runtime, system_resolver

from .support import FAST, KEYRING, endpoint, live_view, make_runtime, start, wait_until

STRIPE = "account_queue:https://api.stripe.com"
# A wall clock that reads a fixed instant: the entry's stamp must be exactly this, in ms.
WALL_S = 1_800_000_000.25


def fixed_clock_runtime(seed: int) -> Runtime:
    return Runtime(wall_clock=lambda: WALL_S, rng=Random(seed), resolver=system_resolver)


async def test_a_set_value_reaches_every_member_and_every_callback_fires(nursery: trio.Nursery) -> None:
    seen: dict[str, list[SharedEntry]] = {name: [] for name in "abc"}
    a = await start(nursery, "a", runtime=fixed_clock_runtime(1), on_shared_change=seen["a"].append)
    b = await start(nursery, "b", seeds=[endpoint(a.member)], on_shared_change=seen["b"].append)
    c = await start(nursery, "c", seeds=[endpoint(a.member)], on_shared_change=seen["c"].append)
    members = [r.member for r in (a, b, c)]
    await wait_until(lambda: all(live_view(m) == {"a", "b", "c"} for m in members), timeout_s=5, what="converged")
    before = b.member.shared_version

    written = a.member.set_shared(STRIPE, True)
    assert written == SharedEntry(key=STRIPE, value=True, wall_ms=1_800_000_000_250, node="a")
    assert seen["a"] == [written]  # synchronously, before set_shared returned
    with trio.fail_after(3):
        after = await b.member.wait_shared_changed(before)
    assert after > before and b.member.shared(STRIPE) is True
    await wait_until(lambda: c.member.shared(STRIPE) is True, timeout_s=3, what="the value at c")
    assert seen["b"] == seen["c"] == [written]  # the same entry, once each
    assert all(m.shared_items() == [(STRIPE, True)] for m in members)
    assert b.member.shared("never-set") is None and b.member.shared("never-set", False) is False


async def test_a_member_started_with_saved_entries_holds_them_and_teaches_the_cluster(nursery: trio.Nursery) -> None:
    saved = SharedEntry(key=STRIPE, value=False, wall_ms=1_700_000_000_000, node="b")  # from b's previous life
    seen_a: list[SharedEntry] = []
    seen_b: list[SharedEntry] = []
    a = await start(nursery, "a", on_shared_change=seen_a.append)
    assert a.member.shared_items() == []
    b = await start(nursery, "b", seeds=[endpoint(a.member)], shared_entries=[saved], on_shared_change=seen_b.append)
    assert b.member.shared(STRIPE) is False  # from the start, before it has heard anyone
    await wait_until(lambda: a.member.shared(STRIPE) is False, timeout_s=3, what="a learned b's saved entry")
    assert seen_a == [saved]  # a persists what it learned...
    assert seen_b == []  # ...b is not told again what it was started with

    # A member that lost its disk learns the map from the others when it joins.
    c = await start(nursery, "c", seeds=[endpoint(a.member)])
    await wait_until(lambda: c.member.shared_items() == [(STRIPE, False)], timeout_s=3, what="c learned the map")


async def test_a_failing_callback_is_counted_and_the_member_carries_on(nursery: trio.Nursery) -> None:
    def broken_store(entry: SharedEntry) -> None:
        raise OSError("disk full")

    a = await start(nursery, "a", on_shared_change=broken_store)
    b = await start(nursery, "b", seeds=[endpoint(a.member)])
    await wait_until(lambda: live_view(a.member) == {"a", "b"}, timeout_s=3, what="joined")
    a.member.set_shared(STRIPE, "on")
    b.member.set_shared("other", 1)
    await wait_until(lambda: b.member.shared(STRIPE) == "on", timeout_s=3, what="a's write at b")
    await wait_until(lambda: a.member.shared("other") == 1, timeout_s=3, what="b's write at a")
    assert a.member.statistics().shared_callback_errors == 2  # its own write and the one it learned
    assert b.member.statistics().shared_callback_errors == 0


async def test_set_shared_refuses_what_the_map_would_and_needs_a_running_member(nursery: trio.Nursery) -> None:
    idle = ClusterMember(node_id="x", bind="127.0.0.1:0", config=FAST, keyring=KEYRING, runtime=make_runtime(1))
    with pytest.raises(RuntimeError, match="not started"):
        idle.set_shared(STRIPE, True)
    a = await start(nursery, "a")
    with pytest.raises(ValueError, match="refused"):
        a.member.set_shared("k" * 1000, True)
    with pytest.raises(ValueError, match="refused"):
        a.member.set_shared(STRIPE, b"bytes")  # type: ignore[arg-type]
    assert a.member.shared_items() == [] and a.member.shared_version == 0
