"""The node's counters: kept in the store beside the shared settings, shared by a real cluster (two nodes in one
process, real UDP gossip), and kept by a lone node itself; each remembers its counts across a restart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import pytest
import trio

from cluster import CounterEntry, SharedEntry
from cluster.shell import ClusterMember
from edge.config import Config, load_config
from edge.node import Node, run_node
from edge.placement.counters import (
    Counters,
    CounterSaver,
    LocalCounters,
    counter_key,
    decode_counter_entries,
    encode_counter_entry,
    is_counter_key,
)
from edge.placement.shared_state import decode_entries, encode_entry
from edge.runtime import Runtime
from edge.store import open_memory_store
from tests.e2e.support import free_port, write_config
from tests.edge.placement.support import node_config, start, wait_members

USAGE = "usage:acme:2025-01"


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.02)
    assert condition(), what


async def saved_counts(node: Node) -> dict[tuple[str, str], int]:
    return {(e.name, e.node): e.value for e in decode_counter_entries(await node.store.shared_state())}


async def wait_saved(node: Node, expected: dict[tuple[str, str], int]) -> None:
    with trio.fail_after(10):
        while await saved_counts(node) != expected:
            await trio.sleep(0.02)


# --- the store rows ---


def test_counter_rows_and_setting_rows_share_the_table_without_mixing() -> None:
    entry = CounterEntry(name="odd\0name", node="n\0de", value=2**64 - 1)  # NULs cannot confuse the reader
    setting = SharedEntry(key="account_queue:https://a.example", value=True, wall_ms=5, node="a")
    saved = {
        counter_key(entry.name, entry.node): encode_counter_entry(entry),
        setting.key: encode_entry(setting),
        "counter:broken\0a": b"\xc1",  # unreadable: skipped, never fatal
        "counter:wrong-shape\0a": msgpack.packb(["x", "a", "not a count"]),
    }
    assert is_counter_key(counter_key(USAGE, "a")) and not is_counter_key(setting.key)
    assert decode_counter_entries(saved) == [entry]
    assert decode_entries(saved) == [setting]  # the settings' reader skips every counter row


async def test_the_saver_keeps_the_latest_entry_of_each_counter_and_node() -> None:
    async with open_memory_store() as store, trio.open_nursery() as nursery:
        saver = CounterSaver(store)
        for value in (1, 3, 2):  # a late, smaller one (out of order) never replaces a greater one
            saver.note(CounterEntry(name=USAGE, node="a", value=value))
        saver.note(CounterEntry(name=USAGE, node="b", value=7))
        nursery.start_soon(saver.run)
        with trio.fail_after(5):
            while len(decode_counter_entries(await store.shared_state())) < 2:
                await trio.sleep(0.01)
        assert sorted((e.node, e.value) for e in decode_counter_entries(await store.shared_state())) == [
            ("a", 3),
            ("b", 7),
        ]
        nursery.cancel_scope.cancel()


# --- two real nodes ---


async def test_two_nodes_converge_on_a_counter_counted_on_both_and_a_restart_remembers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gossip = {name: free_port() for name in ("a", "b")}
    started = {name: await start(nursery, node_config(tmp_path, name, gossip)) for name in gossip}
    a, b = (node for node, _scope in started.values())
    for node in (a, b):
        await wait_members(node, 2)
    assert isinstance(a.counters, ClusterMember) and a.counters is a.membership
    assert isinstance(b.counters, ClusterMember)
    counters_a: Counters = a.counters
    counters_b: Counters = b.counters

    for _ in range(3):
        counters_a.add_counter(USAGE, 1)
    counters_b.add_counter(USAGE, 5)
    await wait_for(lambda: counters_a.counter_total(USAGE) == counters_b.counter_total(USAGE) == 8, "totals agree")
    assert (counters_a.counter_own(USAGE), counters_b.counter_own(USAGE)) == (3, 5)
    # Each node saved both entries: its own and the one it learned.
    for node in (a, b):
        await wait_saved(node, {(USAGE, "a"): 3, (USAGE, "b"): 5})

    # b restarted alone (its peer gone) remembers the counts from its own store, and goes on from them.
    for _node, scope in started.values():
        scope.cancel()
    await trio.sleep(0)
    restarted, _scope = await start(nursery, node_config(tmp_path, "b", {"b": gossip["b"], "gone": free_port()}))
    assert restarted.membership is not None and len(restarted.membership.live_members()) == 1
    assert restarted.counters is not None
    assert (restarted.counters.counter_own(USAGE), restarted.counters.counter_total(USAGE)) == (5, 8)
    assert restarted.counters.add_counter(USAGE, 1).value == 6
    await wait_saved(restarted, {(USAGE, "a"): 3, (USAGE, "b"): 6})


# --- a node alone ---


def lone_config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, server_extra='node_id = "solo"\n'), env={})


async def run_until_stopped(config: Config, body: Callable[[Node], Awaitable[None]]) -> None:
    """Start a node, await `body` on it, then stop it and wait until it has exited (its store closed)."""
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(run_node, config, Runtime.real())
        await body(node)
        node.stop()


async def test_a_lone_node_keeps_its_counts_across_a_restart(tmp_path: Path) -> None:
    config = lone_config(tmp_path)

    async def count(node: Node) -> None:
        assert isinstance(node.counters, LocalCounters) and node.membership is None
        version = node.counters.counter_version
        node.counters.add_counter(USAGE, 2)
        node.counters.add_counter(USAGE)
        assert node.counters.add_counter(USAGE, 0).value == 3
        with trio.fail_after(1):
            assert await node.counters.wait_counters_changed(version) > version
        assert (node.counters.counter_own(USAGE), node.counters.counter_total(USAGE)) == (3, 3)
        await wait_saved(node, {(USAGE, "solo"): 3})

    async def remember(node: Node) -> None:
        assert isinstance(node.counters, LocalCounters)
        assert node.counters.counter_total(USAGE) == node.counters.counter_own(USAGE) == 3
        assert node.counters.add_counter(USAGE, 4).value == 7
        assert node.counters.counter_totals("usage:") == {USAGE: 7}
        await wait_saved(node, {(USAGE, "solo"): 7})

    await run_until_stopped(config, count)
    await run_until_stopped(config, remember)


async def test_local_counters_refuse_what_the_map_would() -> None:
    async with open_memory_store() as store:
        counters = LocalCounters(
            node="solo", entries=[CounterEntry(name=USAGE, node="other", value=4)], saver=CounterSaver(store)
        )
        assert counters.counter_total(USAGE) == 4 and counters.counter_own(USAGE) == 0
        with pytest.raises(ValueError, match="refused"):
            counters.add_counter(USAGE, -1)
        with pytest.raises(ValueError, match="refused"):
            counters.add_counter("", 1)
        assert counters.counter_version == 1  # only the restored entry
