"""Config loading: defaults, TOML files, env and override precedence, errors that say where and what."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from edge.config import (
    ENV_SETTINGS,
    SCALAR_SETTINGS,
    AccountConfig,
    Config,
    ConfigError,
    DefaultsConfig,
    ServerConfig,
    load_config,
    with_dev_account,
)

ALICE_KEY = "ck_alice_0123456789abcdef"
BOB_KEY = "ck_bob_fedcba9876543210"
ALICE_SECRET = "whsec_alice_primary_000"
ALICE_SECRET_OLD = "whsec_alice_secondary_00"

FULL_CONFIG = f"""
[server]
listen = "[::1]:9090"
data_dir = "state"
node_id = "edge-1"
body_bytes_max = 2048

[security]
allow_private_targets = true

[defaults]
rps = 3
max_concurrent = 4
account_queue = false

[http_client]
max_connections = 10
max_keepalive_connections = 5

[webhooks]
schedule_s = [0, 30]
concurrency = 4

[jobs]
retention_s = 3600

[[accounts]]
id = "alice"
key = "{ALICE_KEY}"
plan = "growth"
webhook_secret = "{ALICE_SECRET}"
webhook_secret_secondary = "{ALICE_SECRET_OLD}"

[[accounts]]
id = "bob"
key_sha256 = "{hashlib.sha256(BOB_KEY.encode()).hexdigest()}"

[targets."HTTPS://API.Stripe.com:443"]
rps = 25
max_concurrent = 8

[targets."http://[::1]:8081"]
account_queue = true
"""


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path so errors name the file as "config.toml", like the operator typed it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_without_file_or_env() -> None:
    config = load_config(None, env={})
    assert config.source == "<defaults>"
    assert (config.server.listen, config.server.listen_host, config.server.listen_port) == (
        "127.0.0.1:8080",
        "127.0.0.1",
        8080,
    )
    assert config.server.data_dir == Path(".ezthrottle")
    assert (config.server.certfile, config.server.keyfile, config.server.node_id) == (None, None, None)
    assert (config.server.body_bytes_max, config.server.account_backlog_max) == (1_048_576, 100_000)
    assert config.server.backlog_retry_after_s == 5
    assert (config.server.header_bytes_max, config.server.idle_timeout_s) == (16 * 1024, 5.0)  # hypercorn's own
    assert config.security.allow_private_targets is False
    assert dataclasses.astuple(config.defaults) == (2.0, 2, True, 86400.0, 3, 10.0, 30.0, 60.0, 0.5, 60.0)
    assert dataclasses.astuple(config.http_client) == (200, 100, 30.0, None)
    assert config.webhooks.schedule_s == (0.0, 60.0, 300.0, 900.0, 3600.0)
    assert (config.webhooks.repeat_every_s, config.webhooks.give_up_after_s) == (3600.0, 86400.0)
    assert (config.webhooks.timeout_s, config.webhooks.concurrency) == (10.0, 32)
    assert (config.jobs.retention_s, config.jobs.purge_interval_s) == (604_800.0, 3600.0)
    assert config.accounts == () and config.targets == ()
    assert config == Config()


def test_full_file(in_tmp: Path) -> None:
    config = load_config(write_config(in_tmp, FULL_CONFIG), env={})
    assert config.source.endswith("config.toml")
    assert (config.server.listen_host, config.server.listen_port) == ("::1", 9090)
    assert config.server.data_dir == Path("state") and config.server.node_id == "edge-1"
    assert config.server.body_bytes_max == 2048
    assert config.security.allow_private_targets is True
    defaults = config.defaults
    assert (defaults.rps, defaults.max_concurrent, defaults.account_queue) == (3.0, 4, False)
    assert config.defaults.max_retries == 3  # untouched keys keep their defaults
    assert config.webhooks.schedule_s == (0.0, 30.0)
    alice, bob = config.accounts
    assert (alice.id, alice.plan, bob.id, bob.plan) == ("alice", "growth", "bob", "pro")
    assert (alice.webhook_secret, alice.webhook_secret_secondary) == (ALICE_SECRET, ALICE_SECRET_OLD)
    assert alice.key_sha256 == hashlib.sha256(ALICE_KEY.encode()).digest()
    stripe, local = config.targets
    assert stripe.origin == "https://api.stripe.com"  # lower-cased, default port dropped
    assert (stripe.rps, stripe.max_concurrent, stripe.account_queue) == (25.0, 8, None)
    assert stripe.read_timeout_s is None
    assert local.origin == "http://[::1]:8081" and local.account_queue is True


def test_account_by_key_matches_plain_and_prehashed_keys(in_tmp: Path) -> None:
    config = load_config(write_config(in_tmp, FULL_CONFIG), env={})
    assert config.account_by_key(ALICE_KEY) is config.accounts[0]
    assert config.account_by_key(BOB_KEY) is config.accounts[1]
    assert config.account_by_key(ALICE_KEY[:-1]) is None
    assert config.account_by_key("") is None


def test_plain_keys_are_not_kept(in_tmp: Path) -> None:
    config = load_config(write_config(in_tmp, FULL_CONFIG), env={})
    held = [getattr(each, spec.name) for each in config.accounts for spec in dataclasses.fields(each)]
    assert ALICE_KEY not in held and BOB_KEY not in held
    assert ALICE_KEY not in repr(config) and ALICE_SECRET not in repr(config)


@pytest.mark.parametrize(
    ("asked", "found"),
    [
        ("https://api.stripe.com", "https://api.stripe.com"),
        ("https://API.STRIPE.COM:443", "https://api.stripe.com"),
        ("https://api.stripe.com/v1/charges?limit=3", "https://api.stripe.com"),
        ("http://[::1]:8081", "http://[::1]:8081"),
        ("http://api.stripe.com", None),  # another scheme is another origin
        ("https://api.stripe.com:8443", None),
        ("not a url", None),
    ],
)
def test_target_for(in_tmp: Path, asked: str, found: str | None) -> None:
    config = load_config(write_config(in_tmp, FULL_CONFIG), env={})
    target = config.target_for(asked)
    assert (target.origin if target else None) == found


def test_describe_never_shows_keys_or_secrets(in_tmp: Path) -> None:
    config = load_config(write_config(in_tmp, FULL_CONFIG), env={})
    text = config.describe()
    for secret in (ALICE_KEY, BOB_KEY, ALICE_SECRET, ALICE_SECRET_OLD):
        assert secret not in text
    for account in config.accounts:
        assert account.key_sha256.hex() not in text
        assert str(account.key_sha256) not in text
    assert "alice" in text and "https://api.stripe.com" in text and "[::1]:9090" in text
    assert "webhook_secret=set" in text and "webhook_secret_secondary=unset" in text


# (TOML text, expected start of the message after "config.toml: "): dotted key, problem, bad value.
KEY_A, KEY_B = "ck_aaaaaaaaaaaaaaaaa", "ck_bbbbbbbbbbbbbbbbb"
ACCOUNT_A = f'[[accounts]]\nid = "a"\nkey = "{KEY_A}"\n'
ACCOUNT_B = f'[[accounts]]\nid = "b"\nkey = "{KEY_B}"\n'
LISTEN_PROBLEM = 'server.listen: must be "host:port"'
ORIGIN_PROBLEM = "must be an origin scheme://host[:port] with scheme http or https and no path"
FILE_ERRORS = [
    (
        ACCOUNT_A + ACCOUNT_B + 'plan = "gold"\n',
        "accounts[1].plan: unknown plan 'gold' (known: enterprise, free, growth, pro, starter)",
    ),
    ('[server]\nlistn = "x"\n', "server.listn: unknown key (did you mean listen?)"),
    ("[sever]\n", "sever: unknown key (did you mean server?)"),
    ("server = 3\n", "server: must be a table (got 3)"),
    ("accounts = 3\n", "accounts: must be an array of tables (got 3)"),
    ('[server]\nlisten = "localhost"\n', LISTEN_PROBLEM),
    ('[server]\nlisten = "::1:8080"\n', LISTEN_PROBLEM),
    ('[server]\nlisten = "127.0.0.1:70000"\n', LISTEN_PROBLEM),
    ('[server]\nlisten = "[::1]8080"\n', LISTEN_PROBLEM),
    ('[server]\ncertfile = "cert.pem"\n', "server.keyfile: required when certfile is set"),
    ('[server]\nkeyfile = "key.pem"\n', "server.certfile: required when keyfile is set"),
    ('[server]\nnode_id = "no spaces"\n', "server.node_id: must be 1-64 characters"),
    ("[defaults]\nrps = 0.1\n", "defaults.rps: must be a number >= 0.5 (got 0.1)"),
    ("[defaults]\nmax_concurrent = true\n", "defaults.max_concurrent: must be an integer >= 1 (got True)"),
    ("[defaults]\nmax_concurrent = 2.5\n", "defaults.max_concurrent: must be an integer >= 1 (got 2.5)"),
    ("[defaults]\nconnect_timeout_s = 0\n", "defaults.connect_timeout_s: must be a number > 0 (got 0)"),
    ("[defaults]\nbackoff_base_s = 90\n", "defaults.backoff_base_s: must not exceed backoff_cap_s (90 > 60)"),
    ('[security]\nallow_private_targets = "yes"\n', "security.allow_private_targets: must be true or false"),
    (
        "[http_client]\nmax_connections = 4\nmax_keepalive_connections = 5\n",
        "http_client.max_keepalive_connections: must not exceed max_connections (5 > 4)",
    ),
    ("[webhooks]\nschedule_s = [0, 60, 30]\n", "webhooks.schedule_s: must be a list of 1-64 non-decreasing"),
    ("[webhooks]\nschedule_s = []\n", "webhooks.schedule_s: must be a list of 1-64 non-decreasing"),
    ("[jobs]\nretention_s = -1\n", "jobs.retention_s: must be a number > 0 (got -1)"),
    (ACCOUNT_A.replace('"a"', '"a b"'), "accounts[0].id: must be 1-64 characters"),
    ('[[accounts]]\nid = "a"\n', "accounts[0]: needs exactly one of key or key_sha256"),
    (ACCOUNT_A + f'key_sha256 = "{"0" * 64}"\n', "accounts[0]: needs exactly one of key or key_sha256"),
    ('[[accounts]]\nid = "a"\nkey_sha256 = "abc"\n', "accounts[0].key_sha256: must be a SHA-256 digest"),
    (ACCOUNT_A + 'pln = "pro"\n', "accounts[0].pln: unknown key (did you mean plan?)"),
    (ACCOUNT_A + ACCOUNT_B.replace('"b"', '"a"'), "accounts[1].id: duplicate account id 'a' (also accounts[0])"),
    (ACCOUNT_A + ACCOUNT_B.replace(KEY_B, KEY_A), "accounts[1]: same key as accounts[0]; keys must be unique"),
    (
        ACCOUNT_A + 'webhook_secret_secondary = "whsec_0123456789abcdef"\n',
        "accounts[0].webhook_secret_secondary: needs webhook_secret as well",
    ),
    ('[targets."https://a.example/v1"]\n', f'targets."https://a.example/v1": {ORIGIN_PROBLEM}'),
    ('[targets."ftp://a.example"]\n', f'targets."ftp://a.example": {ORIGIN_PROBLEM}'),
    ('[targets."https://a.example:99999"]\n', f'targets."https://a.example:99999": {ORIGIN_PROBLEM}'),
    (
        '[targets."https://a.example"]\nrps = 0.2\n',
        'targets."https://a.example".rps: must be a number >= 0.5 (got 0.2)',
    ),
    ('[targets."https://a.example"]\norigin = "x"\n', 'targets."https://a.example".origin: unknown key'),
    (
        '[targets."https://a.example"]\n[targets."https://A.example:443"]\n',
        'targets."https://a.example": origin https://a.example is configured twice',
    ),
    ("[server\n", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "message"), FILE_ERRORS)
def test_file_errors_name_file_key_and_problem(in_tmp: Path, text: str, message: str) -> None:
    write_config(in_tmp, text)
    with pytest.raises(ConfigError) as caught:
        load_config(Path("config.toml"), env={})
    assert str(caught.value).startswith("config.toml: " + message), str(caught.value)


def test_missing_file_is_an_error_naming_it(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nowhere\.toml: cannot read"):
        load_config(Path("nowhere.toml"), env={})


@pytest.mark.parametrize(
    ("account", "secret", "key"),
    [
        ('key = "short"', "short", "accounts[0].key"),
        ('key = "ck_aaaaaaaaaaaaaaaaa"\nwebhook_secret = "tiny-secret"', "tiny-secret", "accounts[0].webhook_secret"),
    ],
)
def test_errors_about_secrets_do_not_echo_them(in_tmp: Path, account: str, secret: str, key: str) -> None:
    write_config(in_tmp, f'[[accounts]]\nid = "a"\n{account}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(Path("config.toml"), env={})
    assert caught.value.key == key
    assert "at least 16 characters" in caught.value.problem
    assert f"(got {len(secret)} characters)" in caught.value.problem
    assert secret not in str(caught.value)


def test_env_overrides_file_and_overrides_beat_env(in_tmp: Path) -> None:
    text = '[server]\nlisten = "127.0.0.1:1111"\ndata_dir = "from-file"\n[defaults]\nrps = 3\n'
    path = write_config(in_tmp, text)
    env = {
        "EZTHROTTLE_SERVER_LISTEN": "127.0.0.1:2222",
        "EZTHROTTLE_SERVER_DATA_DIR": "from-env",
        "EZTHROTTLE_SECURITY_ALLOW_PRIVATE_TARGETS": "true",
        "EZTHROTTLE_DEFAULTS_RPS": "5",
        "EZTHROTTLE_DEFAULTS_BACKOFF_BASE_S": "2.5",
        "EZTHROTTLE_WEBHOOKS_SCHEDULE_S": "[0, 60]",
        "EZTHROTTLE_HTTP_CLIENT_MAX_CONNECTIONS": "10",
        "EZTHROTTLE_HTTP_CLIENT_MAX_KEEPALIVE_CONNECTIONS": "4",
        "EZTHROTTLE_SERVER_NODE_ID": "7",  # a text setting: "7", not the integer 7
        "EZTHROTTLE_SERVER_HEADER_BYTES_MAX": "32768",
        "EZTHROTTLE_SERVER_IDLE_TIMEOUT_S": "1.5",
        "EZTHROTTLE_CONFIG": "ignored.toml",  # the CLI's business
        "PATH": "/usr/bin",
    }
    config = load_config(path, env=env, overrides={"server.listen": "127.0.0.1:0"})
    assert config.server.listen == "127.0.0.1:0"
    assert config.server.data_dir == Path("from-env")
    assert config.security.allow_private_targets is True
    assert (config.defaults.rps, config.defaults.backoff_base_s) == (5.0, 2.5)
    assert config.webhooks.schedule_s == (0.0, 60.0)
    assert (config.http_client.max_connections, config.http_client.max_keepalive_connections) == (10, 4)
    assert config.server.node_id == "7"
    assert (config.server.header_bytes_max, config.server.idle_timeout_s) == (32768, 1.5)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EZTHROTTLE_DEFAULTS_MAX_RETRIES", "7")
    assert load_config(None).defaults.max_retries == 7


def test_env_json_replaces_accounts_and_targets(in_tmp: Path) -> None:
    accounts = [{"id": "carol", "key": "ck_carol_0123456789ab", "plan": "free", "webhook_secret": None}]
    targets = {"https://API.github.com": {"rps": 10, "max_concurrent": 100}}
    env = {"EZTHROTTLE_ACCOUNTS": json.dumps(accounts), "EZTHROTTLE_TARGETS": json.dumps(targets)}
    config = load_config(write_config(in_tmp, FULL_CONFIG), env=env)
    assert [account.id for account in config.accounts] == ["carol"]
    assert config.account_by_key("ck_carol_0123456789ab") is config.accounts[0]
    assert config.account_by_key(ALICE_KEY) is None
    assert [target.origin for target in config.targets] == ["https://api.github.com"]
    assert config.target_for("https://api.github.com").max_concurrent == 100


ENV_ERRORS = [
    ({"EZTHROTTLE_DEFAULTS_RPS": "0.1"}, "EZTHROTTLE_DEFAULTS_RPS: defaults.rps: must be a number >= 0.5 (got 0.1)"),
    (
        {"EZTHROTTLE_SERVER_LISTN": "127.0.0.1:1"},
        "EZTHROTTLE_SERVER_LISTN: unknown variable (did you mean EZTHROTTLE_SERVER_LISTEN?)",
    ),
    ({"EZTHROTTLE_SERVER_LISTEN": "nope"}, 'EZTHROTTLE_SERVER_LISTEN: server.listen: must be "host:port"'),
    (
        {"EZTHROTTLE_SECURITY_ALLOW_PRIVATE_TARGETS": "yes"},
        "EZTHROTTLE_SECURITY_ALLOW_PRIVATE_TARGETS: security.allow_private_targets: must be true or false",
    ),
    # A newline cannot smuggle a second TOML key in: the whole text is then a string, and not an integer.
    (
        {"EZTHROTTLE_DEFAULTS_MAX_RETRIES": "5\nmax_concurrent = 9"},
        "EZTHROTTLE_DEFAULTS_MAX_RETRIES: defaults.max_retries: must be an integer >= 0",
    ),
    ({"EZTHROTTLE_ACCOUNTS": "[{"}, "EZTHROTTLE_ACCOUNTS: invalid JSON"),
    ({"EZTHROTTLE_ACCOUNTS": "{}"}, "EZTHROTTLE_ACCOUNTS: accounts: must be an array of tables"),
    (
        {"EZTHROTTLE_ACCOUNTS": '[{"id": "a", "key": "ck_aaaaaaaaaaaaaaaaa", "plan": "gold"}]'},
        "EZTHROTTLE_ACCOUNTS: accounts[0].plan: unknown plan 'gold' (known: enterprise, free, growth, pro, starter)",
    ),
    (
        {"EZTHROTTLE_TARGETS": '{"https://a.example": {"rsp": 3}}'},
        'EZTHROTTLE_TARGETS: targets."https://a.example".rsp: unknown key (did you mean rps?)',
    ),
    # A rule across keys blames the source that set one of them last: here the variable, not the defaults.
    (
        {"EZTHROTTLE_DEFAULTS_BACKOFF_CAP_S": "0.1"},
        "EZTHROTTLE_DEFAULTS_BACKOFF_CAP_S: defaults.backoff_base_s: must not exceed backoff_cap_s (0.5 > 0.1)",
    ),
]


@pytest.mark.parametrize(("env", "message"), ENV_ERRORS)
def test_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env=env)
    assert str(caught.value).startswith(message), str(caught.value)


def test_cross_key_error_blames_the_file_when_the_file_set_it(in_tmp: Path) -> None:
    write_config(in_tmp, "[defaults]\nbackoff_cap_s = 0.1\n")
    with pytest.raises(ConfigError, match=r"^config\.toml: defaults\.backoff_base_s: must not exceed"):
        load_config(Path("config.toml"), env={"EZTHROTTLE_DEFAULTS_RPS": "4"})


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match=r"^override: server\.listen: must be \"host:port\""):
        load_config(None, env={}, overrides={"server.listen": "nowhere"})
    unknown = r"^override: server\.lisen: unknown key \(did you mean server\.listen\?\)"
    with pytest.raises(ConfigError, match=unknown):
        load_config(None, env={}, overrides={"server.lisen": "127.0.0.1:0"})


def test_every_scalar_setting_has_its_own_variable() -> None:
    assert len(ENV_SETTINGS) == len(SCALAR_SETTINGS) == 48
    assert ENV_SETTINGS["EZTHROTTLE_HTTP_CLIENT_KEEPALIVE_EXPIRY_S"] == ("http_client", "keepalive_expiry_s")


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ValueError, match=r"must be a number >= 0\.5"):
        DefaultsConfig(rps=0.1)
    with pytest.raises(ValueError, match="unknown plan 'gold'"):
        Config(accounts=(AccountConfig(id="a", key_sha256=bytes(32), plan="gold"),))
    assert ServerConfig(data_dir="x", certfile="c.pem", keyfile="k.pem").certfile == Path("c.pem")  # type: ignore[arg-type]


def test_config_objects_are_frozen_and_slotted() -> None:
    config = load_config(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.listen = "0.0.0.0:1"  # type: ignore[misc]
    assert not hasattr(config.defaults, "__dict__")
    assert not hasattr(AccountConfig(id="a", key_sha256=bytes(32)), "__dict__")


def test_with_dev_account() -> None:
    config = with_dev_account(load_config(None, env={}), account_id="dev", key="ck_dev_0123456789abcdef")
    assert config.account_by_key("ck_dev_0123456789abcdef") is config.accounts[0]
    assert config.accounts[0].id == "dev"
    with pytest.raises(ConfigError, match=r"^development account: accounts\[1\]\.key: must be a string"):
        with_dev_account(config, account_id="dev2", key="short")
    with pytest.raises(ConfigError, match="duplicate account id 'dev'"):
        with_dev_account(config, account_id="dev", key="ck_dev_another_key_0123")


@pytest.mark.parametrize(("value", "kept"), [("127.0.0.11", "127.0.0.11"), ("::1", "::1"), ("fd00::0005", "fd00::5")])
def test_source_address_is_an_ip_literal(value: str, kept: str) -> None:
    config = load_config(None, env={}, overrides={"http_client.source_address": value})
    assert config.http_client.source_address == kept


@pytest.mark.parametrize("value", ["localhost", "10.0.0", "", "127.0.0.1:80"])
def test_a_source_address_that_is_no_ip_literal_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(ConfigError, match=r"http_client\.source_address.*IP address literal"):
        load_config(None, env={}, overrides={"http_client.source_address": value})


def test_a_bad_source_address_fails_the_load_naming_the_file_or_variable_and_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[http_client]\nsource_address = "node-7.internal"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={})
    assert (raised.value.source, raised.value.key) == (str(path), "http_client.source_address")
    assert "IPv4 or IPv6" in raised.value.problem and "'node-7.internal'" in raised.value.problem
    with pytest.raises(ConfigError) as raised:
        load_config(None, env={"EZTHROTTLE_HTTP_CLIENT_SOURCE_ADDRESS": "127.0.0.256"})
    assert (raised.value.source, raised.value.key) == (
        "EZTHROTTLE_HTTP_CLIENT_SOURCE_ADDRESS",
        "http_client.source_address",
    )
    # A good one from the environment is read as text (an IP literal is not a TOML value).
    config = load_config(None, env={"EZTHROTTLE_HTTP_CLIENT_SOURCE_ADDRESS": "127.0.0.12"})
    assert config.http_client.source_address == "127.0.0.12"


def test_plans_are_built_in_overridable_and_extensible(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(
        "[plans.tiny]\nmonthly_requests = 5\n[plans.pro]\noverage_requests_max = 7\n"
        '[[accounts]]\nid = "a"\nkey = "ck_aaaaaaaaaaaaaaaaaaaa"\nplan = "tiny"\n'
    )
    config = load_config(path, env={})
    assert (config.plan("tiny").monthly_requests, config.plan("tiny").overage_requests_max) == (5, 0)
    pro = config.plan("pro")  # overridden key by key: the quota stays the built-in one
    assert (pro.monthly_requests, pro.overage_requests_max, pro.allowance) == (10_000_000, 7, 10_000_007)
    assert config.plan("free").allowance == 1_000_000 and config.plan("enterprise").unlimited
    env = load_config(None, env={"EZTHROTTLE_PLANS": '{"mini": {"monthly_requests": 3}}'})
    assert env.plan("mini").monthly_requests == 3
    with pytest.raises(ConfigError, match=r"plans\.tiny\.monthly_requests: must be an integer >= 0"):
        path.write_text("[plans.tiny]\nmonthly_requests = -1\n")
        load_config(path, env={})
