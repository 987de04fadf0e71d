"""The `[[protect]]` section: parsing, defaults taken from the scheduler, key digests, env JSON and errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from edge.config import ConfigError, ProtectConfig, load_config
from scheduler import AimdPolicy, SchedulerPolicy, Tier, TierPolicy

BIG_KEY = "cust_big_0123456789abc"
SMALL_KEY = "cust_small_0123456789"

PROTECT = f"""
[[protect]]
listen = "127.0.0.1:8443"
upstream = "HTTP://127.0.0.1:9000"
max_concurrency = 16
key_header = "Authorization"
tier_header = "X-Customer-Tier"
reserved_share = 0.3
paid_weight = 3
key_queue_length_max = 20
queue_length_max = 200
queue_wait_s_max = 5
key_concurrency_share_max = 1
adaptive_concurrency = true
body_bytes_max = 1048576
upstream_total_timeout_s = 30

[[protect.keys]]
key = "{BIG_KEY}"
id = "big"
tier = "paid"
weight = 2
rate_per_s = 2.5

[[protect.keys]]
key_sha256 = "{hashlib.sha256(SMALL_KEY.encode()).hexdigest()}"
tier = "reserved"
rate_per_s = 5
burst = 20

[[protect]]
name = "internal"
listen = "[::1]:8444"
upstream = "http://[::1]:9001"
fairness = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_protect_sections_are_parsed_with_their_keys(tmp_path: Path) -> None:
    first, second = load_config(write(tmp_path, PROTECT), env={}).protect
    assert (first.listen, first.upstream, first.label) == ("127.0.0.1:8443", "http://127.0.0.1:9000", "127.0.0.1:8443")
    assert (first.key_header, first.tier_header) == ("authorization", "x-customer-tier")
    assert first.scheduler_policy() == SchedulerPolicy(
        capacity=16,
        tiers=TierPolicy(reserved_share=0.3, paid_weight=3.0),
        key_concurrency_share_max=1.0,
        key_queue_length_max=20,
        queue_length_max=200,
        queue_wait_s_max=5.0,
        aimd=AimdPolicy(),
    )
    big, small = first.keys
    assert (big.label, big.tier, big.weight) == ("big", "paid", 2.0)
    assert big.policy().tier is Tier.PAID and (big.policy().rate_per_s, big.policy().burst) == (2.5, 3)
    assert small.label == "key-" + hashlib.sha256(SMALL_KEY.encode()).hexdigest()[:8]
    assert (small.policy().tier, small.policy().burst) == (Tier.RESERVED, 20)
    assert first.key_by_secret(BIG_KEY) is big and first.key_by_secret(SMALL_KEY) is small
    assert first.key_by_secret(BIG_KEY + "x") is None
    assert (second.label, second.fairness, second.keys) == ("internal", False, ())


def test_defaults_are_the_schedulers_own(tmp_path: Path) -> None:
    protect = ProtectConfig(listen="127.0.0.1:0", upstream="http://127.0.0.1:9")
    assert protect.scheduler_policy() == SchedulerPolicy(capacity=64)
    assert (protect.key_header, protect.tier_header, protect.fairness) == ("x-api-key", None, True)
    assert protect.anonymous_policy().tier is Tier.FREE and protect.anonymous_policy().rate_per_s is None
    assert (protect.body_bytes_max, protect.body_buffer_bytes) == (64 * 1024 * 1024, 64 * 1024)
    assert load_config(None, env={}).protect == ()


def test_plain_keys_are_never_kept_or_shown(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PROTECT), env={})
    held = [getattr(key, spec.name) for key in config.protect[0].keys for spec in dataclasses.fields(key)]
    assert BIG_KEY not in held
    text = config.describe() + repr(config)
    assert BIG_KEY not in text and hashlib.sha256(BIG_KEY.encode()).hexdigest() not in text
    assert "protect: 2" in text and "internal: keys=0" in text and "127.0.0.1:8443: keys=2" in text


def test_env_json_replaces_the_protect_sections(tmp_path: Path) -> None:
    listeners = [{"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:7", "keys": [{"key": BIG_KEY}]}]
    config = load_config(write(tmp_path, PROTECT), env={"EZTHROTTLE_PROTECT": json.dumps(listeners)})
    assert [p.upstream for p in config.protect] == ["http://127.0.0.1:7"]
    assert config.protect[0].key_by_secret(BIG_KEY) is config.protect[0].keys[0]


MINIMAL = '[[protect]]\nlisten = "127.0.0.1:0"\nupstream = "http://127.0.0.1:9"\n'
KEY = f'[[protect.keys]]\nkey = "{BIG_KEY}"\n'
FILE_ERRORS = [
    ('[[protect]]\nlisten = "127.0.0.1:0"\n', "protect[0].upstream: required"),
    (MINIMAL.replace("http://127.0.0.1:9", "http://127.0.0.1:9/v1"), "protect[0].upstream: must be an origin"),
    (MINIMAL + "listn = 1\n", "protect[0].listn: unknown key (did you mean listen?)"),
    (MINIMAL + 'key_header = "x api key"\n', "protect[0].key_header: must be an HTTP header name"),
    (MINIMAL + "reserved_share = 1\n", "protect[0].reserved_share: must be a number in (0, 1)"),
    (MINIMAL + "key_concurrency_share_max = 1.5\n", "protect[0].key_concurrency_share_max: must be a number in (0, 1]"),
    (MINIMAL + "reserved_share = 0.9\nfree_share_min = 0.2\n", "protect[0].reserved_share: reserved_share + free"),
    (
        MINIMAL + "key_queue_length_max = 60\nqueue_length_max = 50\n",
        "protect[0].key_queue_length_max: must not exceed queue_length_max (60 > 50)",
    ),
    (MINIMAL + "anonymous_burst = 3\n", "protect[0].anonymous_burst: needs anonymous_rate_per_s as well"),
    (MINIMAL + "fairness = 1\n", "protect[0].fairness: must be true or false"),
    (MINIMAL + "keys = 3\n", "protect[0].keys: must be an array of tables"),
    (MINIMAL + KEY + 'tier = "gold"\n', "protect[0].keys[0].tier: must be one of reserved, paid, free"),
    (MINIMAL + KEY + "burst = 3\n", "protect[0].keys[0].burst: needs rate_per_s as well"),
    (MINIMAL + KEY + "weight = 0\n", "protect[0].keys[0].weight: must be a number > 0"),
    (MINIMAL + '[[protect.keys]]\nid = "x"\n', "protect[0].keys[0]: needs exactly one of key or key_sha256"),
    (MINIMAL + KEY + KEY, "protect[0]: keys[1] has the same key as keys[0]"),
    (
        MINIMAL + KEY + 'id = "a"\n' + KEY.replace(BIG_KEY, SMALL_KEY) + 'id = "a"\n',
        "protect[0]: keys[1] has the id 'a' of keys[0]",
    ),
    (MINIMAL + MINIMAL, "protect[1].name: listener '127.0.0.1:0' is also protect[0]; give each a unique name"),
    ("protect = 3\n", "protect: must be an array of tables"),
]


@pytest.mark.parametrize(("text", "message"), FILE_ERRORS)
def test_errors_name_the_listener_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    assert str(caught.value).split(": ", 1)[1].startswith(message), str(caught.value)


def test_a_short_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + '[[protect.keys]]\nkey = "short-key"\n'), env={})
    assert caught.value.key == "protect[0].keys[0].key" and "short-key" not in str(caught.value)


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^EZTHROTTLE_PROTECT: invalid JSON"):
        load_config(None, env={"EZTHROTTLE_PROTECT": "[{"})
    bad = json.dumps([{"listen": "127.0.0.1:0", "upstream": "ftp://x"}])
    with pytest.raises(ConfigError, match=r"^EZTHROTTLE_PROTECT: protect\[0\]\.upstream: must be an origin"):
        load_config(None, env={"EZTHROTTLE_PROTECT": bad})
