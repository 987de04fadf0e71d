"""Fly.io's machine environment as defaults for what the configuration leaves unset.

fly.toml's `[env]` is the same on every machine of an app, but a cluster member needs values of its own machine:
the address other members reach it at, its region, its id. Fly.io sets those as environment variables
(https://fly.io/docs/machines/runtime-environment/), and `fly_defaults` fills them in; a value the config file,
an EZTHROTTLE_* variable or a flag gives always wins. Off Fly.io none of these variables is set and nothing changes.

- `cluster.region` from FLY_REGION: members advertise it for region-aware routing.
- `server.node_id` from FLY_MACHINE_ID: `fly machine list`, `fly logs` and /api/v1/cluster name members alike. A
  machine keeps its id and its volume for its life; when a new machine takes over a volume (a scale-up reusing an
  unattached one), the jobs in its store resume under the new id, and what the old id held of a plan's allowance
  is lost until the month ends, as for any member gone for good (under-admission, never overshoot).
- With the cluster on (`cluster.bind`): `cluster.seeds` `<FLY_APP_NAME>.internal`, which Fly's DNS answers with
  the 6PN address of every machine of the app; and for a wildcard bind or listen address such as "[::]:7946",
  `cluster.advertise` and `cluster.api_advertise` on FLY_PRIVATE_IP, the machine's address on the private 6PN
  network, where gossip (UDP included) and forwarded jobs travel.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from edge.config import Config, ConfigError, split_listen

FLY_REGION = "FLY_REGION"
FLY_MACHINE_ID = "FLY_MACHINE_ID"
FLY_PRIVATE_IP = "FLY_PRIVATE_IP"
FLY_APP_NAME = "FLY_APP_NAME"
WILDCARD_HOSTS = ("0.0.0.0", "::")


def fly_defaults(config: Config, env: Mapping[str, str]) -> Config:
    """`config` with what Fly.io's variables in `env` say about this machine, where the config says nothing."""
    server: dict[str, Any] = {}
    cluster: dict[str, Any] = {}
    if config.server.node_id is None and env.get(FLY_MACHINE_ID):
        server["node_id"] = (FLY_MACHINE_ID, env[FLY_MACHINE_ID])
    if config.cluster.region is None and env.get(FLY_REGION):
        cluster["region"] = (FLY_REGION, env[FLY_REGION])
    if config.cluster.bind is not None:
        private_ip = env.get(FLY_PRIVATE_IP)
        if private_ip:
            ip = _ip(private_ip)
            if config.cluster.advertise is None and _is_wildcard(config.cluster.bind):
                cluster["advertise"] = (FLY_PRIVATE_IP, _address(ip, config.cluster.bind))
            if config.cluster.api_advertise is None and _is_wildcard(config.server.listen):
                cluster["api_advertise"] = (FLY_PRIVATE_IP, _address(ip, config.server.listen))
        if not config.cluster.seeds and env.get(FLY_APP_NAME):
            cluster["seeds"] = (FLY_APP_NAME, (f"{env[FLY_APP_NAME]}.internal",))
    return dataclasses.replace(
        config,
        server=_replaced(config.server, "server", server),
        cluster=_replaced(config.cluster, "cluster", cluster),
    )


def _replaced(section: Any, name: str, changes: Mapping[str, tuple[str, Any]]) -> Any:
    """`section` with each change (variable, value), validated like a configured value, errors naming the variable."""
    for key, (variable, value) in changes.items():
        try:
            section = dataclasses.replace(section, **{key: value})
        except ValueError as exc:
            raise ConfigError(variable, f"{name}.{key}", str(exc)) from None
    return section


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(FLY_PRIVATE_IP, None, f"must be an IP address (got {text!r})") from None


def _is_wildcard(listen: str) -> bool:
    return split_listen(listen)[0] in WILDCARD_HOSTS


def _address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, listen: str) -> str:
    """`ip` on the port of `listen`, in listen syntax: "[fdaa::3]:7946"."""
    port = split_listen(listen)[1]
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
