"""Fixtures shared by the multi-process tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e import partition


@pytest.fixture
async def cgroup() -> AsyncIterator[Path]:
    """A cgroup v2 directory for the "ord" node of a region cluster, which tests/e2e/partition.py can cut off."""
    if not partition.available():
        pytest.skip("needs root, nftables and cgroup v2")
    path = partition.make_cgroup("ord")
    yield path
    partition.remove_cgroup(path)
