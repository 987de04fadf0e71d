"""Child process for test_durability: insert jobs and print each job_id the moment its insert returned.

Run as `python -m tests.edge.store.durability_child DB_PATH` from the repository root. It never exits on its own
before `RUN_S_MAX`, so that the parent can kill it mid-flight.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from edge.store import Store, open_sqlite_store
from tests.edge.store.helpers import make_record

INSERTERS = 8
JOBS_PER_INSERTER_MAX = 100_000
RUN_S_MAX = 30.0  # in case the parent test dies without killing us


async def insert_and_acknowledge(store: Store, inserter: int) -> None:
    for n in range(JOBS_PER_INSERTER_MAX):
        stored, _ = await store.insert_job(make_record(f"job-{inserter}-{n}"))
        sys.stdout.write(f"{stored.job_id}\n")
        sys.stdout.flush()


async def main(path: Path) -> None:
    with trio.move_on_after(RUN_S_MAX):
        async with open_sqlite_store(path) as store, trio.open_nursery() as nursery:
            for inserter in range(INSERTERS):
                nursery.start_soon(insert_and_acknowledge, store, inserter)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
