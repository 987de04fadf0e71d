"""The `store` fixture: every conformance test runs against both implementations."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from edge.store import MemoryStoreData, Store, open_memory_store, open_sqlite_store

StoreOpener = Callable[[], AbstractAsyncContextManager[Store]]


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    """Opens the same underlying data each time it is called, so tests can close and reopen a store."""
    if request.param == "memory":
        return functools.partial(open_memory_store, MemoryStoreData())
    return functools.partial(open_sqlite_store, tmp_path / "data" / "jobs.db")


@pytest.fixture
async def store(open_store: StoreOpener) -> AsyncIterator[Store]:
    async with open_store() as opened:
        yield opened
