"""`GET /openapi.json`: the OpenAPI 3.1 description of a node's public HTTP API, served by the node itself.

Built from the code's own constants (a job's fields and bounds from edge/engine/spec.py, the SDK envelope's from
edge/http/envelope.py, the webhook secrets' from edge/placement/webhook_secrets.py, the problem types' base from
edge/problems.py), so a changed bound changes the document with it. What no constant says (which fields
`validate_job` reads, the route's job id pattern) is held to the code by tests/edge/http/test_openapi.py, and
tests/e2e/test_openapi_live.py runs schemathesis against a real node with this document.

Schema conventions, following how `validate_job` reads a job:
- an optional field sent as null counts as absent, so optional fields allow null;
- unknown fields are ignored, so objects stay open (no `additionalProperties: false`);
- camelCase aliases are listed untyped: the snake_case field wins when both are present, so an alias is held to
  its field's rules only when that field is absent (which JSON Schema can say only clumsily).

Not described: /internal/v1/... (node to node, msgpack, authenticated with the cluster keyring).
"""

from __future__ import annotations

import functools
import json
from importlib.metadata import version
from typing import Any, Final, get_args

from edge.engine import spec
from edge.engine.records import DeliveryState, JobStatus
from edge.http import envelope
from edge.placement.webhook_secrets import SECRET_BYTES_MAX, SECRET_CHARS_MIN
from edge.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE

OPENAPI_PATH: Final = "/openapi.json"
# The job id as `/api/v1/jobs/{job_id}` matches it (edge/http/api.py `_JOB_PATH`; a test keeps the two equal).
JOB_ID_PATTERN: Final = r"^[A-Za-z0-9_\-]{1,128}$"
# What `validate_http_url` refuses on sight: another scheme, or whitespace (its `_URL_WHITESPACE`).
HTTP_URL_PATTERN: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\t\n\r ]+$"

# The README's job, with every field of the public contract (tests/edge/http/test_openapi.py: the node accepts it).
EXAMPLE_JOB: Final = {
    "url": "https://api.stripe.com/v1/charges",
    "method": "POST",
    "headers": {"Authorization": "Bearer sk_live_...", "Content-Type": "application/x-www-form-urlencoded"},
    "body": "amount=4200&currency=usd",
    "metadata": {"order": "42"},
    "webhooks": [{"url": "https://app.example.com/hooks/ezthrottle", "has_quorum_vote": True}],
    "webhook_quorum": 1,
    "idempotent_key": "order-42",
    "retry_at": 1764000000000,
    "retry_policy": {"max_retries": 3, "max_reroutes": 2, "retry_codes": [429, 503], "reroute_codes": [500, 502]},
    "regions": ["iad", "lax"],
    "region_policy": "fallback",
    "execution_mode": "race",
    "fallback_job": {"url": "https://backup.example.com/charge", "trigger": {"type": "on_error", "codes": [500, 502]}},
    "on_success": {"url": "https://app.example.com/after"},
    "on_failure": {"url": "https://app.example.com/alert"},
    "send_idempotency_key": True,
    "deadline_ms": 86400000,
}
# What the Python SDK sends for a job (the Go SDK names this host whatever it is configured with).
EXAMPLE_ENVELOPE: Final = {
    "scope": "customer",
    "metric_name": "",
    "target_url": "https://ezthrottle.fly.dev" + envelope.JOBS_PATH,
    "method": "POST",
    "headers": {"Content-Type": "application/json"},
    "body": json.dumps({"url": "https://api.example.com/v1/ping", "idempotent_key": "ping-1"}),
}
EXAMPLE_WEBHOOK_SECRETS: Final = {"primary_secret": "whsec_0123456789abcdef", "secondary_secret": None}

Schema = dict[str, Any]
_JSON: Final = "application/json"
_PROBLEM: Final = PROBLEM_CONTENT_TYPE.decode()


@functools.cache
def document_bytes() -> bytes:
    """The document as served: built once, since it depends on nothing but the code."""
    return json.dumps(_build(), separators=(",", ":")).encode()


def document() -> Schema:
    """A fresh copy of the document, for a caller to keep or change (the schemas share their building blocks)."""
    return dict(json.loads(document_bytes()))


def _build() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "EZThrottle Edge",
            "version": version("ezthrottle-edge"),
            "summary": "The job API of one node, the public SDKs' proxy envelope, and the node's operations.",
            "description": (
                "Every call except /healthz, /readyz, /metrics and /openapi.json takes "
                "`Authorization: Bearer <account key>`. Errors are RFC 9457 `application/problem+json` naming the "
                "offending field, except `POST /api/v1/proxy`'s own refusals, which keep the hosted proxy's shape "
                "for the SDKs that parse them. A method a path does not serve is a 405 with `Allow`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An account key from the node's configuration ([[accounts]] key).",
                }
            },
            "schemas": _schemas(),
            "responses": _shared_responses(),
        },
    }


# -- building blocks -------------------------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: Schema) -> Schema:
    """An optional field: `validate_job` reads null as absent."""
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _integer(minimum: int, maximum: int, description: str = "") -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    return {**schema, "description": description} if description else schema


def _any_case(words: frozenset[str]) -> str:
    """A pattern for `words` in any letter case (`validate_job` upper-cases a method before checking it)."""
    spelled = ("".join(f"[{c.upper()}{c.lower()}]" for c in word) for word in sorted(words))
    return "^(?:" + "|".join(spelled) + ")$"


def _http_url(description: str) -> Schema:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": spec.URL_CHARS_MAX,
        "pattern": HTTP_URL_PATTERN,
        "description": description + "; absolute http(s), with a host, no whitespace and no credentials",
    }


def _status_codes(description: str) -> Schema:
    code = _integer(spec.STATUS_CODE_MIN, spec.STATUS_CODE_MAX)
    return _or_null({"type": "array", "items": code, "description": description})


def _with_aliases(properties: dict[str, Schema]) -> dict[str, Schema]:
    """`properties` plus the camelCase alias of each that has one (module docstring: why untyped)."""
    aliases = {
        spec.CAMEL_ALIASES[name]: {
            "description": f"camelCase alias of `{name}` (the Node and Go SDKs send it); read only without `{name}`"
        }
        for name in properties
        if name in spec.CAMEL_ALIASES
    }
    return {**properties, **aliases}


def _object(properties: dict[str, Schema], *, required: tuple[str, ...] = (), description: str = "") -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _string(description: str = "") -> Schema:
    return {"type": "string", "description": description} if description else {"type": "string"}


_NULLABLE_INT: Final = {"type": ["integer", "null"]}
_NULLABLE_STRING: Final = {"type": ["string", "null"]}


# -- schemas ---------------------------------------------------------------------------------------------------


def _job_properties() -> dict[str, Schema]:
    """A job's fields as `validate_job` reads them (tests/edge/http/test_openapi.py compares the two)."""
    regions = _or_null(
        {
            "type": "array",
            "items": {"type": "string", "pattern": spec.REGION_PATTERN.pattern},
            "description": "region codes such as iad, lax, ord (README: Regions)",
        }
    )
    return {
        "url": _http_url("the target"),
        "method": {
            "type": "string",
            "pattern": _any_case(spec.HTTP_METHODS),
            "description": f"one of {', '.join(sorted(spec.HTTP_METHODS))}, in any case; default GET",
        },
        "headers": _or_null(
            {
                "type": "object",
                "maxProperties": spec.HEADERS_MAX,
                "propertyNames": {
                    "pattern": spec.HEADER_NAME_PATTERN.pattern,
                    "not": {"enum": sorted(spec.FRAMING_HEADERS)},
                },
                "additionalProperties": {
                    "type": "string",
                    "maxLength": spec.HEADER_VALUE_CHARS_MAX,
                    "pattern": spec.HEADER_VALUE_PATTERN.pattern,
                },
                "description": (
                    "sent to the target as they are, each value one line of ASCII; framing headers (any case: "
                    f"{', '.join(sorted(spec.FRAMING_HEADERS))}) are refused, the node frames requests itself"
                ),
            }
        ),
        "body": _or_null(_string("the request body as text (serialise JSON bodies before sending)")),
        "metadata": _or_null(
            {
                "type": "object",
                "description": "returned as it is, in the job and its webhooks (finite numbers, integers of at "
                "most 64 bits)",
            }
        ),
        "webhooks": _or_null({"type": "array", "maxItems": spec.WEBHOOKS_MAX, "items": _ref("Webhook")}),
        "webhook_quorum": _or_null(
            _integer(1, spec.WEBHOOKS_MAX, "deliveries that must succeed; at most the webhooks with a quorum vote")
        ),
        "regions": regions,
        "region_policy": _or_null({"enum": list(spec.REGION_POLICIES), "description": "default fallback"}),
        "execution_mode": _or_null({"enum": list(spec.EXECUTION_MODES), "description": "default race"}),
        "retry_policy": _or_null(_ref("RetryPolicy")),
        "idempotent_key": _or_null(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": spec.IDEMPOTENT_KEY_CHARS_MAX,
                "description": "the same key is the same job (200 with its job_id); derived from (account, url, "
                "method, body) when absent",
            }
        ),
        "send_idempotency_key": {
            "type": "boolean",
            "description": "extension: forward idempotent_key as an Idempotency-Key header",
        },
        "retry_at": _or_null(_integer(0, spec.RETRY_AT_MAX, "unix ms: no attempt before then")),
        "deadline_ms": _or_null(
            _integer(1, spec.DEADLINE_MS_MAX, "extension: how long the job may keep retrying; default 24 h")
        ),
        "on_failure_timeout_ms": _or_null(_integer(0, spec.DEADLINE_MS_MAX, "README: Workflows")),
        "hedge_after_ms": {
            "anyOf": [
                {"const": "auto"},
                {"type": "number", "minimum": 1, "maximum": spec.HEDGE_AFTER_MS_MAX},
                {"type": "null"},
            ],
            "description": "extension: start a second region when the first is this slow (README: Regions)",
        },
        "tier": _or_null(_string()),
        "on_success": _or_null(_ref("Job")),
        "on_failure": _or_null(_ref("Job")),
        "fallback_job": _or_null(_ref("FallbackJob")),
    }


_JOB_RULES: Final = (
    "Unknown fields are ignored. Rules a schema cannot hold: `webhook_quorum` is at most the number of webhooks "
    f"with a quorum vote; nested jobs go at most {spec.NESTING_DEPTH_MAX} levels deep; a target or webhook on a "
    "loopback or private IP literal (or a loopback name) is refused (422 target-refused) unless the node sets "
    "security.allow_private_targets."
)


def _schemas() -> dict[str, Schema]:
    job = _with_aliases(_job_properties())
    trigger_timeout = _integer(1, spec.TRIGGER_TIMEOUT_MS_MAX)
    return {
        "Job": _object(job, required=("url",), description="A job, as `POST /api/v1/jobs` takes it. " + _JOB_RULES),
        "FallbackJob": _object(
            {**job, "trigger": _ref("Trigger")},
            required=("url", "trigger"),
            description="A job that runs when its parent's trigger fires (README: Workflows). " + _JOB_RULES,
        ),
        "Webhook": _object(
            _with_aliases(
                {
                    "url": _http_url("where the result is POSTed"),
                    "regions": _job_properties()["regions"],
                    "has_quorum_vote": {"type": "boolean", "description": "default true"},
                }
            ),
            required=("url",),
        ),
        "RetryPolicy": _object(
            _with_aliases(
                {
                    "max_retries": _or_null(_integer(0, spec.RETRIES_MAX, "default 3; a 429 never uses one up")),
                    "max_reroutes": _or_null(_integer(0, spec.RETRIES_MAX, "default 2")),
                    "retry_codes": _status_codes("retried in place; default [429, 503]"),
                    "reroute_codes": _status_codes("retried in another region; default [500, 502, 504]"),
                }
            )
        ),
        "Trigger": {
            "oneOf": [
                _object(
                    {"type": {"const": "on_error"}, "codes": _status_codes("final statuses that trigger it")},
                    required=("type",),
                ),
                {
                    **_object(
                        _with_aliases({"type": {"const": "on_timeout"}, "timeout_ms": trigger_timeout}),
                        required=("type",),
                    ),
                    "anyOf": [{"required": ["timeout_ms"]}, {"required": [spec.CAMEL_ALIASES["timeout_ms"]]}],
                },
            ]
        },
        "JobAccepted": _object(
            {
                "job_id": _string(),
                "status": {
                    "enum": [*get_args(JobStatus), "racing"],
                    "description": "racing: a queued job that races several regions",
                },
                "idempotent_key": _string(),
            },
            required=("job_id", "status", "idempotent_key"),
        ),
        "JobView": _job_view(),
        "Problem": _object(
            {
                "type": {"type": "string", "format": "uri", "description": f"{PROBLEM_TYPE_BASE}<kind>"},
                "title": _string(),
                "status": _integer(400, 599),
                "detail": _string(),
                "field": _string("the offending field, a dotted path such as webhooks[0].url"),
                "instance": _string("the request path"),
                "retry_at": {"type": "integer", "description": "quota-exceeded: unix ms when the quota resets"},
                "limit": {"type": "integer", "description": "quota-exceeded: the plan's monthly jobs"},
                "job_status": _string("not-cancellable: the job's status"),
            },
            required=("type", "title", "status"),
            description="RFC 9457 problem details",
        ),
        **_proxy_schemas(),
        **_secrets_and_status_schemas(),
    }


def _job_view() -> Schema:
    attempt = _object(
        {
            "region": _NULLABLE_STRING,
            "outcome": _string(),
            "at_ms": {"type": "integer"},
            "duration_ms": {"type": ["number", "null"]},
            "status_code": _NULLABLE_INT,
            "error": _NULLABLE_STRING,
            "delay_s": {"type": ["number", "null"]},
            "delay_reason": _NULLABLE_STRING,
        }
    )
    delivery = _object(
        {
            "url": _string(),
            "has_quorum_vote": {"type": "boolean"},
            "state": {"enum": list(get_args(DeliveryState))},
            "tries": {"type": "integer"},
            "next_at_ms": _NULLABLE_INT,
            "last_status": _NULLABLE_INT,
            "last_error": _NULLABLE_STRING,
        }
    )
    timestamps = ("created_at_ms", "updated_at_ms", "deadline_at_ms", "next_attempt_at_ms", "finished_at_ms")
    counts = ("retries_used", "reroutes_used", "attempts_total", "attempts_not_listed")
    return _object(
        {
            "job_id": _string(),
            "status": {"enum": list(get_args(JobStatus))},
            "idempotent_key": _string(),
            "request": _object(
                {
                    "url": _string(),
                    "method": _string(),
                    "header_names": {"type": "array", "items": _string(), "description": "values are never shown"},
                    "body_bytes": {"type": "integer"},
                }
            ),
            "queue_key": _string(),
            "metadata": {"type": "object"},
            **{name: _NULLABLE_INT for name in timestamps},
            **{name: {"type": "integer"} for name in counts},
            "regions_tried": {"type": "array", "items": _string()},
            "attempts": {"type": "array", "items": attempt, "description": "the first 3 and the last 10"},
            "response": {"type": ["object", "null"], "description": "the final response"},
            "region_responses": {"type": ["object", "null"], "description": "fanout: each region's response"},
            "error": _NULLABLE_STRING,
            "webhooks": _object(
                {
                    "outcome": _string(),
                    "quorum": {"type": "integer"},
                    "deliveries": {"type": "array", "items": delivery},
                }
            ),
        },
        required=("job_id", "status", "idempotent_key", "request", "attempts", "webhooks"),
    )


def _proxy_schemas() -> dict[str, Schema]:
    breach = _object(
        {
            "is_breached": {"type": "boolean"},
            "current_usage": {"type": "integer"},
            "limit_value": {"type": "integer", "description": "0: no limit enforced"},
            "limit_operator": _string(),
            "breach_action": _string(),
        },
        required=tuple(envelope.NO_USAGE_BREACH_STATUS),
    )
    inner_paths = " or ".join(sorted(envelope.INNER_PATHS))
    name = {"type": "string", "maxLength": envelope.NAME_CHARS_MAX, "description": "accepted and ignored"}
    return {
        "ProxyEnvelope": _object(
            {
                "target_url": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": envelope.TARGET_URL_CHARS_MAX,
                    "description": f"an absolute http(s) URL whose path is exactly {inner_paths}; the host is "
                    "ignored and nothing is fetched",
                },
                "method": {"type": "string", "pattern": _any_case(envelope.METHODS)},
                "headers": _or_null(
                    {
                        "type": "object",
                        "maxProperties": envelope.HEADERS_MAX,
                        "additionalProperties": {"type": "string"},
                        "description": "never authenticate: the inner call runs as the outer key's account",
                    }
                ),
                "body": _string(
                    f"the inner request's JSON as a string (for {', '.join(sorted(envelope.METHODS_WITH_BODY))}; "
                    "ignored otherwise)"
                ),
                "scope": name,
                "metric_name": name,
            },
            required=("target_url", "method", "body"),
            description="The public SDKs' metering envelope; its inner call runs in-process as the same account.",
        ),
        "BreachStatus": breach,
        "ProxyAllowed": _object(
            {
                "status": {"const": "allowed"},
                "breach_status": _ref("BreachStatus"),
                "forwarded_response": _object(
                    {
                        "status_code": {"type": "integer"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "body": _string("the inner call's answer, refusals (problem+json) included"),
                    },
                    required=("status_code", "headers", "body"),
                ),
            },
            required=("status", "breach_status", "forwarded_response"),
        ),
        "ProxyDenied": _object(
            {
                "status": {"const": "denied"},
                "breach_status": _ref("BreachStatus"),
                "error": {"const": "Plan limit exceeded"},
                "retry_at": {"type": "integer", "description": "unix ms"},
            },
            required=("status", "breach_status", "error", "retry_at"),
        ),
        "ProxyRefusal": _object(
            {"error": _string("the status's reason phrase"), "message": _string()},
            required=("error", "message"),
        ),
    }


def _secrets_and_status_schemas() -> dict[str, Schema]:
    secret = {
        "type": "string",
        "minLength": SECRET_CHARS_MIN,
        "maxLength": SECRET_BYTES_MAX,
        "description": f"at least {SECRET_CHARS_MIN} characters and at most {SECRET_BYTES_MAX} bytes as UTF-8",
    }
    return {
        "WebhookSecretsInput": _object(
            {"primary_secret": secret, "secondary_secret": _or_null(secret)},
            required=("primary_secret",),
            description="Replaces both secrets; without secondary_secret the secondary is cleared.",
        ),
        "WebhookSecretsView": _object(
            {
                "customer_id": _string(),
                "primary_secret": _string("masked: abcd****efgh"),
                "secondary_secret": _NULLABLE_STRING,
                "has_secondary": {"type": "boolean"},
                "source": {"enum": ["api", "config"]},
            },
            required=("customer_id", "primary_secret", "secondary_secret", "has_secondary", "source"),
        ),
        "StatusMessage": _object({"status": {"const": "ok"}, "message": _string()}, required=("status", "message")),
        "Usage": _object(
            {
                "account_id": _string(),
                "plan": _NULLABLE_STRING,
                "month": _string("YYYY-MM, UTC"),
                "count": {"type": "integer"},
                "quota": _NULLABLE_INT,
                "overage_max": _NULLABLE_INT,
                "remaining": _NULLABLE_INT,
                "overage": {"type": "integer"},
                "resets_at_ms": {"type": "integer"},
                "rights_here": _NULLABLE_INT,
            },
            required=("account_id", "month", "count", "resets_at_ms"),
        ),
        "Queues": _object(
            {"account_id": _string(), "queues": {"type": "array", "items": {"type": "object"}}},
            required=("account_id", "queues"),
        ),
        "Regions": _object({"regions": {"type": "array", "items": {"type": "object"}}}, required=("regions",)),
        "Cluster": _object(
            {"enabled": {"type": "boolean"}, "members": {"type": "array", "items": {"type": "object"}}},
            required=("enabled",),
        ),
        "Dashboard": _object(
            {
                "scope": {"enum": ["account", "operator"]},
                "account_id": _NULLABLE_STRING,
                "node": _string(),
                "generated_at_ms": {"type": "integer"},
                "interval_s": {"type": "number", "description": "seconds between two points of `series`"},
                "members_unreachable": {"type": "array", "items": _string()},
                "queues": {"type": "array", "items": {"type": "object"}, "description": "the busiest, as in Queues"},
                "queues_total": {"type": "integer"},
                "cluster": _ref("Cluster"),
                "regions": _or_null(_ref("Regions")),
                "usage": {"type": "array", "items": _ref("Usage")},
                "recent_jobs": {"type": "array", "items": {"type": "object"}},
                "proxy": {"type": "array", "items": {"type": "object"}, "description": "the operator's only"},
                "series": {"type": "array", "items": {"type": "object"}},
            },
            required=(
                "scope",
                "account_id",
                "node",
                "generated_at_ms",
                "interval_s",
                "queues",
                "queues_total",
                "cluster",
                "usage",
                "recent_jobs",
                "proxy",
                "series",
            ),
            description="GET /dashboard's data: an account's, or with the operator's token every account's.",
        ),
    }


# -- paths -----------------------------------------------------------------------------------------------------


def _json_content(schema: Schema) -> Schema:
    return {_JSON: {"schema": schema}}


def _answer(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": _json_content(schema)}


def _problem(description: str, *, retry_after: bool = False) -> Schema:
    response: Schema = {"description": description, "content": {_PROBLEM: {"schema": _ref("Problem")}}}
    if retry_after:
        response["headers"] = {"Retry-After": _retry_after_header()}
    return response


def _retry_after_header() -> Schema:
    return {"required": True, "schema": {"type": "integer", "minimum": 1}, "description": "seconds"}


def _shared(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _shared_responses() -> dict[str, Schema]:
    return {
        "Unauthorized": {
            **_problem("no known account key in `Authorization: Bearer <key>`"),
            "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
        },
        "MalformedBody": _problem("the body is not JSON (malformed-json), or it did not arrive"),
        "BodyTooLarge": _problem("the body is over server.body_bytes_max (1 MiB by default)"),
        "NotJson": _problem("the body is not application/json"),
        "InvalidField": _problem("a field is invalid; `field` names it"),
        "StoreUnavailable": _problem("the change could not be made durable", retry_after=True),
    }


def _operation(operation_id: str, summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def _json_body(schema_name: str, example: Schema) -> Schema:
    return {"required": True, "content": {_JSON: {"schema": _ref(schema_name), "example": example}}}


_PUBLIC: Final[dict[str, Any]] = {"security": []}


def _paths() -> dict[str, Schema]:
    unauthorized = _shared("Unauthorized")
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
    }
    job_not_found = _problem("no such job for this account (also a job of another account)")
    location = {"Location": {"required": True, "schema": {"type": "string"}, "description": "the job's URL"}}
    return {
        "/healthz": {
            "get": _operation(
                "healthz", "liveness", {"200": _answer("alive", _object({"status": {"const": "ok"}}))}, **_PUBLIC
            )
        },
        "/readyz": {
            "get": _operation(
                "readyz",
                "readiness: 503 while the node starts or stops",
                {
                    "200": _answer("ready", _object({"status": {"const": "ready"}})),
                    "503": _problem("starting or stopping", retry_after=True),
                },
                **_PUBLIC,
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus text exposition",
                {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                **_PUBLIC,
            )
        },
        OPENAPI_PATH: {
            "get": _operation(
                "openapi", "this document", {"200": _answer("OpenAPI 3.1", {"type": "object"})}, **_PUBLIC
            )
        },
        "/api/v1/jobs": {
            "post": _operation(
                "submitJob",
                "submit a job; acknowledged only once it is durable",
                {
                    "200": {
                        **_answer("a duplicate idempotent_key: the same job", _ref("JobAccepted")),
                        "headers": location,
                    },
                    "201": {**_answer("accepted", _ref("JobAccepted")), "headers": location},
                    "400": _shared("MalformedBody"),
                    "401": unauthorized,
                    "413": _shared("BodyTooLarge"),
                    "415": _shared("NotJson"),
                    "422": _shared("InvalidField"),
                    "429": _problem(
                        "backlog-full (server.account_backlog_max unfinished jobs) or quota-exceeded (the plan's "
                        "monthly jobs; `retry_at`, `limit`)",
                        retry_after=True,
                    ),
                    "503": _shared("StoreUnavailable"),
                },
                requestBody=_json_body("Job", EXAMPLE_JOB),
            )
        },
        "/api/v1/jobs/{job_id}": {
            "parameters": [job_id],
            "get": _operation(
                "getJob",
                "the job: status, attempts, response, webhook deliveries",
                {"200": _answer("the job", _ref("JobView")), "401": unauthorized, "404": job_not_found},
            ),
            "delete": _operation(
                "cancelJob",
                "cancel a queued job",
                {
                    "200": _answer("cancelled", _ref("JobView")),
                    "401": unauthorized,
                    "404": job_not_found,
                    "409": _problem("not-cancellable: the job is running or finished (`job_status`)"),
                    "503": _shared("StoreUnavailable"),
                },
            ),
        },
        "/api/v1/jobs/{job_id}/events": {
            "parameters": [job_id],
            "get": _operation(
                "jobEvents",
                "the job's life as Server-Sent Events",
                {
                    "200": {
                        "description": (
                            "One event per step of the job's life, each `event: <type>` with `data:` one line of JSON "
                            "(type, job_id, seq, at_ms, node, and the type's own fields): queued, dispatched "
                            "(regions), attempt (region, outcome, status_code, error, duration_ms), retry_scheduled "
                            "(next_attempt_at_ms, delay_s, reason), finished (status), webhook (index, result, "
                            "status_code), moved (to: the job went to another node, and goes on there), end. A "
                            "reader that comes late gets the events kept so far first. The stream ends after `end`: "
                            "the job is final and each of its webhooks was tried once. A comment line keeps a quiet "
                            "stream alive. A client that disconnects does not affect the job; any node of the "
                            "cluster serves it. A job whose events no node keeps is followed by its record: "
                            "`snapshot` events, then `end`."
                        ),
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "401": unauthorized,
                    "404": job_not_found,
                    "503": _problem(
                        "too-many-streams: this node has as many event streams open as it takes", retry_after=True
                    ),
                },
            ),
        },
        "/api/v1/proxy": {
            "post": _operation(
                "proxy",
                "the public SDKs' envelope: runs /api/v1/jobs or /api/v1/webhook-secrets in-process",
                {
                    "200": _answer("the inner call ran; its answer is in forwarded_response", _ref("ProxyAllowed")),
                    "400": _answer("malformed envelope or another target", _ref("ProxyRefusal")),
                    "401": {
                        **_answer("Invalid API key", _ref("ProxyRefusal")),
                        "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
                    },
                    "413": _answer("over server.body_bytes_max", _ref("ProxyRefusal")),
                    "429": {
                        **_answer("plan limit exceeded", _ref("ProxyDenied")),
                        "headers": {"Retry-After": _retry_after_header()},
                    },
                },
                requestBody=_json_body("ProxyEnvelope", EXAMPLE_ENVELOPE),
            )
        },
        "/api/v1/webhook-secrets": _webhook_secrets_path(unauthorized),
        "/api/v1/usage": {
            "get": _operation(
                "getUsage",
                "the account's plan usage this month",
                {
                    "200": _answer("usage", _ref("Usage")),
                    "401": unauthorized,
                    "404": _problem("usage-not-metered"),
                },
            )
        },
        "/api/v1/regions": {
            "get": _operation(
                "getRegions",
                "regions with their members, and the health of the origins the account uses",
                {"200": _answer("regions", _ref("Regions")), "401": unauthorized},
            )
        },
        "/api/v1/queues": {
            "get": _operation(
                "getQueues",
                "the account's queues: depth, in flight, limits and where each came from, blocked until when",
                {"200": _answer("queues", _ref("Queues")), "401": unauthorized},
            )
        },
        "/api/v1/dashboard": {
            "get": _operation(
                "getDashboard",
                "the dashboard's data: an account key's own account, or with the operator's token every account",
                {"200": _answer("the dashboard", _ref("Dashboard")), "401": unauthorized},
            )
        },
        "/dashboard": {
            "get": _operation(
                "getDashboardPage",
                "the dashboard page (it asks for a key; its data needs one)",
                {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}},
                **_PUBLIC,
            )
        },
        "/api/v1/cluster": {
            "get": _operation(
                "getCluster",
                "members and this node's view of ownership",
                {"200": _answer("cluster", _ref("Cluster")), "401": unauthorized},
            )
        },
    }


def _webhook_secrets_path(unauthorized: Schema) -> Schema:
    none_kept = _problem("webhook-secrets-unavailable: this node keeps no webhook secrets")
    conflict = _problem("webhook-secrets-unavailable: a cluster without keys cannot seal them")
    return {
        "post": _operation(
            "setWebhookSecrets",
            "set the account's webhook signing secrets",
            {
                "200": _answer("saved", _ref("StatusMessage")),
                "400": _shared("MalformedBody"),
                "401": unauthorized,
                "404": none_kept,
                "409": conflict,
                "413": _shared("BodyTooLarge"),
                "415": _shared("NotJson"),
                "422": _shared("InvalidField"),
                "503": _shared("StoreUnavailable"),
            },
            requestBody=_json_body("WebhookSecretsInput", EXAMPLE_WEBHOOK_SECRETS),
        ),
        "get": _operation(
            "getWebhookSecrets",
            "the secrets in use, masked",
            {
                "200": _answer("the secrets, masked", _ref("WebhookSecretsView")),
                "401": unauthorized,
                "404": _problem("no secrets: webhooks go out unsigned"),
            },
        ),
        "delete": _operation(
            "deleteWebhookSecrets",
            "delete the API's secrets (the config file's stay)",
            {
                "200": _answer("deleted (also when none were set)", _ref("StatusMessage")),
                "401": unauthorized,
                "404": none_kept,
                "409": conflict,
                "503": _shared("StoreUnavailable"),
            },
        ),
    }
