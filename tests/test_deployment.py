"""fly.toml and the Dockerfile against the code they deploy: the port, the data dir, the health check, gossip on the
private network, the stop signal. A machine's configuration is built the way a Fly machine builds it: the image's
ENV, fly.toml's [env], the secrets the README sets, then Fly's own variables."""

from __future__ import annotations

import inspect
import json
import signal
import tomllib
from pathlib import Path

from cluster.shell import ClusterMember
from edge.cli import SHUTDOWN_SIGNALS
from edge.config import ENV_SETTINGS, ClusterConfig, Config, ServerConfig, load_config, split_listen
from edge.fly import fly_defaults
from edge.http.server import serve_asgi
from edge.node import LEAVE_TIMEOUT_S
from edge.placement.membership import api_address, keyring_of, swim_config
from edge.runtime import Runtime
from tests.dockerfile import ROOT, read_dockerfile

FLY = tomllib.loads((ROOT / "fly.toml").read_text())
IMAGE = read_dockerfile()
SECRETS = {
    "EZTHROTTLE_ACCOUNTS": json.dumps([{"id": "acme", "key": "ck_live_0123456789abcdef"}]),
    "EZTHROTTLE_CLUSTER_KEYS": json.dumps(["ab" * 32]),
}
PRIVATE_IP = "fdaa:0:1:a7b:1::2"
MACHINE = {
    "FLY_APP_NAME": "my-edge",
    "FLY_REGION": "lhr",
    "FLY_MACHINE_ID": "3d8d9930b32189",
    "FLY_PRIVATE_IP": PRIVATE_IP,
}


def machine_config() -> Config:
    return fly_defaults(load_config(None, env={**IMAGE.env, **FLY["env"], **SECRETS}), MACHINE)


def seconds(duration: int | str) -> float:
    """fly.toml durations: a number of seconds, or "15s"."""
    return float(duration) if isinstance(duration, int) else float(duration.removesuffix("s"))


def test_fly_sets_only_settings_the_node_knows_and_no_secret() -> None:
    assert set(FLY["env"]) <= set(ENV_SETTINGS)
    assert not {"EZTHROTTLE_ACCOUNTS", "EZTHROTTLE_CLUSTER_KEYS"} & set(FLY["env"])  # `fly secrets set` only
    assert FLY["primary_region"]


def test_the_node_listens_where_fly_routes_and_the_image_exposes_on_every_address() -> None:
    config = machine_config()
    port = FLY["http_service"]["internal_port"]
    assert config.server.listen_port == port == ServerConfig().listen_port
    assert IMAGE.exposed_ports == [port] and split_listen(IMAGE.env["EZTHROTTLE_SERVER_LISTEN"])[1] == port
    assert config.server.listen_host == "::"  # IPv4 from Fly's proxy, IPv6 from other members over 6PN


def test_the_data_dir_is_the_mounted_volume() -> None:
    (mount,) = FLY["mounts"]
    assert machine_config().server.data_dir == Path(mount["destination"])
    assert mount["destination"] in IMAGE.volumes
    assert f"fly volumes create {mount['source']}" in (ROOT / "README.md").read_text()


def test_fly_checks_readiness_after_a_restarted_node_has_waited_for_its_peers() -> None:
    (check,) = FLY["http_service"]["checks"]
    assert (check["method"], check["path"]) == ("GET", "/readyz")
    assert seconds(check["grace_period"]) > ClusterConfig().join_wait_s


def test_machines_run_without_requests() -> None:
    """Queues and webhook deliveries are background work: Fly must not stop an idle machine."""
    assert FLY["http_service"]["auto_stop_machines"] in ("off", False)


def test_a_machine_gossips_on_its_private_address_and_finds_the_others_by_the_app_name() -> None:
    config = machine_config()
    cluster = config.cluster
    assert cluster.enabled and split_listen(cluster.bind or "")[0] == "::"
    assert cluster.advertise == f"[{PRIVATE_IP}]:{split_listen(cluster.bind or '')[1]}"
    assert api_address(config) == f"[{PRIVATE_IP}]:{config.server.listen_port}"
    assert cluster.seeds == ("my-edge.internal",)
    assert (cluster.region, config.server.node_id) == ("lhr", "3d8d9930b32189")
    ClusterMember(  # what the node builds from it: the addresses pass the member's own checks
        node_id=config.server.node_id or "",
        bind=cluster.bind or "",
        advertise=cluster.advertise,
        config=swim_config(cluster),
        keyring=keyring_of(cluster),
        seeds=cluster.seeds,
        runtime=Runtime.real(),
    )


def test_fly_stops_a_machine_with_a_signal_the_node_leaves_the_cluster_on_and_waits_long_enough() -> None:
    assert signal.Signals[FLY["kill_signal"]] in SHUTDOWN_SIGNALS
    drain_s = inspect.signature(serve_asgi).parameters["graceful_timeout_s"].default
    assert seconds(FLY["kill_timeout"]) > drain_s + LEAVE_TIMEOUT_S
