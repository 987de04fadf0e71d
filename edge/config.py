"""Node configuration: frozen settings from a TOML file, environment variables and command-line overrides.

Precedence is file < environment < overrides. Scalars are overridden one at a time with
`EZTHROTTLE_<SECTION>_<KEY>` (the value is read as a TOML value when it parses as one, else as a string);
`EZTHROTTLE_ACCOUNTS` / `EZTHROTTLE_TARGETS` / `EZTHROTTLE_PROTECT` replace those sections whole with JSON,
because tables do not fit in one variable any other way.

Validation lives in the dataclasses (`__post_init__`), not in the loader, so every value is checked the same
way whatever its source, including a `Config` built directly in code. Unknown keys and unknown `EZTHROTTLE_`
variables are errors: a typo must not silently fall back to a default. A `ConfigError` names where the value
came from (the file or the variable), the dotted key, and what is wrong.

Plain API keys never stay in memory: an account, like a protected listener's customer key, keeps only the
SHA-256 digest of its key. Relative paths
(`data_dir`, `certfile`, `keyfile`) are relative to the working directory, like any command-line path.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import hmac
import ipaddress
import itertools
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edge.outbound.origins import canonical_origin, origin_of, parse_http_url
from scheduler import AimdPolicy, KeyPolicy, SchedulerPolicy, Tier, TierPolicy

PLANS = ("free", "starter", "growth", "pro", "enterprise")  # built in; `[plans.NAME]` overrides or adds
# (monthly_requests, overage_requests_max) of the built-in plans: the hosted service's quotas (0 = unlimited). The
# hosted service bills paid overage "up to a hard cap" it does not publish; this project caps it at 10 % of the
# quota, and free has none.
BUILTIN_PLANS: dict[str, tuple[int, int]] = {
    "free": (1_000_000, 0),
    "starter": (2_000_000, 200_000),
    "growth": (5_000_000, 500_000),
    "pro": (10_000_000, 1_000_000),
    "enterprise": (0, 0),
}
TIERS = tuple(tier.value for tier in Tier)
LOG_FORMATS = ("text", "json")
BEARER_KEY_HEADER = "authorization"  # as a protected listener's key_header: the Authorization Bearer token
IDENTIFIER_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOSTNAME_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_PATTERN = re.compile(rf"{_HOSTNAME_LABEL}(\.{_HOSTNAME_LABEL})*")
KEY_CHARS_MIN = 16  # API keys are meant to be random tokens; 16 characters is the floor, not a recommendation
WEBHOOK_SECRET_CHARS_MIN = 16  # the hosted service's minimum for webhook secrets
SCHEDULE_STEPS_MAX = 64
_HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
# The front end's defaults (hypercorn's, which served every listener once), for the job API and every protected
# listener (edge/http/server.py applies them):
# a request head up to 16 KiB (431 beyond), and 5 s for a connection with no request in progress, idle between
# requests or still sending its headers (which is also what cuts off slowloris). Defined here, not in the server,
# so that reading a configuration never imports the HTTP stack.
HEADER_BYTES_MAX_DEFAULT = 16 * 1024
IDLE_TIMEOUT_S_DEFAULT = 5.0

ENV_PREFIX = "EZTHROTTLE_"
ENV_CONFIG_PATH = "EZTHROTTLE_CONFIG"  # read by the CLI, not here
ENV_ACCOUNTS = "EZTHROTTLE_ACCOUNTS"
ENV_TARGETS = "EZTHROTTLE_TARGETS"
ENV_PROTECT = "EZTHROTTLE_PROTECT"
ENV_PLANS = "EZTHROTTLE_PLANS"
DEFAULTS_SOURCE = "<defaults>"
OVERRIDE_SOURCE = "override"

KeyPath = tuple[str | int, ...]
Parser = Callable[[Any], Any]


class ConfigError(Exception):
    """A configuration value that cannot be used: `source` (file or variable), dotted `key`, `problem`."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class _Invalid(ValueError):
    """A validation failure at `path`; the loader turns it into a ConfigError naming the value's source.

    `also` lists the other keys a cross-field rule involves, so the error can blame whichever source set last.
    """

    def __init__(self, problem: str, path: KeyPath = (), also: tuple[KeyPath, ...] = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path
        self.also = also

    def under(self, prefix: KeyPath) -> _Invalid:
        return _Invalid(self.problem, prefix + self.path, tuple(prefix + path for path in self.also))


def _shown(value: Any, *, secret: bool) -> str:
    """How a rejected value appears in an error: secrets only by length, long values cut short."""
    if secret:
        return f"{len(value)} characters" if isinstance(value, str | bytes) else type(value).__name__
    text = repr(str(value)) if isinstance(value, Path) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Parsers: take a raw value (TOML, JSON, env or Python), return it normalised, or raise _Invalid saying what
# the value must be. The "(got ...)" part is added by the caller, which knows whether the value is secret.


def _number(minimum: float, *, inclusive: bool = True) -> Parser:
    requirement = f"must be a number {'>=' if inclusive else '>'} {minimum:g}"

    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Invalid(requirement)
        if value < minimum or (value == minimum and not inclusive):
            raise _Invalid(requirement)
        return float(value)

    return parse


def _integer(minimum: int) -> Parser:
    requirement = f"must be an integer >= {minimum}"

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Invalid(requirement)
        return value

    return parse


def _fraction(*, one_allowed: bool = False) -> Parser:
    requirement = f"must be a number in (0, 1{']' if one_allowed else ')'}"

    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Invalid(requirement)
        if not (0 < value < 1 or (one_allowed and value == 1)):
            raise _Invalid(requirement)
        return float(value)

    return parse


def _optional(parse: Parser) -> Parser:
    return lambda value: None if value is None else parse(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not IDENTIFIER_PATTERN.fullmatch(value):
        raise _Invalid("must be 1-64 characters from A-Z a-z 0-9 _ . -")
    return value


def _choice(options: tuple[str, ...]) -> Parser:
    def parse(value: Any) -> str:
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}")
        return str(value)

    return parse


def _header_name(value: Any) -> str:
    """A header name as HTTP/1.1 and HTTP/2 both deliver it: lower case."""
    if not isinstance(value, str) or not _HEADER_NAME_PATTERN.fullmatch(value):
        raise _Invalid("must be an HTTP header name (1-64 token characters)")
    return value.lower()


def _ip_literal(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise _Invalid("must be an IP address literal of this machine (IPv4 or IPv6), such as 10.0.0.5") from None


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise _Invalid("must be a non-empty path")
    return Path(value)


def _webhook_secret(value: Any) -> str:
    if not isinstance(value, str) or len(value) < WEBHOOK_SECRET_CHARS_MIN:
        raise _Invalid(f"must be a string of at least {WEBHOOK_SECRET_CHARS_MIN} characters")
    return value


def _key_sha256(value: Any) -> bytes:
    """32 digest bytes, from bytes or from the 64 hex digits a config file can hold."""
    if isinstance(value, bytes) and len(value) == hashlib.sha256().digest_size:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return bytes.fromhex(value)
    raise _Invalid("must be a SHA-256 digest: 64 hex digits")


def split_listen(text: str) -> tuple[str, int]:
    """("::1", 8080) from "[::1]:8080", ("127.0.0.1", 0) from "127.0.0.1:0"; ValueError if not host:port."""
    if text.startswith("["):
        host, separator, port = text[1:].partition("]:")
        if not separator:
            raise ValueError(text)
        ipaddress.IPv6Address(host)
    else:
        host, separator, port = text.rpartition(":")
        if not separator or not HOSTNAME_PATTERN.fullmatch(host):
            raise ValueError(text)
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise ValueError(text)
    return host, int(port)


def is_loopback_listen(text: str) -> bool:
    """Whether a listen address ("127.0.0.1:8080", "[::1]:0", "localhost:8080") is reachable only from this machine.

    Any other name counts as reachable from outside: what it resolves to is not known here."""
    host = split_listen(text)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(value: Any) -> str:
    try:
        split_listen(value if isinstance(value, str) else "")
    except ValueError:
        raise _Invalid('must be "host:port", an IPv6 host in brackets ("[::1]:8080")') from None
    return str(value)


def _schedule(value: Any) -> tuple[float, ...]:
    requirement = f"must be a list of 1-{SCHEDULE_STEPS_MAX} non-decreasing numbers of seconds >= 0"
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= SCHEDULE_STEPS_MAX:
        raise _Invalid(requirement)
    steps = tuple(_number(0)(step) for step in value)
    if any(later < earlier for earlier, later in itertools.pairwise(steps)):
        raise _Invalid(requirement)
    return steps


def _host_ports(value: Any) -> tuple[str, ...]:
    requirement = "must be a list of host:port strings (names, IPv4, or [IPv6])"
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _Invalid(requirement)
    return tuple(v.strip() for v in value)


def _cluster_keys(value: Any) -> tuple[bytes, ...]:
    """Cluster keys as hex strings, primary first; kept as bytes (16..64 bytes each: HMAC-SHA256 keys).

    Keys already in bytes pass as they are, so that `dataclasses.replace` on a loaded config (which validates
    the kept values again) works."""
    requirement = "must be a list of hex strings of 32 to 128 hex digits (16 to 64 bytes), primary first"
    if not isinstance(value, list | tuple):
        raise _Invalid(requirement)
    keys = []
    for item in value:
        try:
            key = bytes.fromhex(item) if isinstance(item, str) else item if isinstance(item, bytes) else b""
        except ValueError:
            raise _Invalid(requirement) from None
        if not 16 <= len(key) <= 64:
            raise _Invalid(requirement)
        keys.append(key)
    return tuple(keys)


def _origin(value: Any) -> str:
    requirement = "must be an origin scheme://host[:port] with scheme http or https and no path"
    if not isinstance(value, str):
        raise _Invalid(requirement)
    try:
        parsed = parse_http_url(value)
    except ValueError:
        raise _Invalid(requirement) from None
    if parsed.raw_path != b"/" or parsed.fragment or parsed.userinfo:
        raise _Invalid(requirement)
    return canonical_origin(parsed)


def _setting(default: Any, parse: Parser, *, secret: bool = False, text: bool = False) -> Any:
    """A validated field. `secret` keeps it out of repr and errors; `text` keeps env values verbatim."""
    return field(default=default, repr=not secret, metadata={"parse": parse, "secret": secret, "text": text})


_REQUIRED: Any = dataclasses.MISSING


class _Validated:
    """Base of the config dataclasses: parse and normalise every field, then apply cross-field rules."""

    __slots__ = ()
    # Every subclass is a dataclass; declaring it here lets the type checker pass any of them to `fields()`.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            parse = spec.metadata.get("parse")
            if parse is None:
                continue
            value = getattr(self, spec.name)
            try:
                normalised = parse(value)
            except _Invalid as exc:
                shown = _shown(value, secret=spec.metadata["secret"])
                raise _Invalid(f"{exc.problem} (got {shown})", (spec.name,)) from None
            object.__setattr__(self, spec.name, normalised)
        self._check()

    def _check(self) -> None:
        """Rules that involve more than one field; none unless a section overrides this."""


@dataclass(frozen=True, slots=True)
class ServerConfig(_Validated):
    listen: str = _setting("127.0.0.1:8080", _listen, text=True)
    data_dir: Path = _setting(Path("./.ezthrottle"), _path, text=True)  # noqa: RUF009 (a Field)
    certfile: Path | None = _setting(None, _optional(_path), text=True)  # noqa: RUF009 (a Field)
    keyfile: Path | None = _setting(None, _optional(_path), text=True)  # noqa: RUF009 (a Field)
    body_bytes_max: int = _setting(1_048_576, _integer(1))  # 1 MiB: the hosted proxy's 413 threshold
    account_backlog_max: int = _setting(100_000, _integer(1))  # unfinished jobs per account before 429
    backlog_retry_after_s: int = _setting(5, _integer(1))  # Retry-After takes whole seconds
    header_bytes_max: int = _setting(HEADER_BYTES_MAX_DEFAULT, _integer(1024))  # a request head; 431 beyond
    # A connection with no request in progress (idle keep-alive, or a head still arriving) is closed after this.
    idle_timeout_s: float = _setting(IDLE_TIMEOUT_S_DEFAULT, _number(0, inclusive=False))
    node_id: str | None = _setting(None, _optional(_identifier), text=True)
    # "text" for people at a terminal; "json" (one object per line, edge/logs.py) for log collectors.
    log_format: str = _setting("text", _choice(LOG_FORMATS))
    # The operator's token for the dashboard (every account), as a SHA-256 digest: the token itself is never stored.
    admin_token_sha256: bytes | None = _setting(None, _optional(_key_sha256), secret=True)
    # Processes serving this node (edge/workers.py); 1 (the default) is one process with no supervisor. One per CPU
    # is not the default yet: measured, two workers take fewer jobs than one (README, "Workers").
    workers: int | None = _setting(1, _optional(_integer(1)))
    # Set by the supervisor in each worker's config: the worker's own API address (members forward to it), while
    # `listen` is shared by every worker of the node (SO_REUSEPORT). Unset in a node of one process.
    worker_listen: str | None = _setting(None, _optional(_listen), text=True)

    def is_admin_token(self, presented: str) -> bool:
        """Whether `presented` is the operator's token, compared as digests in constant time (see `_find_keyed`)."""
        if self.admin_token_sha256 is None:
            return False
        return hmac.compare_digest(self.admin_token_sha256, hashlib.sha256(presented.encode()).digest())

    @property
    def listen_host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]

    def _check(self) -> None:
        if self.certfile is not None and self.keyfile is None:
            raise _Invalid("required when certfile is set (TLS needs both)", ("keyfile",), (("certfile",),))
        if self.keyfile is not None and self.certfile is None:
            raise _Invalid("required when keyfile is set (TLS needs both)", ("certfile",), (("keyfile",),))


@dataclass(frozen=True, slots=True)
class SecurityConfig(_Validated):
    allow_private_targets: bool = _setting(False, _boolean)  # see edge/outbound/ssrf.py


@dataclass(frozen=True, slots=True)
class DefaultsConfig(_Validated):
    """What a target gets unless its own `[targets."<origin>"]` table says otherwise."""

    rps: float = _setting(2.0, _number(0.5))  # the hosted service's default pacing and minimum rate
    max_concurrent: int = _setting(2, _integer(1))
    account_queue: bool = _setting(True, _boolean)
    job_deadline_s: float = _setting(86_400, _number(0, inclusive=False))
    max_retries: int = _setting(3, _integer(0))
    connect_timeout_s: float = _setting(10, _number(0, inclusive=False))
    read_timeout_s: float = _setting(30, _number(0, inclusive=False))
    total_timeout_s: float = _setting(60, _number(0, inclusive=False))
    backoff_base_s: float = _setting(0.5, _number(0, inclusive=False))
    backoff_cap_s: float = _setting(60, _number(0, inclusive=False))

    def _check(self) -> None:
        if self.backoff_base_s > self.backoff_cap_s:
            raise _Invalid(
                f"must not exceed backoff_cap_s ({self.backoff_base_s:g} > {self.backoff_cap_s:g})",
                ("backoff_base_s",),
                (("backoff_cap_s",),),
            )


@dataclass(frozen=True, slots=True)
class HttpClientConfig(_Validated):
    max_connections: int = _setting(200, _integer(1))
    max_keepalive_connections: int = _setting(100, _integer(0))
    keepalive_expiry_s: float = _setting(30, _number(0))
    # Bind outbound connections (jobs, webhooks) to this local address: a fixed egress source for providers'
    # allow-lists; on one machine, a way to tell nodes apart (all of 127.0.0.0/8 is loopback on Linux).
    source_address: str | None = _setting(None, _optional(_ip_literal), text=True)

    def _check(self) -> None:
        if self.max_keepalive_connections > self.max_connections:
            raise _Invalid(
                f"must not exceed max_connections ({self.max_keepalive_connections} > {self.max_connections})",
                ("max_keepalive_connections",),
                (("max_connections",),),
            )


@dataclass(frozen=True, slots=True)
class WebhooksConfig(_Validated):
    """Delivery retries: the delays in `schedule_s` (from the first attempt), then every `repeat_every_s`."""

    schedule_s: tuple[float, ...] = _setting((0, 60, 300, 900, 3600), _schedule)  # the hosted service's
    repeat_every_s: float = _setting(3600, _number(0, inclusive=False))
    give_up_after_s: float = _setting(86_400, _number(0, inclusive=False))
    timeout_s: float = _setting(10, _number(0, inclusive=False))
    concurrency: int = _setting(32, _integer(1))


@dataclass(frozen=True, slots=True)
class JobsConfig(_Validated):
    retention_s: float = _setting(604_800, _number(0, inclusive=False))  # finished jobs are kept 7 days
    purge_interval_s: float = _setting(3600, _number(0, inclusive=False))


@dataclass(frozen=True, slots=True)
class AccountConfig(_Validated):
    """One account. Only the SHA-256 digest of its API key is kept (see `Config.account_by_key`)."""

    id: str = _setting(_REQUIRED, _identifier)
    key_sha256: bytes = _setting(_REQUIRED, _key_sha256, secret=True)
    plan: str = _setting("pro", _identifier)  # a built-in plan or one of `[plans]` (checked by Config)
    webhook_secret: str | None = _setting(None, _optional(_webhook_secret), secret=True)
    webhook_secret_secondary: str | None = _setting(None, _optional(_webhook_secret), secret=True)

    def _check(self) -> None:
        if self.webhook_secret_secondary is not None and self.webhook_secret is None:
            raise _Invalid("needs webhook_secret as well", ("webhook_secret_secondary",), (("webhook_secret",),))


@dataclass(frozen=True, slots=True)
class PlanConfig(_Validated):
    """A plan's monthly quota: accepted jobs per calendar month (UTC), and how many more are still accepted."""

    name: str = _setting(_REQUIRED, _identifier)
    monthly_requests: int = _setting(0, _integer(0))  # 0: unlimited
    overage_requests_max: int = _setting(0, _integer(0))

    @property
    def unlimited(self) -> bool:
        return self.monthly_requests == 0

    @property
    def allowance(self) -> int:
        """How many jobs a month the plan accepts in all (quota + overage); meaningless when unlimited."""
        return self.monthly_requests + self.overage_requests_max


@dataclass(frozen=True, slots=True)
class TargetConfig(_Validated):
    """Limits for one upstream origin; None means "use [defaults]"."""

    origin: str = _setting(_REQUIRED, _origin)
    rps: float | None = _setting(None, _optional(_number(0.5)))
    max_concurrent: int | None = _setting(None, _optional(_integer(1)))
    account_queue: bool | None = _setting(None, _optional(_boolean))
    connect_timeout_s: float | None = _setting(None, _optional(_number(0, inclusive=False)))
    read_timeout_s: float | None = _setting(None, _optional(_number(0, inclusive=False)))
    total_timeout_s: float | None = _setting(None, _optional(_number(0, inclusive=False)))


_SCHEDULER_DEFAULTS = SchedulerPolicy(capacity=1)  # the scheduler's own defaults are the listener's defaults
_TIER_DEFAULTS = TierPolicy()


@dataclass(frozen=True, slots=True)
class ProtectKeyConfig(_Validated):
    """One customer key of a protected listener. Only the SHA-256 digest of the key is kept, as for accounts."""

    key_sha256: bytes = _setting(_REQUIRED, _key_sha256, secret=True)
    # Names the key in metrics and logs (the key itself never appears); defaults to a digest prefix.
    id: str | None = _setting(None, _optional(_identifier))
    tier: str = _setting(Tier.FREE.value, _choice(TIERS))  # a key gets no more than the config gives it
    weight: float = _setting(1.0, _number(0, inclusive=False))  # share within its tier, relative to other keys
    rate_per_s: float | None = _setting(None, _optional(_number(0, inclusive=False)))
    burst: int | None = _setting(None, _optional(_integer(1)))  # default: one second's worth of rate_per_s

    @property
    def label(self) -> str:
        return self.id or "key-" + self.key_sha256.hex()[:8]

    def policy(self) -> KeyPolicy:
        return _key_policy(Tier(self.tier), self.weight, self.rate_per_s, self.burst)

    def _check(self) -> None:
        if self.burst is not None and self.rate_per_s is None:
            raise _Invalid("needs rate_per_s as well", ("burst",), (("rate_per_s",),))


def _key_policy(tier: Tier, weight: float, rate_per_s: float | None, burst: int | None) -> KeyPolicy:
    if rate_per_s is not None and burst is None:
        burst = max(1, math.ceil(rate_per_s))
    return KeyPolicy(tier=tier, weight=weight, rate_per_s=rate_per_s, burst=burst or 1)


@dataclass(frozen=True, slots=True)
class ProtectConfig(_Validated):
    """One protected listener: a fair, tiered reverse proxy in front of one operator-run upstream (edge/proxy).

    Scheduler knobs are documented where they act: scheduler/fair.py (SchedulerPolicy) and scheduler/tiers.py.
    The body and timeout knobs are explained in edge/proxy/body.py and edge/proxy/app.py.
    """

    listen: str = _setting(_REQUIRED, _listen)
    upstream: str = _setting(_REQUIRED, _origin)
    name: str | None = _setting(None, _optional(_identifier))  # metric label; defaults to `listen`
    max_concurrency: int = _setting(64, _integer(1))  # requests the upstream is sent at once (AIMD's ceiling)
    key_header: str = _setting("x-api-key", _header_name)  # "authorization" means its Bearer token
    # Trusted only when set: the operator's own auth layer in front must set (and strip from clients) it.
    tier_header: str | None = _setting(None, _optional(_header_name))
    keys: tuple[ProtectKeyConfig, ...] = ()
    anonymous_rate_per_s: float | None = _setting(None, _optional(_number(0, inclusive=False)))
    anonymous_burst: int | None = _setting(None, _optional(_integer(1)))
    fairness: bool = _setting(True, _boolean)  # false: one plain FIFO queue (a benchmark baseline)
    reserved_share: float = _setting(_TIER_DEFAULTS.reserved_share, _fraction())
    paid_weight: float = _setting(_TIER_DEFAULTS.paid_weight, _number(0, inclusive=False))
    free_weight: float = _setting(_TIER_DEFAULTS.free_weight, _number(0, inclusive=False))
    free_share_min: float = _setting(_TIER_DEFAULTS.free_share_min, _fraction())
    key_concurrency_share_max: float = _setting(
        _SCHEDULER_DEFAULTS.key_concurrency_share_max, _fraction(one_allowed=True)
    )
    key_queue_length_max: int = _setting(_SCHEDULER_DEFAULTS.key_queue_length_max, _integer(1))
    queue_length_max: int = _setting(_SCHEDULER_DEFAULTS.queue_length_max, _integer(1))
    queue_wait_s_max: float = _setting(_SCHEDULER_DEFAULTS.queue_wait_s_max, _number(0, inclusive=False))
    adaptive_concurrency: bool = _setting(False, _boolean)
    body_bytes_max: int = _setting(64 * 1024 * 1024, _integer(0))  # 413 beyond; a 50 MB upload passes
    body_buffer_bytes: int = _setting(64 * 1024, _integer(0))  # read before a slot is taken
    body_timeout_s: float = _setting(10, _number(0, inclusive=False))
    body_rate_min_bytes_per_s: float = _setting(16 * 1024, _number(0, inclusive=False))
    upstream_connect_timeout_s: float = _setting(10, _number(0, inclusive=False))
    upstream_read_timeout_s: float = _setting(30, _number(0, inclusive=False))
    upstream_total_timeout_s: float = _setting(60, _number(0, inclusive=False))
    header_bytes_max: int = _setting(HEADER_BYTES_MAX_DEFAULT, _integer(1024))  # a request head; 431 beyond
    # A client connection with no request in progress (idle keep-alive, or a head still arriving) is closed after
    # this: what bounds a client that trickles its headers in.
    idle_timeout_s: float = _setting(IDLE_TIMEOUT_S_DEFAULT, _number(0, inclusive=False))

    @property
    def label(self) -> str:
        return self.name or self.listen

    def scheduler_policy(self) -> SchedulerPolicy:
        return SchedulerPolicy(
            capacity=self.max_concurrency,
            tiers=TierPolicy(
                reserved_share=self.reserved_share,
                paid_weight=self.paid_weight,
                free_weight=self.free_weight,
                free_share_min=self.free_share_min,
            ),
            key_concurrency_share_max=self.key_concurrency_share_max,
            key_queue_length_max=self.key_queue_length_max,
            queue_length_max=self.queue_length_max,
            queue_wait_s_max=self.queue_wait_s_max,
            aimd=AimdPolicy() if self.adaptive_concurrency else None,
        )

    def anonymous_policy(self) -> KeyPolicy:
        """Callers without a known key: free tier, keyed by client address, optionally rate limited."""
        return _key_policy(Tier.FREE, 1.0, self.anonymous_rate_per_s, self.anonymous_burst)

    def key_by_secret(self, presented: str) -> ProtectKeyConfig | None:
        """The configured key equal to `presented`, compared as digests in constant time (see `_find_keyed`)."""
        return _find_keyed(self.keys, presented)

    def _check(self) -> None:
        if self.key_queue_length_max > self.queue_length_max:
            raise _Invalid(
                f"must not exceed queue_length_max ({self.key_queue_length_max} > {self.queue_length_max})",
                ("key_queue_length_max",),
                (("queue_length_max",),),
            )
        if self.reserved_share + self.free_share_min >= 1:
            raise _Invalid(
                f"reserved_share + free_share_min must leave room for paid traffic "
                f"({self.reserved_share:g} + {self.free_share_min:g} >= 1)",
                ("reserved_share",),
                (("free_share_min",),),
            )
        if self.anonymous_burst is not None and self.anonymous_rate_per_s is None:
            raise _Invalid("needs anonymous_rate_per_s as well", ("anonymous_burst",), (("anonymous_rate_per_s",),))
        ids: dict[str, int] = {}
        digests: dict[bytes, int] = {}
        for index, key in enumerate(self.keys):
            if key.id is not None and key.id in ids:
                raise _Invalid(f"keys[{index}] has the id {key.id!r} of keys[{ids[key.id]}]", ("keys", index))
            if key.key_sha256 in digests:
                raise _Invalid(f"keys[{index}] has the same key as keys[{digests[key.key_sha256]}]", ("keys", index))
            if key.id is not None:
                ids[key.id] = index
            digests[key.key_sha256] = index


@dataclass(frozen=True, slots=True)
class ClusterConfig(_Validated):
    """Membership and ownership (cluster/). The cluster is on when `bind` is set."""

    bind: str | None = _setting(None, _optional(_listen))  # gossip UDP + push-pull TCP, e.g. "[::]:7946"
    advertise: str | None = _setting(None, _optional(_listen))  # the gossip address others use, if not bind's
    api_advertise: str | None = _setting(None, _optional(_listen))  # the job API address others forward to
    region: str | None = _setting(None, _optional(_identifier), text=True)  # default: $FLY_REGION
    # The machine this member runs on, in the gossip: replicas go to other machines first. Default: the node id (a
    # machine of its own); the supervisor sets the node's id for each of its workers (edge/workers.py).
    machine: str | None = _setting(None, _optional(_identifier), text=True)
    seeds: tuple[str, ...] = _setting((), _host_ports)  # host:port of members to join; DNS names allowed
    keys: tuple[bytes, ...] = _setting((), _cluster_keys, secret=True)  # HMAC keys, primary first
    profile: str = _setting("lan", _choice(("lan", "wan", "local")))  # memberlist's timing presets
    insecure: bool = _setting(False, _boolean)  # allow a multi-node cluster without keys (development only)
    forward_deadline_s: float = _setting(10.0, _number(0, inclusive=False))  # to reach a key's owner
    join_wait_s: float = _setting(10.0, _number(0))  # how long queues wait at start for a peer to answer
    # Members that keep each job durable before it is acknowledged: the key's owner and its successors
    # (edge/placement/replication.py); 1 turns replication off.
    replicas: int = _setting(2, _integer(1))

    def _check(self) -> None:
        if self.bind is not None and not self.keys and not self.insecure:
            raise _Invalid("a cluster needs keys (or insecure = true for development)", ("keys",))

    @property
    def enabled(self) -> bool:
        return self.bind is not None


SECTIONS: dict[str, type[_Validated]] = {
    "server": ServerConfig,
    "security": SecurityConfig,
    "defaults": DefaultsConfig,
    "http_client": HttpClientConfig,
    "webhooks": WebhooksConfig,
    "jobs": JobsConfig,
    "cluster": ClusterConfig,
}


@dataclass(frozen=True, slots=True)
class Config(_Validated):
    server: ServerConfig = field(default_factory=ServerConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    http_client: HttpClientConfig = field(default_factory=HttpClientConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    accounts: tuple[AccountConfig, ...] = ()
    targets: tuple[TargetConfig, ...] = ()
    protect: tuple[ProtectConfig, ...] = ()
    plans: tuple[PlanConfig, ...] = ()  # built-in plans first, as `[plans]` overrides them, then added ones
    source: str = DEFAULTS_SOURCE
    _targets_by_origin: dict[str, TargetConfig] = field(init=False, repr=False, compare=False)
    _plans_by_name: dict[str, PlanConfig] = field(init=False, repr=False, compare=False)

    def _check(self) -> None:
        ids: dict[str, int] = {}
        digests: dict[bytes, int] = {}
        for index, account in enumerate(self.accounts):
            if account.id in ids:
                raise _Invalid(
                    f"duplicate account id {account.id!r} (also accounts[{ids[account.id]}])", ("accounts", index, "id")
                )
            if account.key_sha256 in digests:
                raise _Invalid(
                    f"same key as accounts[{digests[account.key_sha256]}]; keys must be unique", ("accounts", index)
                )
            ids[account.id] = index
            digests[account.key_sha256] = index
        plans = {plan.name: plan for plan in self.plans}
        for name, (quota, overage) in BUILTIN_PLANS.items():
            plans.setdefault(name, PlanConfig(name=name, monthly_requests=quota, overage_requests_max=overage))
        object.__setattr__(self, "_plans_by_name", plans)
        for index, account in enumerate(self.accounts):
            if account.plan not in plans:
                known = ", ".join(sorted(plans))
                raise _Invalid(f"unknown plan {account.plan!r} (known: {known})", ("accounts", index, "plan"))
        by_origin: dict[str, TargetConfig] = {}
        for target in self.targets:
            if target.origin in by_origin:
                raise _Invalid(f"origin {target.origin} is configured twice", ("targets", target.origin))
            by_origin[target.origin] = target
        object.__setattr__(self, "_targets_by_origin", by_origin)
        labels: dict[str, int] = {}
        for index, listener in enumerate(self.protect):
            if listener.label in labels:
                raise _Invalid(
                    f"listener {listener.label!r} is also protect[{labels[listener.label]}]; give each a unique name",
                    ("protect", index, "name"),
                )
            labels[listener.label] = index

    def account_by_key(self, presented: str) -> AccountConfig | None:
        """The account whose API key is `presented`, or None (see `_find_keyed`)."""
        return _find_keyed(self.accounts, presented)

    def plan(self, name: str) -> PlanConfig:
        """The plan called `name`: a `[plans]` table, else the built-in one. KeyError for neither."""
        return self._plans_by_name[name]

    def target_for(self, origin: str) -> TargetConfig | None:
        """The `[targets]` entry for an origin (or any URL on it), in whatever case or port spelling."""
        try:
            return self._targets_by_origin.get(origin_of(origin))
        except ValueError:
            return None

    def describe(self) -> str:
        """A summary for the startup log. Secrets and key digests show only as set/unset, never a value."""
        lines = [f"configuration: {self.source}"]
        lines += [f"  [{name}] {_describe_fields(getattr(self, name))}" for name in SECTIONS]
        lines.append(f"  accounts: {len(self.accounts)}")
        lines += [f"    {account.id}: {_describe_fields(account, skip='id')}" for account in self.accounts]
        lines.append(f"  targets: {len(self.targets)}")
        lines += [f"    {target.origin}: {_describe_fields(target, skip='origin')}" for target in self.targets]
        lines.append(f"  protect: {len(self.protect)}")
        lines += [
            f"    {listener.label}: keys={len(listener.keys)} {_describe_fields(listener, skip='keys')}"
            for listener in self.protect
        ]
        return "\n".join(lines)


_Keyed = TypeVar("_Keyed", AccountConfig, ProtectKeyConfig)


def _find_keyed(candidates: Iterable[_Keyed], presented: str) -> _Keyed | None:
    """The candidate whose key is `presented`, or None.

    Only digests are stored, so a memory dump or a leaked config does not give out keys. A fast unsalted
    hash is enough because API keys are random tokens, not passwords: there is no dictionary to try.
    Comparing digests in constant time, visiting every candidate with no early exit, means the response time
    says nothing about how close a guess came; and even a timing leak on digests would not help, since an
    attacker cannot steer which digest prefix a guess produces. The cost is O(candidates), ~0.1 us each.
    """
    digest = hashlib.sha256(presented.encode()).digest()
    found: _Keyed | None = None
    for candidate in candidates:
        if hmac.compare_digest(candidate.key_sha256, digest):
            found = candidate
    return found


def _describe_fields(section: Any, skip: str = "") -> str:
    parts = []
    for spec in dataclasses.fields(section):
        if spec.name == skip:
            continue
        value = getattr(section, spec.name)
        if value is None:
            shown = "unset"
        elif spec.metadata.get("secret"):
            shown = "set"
        elif isinstance(value, tuple):
            shown = "[" + ", ".join(f"{step:g}" if isinstance(step, float | int) else str(step) for step in value) + "]"
        elif isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, float):
            shown = f"{value:g}"
        else:
            shown = str(value)
        parts.append(f"{spec.name}={shown}")
    return " ".join(parts)


# Loading: merge raw values from the layers, remembering who set what, then build (and so validate) once.

SCALAR_SETTINGS: dict[str, KeyPath] = {
    f"{section}.{spec.name}": (section, spec.name)
    for section, cls in SECTIONS.items()
    for spec in dataclasses.fields(cls)
}
ENV_SETTINGS: dict[str, KeyPath] = {
    ENV_PREFIX + dotted.replace(".", "_").upper(): path for dotted, path in SCALAR_SETTINGS.items()
}
_TEXT_SETTINGS = frozenset(
    (section, spec.name)
    for section, cls in SECTIONS.items()
    for spec in dataclasses.fields(cls)
    if spec.metadata.get("text")
)
_SOURCE_RANK_FILE, _SOURCE_RANK_ENV, _SOURCE_RANK_OVERRIDE = 0, 1, 2


def _dotted(path: KeyPath) -> str:
    """accounts[1].plan, server.listen, targets."https://api.stripe.com".rps: TOML's own spelling."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


def _unknown(name: str, known: Iterable[str], noun: str = "key") -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"unknown {noun}" + (f" (did you mean {close[0]}?)" if close else "")


def _table(value: Any, path: KeyPath) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table (got {_shown(value, secret=False)})", path)
    return value


def _build(cls: type[_Validated], table: Any, path: KeyPath, **fixed: Any) -> Any:
    """`cls` from a raw table; `fixed` fields come from elsewhere (a target's origin is its table's name)."""
    names = [spec.name for spec in dataclasses.fields(cls) if spec.name not in fixed]
    for key in _table(table, path):
        if key not in names:
            raise _Invalid(_unknown(key, names), (*path, key))
    for spec in dataclasses.fields(cls):
        required = spec.default is _REQUIRED and spec.default_factory is dataclasses.MISSING
        if required and spec.name not in fixed and spec.name not in table:
            raise _Invalid("required", (*path, spec.name))
    try:
        return cls(**table, **fixed)
    except _Invalid as exc:
        raise (_Invalid(exc.problem) if exc.path[:1] and exc.path[0] in fixed else exc).under(path) from None


def _build_keyed(cls: type[_Keyed], table: Any, path: KeyPath) -> _Keyed:
    """An account or a protected key from a table holding either `key` (hashed here, then dropped) or
    `key_sha256`."""
    table = dict(_table(table, path))
    key = table.pop("key", None)
    if (key is None) == (table.get("key_sha256") is None):
        raise _Invalid("needs exactly one of key or key_sha256", path)
    if key is None:
        return _build(cls, table, path)
    if not isinstance(key, str) or len(key) < KEY_CHARS_MIN:
        shown = _shown(key, secret=True)
        raise _Invalid(f"must be a string of at least {KEY_CHARS_MIN} characters (got {shown})", (*path, "key"))
    return _build(cls, table, path, key_sha256=hashlib.sha256(key.encode()).digest())


def _array_of_tables(value: Any, path: KeyPath) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"must be an array of tables (got {_shown(value, secret=False)})", path)
    return value


def _build_protect(table: Any, path: KeyPath) -> ProtectConfig:
    """A protected listener from its table; its `[[protect.keys]]` are built like accounts."""
    table = dict(_table(table, path))
    keys = _array_of_tables(table.pop("keys", []), (*path, "keys"))
    built = tuple(_build_keyed(ProtectKeyConfig, entry, (*path, "keys", index)) for index, entry in enumerate(keys))
    return _build(ProtectConfig, table, path, keys=built)


class _Layers:
    """Raw values merged from file, environment and overrides, with the source of each."""

    def __init__(self, file_source: str) -> None:
        self.file_source = file_source
        self.sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        self.accounts: Any = []
        self.targets: Any = {}
        self.protect: Any = []
        self.plans: Any = {}
        self.sources: dict[KeyPath, tuple[int, str]] = {}

    def apply_document(self, document: Mapping[str, Any]) -> None:
        """The top level of a config file."""
        for name, value in document.items():
            if name in SECTIONS:
                for key, item in _table(value, (name,)).items():
                    self.sections[name][key] = item
            elif name == "accounts":
                self.accounts = value
            elif name == "targets":
                self.targets = value
            elif name == "protect":
                self.protect = value
            elif name == "plans":
                self.plans = value
            else:
                raise _Invalid(_unknown(name, [*SECTIONS, "accounts", "targets", "protect", "plans"]), (name,))

    def set(self, path: KeyPath, value: Any, source: str, rank: int) -> None:
        if path == ("accounts",):
            self.accounts = value
        elif path == ("targets",):
            self.targets = value
        elif path == ("protect",):
            self.protect = value
        elif path == ("plans",):
            self.plans = value
        else:
            section, key = path
            self.sections[str(section)][str(key)] = value
        self.sources[path] = (rank, source)

    def source_of(self, error: _Invalid) -> str:
        """Who set the value an error is about; for a rule across keys, whichever source set one last."""
        best = (_SOURCE_RANK_FILE, self.file_source)
        for path in (error.path, *error.also):
            for depth in range(len(path), 0, -1):
                if path[:depth] in self.sources:
                    best = max(best, self.sources[path[:depth]])
                    break
        return best[1]

    def build(self) -> Config:
        accounts = _array_of_tables(self.accounts, ("accounts",))
        protect = _array_of_tables(self.protect, ("protect",))
        return Config(
            **{name: _build(cls, self.sections[name], (name,)) for name, cls in SECTIONS.items()},
            accounts=tuple(
                _build_keyed(AccountConfig, table, ("accounts", index)) for index, table in enumerate(accounts)
            ),
            protect=tuple(_build_protect(table, ("protect", index)) for index, table in enumerate(protect)),
            targets=tuple(
                _build(TargetConfig, table, ("targets", origin), origin=origin)
                for origin, table in _table(self.targets, ("targets",)).items()
            ),
            plans=tuple(
                _build(
                    PlanConfig, {**_builtin_plan(name), **_table(table, ("plans", name))}, ("plans", name), name=name
                )
                for name, table in _table(self.plans, ("plans",)).items()
            ),
            source=self.file_source,
        )


def _builtin_plan(name: str) -> dict[str, Any]:
    """A built-in plan's settings, which a `[plans.NAME]` table of the same name overrides key by key."""
    if name not in BUILTIN_PLANS:
        return {}
    quota, overage = BUILTIN_PLANS[name]
    return {"monthly_requests": quota, "overage_requests_max": overage}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), None, f"invalid TOML ({exc})") from None


def _env_value(text: str) -> Any:
    """`text` as a TOML value (true, 25, 2.5, [0, 60], "quoted") when it is exactly one, else as is."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["value"] if list(parsed) == ["value"] else text


def _env_json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(name, None, f"invalid JSON ({exc})") from None


def _apply_env(layers: _Layers, env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        text = env[name]
        if name in ENV_SETTINGS:
            path = ENV_SETTINGS[name]
            value = _env_value(text)
            if path in _TEXT_SETTINGS and not isinstance(value, str):
                value = text  # EZTHROTTLE_SERVER_NODE_ID=7 means the id "7"
            layers.set(path, value, name, _SOURCE_RANK_ENV)
        elif name == ENV_ACCOUNTS:
            layers.set(("accounts",), _env_json(name, text), name, _SOURCE_RANK_ENV)
        elif name == ENV_TARGETS:
            layers.set(("targets",), _env_json(name, text), name, _SOURCE_RANK_ENV)
        elif name == ENV_PROTECT:
            layers.set(("protect",), _env_json(name, text), name, _SOURCE_RANK_ENV)
        elif name == ENV_PLANS:
            layers.set(("plans",), _env_json(name, text), name, _SOURCE_RANK_ENV)
        else:
            known = [*ENV_SETTINGS, ENV_ACCOUNTS, ENV_TARGETS, ENV_PROTECT, ENV_PLANS]
            raise ConfigError(name, None, _unknown(name, known, "variable"))


def load_config(
    path: Path | None, *, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """The node's configuration: defaults < the TOML file at `path` < `env` (os.environ) < `overrides`.

    `overrides` maps dotted keys to values, e.g. {"server.listen": "127.0.0.1:0"} from command-line flags.
    Raises ConfigError naming the file or variable, the key and the problem.
    """
    layers = _Layers(DEFAULTS_SOURCE if path is None else str(path))
    try:
        if path is not None:
            layers.apply_document(_read_toml(path))
        _apply_env(layers, os.environ if env is None else env)
        for dotted, value in (overrides or {}).items():
            if dotted not in SCALAR_SETTINGS:
                raise ConfigError(OVERRIDE_SOURCE, dotted, _unknown(dotted, SCALAR_SETTINGS))
            layers.set(SCALAR_SETTINGS[dotted], value, OVERRIDE_SOURCE, _SOURCE_RANK_OVERRIDE)
        return layers.build()
    except _Invalid as exc:
        raise ConfigError(layers.source_of(exc), _dotted(exc.path), exc.problem) from None


def with_dev_account(config: Config, *, account_id: str, key: str) -> Config:
    """`config` plus one account (the CLI's development mode), validated like any configured account."""
    try:
        account = _build_keyed(AccountConfig, {"id": account_id, "key": key}, ("accounts", len(config.accounts)))
        return dataclasses.replace(config, accounts=(*config.accounts, account))
    except _Invalid as exc:
        raise ConfigError("development account", _dotted(exc.path), exc.problem) from None
