"""Cut one node process off from its peers with nftables, while the test itself can still talk to it.

The node is started inside a cgroup v2 directory of its own (`RegionNode.cgroup`: every socket it opens belongs to
that cgroup), and the test calls every node from its own loopback address, CLIENT_ADDRESS. While the partition is
in place (an nftables table of its own):
- nothing the node's sockets send leaves for any address but CLIENT_ADDRESS (gossip, internal API calls, attempts);
- nothing reaches the node's gossip or API port except from CLIENT_ADDRESS (the peers' gossip and calls).
`heal()` deletes the table. Root is needed (CI has it); `available()` says whether this machine can do it.

    cgroup = partition.make_cgroup("ord")
    cluster = await start_region_cluster(nursery, tmp_path, cgroups={"ord": cgroup})
    with partition.cut_off(cluster["ord"]):
        ...  # ord is on its own; the test still reaches it through client()
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import trio

from tests.e2e.regions import RegionCluster, RegionNode

CLIENT_ADDRESS = "127.0.0.50"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")  # the cgroup v2 hierarchy of a hybrid host, or /sys/fs/cgroup
NFT_CGROUP_PREFIX = "unified/"  # nft names cgroup v2 paths relative to /sys/fs/cgroup


def _cgroup_root() -> tuple[Path, str]:
    if (CGROUP_ROOT / "cgroup.procs").exists():
        return CGROUP_ROOT, NFT_CGROUP_PREFIX
    return Path("/sys/fs/cgroup"), ""


def available() -> bool:
    root, _prefix = _cgroup_root()
    return os.geteuid() == 0 and shutil.which("nft") is not None and (root / "cgroup.procs").exists()


def make_cgroup(name: str) -> Path:
    """A fresh cgroup v2 directory for one node (removed by `remove_cgroup`)."""
    root, _prefix = _cgroup_root()
    path = root / f"ezt-test-{os.getpid()}-{name}"
    path.mkdir(exist_ok=True)
    return path


def remove_cgroup(path: Path) -> None:
    """Move any process left in it back to the root, then remove it."""
    root, _prefix = _cgroup_root()
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
        path.rmdir()


def _nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def cut_off(node: RegionNode) -> Iterator[None]:
    """`node` cannot reach its peers nor they it, until the block ends (the table is deleted even on error)."""
    assert node.cgroup is not None, f"{node.node_id} was not started in a cgroup"
    _root, prefix = _cgroup_root()
    table = f"ezt_partition_{os.getpid()}_{node.node_id.replace('-', '_')}"
    _nft(
        f"""
table inet {table} {{
    chain out {{
        type filter hook output priority 0; policy accept;
        socket cgroupv2 level 1 "{prefix}{node.cgroup.name}" ip daddr != {CLIENT_ADDRESS} drop
    }}
    chain in {{
        type filter hook input priority 0; policy accept;
        ip saddr != {CLIENT_ADDRESS} udp dport {node.gossip_port} drop
        ip saddr != {CLIENT_ADDRESS} tcp dport {node.api_port} drop
    }}
}}
"""
    )
    try:
        yield
    finally:
        _nft(f"delete table inet {table}\n")


def client(node: RegionNode, timeout_s: float = 15.0) -> httpx.AsyncClient:
    """An HTTP client to `node` from CLIENT_ADDRESS, the address a partition never cuts."""
    transport = httpx.AsyncHTTPTransport(local_address=CLIENT_ADDRESS)
    return httpx.AsyncClient(base_url=node.base_url, transport=transport, timeout=timeout_s)


Send = Callable[[httpx.AsyncClient, str], Awaitable[None]]


async def submit_across_a_split(
    cluster: RegionCluster,
    owner: RegionNode,
    majority: httpx.AsyncClient,
    minority: httpx.AsyncClient,
    send: Send,
    *,
    backlog: int,
    split_s: float,
) -> tuple[float, float]:
    """The split scenario of the partition test and benchmark: `backlog` jobs through the majority first, then
    `owner` cut off for `split_s` while one job arrives on each side (`minority` reaches the owner) every second;
    `send(client, tag)` submits one. Returns once the cluster is whole again, with when the split began and
    healed (trio time)."""
    for i in range(backlog):
        await send(majority, f"before-{i}")
    with cut_off(owner):
        split_at = trio.current_time()
        for i in itertools.count():
            if trio.current_time() - split_at > split_s:
                break
            async with trio.open_nursery() as both:
                both.start_soon(send, minority, f"minority-{i}")
                both.start_soon(send, majority, f"majority-{i}")
            await trio.sleep(1.0)
        healed_at = trio.current_time()
    await cluster.wait_alive()
    return split_at, healed_at
