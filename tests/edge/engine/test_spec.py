"""The job contract: validation, idempotency keys and queue keys (pure functions, no I/O)."""

from __future__ import annotations

import pytest

from edge.engine.spec import JobSpec, credential_fingerprint, derived_idempotent_key, queue_key, validate_job
from edge.outbound.origins import origin_of
from edge.problems import Problem


def field_of(data: object) -> str | None:
    with pytest.raises(Problem) as caught:
        validate_job(data)
    assert caught.value.status == 422
    return caught.value.field


def test_defaults_follow_the_contract():
    job = validate_job({"url": "https://api.example.com/x"}).to_wire()
    assert job["method"] == "GET" and job["headers"] == {} and job["body"] is None
    assert job["webhook_quorum"] == 1 and job["region_policy"] == "fallback" and job["execution_mode"] == "race"
    assert job["retry_policy"] == {
        "max_retries": 3,
        "max_reroutes": 2,
        "retry_codes": [429, 503],
        "reroute_codes": [500, 502, 504],
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "body"),
        ({}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "https://user:pw@example.com/"}, "url"),
        ({"url": "https://example.com/", "method": 5}, "method"),
        ({"url": "https://example.com/", "body": {"a": 1}}, "body"),
        ({"url": "https://example.com/", "headers": {"Bad Name": "x"}}, "headers.Bad Name"),
        ({"url": "https://example.com/", "headers": {"X-A": "a\r\nX-B: b"}}, "headers.X-A"),
        ({"url": "https://example.com/", "headers": {"Transfer-Encoding": "chunked"}}, "headers.Transfer-Encoding"),
        ({"url": "https://example.com/", "metadata": []}, "metadata"),
        (
            {"url": "https://example.com/", "webhooks": [{"url": "https://h.example", "has_quorum_vote": "yes"}]},
            "webhooks[0].has_quorum_vote",
        ),
        (
            {"url": "https://example.com/", "webhooks": [{"url": "https://h.example"}], "webhook_quorum": 2},
            "webhook_quorum",
        ),
        ({"url": "https://example.com/", "regions": ["IAD!"]}, "regions"),
        # A trailing newline once passed: with `re.match`, `$` also matches just before it.
        ({"url": "https://example.com/", "headers": {"X-A\n": "x"}}, "headers.X-A\n"),
        ({"url": "https://example.com/", "regions": ["iad\n"]}, "regions"),
        # httpx sends header values as ASCII: another one used to stop the node at its first attempt.
        ({"url": "https://example.com/", "headers": {"X-A": "caf\u00e9"}}, "headers.X-A"),
        # A lone surrogate (JSON "\ud800") has no UTF-8 form: these were 500s, the store could not save them.
        ({"url": "https://example.com/", "body": "\ud800"}, "body"),
        ({"url": "https://example.com/", "metadata": {"a": [{"\udc00": 1}]}}, "metadata"),
        ({"url": "https://example.com/", "idempotent_key": "k\udfff"}, "idempotent_key"),
        # What the store (msgpack) or a JSON answer cannot hold: the first was a 500, the second came back as NaN.
        ({"url": "https://example.com/", "metadata": {"n": 2**64}}, "metadata"),
        ({"url": "https://example.com/", "metadata": {"n": [float("nan")]}}, "metadata"),
        (
            {"url": "https://example.com/", "on_success": {"url": "https://a.example", "tier": "\ud800"}},
            "on_success.tier",
        ),
        ({"url": "https://example.com/", "region_policy": "maybe"}, "region_policy"),
        ({"url": "https://example.com/", "execution_mode": "all"}, "execution_mode"),
        ({"url": "https://example.com/", "retry_policy": {"retry_codes": [700]}}, "retry_policy.retry_codes"),
        ({"url": "https://example.com/", "retry_at": "soon"}, "retry_at"),
        ({"url": "https://example.com/", "retry_at": True}, "retry_at"),
        ({"url": "https://example.com/", "idempotent_key": ""}, "idempotent_key"),
        ({"url": "https://example.com/", "fallback_job": {"url": "https://b.example"}}, "fallback_job.trigger"),
        (
            {
                "url": "https://example.com/",
                "fallback_job": {"url": "https://b.example", "trigger": {"type": "on_timeout"}},
            },
            "fallback_job.trigger.timeout_ms",
        ),
        ({"url": "https://example.com/", "on_failure": {"url": "ftp://x"}}, "on_failure.url"),
        ({"url": "https://bü\u200bcher.de/"}, "url"),  # a zero-width space: no IDNA form, so nothing to send
        ({"url": "https://example.com/", "webhooks": [{"url": "http://a\x7fb.example/"}]}, "webhooks[0].url"),
    ],
)
def test_invalid_fields_are_named(data: object, field: str):
    assert field_of(data) == field


def test_nesting_is_bounded():
    job: dict = {"url": "https://example.com/"}
    for _ in range(12):
        job = {"url": "https://example.com/", "on_success": job}
    assert field_of(job).startswith("on_success.")


def test_derived_key_is_stable_and_distinguishes_body_method_url_account():
    job = validate_job({"url": "https://example.com/a", "method": "POST", "body": "x"})
    key = derived_idempotent_key("acme", job)
    assert key == derived_idempotent_key("acme", JobSpec.from_wire(job.to_wire()))
    for change in ({"body": "y"}, {"method": "PUT"}, {"url": "https://example.com/b"}):
        variant = JobSpec.from_wire({**job.to_wire(), **change})
        assert derived_idempotent_key("acme", variant) != key
    assert derived_idempotent_key("other", job) != key


def test_origin_is_canonical():
    assert origin_of("HTTPS://API.Stripe.com:443/v1/charges?x=1") == "https://api.stripe.com"
    assert origin_of("http://example.com:8080/") == "http://example.com:8080"
    assert origin_of("http://[::1]:9/x") == "http://[::1]:9"


def test_one_host_in_two_spellings_is_one_origin_and_one_queue():
    """Unicode and IDNA spellings of a host reach the same server: they must share a queue and its rate limit."""
    assert origin_of("https://Bücher.de/a") == origin_of("https://xn--bcher-kva.de/b") == "https://xn--bcher-kva.de"
    keys = {
        queue_key(account_id="acme", plan="pro", job=validate_job({"url": url}), account_queue=True)
        for url in ("https://bücher.de/v1/x", "https://XN--BCHER-KVA.de:443/v1/y")
    }
    assert keys == {"acme|https://xn--bcher-kva.de|-"}


def test_queue_keys_per_user_per_credential_and_shared_for_free_plans():
    def job(**headers: str) -> dict:
        return validate_job({"url": "https://api.example.com/x", "headers": headers})

    one = queue_key(account_id="acme", plan="pro", job=job(Authorization="Bearer a"), account_queue=True)
    two = queue_key(account_id="acme", plan="pro", job=job(authorization="Bearer b"), account_queue=True)
    api_key = queue_key(account_id="acme", plan="pro", job=job(**{"X-Api-Key": "a"}), account_queue=True)
    assert len({one, two, api_key}) == 3 and "Bearer" not in one
    assert one.startswith("acme|https://api.example.com|")
    bare = queue_key(account_id="acme", plan="pro", job=job(), account_queue=True)
    switched_off = queue_key(account_id="acme", plan="pro", job=job(Authorization="Bearer a"), account_queue=False)
    assert bare == switched_off == "acme|https://api.example.com|-"
    free_a = queue_key(account_id="a", plan="free", job=job(Authorization="Bearer a"), account_queue=True)
    free_b = queue_key(account_id="b", plan="free", job=job(Authorization="Bearer b"), account_queue=True)
    assert free_a == free_b == "free|https://api.example.com"
    assert credential_fingerprint({"Api-Key": "z"}) == credential_fingerprint({"api-key": "z"})
