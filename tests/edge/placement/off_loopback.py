"""Run inside a fresh network namespace by test_internal_api.py: a node of a cluster without keys, called over real
sockets from loopback and from an address that is not loopback (OFF_LOOPBACK, added to this namespace's `lo`).

    unshare --net python -m tests.edge.placement.off_loopback DIR

Prints one JSON object: {"loopback": status, "off_loopback": {"status", "type", "detail"}}.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import msgpack
import trio

from edge.config import load_config
from edge.node import run_node
from edge.runtime import Runtime
from tests.e2e.support import free_port, write_config

OFF_LOOPBACK = "10.99.0.1"


async def probe(directory: Path) -> dict[str, object]:
    port = free_port()
    cluster = (
        f'[cluster]\nbind = "127.0.0.1:{free_port()}"\napi_advertise = "127.0.0.1:{port}"\n'
        'profile = "local"\ninsecure = true\n'
    )
    config = load_config(write_config(directory, cluster), env={"EZTHROTTLE_SERVER_LISTEN": f"0.0.0.0:{port}"})
    async with trio.open_nursery() as nursery:
        node = await nursery.start(run_node, config, Runtime.real())
        body = msgpack.packb({"prefix": "acme|"})
        answers = {}
        for name, host in (("loopback", "127.0.0.1"), ("off_loopback", OFF_LOOPBACK)):
            # The kernel gives a connection to a local address that address as its source: the node sees the caller
            # as `host`.
            async with httpx.AsyncClient() as client:
                answers[name] = await client.post(f"http://{host}:{port}/internal/v1/queues", content=body)
        node.stop()
    refused = answers["off_loopback"]
    return {
        "loopback": answers["loopback"].status_code,
        "off_loopback": {"status": refused.status_code, **refused.json()},
    }


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{OFF_LOOPBACK}/32", "dev", "lo"], check=True)
    print(json.dumps(trio.run(probe, Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
