"""The suite runs on two workers (pytest-xdist, `--dist loadgroup` in pyproject.toml). Tests that start node
processes, real clusters or a browser, or that time latencies, share one group and so run one after another on one
worker, as they would alone; the pure and in-process tests run on the other worker beside them."""

from __future__ import annotations

import pytest

# Where the tests that need the machine to themselves live: whole processes and clusters, timing and fairness.
SERIAL_PREFIXES = ("tests/e2e/", "tests/edge/placement/", "tests/edge/proxy/", "tests/bench/", "tests/cluster/shell/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SERIAL_PREFIXES):
            item.add_marker(pytest.mark.xdist_group("serial"))
