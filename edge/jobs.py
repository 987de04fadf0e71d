"""The job contract: validation of `POST /api/v1/jobs` bodies, idempotency keys and queue keys.

The contract is the public SDKs' (see the project README, "Job API"). Validation turns untrusted JSON into a
normalised dict (`validate_job`) or raises a 422 `Problem` naming the first offending field. Decisions this project
made where the public contract is silent:

- snake_case is canonical; the camelCase spellings that the Node and Go SDKs send for nested fields are accepted
  as aliases (snake_case wins when both are present). Unknown fields are ignored, as the hosted service does.
- Framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`, ...) are refused in `headers`: the executor
  frames the request itself and a stale length would corrupt it.
- Two extension fields: `send_idempotency_key` (bool: forward `idempotent_key` as an `Idempotency-Key` header) and
  `deadline_ms` (how long the job may keep retrying, default from config, 24 h).
- Nested jobs (`fallback_job`, `on_success`, `on_failure`) are validated recursively to a depth of 8.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from edge.origins import origin_of
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

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REGION = re.compile(r"^[a-z0-9]{2,12}$")
_URL_WHITESPACE = re.compile(r"[\r\n\t ]")
_HEADER_VALUE_BREAK = re.compile(r"[\r\n\0]")
_CAMEL_ALIASES = {
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
    "idempotent_key": "idempotentKey",
    "retry_at": "retryAt",
    "webhook_quorum": "webhookQuorum",
    "region_policy": "regionPolicy",
    "execution_mode": "executionMode",
    "timeout_ms": "timeoutMs",
    "send_idempotency_key": "sendIdempotencyKey",
    "deadline_ms": "deadlineMs",
}
_CAMEL_NAMES = frozenset(_CAMEL_ALIASES.values())


def _snake_case_view(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` readable by snake_case names alone: each camelCase alias stands in for its absent snake_case name.

    Validation reads every known field of every object, most of them absent; with one view per object those
    reads are plain `dict.get` calls. Bodies without aliases (the usual case) are returned as they are.
    """
    if _CAMEL_NAMES.isdisjoint(obj):
        return obj
    view = dict(obj)
    for name, alias in _CAMEL_ALIASES.items():
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


def _status_codes(value: Any, field: str) -> list[int]:
    if not isinstance(value, list) or not all(_is_int(c) and 100 <= c <= 599 for c in value):
        raise invalid(field, "must be a list of HTTP status codes (100-599)")
    return sorted(set(value))


def validate_http_url(value: Any, field: str) -> str:
    """An absolute http(s) URL with a host; the SSRF guard judges the address later."""
    if not isinstance(value, str) or not value:
        raise invalid(field, "is required and must be a string")
    if len(value) > URL_CHARS_MAX:
        raise invalid(field, f"must be at most {URL_CHARS_MAX} characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise invalid(field, f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise invalid(field, "must be an http:// or https:// URL")
    if not parts.hostname:
        raise invalid(field, "must name a host")
    if port == 0:
        raise invalid(field, "port 0 is not a valid port")
    if _URL_WHITESPACE.search(value) or "@" in parts.netloc:  # "@" in the authority: user info (credentials)
        raise invalid(field, "must not contain whitespace or credentials")
    try:
        origin_of(value)  # the host as httpx will send it; remembered for the queue key
    except ValueError as exc:
        raise invalid(field, f"has a host that cannot be sent ({exc})") from None
    return value


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
        if not _TOKEN.match(name):
            raise invalid(where, "is not a valid header name")
        if name.lower() in FRAMING_HEADERS:
            raise invalid(where, "is a framing header; the node frames requests itself")
        if not isinstance(header_value, str):
            raise invalid(where, "must be a string")
        if len(header_value) > HEADER_VALUE_CHARS_MAX or _HEADER_VALUE_BREAK.search(header_value):
            raise invalid(where, "must be a single line of at most 16384 characters")
        headers[name] = header_value
    return headers


def _webhooks(value: Any, field: str) -> list[dict[str, Any]]:
    if value is None:
        return []
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
        hooks.append(
            {
                "url": validate_http_url(fields.get("url"), f"{where}.url"),
                "regions": _regions(fields.get("regions"), f"{where}.regions"),
                "has_quorum_vote": vote,
            }
        )
    return hooks


def _regions(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(r, str) and _REGION.match(r) for r in value):
        raise invalid(field, "must be a list of region codes such as iad, lax, ord")
    return list(dict.fromkeys(value))


def _retry_policy(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise invalid(field, "must be an object")
    fields = _snake_case_view(value)
    retry_codes = fields.get("retry_codes")
    reroute_codes = fields.get("reroute_codes")
    return {
        "max_retries": _int(fields, "max_retries", f"{field}.", 3, 0, 100),
        "max_reroutes": _int(fields, "max_reroutes", f"{field}.", 2, 0, 100),
        "retry_codes": [429, 503] if retry_codes is None else _status_codes(retry_codes, f"{field}.retry_codes"),
        "reroute_codes": [500, 502]
        if reroute_codes is None
        else _status_codes(reroute_codes, f"{field}.reroute_codes"),
    }


def _trigger(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(field, 'must be {"type": "on_error", "codes": [...]} or {"type": "on_timeout", ...}')
    kind = value.get("type")
    if kind == "on_error":
        codes = value.get("codes")
        return {"type": "on_error", "codes": [] if codes is None else _status_codes(codes, f"{field}.codes")}
    if kind == "on_timeout":
        timeout = _int(_snake_case_view(value), "timeout_ms", f"{field}.", None, 1, 86_400_000)
        if timeout is None:
            raise invalid(f"{field}.timeout_ms", "is required for an on_timeout trigger")
        return {"type": "on_timeout", "timeout_ms": timeout}
    raise invalid(f"{field}.type", "must be on_error or on_timeout")


def validate_job(data: Any, *, path: str = "", depth: int = 0) -> dict[str, Any]:
    """Validate one job object (recursively for nested jobs) and return its normalised form."""
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
    webhooks = _webhooks(fields.get("webhooks"), f"{path}webhooks")
    voters = sum(1 for hook in webhooks if hook["has_quorum_vote"])
    quorum = _int(fields, "webhook_quorum", path, 1, 1, WEBHOOKS_MAX)
    if webhooks and quorum is not None and quorum > max(voters, 1):
        raise invalid(f"{path}webhook_quorum", f"is {quorum} but only {voters} webhooks have a quorum vote")

    job: dict[str, Any] = {
        "url": validate_http_url(fields.get("url"), f"{path}url"),
        "method": method.upper(),
        "headers": _headers(fields.get("headers"), f"{path}headers"),
        "body": body,
        "metadata": metadata or {},
        "webhooks": webhooks,
        "webhook_quorum": quorum,
        "regions": _regions(fields.get("regions"), f"{path}regions"),
        "region_policy": _choice(fields, "region_policy", path, ("fallback", "strict")),
        "execution_mode": _choice(fields, "execution_mode", path, ("race", "fanout")),
        "retry_policy": _retry_policy(fields.get("retry_policy"), f"{path}retry_policy"),
        "idempotent_key": key,
        "send_idempotency_key": send_key,
        "retry_at": _int(fields, "retry_at", path, None, 0, 2**53),
        "deadline_ms": _int(fields, "deadline_ms", path, None, 1, DEADLINE_MS_MAX),
        "on_failure_timeout_ms": _int(fields, "on_failure_timeout_ms", path, None, 0, DEADLINE_MS_MAX),
        "tier": tier,
    }
    for name in ("on_success", "on_failure"):
        value = fields.get(name)
        job[name] = None if value is None else validate_job(value, path=f"{path}{name}.", depth=depth + 1)
    fallback = fields.get("fallback_job")
    job["fallback_job"] = None if fallback is None else _fallback(fallback, f"{path}fallback_job", depth + 1)
    return job


def _fallback(value: Any, field: str, depth: int) -> dict[str, Any]:
    job = validate_job(value, path=field + ".", depth=depth)
    trigger = value.get("trigger") if isinstance(value, dict) else None
    job["trigger"] = _trigger(trigger, f"{field}.trigger")
    return job


def derived_idempotent_key(account_id: str, job: dict[str, Any]) -> str:
    """The key for a job submitted without one: the same (account, url, method, body) is the same job."""
    digest = hashlib.sha256()
    for part in (account_id, job["url"], job["method"], job["body"] or ""):
        digest.update(part.encode())
        digest.update(b"\0")
    return "auto_" + digest.hexdigest()[:40]


def credential_fingerprint(headers: dict[str, str]) -> str | None:
    """SHA-256 fingerprint of the first credential header, so a queue key never holds the credential itself."""
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in CREDENTIAL_HEADERS:
        if name in lowered:
            return hashlib.sha256(f"{name}:{lowered[name]}".encode()).hexdigest()[:24]
    return None


def queue_key(*, account_id: str, plan: str, job: dict[str, Any], account_queue: bool) -> str:
    """One queue per user per API key.

    Paid plans with per-key queues on: account + origin + credential fingerprint. Without a credential, or with
    per-key queues switched off for the target, the account's origin queue. Free plans share one queue per origin
    across free accounts, as the hosted service does.
    """
    origin = origin_of(job["url"])
    if plan == "free":
        return f"free|{origin}"
    fingerprint = credential_fingerprint(job["headers"]) if account_queue else None
    return f"{account_id}|{origin}|{fingerprint or '-'}"
