"""Nothing acknowledged is lost: kill -9 a process that is inserting, then count what is on disk."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from edge.store import open_sqlite_store

REPO_ROOT = Path(__file__).resolve().parents[3]
ACKNOWLEDGED_BEFORE_KILL = 300


async def test_every_acknowledged_insert_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    acknowledged: list[str] = []
    pending = b""
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.edge.store.durability_child", str(path)],
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        assert process.stdout is not None
        try:
            killed = False
            while True:
                chunk = await process.stdout.receive_some()
                if not chunk:  # EOF: the child is dead (killed by us, or crashed early)
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                acknowledged.extend(line.decode() for line in lines)
                if not killed and len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL:
                    # Lines still in the pipe were acknowledged too; they are read after the kill.
                    process.kill()
                    killed = True
        finally:
            process.kill()
            await process.wait()

    assert process.returncode == -signal.SIGKILL
    assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL
    async with open_sqlite_store(path) as store:
        stored = {job.job_id for job in await store.unfinished_jobs()}
    missing = [job_id for job_id in acknowledged if job_id not in stored]
    assert missing == []
    assert len(stored) >= len(acknowledged)
