"""Nodes of a loopback cluster in one process: real UDP gossip, real HTTP/2 between them."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from edge.config import Config, load_config
from edge.node import Node, run_node
from edge.runtime import Runtime
from tests.e2e.support import auth, free_port, write_config

KEY_HEX = "7a" * 32


def node_config(
    tmp_path: Path,
    name: str,
    gossip: dict[str, int],
    *,
    forward_deadline_s: float = 5.0,
    server_extra: str = "",
    region: str | None = None,
    extra: str = "",
) -> Config:
    """A node of a loopback cluster: gossip on `gossip[name]`, the other ports as seeds, its own data dir.
    `region` goes in [cluster]; `extra` is more TOML after it (whole sections)."""
    seeds = ", ".join(f'"127.0.0.1:{port}"' for peer, port in gossip.items() if peer != name)
    api_port = free_port()
    cluster = (
        f'[cluster]\nbind = "127.0.0.1:{gossip[name]}"\nseeds = [{seeds}]\nkeys = ["{KEY_HEX}"]\n'
        f'profile = "local"\nforward_deadline_s = {forward_deadline_s}\njoin_wait_s = 1\n'
    )
    if region is not None:
        cluster += f'region = "{region}"\n'
    cluster += extra
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    path = write_config(directory, cluster, server_extra=f'node_id = "{name}"\n{server_extra}')
    text = path.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{api_port}"')
    path.write_text(text)
    return load_config(path, env={})


async def start(nursery: trio.Nursery, config, runtime: Runtime | None = None) -> tuple[Node, trio.CancelScope]:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Node]) -> None:
        with scope:
            await run_node(config, runtime or Runtime.real(), task_status=task_status)

    return await nursery.start(run), scope


async def wait_members(node: Node, count: int) -> None:
    """Until `node` counts `count` live members (alive or suspect: the ones that own keys)."""
    async with httpx.AsyncClient(base_url=node.base_url) as client:
        with trio.fail_after(15):
            while True:
                view = (await client.get("/api/v1/cluster", headers=auth())).json()
                if sum(m["state"] in ("alive", "suspect") for m in view["members"]) == count:
                    return
                await trio.sleep(0.05)
