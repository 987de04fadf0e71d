"""The job contract: the typed job (`JobSpec`), validation of `POST /api/v1/jobs` bodies, idempotency and queue keys.

The contract is the public SDKs' (see the project README, "Job API"). Validation turns untrusted JSON into a frozen
`JobSpec` (`validate_job`) or raises a 422 `Problem` naming the first offending field. It runs once, at intake: the
URL is parsed once (by httpx, the parser that sends it) and the origin and credential fingerprint are derived then.
Everything downstream reads the spec's fields, never the JSON. `to_wire` / `from_wire` carry a spec through the store
and the internal API; `from_wire` trusts its input (it was validated when the job was accepted) and keeps fields it
does not know, so a record written by a newer version survives a round trip through an older one.

Decisions this project made where the public contract is silent:

- snake_case is canonical; the camelCase spellings that the Node and Go SDKs send for nested fields are accepted
  as aliases (snake_case wins when both are present). Unknown fields are ignored, as the hosted service does.
- Framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`, ...) are refused in `headers`: the executor
  frames the request itself and a stale length would corrupt it.
- Two extension fields: `send_idempotency_key` (bool: forward `idempotent_key` as an `Idempotency-Key` header) and
  `deadline_ms` (how long the job may keep retrying, default from config, 24 h).
- Nested jobs (`fallback_job`, `on_success`, `on_failure`) are validated recursively to a depth of 8.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, final, get_args

import httpx

from edge.outbound.origins import canonical_origin, parse_http_url
from edge.problems import invalid

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "proxy-connection"}
)
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")

URL_CHARS_MAX = 8192
HEADERS_MAX = 100
HEADER_VALUE_CHARS_MAX = 16384  # the same order as common servers' per-line limits (nginx 8 KiB, node 16 KiB)
WEBHOOKS_MAX = 16
NESTING_DEPTH_MAX = 8
IDEMPOTENT_KEY_CHARS_MAX = 256
DEADLINE_MS_MAX = 30 * 86_400_000
HEDGE_AFTER_MS_MAX = 600_000
RETRIES_MAX = 100  # for max_retries and max_reroutes alike
RETRY_AT_MAX = 2**53  # unix ms
TRIGGER_TIMEOUT_MS_MAX = 86_400_000
STATUS_CODE_MIN, STATUS_CODE_MAX = 100, 599
STORED_INT_MIN, STORED_INT_MAX = -(2**63), 2**64 - 1  # what msgpack holds (metadata)

# Both are matched with `fullmatch`: `$` alone also matches before a trailing newline ("X-A\n").
HEADER_NAME_PATTERN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an RFC 9110 token
REGION_PATTERN: Final = re.compile(r"^[a-z0-9]{2,12}$")
_URL_WHITESPACE = re.compile(r"[\r\n\t ]")
# What httpx can send: ASCII (it encodes str values as ASCII), on one line, without NUL.
HEADER_VALUE_PATTERN: Final = re.compile(r"^[\x01-\x09\x0b\x0c\x0e-\x7f]*$")
_SURROGATE = re.compile("[\ud800-\udfff]")
CAMEL_ALIASES: Final = {
    "has_quorum_vote": "hasQuorumVote",
    "retry_policy": "retryPolicy",
    "max_retries": "maxRetries",
    "max_reroutes": "maxReroutes",
    "retry_codes": "retryCodes",
    "reroute_codes": "rerouteCodes",
    "fallback_job": "fallbackJob",
    "on_success": "onSuccess",
    "on_failure": "onFailure",
    "on_failure_timeout_ms": "onFailureTimeoutMs",
    "hedge_after_ms": "hedgeAfterMs",
    "idempotent_key": "idempotentKey",
    "retry_at": "retryAt",
    "webhook_quorum": "webhookQuorum",
    "region_policy": "regionPolicy",
    "execution_mode": "executionMode",
    "timeout_ms": "timeoutMs",
    "send_idempotency_key": "sendIdempotencyKey",
    "deadline_ms": "deadlineMs",
}
_CAMEL_NAMES = frozenset(CAMEL_ALIASES.values())


RegionPolicy = Literal["fallback", "strict"]
ExecutionMode = Literal["race", "fanout"]
# The first of each is the default.
REGION_POLICIES: Final[tuple[str, ...]] = get_args(RegionPolicy)
EXECUTION_MODES: Final[tuple[str, ...]] = get_args(ExecutionMode)


_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy. Most jobs have no metadata and no unknown fields: those share one empty mapping, which
    keeps every accepted job a few objects smaller for the garbage collector (tens of thousands wait at once)."""
    if not mapping:
        return _EMPTY
    if type(mapping) is MappingProxyType:
        return mapping  # frozen by this module already
    return MappingProxyType(dict(mapping))


def _unknown(wire: Mapping[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    """The fields of a wire form this version does not know: kept, so that a newer version's survive a round trip."""
    return {name: value for name, value in wire.items() if name not in known}


class _WithExtensions:
    """Frozen wire values that keep the fields they do not know (`extensions`) and write them back out."""

    __slots__ = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", _frozen(self.extensions))  # type: ignore[attr-defined]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSpec(_WithExtensions):
    """One webhook of a job: where the result goes, from which regions, and whether it votes in the quorum."""

    url: str
    regions: tuple[str, ...] = ()
    has_quorum_vote: bool = True
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            **self.extensions,
            "url": self.url,
            "regions": list(self.regions),
            "has_quorum_vote": self.has_quorum_vote,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> WebhookSpec:
        return cls(
            url=wire["url"],
            regions=tuple(wire.get("regions") or ()),
            has_quorum_vote=wire.get("has_quorum_vote", True),
            extensions=_unknown(wire, _WEBHOOK_FIELDS),
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy(_WithExtensions):
    """How often a job may retry in place (`retry_codes`) and move to another region (`reroute_codes`)."""

    max_retries: int = 3
    max_reroutes: int = 2
    retry_codes: tuple[int, ...] = (429, 503)
    reroute_codes: tuple[int, ...] = (500, 502, 504)
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            **self.extensions,
            "max_retries": self.max_retries,
            "max_reroutes": self.max_reroutes,
            "retry_codes": list(self.retry_codes),
            "reroute_codes": list(self.reroute_codes),
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> RetryPolicy:
        defaults = DEFAULT_RETRY_POLICY
        return cls(
            max_retries=wire.get("max_retries", defaults.max_retries),
            max_reroutes=wire.get("max_reroutes", defaults.max_reroutes),
            retry_codes=tuple(wire.get("retry_codes", defaults.retry_codes)),
            reroute_codes=tuple(wire.get("reroute_codes", defaults.reroute_codes)),
            extensions=_unknown(wire, _RETRY_POLICY_FIELDS),
        )


DEFAULT_RETRY_POLICY: Final = RetryPolicy()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger(_WithExtensions):
    """When a fallback job runs: after a final failure with one of `codes`, or when `timeout_ms` passes."""

    type: Literal["on_error", "on_timeout"]
    codes: tuple[int, ...] = ()
    timeout_ms: int | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        if self.type == "on_error":
            return {**self.extensions, "type": "on_error", "codes": list(self.codes)}
        return {**self.extensions, "type": "on_timeout", "timeout_ms": self.timeout_ms}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Trigger:
        return cls(
            type=wire["type"],
            codes=tuple(wire.get("codes") or ()),
            timeout_ms=wire.get("timeout_ms"),
            extensions=_unknown(wire, _TRIGGER_FIELDS),
        )


def _field_names(cls: type, *, derived: tuple[str, ...] = ()) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls)) - {"extensions", *derived}


_WEBHOOK_FIELDS: Final = _field_names(WebhookSpec)
_RETRY_POLICY_FIELDS: Final = _field_names(RetryPolicy)
_TRIGGER_FIELDS: Final = _field_names(Trigger)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """A validated job, as the client asked for it, plus what intake derived from it once.

    Build one with `validate_job` (untrusted JSON) or `JobSpec.from_wire` (a stored or forwarded spec). The derived
    fields (`parsed_url`, `origin`, `credential_fingerprint`) are never on the wire: they are recomputed from `url`
    and `headers`, so they cannot disagree with them.
    """

    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    webhooks: tuple[WebhookSpec, ...] = ()
    webhook_quorum: int = 1
    regions: tuple[str, ...] = ()
    region_policy: str = "fallback"
    execution_mode: str = "race"
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY
    idempotent_key: str | None = None
    send_idempotency_key: bool = False
    retry_at: int | None = None
    deadline_ms: int | None = None
    on_failure_timeout_ms: int | None = None
    hedge_after_ms: float | Literal["auto"] | None = None  # extension: start a second region when the first is slow
    tier: str | None = None
    on_success: JobSpec | None = None
    on_failure: JobSpec | None = None
    fallback_job: JobSpec | None = None
    trigger: Trigger | None = None  # on fallback jobs only
    # Fields a newer version wrote that this one does not know: kept so that they survive a round trip.
    extensions: Mapping[str, Any] = field(default_factory=dict)
    # Derived once, at intake or when read back; not part of the wire form.
    parsed_url: httpx.URL = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    origin: str = field(default="", compare=False)
    credential_fingerprint: str | None = field(default=None, compare=False, repr=False)
    _wire: dict[str, Any] | None = field(default=None, init=False, compare=False, repr=False)  # see shared_wire

    def __post_init__(self) -> None:
        # Freeze the mappings a caller handed in, so a spec cannot change under the records that share it.
        object.__setattr__(self, "headers", _frozen(self.headers))
        object.__setattr__(self, "metadata", _frozen(self.metadata))
        object.__setattr__(self, "extensions", _frozen(self.extensions))
        if self.parsed_url is None:
            object.__setattr__(self, "parsed_url", parse_http_url(self.url))
        if not self.origin:
            object.__setattr__(self, "origin", canonical_origin(self.parsed_url))
            object.__setattr__(self, "credential_fingerprint", credential_fingerprint(self.headers))

    def shared_wire(self) -> Mapping[str, Any]:
        """`to_wire()`, computed once and shared: for encoders that only read it (a record's every save)."""
        if self._wire is None:
            object.__setattr__(self, "_wire", self.to_wire())
        assert self._wire is not None
        return self._wire

    def to_wire(self) -> dict[str, Any]:
        """The stored and forwarded form: plain msgpack- and JSON-able values, the contract's field names."""
        wire: dict[str, Any] = {
            **self.extensions,
            "url": self.url,
            "method": self.method,
            "headers": dict(self.headers),
            "body": self.body,
            "metadata": dict(self.metadata),
            "webhooks": [hook.to_wire() for hook in self.webhooks],
            "webhook_quorum": self.webhook_quorum,
            "regions": list(self.regions),
            "region_policy": self.region_policy,
            "execution_mode": self.execution_mode,
            "retry_policy": self.retry_policy.to_wire(),
            "idempotent_key": self.idempotent_key,
            "send_idempotency_key": self.send_idempotency_key,
            "retry_at": self.retry_at,
            "deadline_ms": self.deadline_ms,
            "on_failure_timeout_ms": self.on_failure_timeout_ms,
            "hedge_after_ms": self.hedge_after_ms,
            "tier": self.tier,
            "on_success": self.on_success.to_wire() if self.on_success else None,
            "on_failure": self.on_failure.to_wire() if self.on_failure else None,
            "fallback_job": self.fallback_job.to_wire() if self.fallback_job else None,
        }
        if self.trigger is not None:
            wire["trigger"] = self.trigger.to_wire()
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> JobSpec:
        """A spec from its wire form, trusted (validated when the job was accepted); unknown fields are kept."""
        trigger = wire.get("trigger")
        return cls(
            url=wire["url"],
            method=wire.get("method", "GET"),
            headers=wire.get("headers") or {},
            body=wire.get("body"),
            metadata=wire.get("metadata") or {},
            webhooks=tuple(WebhookSpec.from_wire(hook) for hook in wire.get("webhooks") or ()),
            webhook_quorum=wire.get("webhook_quorum") or 1,
            regions=tuple(wire.get("regions") or ()),
            region_policy=wire.get("region_policy") or "fallback",
            execution_mode=wire.get("execution_mode") or "race",
            retry_policy=RetryPolicy.from_wire(wire.get("retry_policy") or {}),
            idempotent_key=wire.get("idempotent_key"),
            send_idempotency_key=bool(wire.get("send_idempotency_key", False)),
            retry_at=wire.get("retry_at"),
            deadline_ms=wire.get("deadline_ms"),
            on_failure_timeout_ms=wire.get("on_failure_timeout_ms"),
            hedge_after_ms=wire.get("hedge_after_ms"),
            tier=wire.get("tier"),
            on_success=cls.from_wire(wire["on_success"]) if wire.get("on_success") else None,
            on_failure=cls.from_wire(wire["on_failure"]) if wire.get("on_failure") else None,
            fallback_job=cls.from_wire(wire["fallback_job"]) if wire.get("fallback_job") else None,
            trigger=Trigger.from_wire(trigger) if trigger else None,
            extensions=_unknown(wire, _JOB_FIELDS),
        )


# The derived fields are not on the wire; one found there (written by hand, or by a buggy peer) is dropped, never
# kept as an extension that would write a stale value back out.
_JOB_FIELDS: Final = _field_names(JobSpec) | {"parsed_url", "origin", "credential_fingerprint", "_wire"}


def _snake_case_view(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` readable by snake_case names alone: each camelCase alias stands in for its absent snake_case name.

    Validation reads every known field of every object, most of them absent; with one view per object those
    reads are plain `dict.get` calls. Bodies without aliases (the usual case) are returned as they are.
    """
    if _CAMEL_NAMES.isdisjoint(obj):
        return obj
    view = dict(obj)
    for name, alias in CAMEL_ALIASES.items():
        if alias in obj and name not in obj:
            view[name] = obj[alias]
    return view


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(fields: dict[str, Any], name: str, path: str, default: int | None, lo: int, hi: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return default
    if not _is_int(value) or not lo <= value <= hi:
        raise invalid(f"{path}{name}", f"must be an integer from {lo} to {hi}")
    return int(value)


def _choice(fields: dict[str, Any], name: str, path: str, choices: tuple[str, ...]) -> str:
    value = fields.get(name)
    if value is None:
        return choices[0]
    if value not in choices:
        raise invalid(f"{path}{name}", f"must be one of {', '.join(choices)}")
    return str(value)


def _status_codes(value: Any, field: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(c) and STATUS_CODE_MIN <= c <= STATUS_CODE_MAX for c in value):
        raise invalid(field, f"must be a list of HTTP status codes ({STATUS_CODE_MIN}-{STATUS_CODE_MAX})")
    return tuple(sorted(set(value)))


def validate_http_url(value: Any, field: str) -> httpx.URL:
    """An absolute http(s) URL with a host, parsed once by httpx (the parser that sends it); the SSRF guard judges
    the address at connect time."""
    if not isinstance(value, str) or not value:
        raise invalid(field, "is required and must be a string")
    if len(value) > URL_CHARS_MAX:
        raise invalid(field, f"must be at most {URL_CHARS_MAX} characters")
    if _URL_WHITESPACE.search(value):
        raise invalid(field, "must not contain whitespace or credentials")
    scheme = value.partition(":")[0].lower()
    if scheme not in ("http", "https"):
        raise invalid(field, "must be an http:// or https:// URL")
    try:
        parsed = parse_http_url(value)
    except ValueError as exc:
        raise invalid(field, f"is not a valid URL with a host that can be sent ({exc})") from None
    if parsed.port == 0:
        raise invalid(field, "port 0 is not a valid port")
    if parsed.userinfo:
        raise invalid(field, "must not contain whitespace or credentials")
    return parsed


def _unstorable(value: Any) -> str | None:
    """Why a JSON value could not be kept, or None. The store encodes records with msgpack, and the API and the
    webhooks answer in JSON, so neither text with a lone surrogate (what `json.loads` makes of an unpaired `\\ud800`
    escape: it has no UTF-8 form), nor an integer beyond 64 bits, nor NaN or an infinity (not JSON) can be kept."""
    pending = [value]
    while pending:  # not recursive: a deeply nested metadata object must not exhaust the stack
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return "must be valid Unicode text (an unpaired \\ud800-\\udfff escape is not)"
        elif isinstance(item, int):
            if not STORED_INT_MIN <= item <= STORED_INT_MAX:
                return "must hold no integer beyond 64 bits"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "must hold only finite numbers (JSON has no NaN or Infinity)"
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def _headers(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(field, "must be an object of header names to string values")
    if len(value) > HEADERS_MAX:
        raise invalid(field, f"must have at most {HEADERS_MAX} headers")
    headers: dict[str, str] = {}
    for name, header_value in value.items():
        where = f"{field}.{name}"
        if not HEADER_NAME_PATTERN.fullmatch(name):
            raise invalid(where, "is not a valid header name")
        if name.lower() in FRAMING_HEADERS:
            raise invalid(where, "is a framing header; the node frames requests itself")
        if not isinstance(header_value, str):
            raise invalid(where, "must be a string")
        if len(header_value) > HEADER_VALUE_CHARS_MAX or not HEADER_VALUE_PATTERN.fullmatch(header_value):
            raise invalid(where, f"must be a single line of at most {HEADER_VALUE_CHARS_MAX} ASCII characters")
        headers[name] = header_value
    return headers


def _webhooks(value: Any, field: str) -> tuple[WebhookSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > WEBHOOKS_MAX:
        raise invalid(field, f"must be a list of at most {WEBHOOKS_MAX} webhooks")
    hooks = []
    for i, hook in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(hook, dict):
            raise invalid(where, "must be an object with a url")
        fields = _snake_case_view(hook)
        vote = fields.get("has_quorum_vote", True)
        if not isinstance(vote, bool):
            raise invalid(f"{where}.has_quorum_vote", "must be true or false")
        url = validate_http_url(fields.get("url"), f"{where}.url")
        hooks.append(
            WebhookSpec(url=str(url), regions=_regions(fields.get("regions"), f"{where}.regions"), has_quorum_vote=vote)
        )
    return tuple(hooks)


def _regions(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(r, str) and REGION_PATTERN.fullmatch(r) for r in value):
        raise invalid(field, "must be a list of region codes such as iad, lax, ord")
    return tuple(dict.fromkeys(value))


def _retry_policy(value: Any, field: str) -> RetryPolicy:
    if value is None:
        return DEFAULT_RETRY_POLICY
    if not isinstance(value, dict):
        raise invalid(field, "must be an object")
    fields = _snake_case_view(value)
    retry_codes = fields.get("retry_codes")
    reroute_codes = fields.get("reroute_codes")
    defaults = DEFAULT_RETRY_POLICY
    policy = RetryPolicy(
        max_retries=_int(fields, "max_retries", f"{field}.", defaults.max_retries, 0, RETRIES_MAX) or 0,
        max_reroutes=_int(fields, "max_reroutes", f"{field}.", defaults.max_reroutes, 0, RETRIES_MAX) or 0,
        retry_codes=defaults.retry_codes if retry_codes is None else _status_codes(retry_codes, f"{field}.retry_codes"),
        reroute_codes=defaults.reroute_codes
        if reroute_codes is None
        else _status_codes(reroute_codes, f"{field}.reroute_codes"),
    )
    return DEFAULT_RETRY_POLICY if policy == DEFAULT_RETRY_POLICY else policy  # most jobs: one shared object


def _trigger(value: Any, field: str) -> Trigger:
    if not isinstance(value, dict):
        raise invalid(field, 'must be {"type": "on_error", "codes": [...]} or {"type": "on_timeout", ...}')
    kind = value.get("type")
    if kind == "on_error":
        codes = value.get("codes")
        return Trigger(type="on_error", codes=() if codes is None else _status_codes(codes, f"{field}.codes"))
    if kind == "on_timeout":
        timeout = _int(_snake_case_view(value), "timeout_ms", f"{field}.", None, 1, TRIGGER_TIMEOUT_MS_MAX)
        if timeout is None:
            raise invalid(f"{field}.timeout_ms", "is required for an on_timeout trigger")
        return Trigger(type="on_timeout", timeout_ms=timeout)
    raise invalid(f"{field}.type", "must be on_error or on_timeout")


def _hedge_after(value: Any, field: str) -> float | Literal["auto"] | None:
    if value is None:
        return None
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= HEDGE_AFTER_MS_MAX:
        raise invalid(field, f'must be "auto" or a number of milliseconds, 1 to {HEDGE_AFTER_MS_MAX}')
    return float(value)


def validate_job(data: Any, *, path: str = "", depth: int = 0, account_id: str | None = None) -> JobSpec:
    """Validate one job object (recursively for nested jobs) and return it as a `JobSpec`.

    With `account_id`, a job without `idempotent_key` gets the one derived from it (`derived_idempotent_key`)."""
    if depth > NESTING_DEPTH_MAX:
        raise invalid(path.rstrip(".") or "job", f"nested jobs go at most {NESTING_DEPTH_MAX} levels deep")
    if not isinstance(data, dict):
        raise invalid(path.rstrip(".") or "body", "must be a JSON object")
    fields = _snake_case_view(data)
    method = fields.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise invalid(f"{path}method", f"must be one of {', '.join(sorted(HTTP_METHODS))}")
    body = fields.get("body")
    if body is not None and not isinstance(body, str):
        raise invalid(f"{path}body", "must be a string (serialise JSON bodies before sending)")
    metadata = fields.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid(f"{path}metadata", "must be an object")
    key = fields.get("idempotent_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= IDEMPOTENT_KEY_CHARS_MAX):
        raise invalid(f"{path}idempotent_key", f"must be a string of 1 to {IDEMPOTENT_KEY_CHARS_MAX} characters")
    send_key = fields.get("send_idempotency_key", False)
    if not isinstance(send_key, bool):
        raise invalid(f"{path}send_idempotency_key", "must be true or false")
    tier = fields.get("tier")
    if tier is not None and not isinstance(tier, str):
        raise invalid(f"{path}tier", "must be a string")
    for name, kept in (("body", body), ("metadata", metadata), ("idempotent_key", key), ("tier", tier)):
        refusal = _unstorable(kept)
        if refusal:
            raise invalid(f"{path}{name}", refusal)
    webhooks = _webhooks(fields.get("webhooks"), f"{path}webhooks")
    voters = sum(1 for hook in webhooks if hook.has_quorum_vote)
    quorum = _int(fields, "webhook_quorum", path, 1, 1, WEBHOOKS_MAX) or 1
    if webhooks and quorum > max(voters, 1):
        raise invalid(f"{path}webhook_quorum", f"is {quorum} but only {voters} webhooks have a quorum vote")
    url = validate_http_url(fields.get("url"), f"{path}url")
    headers = _headers(fields.get("headers"), f"{path}headers")
    if key is None and account_id is not None:
        key = _derived_key(account_id, fields["url"], method.upper(), body)
    nested: dict[str, JobSpec | None] = {}
    for name in ("on_success", "on_failure"):
        value = fields.get(name)
        nested[name] = None if value is None else validate_job(value, path=f"{path}{name}.", depth=depth + 1)
    fallback = fields.get("fallback_job")
    fallback_spec = None
    if fallback is not None:
        fallback_spec = validate_job(fallback, path=f"{path}fallback_job.", depth=depth + 1)
        trigger = _trigger(fallback.get("trigger"), f"{path}fallback_job.trigger")
        fallback_spec = dataclasses.replace(fallback_spec, trigger=trigger)
    return JobSpec(
        url=fields["url"],
        method=method.upper(),
        headers=headers,
        body=body,
        metadata=metadata or {},
        webhooks=webhooks,
        webhook_quorum=quorum,
        regions=_regions(fields.get("regions"), f"{path}regions"),
        region_policy=_choice(fields, "region_policy", path, REGION_POLICIES),
        execution_mode=_choice(fields, "execution_mode", path, EXECUTION_MODES),
        retry_policy=_retry_policy(fields.get("retry_policy"), f"{path}retry_policy"),
        idempotent_key=key,
        send_idempotency_key=send_key,
        retry_at=_int(fields, "retry_at", path, None, 0, RETRY_AT_MAX),
        deadline_ms=_int(fields, "deadline_ms", path, None, 1, DEADLINE_MS_MAX),
        on_failure_timeout_ms=_int(fields, "on_failure_timeout_ms", path, None, 0, DEADLINE_MS_MAX),
        hedge_after_ms=_hedge_after(fields.get("hedge_after_ms"), f"{path}hedge_after_ms"),
        tier=tier,
        on_success=nested["on_success"],
        on_failure=nested["on_failure"],
        fallback_job=fallback_spec,
        parsed_url=url,
        origin=canonical_origin(url),
        credential_fingerprint=credential_fingerprint(headers),
    )


def derived_idempotent_key(account_id: str, job: JobSpec) -> str:
    """The key for a job submitted without one: the same (account, url, method, body) is the same job."""
    return _derived_key(account_id, job.url, job.method, job.body)


def _derived_key(account_id: str, url: str, method: str, body: str | None) -> str:
    digest = hashlib.sha256()
    for part in (account_id, url, method, body or ""):
        digest.update(part.encode())
        digest.update(b"\0")
    return "auto_" + digest.hexdigest()[:40]


def credential_fingerprint(headers: Mapping[str, str]) -> str | None:
    """SHA-256 fingerprint of the first credential header, so a queue key never holds the credential itself."""
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in CREDENTIAL_HEADERS:
        if name in lowered:
            return hashlib.sha256(f"{name}:{lowered[name]}".encode()).hexdigest()[:24]
    return None


def queue_key(*, account_id: str, plan: str, job: JobSpec, account_queue: bool) -> str:
    """One queue per user per API key.

    Paid plans with per-key queues on: account + origin + credential fingerprint. Without a credential, or with
    per-key queues switched off for the target, the account's origin queue. Free plans share one queue per origin
    across free accounts, as the hosted service does.
    """
    if plan == "free":
        return f"free|{job.origin}"
    fingerprint = job.credential_fingerprint if account_queue else None
    return f"{account_id}|{job.origin}|{fingerprint or '-'}"


def origin_queue_key(queue_key: str) -> str:
    """The key of the credential-less queue of the same account and origin ("acme|https://x|fp" -> "acme|https://x|-")."""
    head, sep, _fingerprint = queue_key.rpartition("|")
    return f"{head}|-" if sep and queue_key.count("|") == 2 else queue_key
