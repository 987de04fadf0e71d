"""The image's entrypoint run the way the image runs it: a real `ezthrottle serve` process with the Dockerfile's ENV
(and, as a Fly machine, fly.toml's [env] and Fly's variables). Building the image needs a Docker daemon; these need
none. Where a test departs from the image's environment, it says so: a port free on this machine instead of 8080, a
data dir it may write instead of the image's volume, loopback instead of a wildcard for a cluster member."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import trio

from cluster import MemberState
from tests.cluster.shell.support import KEYRING, start, states, wait_until
from tests.dockerfile import ROOT, read_dockerfile
from tests.e2e.support import free_port, wait_ready

IMAGE = read_dockerfile()
FLY = tomllib.loads((ROOT / "fly.toml").read_text())
ACCOUNTS = json.dumps([{"id": "acme", "key": "ck_live_image_0123456789"}])
MACHINE_ID = "3d8d9930b32189"
STOP_S = 15.0


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT, its program found where this environment installed it (the image has it on PATH)."""
    program, *arguments = IMAGE.entrypoint
    found = shutil.which(program, path=str(Path(sys.executable).parent))
    assert found, f"{program} is not installed beside {sys.executable}"
    return [found, *arguments]


def image_env(*layers: Mapping[str, str]) -> dict[str, str]:
    """This machine's environment without node settings of its own, then the image's ENV, then each layer."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("EZTHROTTLE_", "FLY_"))}
    env.update(IMAGE.env, PYTHONUNBUFFERED="1")
    for layer in layers:
        env.update(layer)
    return env


def spawn(env: dict[str, str], output: Path) -> subprocess.Popen[bytes]:
    with output.open("wb") as sink:
        return subprocess.Popen(entrypoint(), env=env, stdout=sink, stderr=subprocess.STDOUT)


async def stop(process: subprocess.Popen[bytes], signum: signal.Signals = signal.SIGTERM) -> int:
    process.send_signal(signum)
    with trio.fail_after(STOP_S):
        return await trio.to_thread.run_sync(process.wait)


def test_without_an_account_the_image_refuses_to_start() -> None:
    result = subprocess.run(entrypoint(), env=image_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    listen = IMAGE.env["EZTHROTTLE_SERVER_LISTEN"]
    assert "refusing to start" in result.stderr and f"server.listen = {listen}" in result.stderr
    assert "EZTHROTTLE_ACCOUNTS=" in result.stderr
    assert "ck_dev_" not in result.stdout + result.stderr


async def test_with_an_account_in_the_environment_the_image_starts_and_is_ready(tmp_path: Path) -> None:
    port = free_port()
    listen = IMAGE.env["EZTHROTTLE_SERVER_LISTEN"].rsplit(":", 1)[0] + f":{port}"  # the image's host
    env = image_env(
        {
            "EZTHROTTLE_SERVER_LISTEN": listen,
            "EZTHROTTLE_SERVER_DATA_DIR": str(tmp_path),
            "EZTHROTTLE_ACCOUNTS": ACCOUNTS,
        }
    )
    output = tmp_path / "output.log"
    process = spawn(env, output)
    try:
        await wait_ready(process, port, output)
    finally:
        assert await stop(process) == 0, output.read_text()
    assert "ck_dev_" not in output.read_text()


async def test_fly_s_kill_signal_makes_the_machine_leave_the_cluster(tmp_path: Path, nursery: trio.Nursery) -> None:
    """fly.toml's [env] as a machine gets it, with its secrets and Fly's variables; a peer in this test sees the
    machine join under its Fly id and region, and leave (not die) when Fly would stop it."""
    port, gossip_port = free_port(), free_port()
    env = image_env(
        FLY["env"],
        {
            "EZTHROTTLE_SERVER_LISTEN": f"127.0.0.1:{port}",
            "EZTHROTTLE_CLUSTER_BIND": f"127.0.0.1:{gossip_port}",
            "EZTHROTTLE_SERVER_DATA_DIR": str(tmp_path),
        },
        {"EZTHROTTLE_ACCOUNTS": ACCOUNTS, "EZTHROTTLE_CLUSTER_KEYS": json.dumps([KEYRING.primary.hex()])},  # secrets
        {"FLY_REGION": "lhr", "FLY_MACHINE_ID": MACHINE_ID},
    )
    output = tmp_path / "output.log"
    process = spawn(env, output)
    try:
        peer = await start(nursery, "peer", seeds=[f"127.0.0.1:{gossip_port}"])
        await wait_ready(process, port, output)  # as in a deploy: Fly stops a machine whose checks have passed
        await wait_until(lambda: states(peer.member).get(MACHINE_ID) is MemberState.ALIVE, timeout_s=5, what="up")
        (machine,) = (info for info in peer.member.members() if info.node == MACHINE_ID)
        assert machine.region == "lhr"
    finally:
        assert await stop(process, signal.Signals[FLY["kill_signal"]]) == 0, output.read_text()
    await wait_until(lambda: states(peer.member)[MACHINE_ID] is MemberState.LEFT, timeout_s=3, what="left")
