"""The [cluster] section: off by default, keys required for a real cluster, env overrides like every section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config

KEY = "ab" * 32


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_cluster_is_off_by_default():
    assert not load_config(None, env={}).cluster.enabled


def test_keys_seeds_and_profile(tmp_path: Path):
    text = f'[cluster]\nbind = "[::1]:7946"\nseeds = ["app.internal:7946"]\nkeys = ["{KEY}", "{"cd" * 16}"]\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.cluster.enabled and config.cluster.seeds == ("app.internal:7946",)
    assert config.cluster.keys == (bytes.fromhex(KEY), bytes.fromhex("cd" * 16)) and config.cluster.profile == "lan"
    assert KEY not in config.describe() and KEY not in repr(config)


def test_a_loaded_cluster_section_can_be_replaced_keys_and_all(tmp_path: Path):
    """On Fly.io `ezthrottle serve` fills in the region with dataclasses.replace, which validates the keys again."""
    config = load_config(write(tmp_path, f'[cluster]\nbind = "127.0.0.1:7946"\nkeys = ["{KEY}"]\n'), env={})
    moved = dataclasses.replace(config.cluster, region="ams")
    assert moved.keys == (bytes.fromhex(KEY),) and moved.region == "ams"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[cluster]\nbind = "127.0.0.1:7946"\n', "cluster.keys: a cluster needs keys"),
        (f'[cluster]\nbind = "127.0.0.1:7946"\nkeys = ["{KEY[:20]}"]\n', "cluster.keys: must be a list of hex"),
        ('[cluster]\nbind = "127.0.0.1:7946"\nkeys = ["zz"]\n', "cluster.keys"),
        ('[cluster]\nprofile = "lan-party"\n', "cluster.profile: must be one of"),
        ('[cluster]\nseeds = "a:1"\n', "cluster.seeds"),
    ],
)
def test_bad_cluster_settings_name_the_key(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_insecure_dev_cluster_and_env_overrides():
    env = {
        "EZTHROTTLE_CLUSTER_BIND": "127.0.0.1:7946",
        "EZTHROTTLE_CLUSTER_INSECURE": "true",
        "EZTHROTTLE_CLUSTER_SEEDS": '["127.0.0.1:7947"]',
    }
    config = load_config(None, env=env)
    assert config.cluster.enabled and config.cluster.insecure and config.cluster.seeds == ("127.0.0.1:7947",)
