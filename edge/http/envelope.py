"""The SDK metering envelope of `POST /api/v1/proxy`: parse and judge it, and build its answers. Pure: no I/O.

The public SDKs never call the job API directly: they POST an envelope to a metering proxy (the hosted service's
"tracktags") which authenticates the account, checks its plan, and runs the inner call against the job API:

    {"scope": "customer", "metric_name": "", "target_url": "https://ezthrottle.fly.dev/api/v1/jobs",
     "method": "POST", "headers": {"Content-Type": "application/json"}, "body": "<the job, as a JSON string>"}

A node is both the proxy and the job API, so it runs the inner call in-process as the same account
(edge/http/api.py); nothing is ever fetched. This module decides what the node will run, and shapes the answers
the SDKs parse (see ../shared/reference/ezthrottle-api.md, sections 1 and 7, for what each SDK reads):

    200 {"status": "allowed", "breach_status": {...},
         "forwarded_response": {"status_code": int, "headers": {str: str}, "body": str}}
    429 {"status": "denied", "breach_status": {...}, "error": "Plan limit exceeded", "retry_at": <unix ms>}
    4xx {"error": "<reason phrase>", "message": "..."}   (400 malformed or refused target, 401 key, 413 size)

Decisions:
- Only the target's PATH counts, and only two are served: `/api/v1/jobs` and `/api/v1/webhook-secrets`. The host is
  ignored (the Go SDK hard-codes https://ezthrottle.fly.dev whatever it is configured with), but the target must be
  an absolute http(s) URL: any other path or scheme (`file:`, `gopher:`, a relative URL, the proxy itself) is a
  400, never a fetch. Query and fragment are ignored; the path must match exactly (no trailing slash, no
  percent-encoding, no dot segments).
- `target_url`, `method` and `body` are required (every SDK sends all three); `headers`, `scope` and `metric_name`
  are optional but must have the right types when present. Unknown fields are ignored.
- `body` is a string; for POST, PUT and PATCH it must hold JSON (else 400), for other methods it is ignored (the
  SDKs send "" with GET and DELETE). The inner Content-Type is not checked: the envelope's body is JSON by contract.
- The envelope's `headers` never authenticate: the inner call runs as the account of the outer `Authorization`, as
  the hosted proxy strips the caller's credentials and injects the account it authenticated.
- `scope` and `metric_name` are accepted and ignored: a node meters one thing, the account's plan quota.
- Without a usage report (no plans metering configured), `breach_status` is `NO_USAGE_BREACH_STATUS`: not breached,
  usage 0, limit 0 (read: no limit is enforced).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Final, final
from urllib.parse import urlsplit

JOBS_PATH: Final = "/api/v1/jobs"
WEBHOOK_SECRETS_PATH: Final = "/api/v1/webhook-secrets"
INNER_PATHS: Final = frozenset({JOBS_PATH, WEBHOOK_SECRETS_PATH})
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
METHODS_WITH_BODY: Final = frozenset({"POST", "PUT", "PATCH"})
# The same bounds as a job's own (edge/engine/spec.py): a target URL is at most 8 KiB, headers at most 100.
TARGET_URL_CHARS_MAX: Final = 8192
HEADERS_MAX: Final = 100
# scope and metric_name are short names in every SDK ("customer", ""); 256 is generous and keeps messages short.
NAME_CHARS_MAX: Final = 256

NO_USAGE_BREACH_STATUS: Final[Mapping[str, Any]] = MappingProxyType(
    {"is_breached": False, "current_usage": 0, "limit_value": 0, "limit_operator": "gte", "breach_action": "deny"}
)


class EnvelopeError(ValueError):
    """The envelope cannot be run: malformed, or a target this node does not serve. Always a 400."""

    status_hint = 400


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A judged envelope: what to run (`path`, `method`) and with what (`payload`, the parsed body, or None)."""

    target_url: str
    path: str  # one of INNER_PATHS
    method: str  # upper case, one of METHODS
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""
    payload: Any = None  # the body parsed as JSON, for METHODS_WITH_BODY; None otherwise
    scope: str = "customer"
    metric_name: str = ""


def parse_envelope(raw: bytes) -> Envelope:
    """Judge an envelope's raw bytes; raises EnvelopeError with a message for the caller."""
    doc = _json(raw, "the envelope")
    if not isinstance(doc, dict):
        raise EnvelopeError("the envelope must be a JSON object")
    for name in ("target_url", "method", "body"):
        if name not in doc:
            raise EnvelopeError(f"{name} is required")
    scope = _name(doc, "scope", "customer")
    metric_name = _name(doc, "metric_name", "")
    target_url, method, body = doc["target_url"], doc["method"], doc["body"]
    path = inner_path(target_url)
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise EnvelopeError(f"method must be one of {', '.join(sorted(METHODS))}")
    method = method.upper()
    if not isinstance(body, str):
        raise EnvelopeError("body must be a string (the inner request's JSON, serialised)")
    headers = _headers(doc.get("headers"))
    payload = _json(body, "body") if method in METHODS_WITH_BODY else None
    return Envelope(
        target_url=target_url,
        path=path,
        method=method,
        headers=headers,
        body=body,
        payload=payload,
        scope=scope,
        metric_name=metric_name,
    )


def inner_path(target_url: Any) -> str:
    """The path the envelope targets, if this node serves it; EnvelopeError for anything else."""
    if not isinstance(target_url, str) or not target_url:
        raise EnvelopeError("target_url must be a non-empty string")
    if len(target_url) > TARGET_URL_CHARS_MAX:
        raise EnvelopeError(f"target_url must be at most {TARGET_URL_CHARS_MAX} characters")
    try:
        parts = urlsplit(target_url)
    except ValueError:
        raise EnvelopeError("target_url is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise EnvelopeError("target_url must be an absolute http:// or https:// URL")
    if parts.path not in INNER_PATHS:
        raise EnvelopeError(f"target_url must name {' or '.join(sorted(INNER_PATHS))}; the host is ignored")
    return parts.path


def _json(raw: str | bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # ValueError covers JSONDecodeError and over-long integers; RecursionError a deeply nested array.
        raise EnvelopeError(f"{what} is not valid JSON") from None


def _name(doc: dict[str, Any], name: str, default: str) -> str:
    value = doc.get(name, default)
    if not isinstance(value, str) or len(value) > NAME_CHARS_MAX:
        raise EnvelopeError(f"{name} must be a string of at most {NAME_CHARS_MAX} characters")
    return value


def _headers(value: Any) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > HEADERS_MAX:
        raise EnvelopeError(f"headers must be an object of at most {HEADERS_MAX} string values")
    if not all(isinstance(v, str) for v in value.values()):
        raise EnvelopeError("headers must be an object of string values")
    return dict(value)


# -- answers ---------------------------------------------------------------------------------------------------


def forwarded_response(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The inner call's answer as the SDKs read it: header names in lower case, every value a plain string (the Go
    SDK's decoder refuses lists), the body as text."""
    return {
        "status_code": status,
        "headers": {str(name).lower(): str(value) for name, value in headers.items()},
        "body": body.decode("utf-8", errors="replace"),
    }


def allowed(breach_status: Mapping[str, Any], forwarded: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": "allowed", "breach_status": dict(breach_status), "forwarded_response": dict(forwarded)}


def denied(breach_status: Mapping[str, Any], retry_at_ms: int) -> dict[str, Any]:
    """The plan-limit refusal (HTTP 429): the Python SDK raises EZThrottleError(retry_at=...), Node RateLimitError,
    Go *EZThrottleError{RetryAt}."""
    return {
        "status": "denied",
        "breach_status": dict(breach_status),
        "error": "Plan limit exceeded",
        "retry_at": retry_at_ms,
    }


def refusal(status: int, message: str) -> dict[str, Any]:
    """A proxy-level error as the hosted proxy words it: {"error": "<reason phrase>", "message": ...}."""
    return {"error": HTTPStatus(status).phrase, "message": message}


def retry_after_s(retry_at_ms: int, now_ms: int) -> int:
    """`Retry-After` in whole seconds, rounded up and at least 1 (the SDKs parse it as an integer and a 0 would
    invite an immediate retry that is refused again)."""
    return max(1, math.ceil((retry_at_ms - now_ms) / 1000))
