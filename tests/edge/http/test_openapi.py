"""The OpenAPI document is valid OpenAPI 3.1 and says what the code does: the fields `validate_job` reads, its
bounds, the job route's id pattern. (tests/e2e/test_openapi_live.py holds a running node to it with schemathesis.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from edge.engine.spec import CAMEL_ALIASES, validate_job
from edge.http import api
from edge.http.envelope import parse_envelope
from edge.http.openapi import (
    EXAMPLE_ENVELOPE,
    EXAMPLE_JOB,
    EXAMPLE_WEBHOOK_SECRETS,
    HTTP_URL_PATTERN,
    JOB_ID_PATTERN,
    document,
    document_bytes,
)
from edge.placement.webhook_secrets import secret_refusal
from edge.problems import Problem

SCHEMAS = document()["components"]["schemas"]
URL = "https://api.example.com/x"


def test_the_document_is_valid_openapi_3_1():
    OpenAPIV31SpecValidator(document()).validate()
    assert json.loads(document_bytes()) == document()


def test_the_examples_are_accepted():
    validate_job(EXAMPLE_JOB)
    envelope = parse_envelope(json.dumps(EXAMPLE_ENVELOPE).encode())
    validate_job(envelope.payload)
    for value in EXAMPLE_WEBHOOK_SECRETS.values():
        assert value is None or secret_refusal(value) is None


def test_the_job_route_and_the_document_match_the_same_job_ids():
    assert api._JOB_PATH.pattern == "^/api/v1/jobs/(" + JOB_ID_PATTERN.removeprefix("^").removesuffix("$") + ")$"


# -- the fields validate_job reads are the schema's, and the reverse -----------------------------------------


class Reads(dict[str, Any]):
    """A JSON object that records which of its fields the validator reads."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(fields)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def fields_read() -> dict[str, set[str]]:
    """Per schema, the fields `validate_job` reads from one object of that kind (all present or not)."""
    on_error, on_timeout = Reads({"type": "on_error"}), Reads({"type": "on_timeout", "timeout_ms": 5})
    webhook, policy = Reads({"url": URL}), Reads({})
    fallback, nested = Reads({"url": URL, "trigger": on_error}), Reads({"url": URL})
    job = Reads({"url": URL, "webhooks": [webhook], "retry_policy": policy, "fallback_job": fallback})
    job["on_success"] = nested
    validate_job(job)
    validate_job({"url": URL, "fallback_job": {"url": URL, "trigger": on_timeout}})
    assert job.read == nested.read
    return {
        "Job": job.read,
        "FallbackJob": fallback.read,
        "Webhook": webhook.read,
        "RetryPolicy": policy.read,
        "Trigger on_error": on_error.read,
        "Trigger on_timeout": on_timeout.read,
    }


def documented(name: str) -> dict[str, Any]:
    if name.startswith("Trigger "):
        variant = name.removeprefix("Trigger ")
        return next(o for o in SCHEMAS["Trigger"]["oneOf"] if o["properties"]["type"]["const"] == variant)
    return SCHEMAS[name]


@pytest.mark.parametrize("name", list(fields_read()))
def test_every_field_the_validator_reads_is_documented_and_nothing_else(name: str):
    read = fields_read()[name]
    aliases = {CAMEL_ALIASES[field] for field in read if field in CAMEL_ALIASES}
    assert set(documented(name)["properties"]) == read | aliases


# -- the schema's bounds are the validator's -----------------------------------------------------------------


def job_with(where: str, field: str, value: Any) -> dict[str, Any]:
    """A valid job but for `field` of the object `where` names."""
    inner = {field: value}
    if where == "Job":
        return {"url": URL, **inner}
    if where == "RetryPolicy":
        return {"url": URL, "retry_policy": inner}
    if where == "Webhook":
        return {"url": URL, "webhooks": [{"url": URL, **inner}]}
    trigger = {"type": "on_error"} if where == "Trigger on_error" else {"type": "on_timeout", "timeout_ms": 1}
    return {"url": URL, "fallback_job": {"url": URL, "trigger": {**trigger, **inner}}}


PREFIXES = {
    "Job": "",
    "RetryPolicy": "retry_policy.",
    "Webhook": "webhooks[0].",
    "Trigger on_error": "fallback_job.trigger.",
    "Trigger on_timeout": "fallback_job.trigger.",
}


def refused_field(job: dict[str, Any]) -> str | None:
    with pytest.raises(Problem) as caught:
        validate_job(job)
    assert caught.value.status == 422
    return caught.value.field


def options(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property."""
    return [option for option in schema.get("anyOf", [schema]) if option.get("type") != "null"]


def of_type(*kinds: str, having: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a schema is of one of `kinds` (or any type, without kinds) and uses the keyword `having`."""

    def matches(schema: dict[str, Any]) -> bool:
        declared = schema.get("type", [])
        types = {declared} if isinstance(declared, str) else set(declared)
        return having in schema and (not kinds or bool(types & set(kinds)))

    return matches


def bounded(matches: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """Every (object, field, non-null alternative) of the job's schemas that `matches`, as test parameters."""
    return [
        pytest.param(where, field, option, id=f"{where}.{field}")
        for where in PREFIXES
        for field, schema in documented(where)["properties"].items()
        for option in options(schema)
        if matches(option)
    ]


def is_status_codes(schema: dict[str, Any]) -> bool:
    return of_type("array", having="items")(schema) and "minimum" in schema["items"]


@pytest.mark.parametrize(("where", "field", "schema"), bounded(of_type("integer", "number", having="minimum")))
def test_numeric_bounds_are_the_validators(where: str, field: str, schema: dict[str, Any]):
    low, high = schema["minimum"], schema["maximum"]
    for value in (low, high):
        validate_job(job_with(where, field, value))
    for value in (low - 1, high + 1, str(low)):
        assert refused_field(job_with(where, field, value)) == PREFIXES[where] + field


@pytest.mark.parametrize(("where", "field", "schema"), bounded(is_status_codes))
def test_status_code_bounds_are_the_validators(where: str, field: str, schema: dict[str, Any]):
    items = schema["items"]
    validate_job(job_with(where, field, [items["minimum"], items["maximum"]]))
    for value in (items["minimum"] - 1, items["maximum"] + 1):
        assert refused_field(job_with(where, field, [value])) == PREFIXES[where] + field


def text_of(schema: dict[str, Any], length: int) -> str:
    """A string of `length` characters that the schema's pattern, if any, accepts."""
    prefix = "https://a.example/" if schema.get("pattern") == HTTP_URL_PATTERN else ""
    assert schema.get("pattern") in (None, HTTP_URL_PATTERN), "add a filler for this pattern"
    return prefix + "a" * (length - len(prefix))


@pytest.mark.parametrize(("where", "field", "schema"), bounded(of_type("string", having="maxLength")))
def test_length_bounds_are_the_validators(where: str, field: str, schema: dict[str, Any]):
    validate_job(job_with(where, field, text_of(schema, schema["maxLength"])))
    assert refused_field(job_with(where, field, text_of(schema, schema["maxLength"] + 1))) == PREFIXES[where] + field
    if schema.get("minLength", 0) > 0 and "pattern" not in schema:
        assert refused_field(job_with(where, field, "a" * (schema["minLength"] - 1))) == PREFIXES[where] + field


@pytest.mark.parametrize(("where", "field", "schema"), bounded(of_type(having="enum")))
def test_enums_are_the_validators(where: str, field: str, schema: dict[str, Any]):
    for value in schema["enum"]:
        validate_job(job_with(where, field, value))
    assert refused_field(job_with(where, field, "none of them")) == PREFIXES[where] + field


def test_counts_of_webhooks_and_headers_are_the_validators():
    job = SCHEMAS["Job"]["properties"]
    webhooks_max, headers_max = job["webhooks"]["maxItems"], job["headers"]["maxProperties"]
    hooks = [{"url": f"https://h{i}.example/"} for i in range(webhooks_max + 1)]
    headers = {f"X-H{i}": "v" for i in range(headers_max + 1)}
    validate_job({"url": URL, "webhooks": hooks[:-1], "headers": dict(list(headers.items())[:-1])})
    assert refused_field({"url": URL, "webhooks": hooks}) == "webhooks"
    assert refused_field({"url": URL, "headers": headers}) == "headers"


def test_header_rules_are_the_validators():
    rules = SCHEMAS["Job"]["properties"]["headers"]
    for name in rules["propertyNames"]["not"]["enum"]:
        assert refused_field({"url": URL, "headers": {name: "x"}}) == f"headers.{name}"
    too_long = "v" * (rules["additionalProperties"]["maxLength"] + 1)
    assert refused_field({"url": URL, "headers": {"X-A": too_long}}) == "headers.X-A"
