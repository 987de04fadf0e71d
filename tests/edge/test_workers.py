"""The pure parts of the supervisor (edge/workers.py): each worker's settings, the restart policy, the hand-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import ConfigError, load_config
from edge.workers import (
    RESTART_DELAY_S_FIRST,
    RESTART_DELAY_S_MAX,
    STABLE_RUN_S,
    Handoff,
    describe_exit,
    failures_after,
    restart_delay_s,
    stranded_shards,
    worker_config,
    worker_count,
)

KEY = bytes(range(32))
CLUSTER_KEY = "ab" * 32


def config(**settings: Any) -> Any:
    return load_config(None, env={}, overrides={"server.data_dir": "/data", **settings})


def handoff(index: int, count: int = 2, **fields: Any) -> Handoff:
    return Handoff(index=index, count=count, machine="m1", **fields)


@pytest.mark.parametrize(
    ("configured", "cpus", "count"),
    [(None, 2, 2), (None, 16, 16), (None, None, 1), (None, 0, 1), (1, 8, 1), (3, 2, 3)],
)
def test_worker_count(configured: int | None, cpus: int | None, count: int) -> None:
    assert worker_count(configured, cpus) == count


# (worker index, node id, own listener, gossip bind, seeds) for a node of 2 workers on 127.0.0.1:8080 alone.
@pytest.mark.parametrize(
    ("index", "node", "own", "bind", "seeds"),
    [
        (0, "m1-w0", "127.0.0.1:8081", "127.0.0.1:8083", ("127.0.0.1:8084",)),
        (1, "m1-w1", "127.0.0.1:8082", "127.0.0.1:8084", ("127.0.0.1:8083",)),
    ],
)
def test_a_node_without_a_cluster_becomes_a_loopback_cluster_of_its_workers(
    index: int, node: str, own: str, bind: str, seeds: tuple[str, ...]
) -> None:
    derived = worker_config(config(**{"server.listen": "127.0.0.1:8080"}), handoff(index, sibling_key=KEY))
    assert derived.server.listen == "127.0.0.1:8080"  # shared by both
    assert (derived.server.node_id, derived.server.worker_listen) == (node, own)
    assert derived.server.data_dir == Path(f"/data/worker-{index}")
    assert (derived.cluster.bind, derived.cluster.seeds, derived.cluster.api_advertise) == (bind, seeds, own)
    assert (derived.cluster.keys, derived.cluster.profile, derived.cluster.machine) == ((KEY,), "local", "m1")


@pytest.mark.parametrize(
    ("listen", "own"),
    [("0.0.0.0:8080", "127.0.0.1:8082"), ("[::]:8080", "[::1]:8082"), ("localhost:8080", "127.0.0.1:8082")],
)
def test_the_loopback_cluster_keeps_each_workers_own_listener_on_loopback(listen: str, own: str) -> None:
    derived = worker_config(config(**{"server.listen": listen}), handoff(1, sibling_key=KEY))
    assert (derived.server.listen, derived.server.worker_listen) == (listen, own)


# A configured cluster: (settings, worker 1's bind, advertise, api_advertise, seeds) of 3 workers.
@pytest.mark.parametrize(
    ("settings", "bind", "advertise", "api", "seeds"),
    [
        (
            {"cluster.bind": "10.0.0.5:7946", "cluster.seeds": ["10.0.0.6:7946"]},
            "10.0.0.5:7947",
            None,
            "10.0.0.5:8082",
            ("10.0.0.6:7946", "10.0.0.5:7946", "10.0.0.5:7948"),
        ),
        (
            {
                "cluster.bind": "[::]:7946",
                "cluster.advertise": "[fdaa::3]:7946",
                "cluster.api_advertise": "[fdaa::3]:8080",
                "server.listen": "[::]:8080",
            },
            "[::]:7947",
            "[fdaa::3]:7947",
            "[fdaa::3]:8082",
            ("[fdaa::3]:7946", "[fdaa::3]:7948"),
        ),
    ],
)
def test_a_configured_cluster_gets_one_member_per_worker(
    settings: dict[str, Any], bind: str, advertise: str | None, api: str, seeds: tuple[str, ...]
) -> None:
    node = config(**{"server.listen": "10.0.0.5:8080", "cluster.keys": [CLUSTER_KEY], **settings})
    derived = worker_config(node, handoff(1, count=3))
    assert (derived.cluster.bind, derived.cluster.advertise, derived.cluster.api_advertise) == (bind, advertise, api)
    assert derived.cluster.seeds == seeds
    assert derived.cluster.keys == node.cluster.keys and derived.cluster.profile == "lan"
    assert derived.server.worker_listen == derived.server.listen.rsplit(":", 1)[0] + ":8082"


@pytest.mark.parametrize(
    ("settings", "fields", "message"),
    [
        ({"server.listen": "127.0.0.1:0"}, {"sibling_key": KEY}, r"server\.listen: needs a fixed port"),
        ({"server.listen": "127.0.0.1:65533"}, {"sibling_key": KEY}, r"server\.listen: port 65533 \+ 4"),
        ({}, {}, r"cluster\.keys: .* needs their key"),
        (
            {"cluster.bind": "10.0.0.5:0", "cluster.keys": [CLUSTER_KEY], "server.listen": "10.0.0.5:8080"},
            {},
            r"cluster\.bind: needs a fixed port",
        ),
        (
            {"cluster.bind": "10.0.0.5:7946", "cluster.keys": [CLUSTER_KEY], "server.listen": "0.0.0.0:8080"},
            {},
            r"cluster\.api_advertise: required with a wildcard",
        ),
        ({"server.node_id": "n" * 62}, {"sibling_key": KEY}, r"server\.node_id: .* over 64 characters"),
    ],
)
def test_settings_that_cannot_be_shared_out_are_refused(
    settings: dict[str, Any], fields: dict[str, Any], message: str
) -> None:
    node = config(**settings)
    with pytest.raises(ConfigError, match=message):
        worker_config(node, Handoff(index=1, count=2, machine=node.server.node_id or "m1", **fields))


def test_protected_listeners_run_on_worker_0_alone() -> None:
    protect = '[{"listen": "127.0.0.1:8443", "upstream": "http://127.0.0.1:9000", "max_concurrency": 5}]'
    node = load_config(None, env={"EZTHROTTLE_PROTECT": protect}, overrides={"server.data_dir": "/d"})
    assert worker_config(node, handoff(0, sibling_key=KEY)).protect == node.protect
    assert worker_config(node, handoff(1, sibling_key=KEY)).protect == ()


def test_the_development_account_comes_with_the_handoff() -> None:
    derived = worker_config(config(), handoff(0, sibling_key=KEY, dev_key="ck_dev_0123456789abcdef"))
    assert [account.id for account in derived.accounts] == ["dev"]
    assert derived.account_by_key("ck_dev_0123456789abcdef") is not None


def test_the_handoff_round_trips_and_hides_its_secrets() -> None:
    sent = handoff(1, count=4, sibling_key=KEY, dev_key="ck_dev_secret_value")
    assert Handoff.decode(sent.encode()) == sent
    assert sent.encode().endswith(b"\n") and sent.encode().count(b"\n") == 1
    assert KEY.hex() not in repr(sent) and "ck_dev_secret_value" not in repr(sent)
    bare = handoff(0)
    assert Handoff.decode(bare.encode()) == bare


# (quick failures so far, how long the worker ran, failures after, delay before the restart)
@pytest.mark.parametrize(
    ("failures", "ran_s", "after", "delay_s"),
    [
        (0, 0.5, 1, RESTART_DELAY_S_FIRST),
        (1, 0.5, 2, 2 * RESTART_DELAY_S_FIRST),
        (2, 3.0, 3, 4 * RESTART_DELAY_S_FIRST),
        (5, 1.0, 6, 32 * RESTART_DELAY_S_FIRST),
        (6, 1.0, 7, RESTART_DELAY_S_MAX),
        (1000, 1.0, 1001, RESTART_DELAY_S_MAX),
        (9, STABLE_RUN_S, 1, RESTART_DELAY_S_FIRST),  # it had worked a while: start over
        (9, STABLE_RUN_S + 3600, 1, RESTART_DELAY_S_FIRST),
    ],
)
def test_restarts_back_off_while_a_worker_keeps_failing(failures: int, ran_s: float, after: int, delay_s: float):
    assert failures_after(failures, ran_s) == after
    assert restart_delay_s(after) == delay_s


@pytest.mark.parametrize(("status", "shown"), [(0, "status 0"), (3, "status 3"), (-9, "SIGKILL"), (-15, "SIGTERM")])
def test_describe_exit(status: int, shown: str) -> None:
    assert describe_exit(status) == shown


STORE = "jobs.sqlite3"


@pytest.mark.parametrize(
    ("entries", "count", "stranded"),
    [
        ([STORE, "dev-account.key", "node-id"], 1, []),
        ([STORE, "worker-0", "worker-1"], 1, ["worker-0", "worker-1"]),
        (["worker-0", "worker-1", "workers.key"], 2, []),
        ([STORE, "worker-0", "worker-1"], 2, [STORE]),
        (["worker-0", "worker-1", "worker-2", "worker-x"], 2, ["worker-2"]),
        ([], 4, []),
    ],
)
def test_stores_a_changed_worker_count_leaves_behind(entries: list[str], count: int, stranded: list[str]) -> None:
    assert stranded_shards(entries, count, store=STORE) == stranded
