"""The SDK envelope core: what it runs, what it refuses, and the answers the SDKs parse (no I/O, no node)."""

from __future__ import annotations

import json

import pytest

from edge.http.envelope import (
    JOBS_PATH,
    NO_USAGE_BREACH_STATUS,
    WEBHOOK_SECRETS_PATH,
    EnvelopeError,
    allowed,
    denied,
    forwarded_response,
    parse_envelope,
    refusal,
    retry_after_s,
)


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def python_sdk_submit(job: dict, base: str = "http://127.0.0.1:8080") -> bytes:
    """What ezthrottle 1.3.0's `submit_job` POSTs (client.py, verbatim shape)."""
    return raw(
        scope="customer",
        metric_name="",
        target_url=f"{base}/api/v1/jobs",
        method="POST",
        headers={"Content-Type": "application/json"},
        body=json.dumps(job),
    )


def test_the_python_sdks_submission_is_a_job_post_with_its_parsed_body():
    job = {"url": "https://api.example.com/x", "method": "GET", "idempotent_key": "k"}
    envelope = parse_envelope(python_sdk_submit(job))
    assert (envelope.path, envelope.method, envelope.payload) == (JOBS_PATH, "POST", job)
    assert envelope.scope == "customer" and envelope.metric_name == ""
    assert envelope.headers == {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "target",
    [
        "https://ezthrottle.fly.dev/api/v1/webhook-secrets",  # the Go SDK's hard-coded host
        "http://127.0.0.1:8080/api/v1/webhook-secrets",
        "http://10.0.0.1/api/v1/webhook-secrets?x=1#frag",  # a private host: never fetched, so it does not matter
        "HTTPS://EXAMPLE.COM/api/v1/webhook-secrets",
    ],
)
def test_the_host_is_ignored_and_only_the_path_routes(target: str):
    envelope = parse_envelope(raw(target_url=target, method="delete", headers={}, body=""))
    assert (envelope.path, envelope.method, envelope.payload) == (WEBHOOK_SECRETS_PATH, "DELETE", None)


@pytest.mark.parametrize(
    "target",
    [
        "file:///api/v1/jobs",
        "file:///etc/passwd",
        "gopher://example.com/api/v1/jobs",
        "ftp://example.com/api/v1/jobs",
        "/api/v1/jobs",  # relative
        "http:///api/v1/jobs",  # no host
        "http://example.com/api/v1/proxy",  # not the proxy itself
        "http://example.com/api/v1/jobs/",
        "http://example.com/api/v1/jobs/job_1",
        "http://example.com/api/v1/%6Aobs",
        "http://example.com/api/v1/x/../jobs",
        "http://example.com/internal/v1/jobs",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:9000/healthz",
        "http://[::1/api/v1/jobs",  # not a URL
        "",
        "http://example.com/" + "a" * 9000,
    ],
)
def test_other_targets_are_refused(target: str):
    with pytest.raises(EnvelopeError) as refused:
        parse_envelope(raw(target_url=target, method="GET", body=""))
    assert refused.value.status_hint == 400


JOB_TARGET = "http://node/api/v1/jobs"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "the envelope is not valid JSON"),
        (b"\xff\xfe", "the envelope is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the envelope is not valid JSON"),  # deeper than the parser recurses
        (b"[]", "must be a JSON object"),
        (raw(method="GET", body=""), "target_url is required"),
        (raw(target_url=JOB_TARGET, body=""), "method is required"),
        (raw(target_url=JOB_TARGET, method="POST"), "body is required"),
        (raw(target_url=JOB_TARGET, method="POST", body={"url": "x"}), "body must be a string"),
        (raw(target_url=JOB_TARGET, method="POST", body=None), "body must be a string"),
        (raw(target_url=JOB_TARGET, method="POST", body=7), "body must be a string"),
        (raw(target_url=JOB_TARGET, method="POST", body="{not json"), "body is not valid JSON"),
        (raw(target_url=JOB_TARGET, method="POST", body=""), "body is not valid JSON"),
        (raw(target_url=7, method="POST", body="{}"), "target_url must be a non-empty string"),
        (raw(target_url=JOB_TARGET, method="BREW", body="{}"), "method must be one of"),
        (raw(target_url=JOB_TARGET, method=["POST"], body="{}"), "method must be one of"),
        (raw(target_url=JOB_TARGET, method="POST", body="{}", headers=[]), "headers must be an object"),
        (raw(target_url=JOB_TARGET, method="POST", body="{}", headers={"a": 1}), "string values"),
        (raw(target_url=JOB_TARGET, method="POST", body="{}", scope=None), "scope must be a string"),
        (raw(target_url=JOB_TARGET, method="POST", body="{}", metric_name=3), "metric_name must be a string"),
    ],
)
def test_malformed_envelopes_say_what_is_wrong(body: bytes, says: str):
    with pytest.raises(EnvelopeError) as refused:
        parse_envelope(body)
    assert says in str(refused.value)


def test_get_and_delete_ignore_the_body_and_optional_fields_default():
    envelope = parse_envelope(raw(target_url=JOB_TARGET, method="GET", body="whatever"))
    assert envelope.payload is None and envelope.headers == {}
    assert (envelope.scope, envelope.metric_name) == ("customer", "")


def test_forwarded_responses_carry_plain_string_headers_and_text_bodies():
    forwarded = forwarded_response(201, {"Content-Type": "application/json", "Retry-After": "5"}, b'{"a":"\xc3\xa9"}')
    assert forwarded == {
        "status_code": 201,
        "headers": {"content-type": "application/json", "retry-after": "5"},
        "body": '{"a":"é"}',
    }
    assert forwarded_response(200, {}, b"\xff")["body"] == "\ufffd"  # never raises on bytes that are not UTF-8


def test_answers_have_the_hosted_proxys_shapes():
    breach = dict(NO_USAGE_BREACH_STATUS)
    assert set(breach) == {"is_breached", "current_usage", "limit_value", "limit_operator", "breach_action"}
    assert breach["is_breached"] is False
    forwarded = forwarded_response(201, {}, b"{}")
    assert allowed(breach, forwarded) == {"status": "allowed", "breach_status": breach, "forwarded_response": forwarded}
    assert denied(breach, 1234) == {
        "status": "denied",
        "breach_status": breach,
        "error": "Plan limit exceeded",
        "retry_at": 1234,
    }
    assert refusal(400, "m") == {"error": "Bad Request", "message": "m"}
    assert refusal(401, "Invalid API key") == {"error": "Unauthorized", "message": "Invalid API key"}


@pytest.mark.parametrize(
    ("retry_at_ms", "now_ms", "seconds"),
    [(10_000, 9_999, 1), (10_000, 9_000, 1), (10_001, 9_000, 2), (13_000, 10_000, 3), (5_000, 10_000, 1)],
)
def test_retry_after_rounds_up_to_whole_seconds_and_is_never_zero(retry_at_ms: int, now_ms: int, seconds: int):
    assert retry_after_s(retry_at_ms, now_ms) == seconds
