"""Fly.io's machine variables fill in what the configuration leaves unset, and nothing else."""

from __future__ import annotations

import pytest

from edge.config import Config, ConfigError, load_config
from edge.fly import fly_defaults

MACHINE = {
    "FLY_APP_NAME": "my-edge",
    "FLY_REGION": "lhr",
    "FLY_MACHINE_ID": "3d8d9930b32189",
    "FLY_PRIVATE_IP": "fdaa:0:1:a7b:1::2",
}
CLUSTER = {"EZTHROTTLE_CLUSTER_BIND": "[::]:7946", "EZTHROTTLE_CLUSTER_KEYS": '["' + "ab" * 32 + '"]'}


def config(**env: str) -> Config:
    return load_config(None, env=env)


def test_off_fly_nothing_changes() -> None:
    clustered = config(**CLUSTER)
    assert fly_defaults(clustered, {}) == clustered


def test_a_clustered_machine_gets_its_addresses_region_id_and_seed() -> None:
    machine = fly_defaults(config(**CLUSTER, EZTHROTTLE_SERVER_LISTEN="[::]:8080"), MACHINE)
    assert machine.cluster.advertise == "[fdaa:0:1:a7b:1::2]:7946"
    assert machine.cluster.api_advertise == "[fdaa:0:1:a7b:1::2]:8080"
    assert machine.cluster.seeds == ("my-edge.internal",)
    assert (machine.cluster.region, machine.server.node_id) == ("lhr", "3d8d9930b32189")


def test_what_the_config_says_wins() -> None:
    given = config(
        **CLUSTER,
        EZTHROTTLE_SERVER_LISTEN="[::]:8080",
        EZTHROTTLE_SERVER_NODE_ID="edge-1",
        EZTHROTTLE_CLUSTER_REGION="ams",
        EZTHROTTLE_CLUSTER_ADVERTISE="[fdaa::9]:7946",
        EZTHROTTLE_CLUSTER_API_ADVERTISE="[fdaa::9]:8080",
        EZTHROTTLE_CLUSTER_SEEDS='["other.internal"]',
    )
    assert fly_defaults(given, MACHINE) == given


def test_addresses_are_advertised_only_for_a_wildcard_bind() -> None:
    bound = config(
        **{**CLUSTER, "EZTHROTTLE_CLUSTER_BIND": "10.0.0.5:7946"},
        EZTHROTTLE_SERVER_LISTEN="10.0.0.5:8080",
    )
    machine = fly_defaults(bound, {**MACHINE, "FLY_PRIVATE_IP": "10.0.0.5"})
    assert (machine.cluster.advertise, machine.cluster.api_advertise) == (None, None)


def test_an_ipv4_private_address_is_advertised_without_brackets() -> None:
    machine = fly_defaults(config(**CLUSTER, EZTHROTTLE_SERVER_LISTEN="0.0.0.0:8080"), {"FLY_PRIVATE_IP": "10.0.0.5"})
    assert (machine.cluster.advertise, machine.cluster.api_advertise) == ("10.0.0.5:7946", "10.0.0.5:8080")


def test_a_single_node_gets_only_its_region_and_id() -> None:
    machine = fly_defaults(config(), MACHINE)
    assert (machine.cluster.region, machine.server.node_id) == ("lhr", "3d8d9930b32189")
    assert (machine.cluster.seeds, machine.cluster.advertise, machine.cluster.bind) == ((), None, None)


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("FLY_PRIVATE_IP", "not-an-ip", None),
        ("FLY_REGION", "l h r", "cluster.region"),
        ("FLY_MACHINE_ID", "x" * 65, "server.node_id"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it(variable: str, value: str, key: str | None) -> None:
    with pytest.raises(ConfigError) as error:
        fly_defaults(config(**CLUSTER), {**MACHINE, variable: value})
    assert (error.value.source, error.value.key) == (variable, key)
