"""Intake checks that take shortcuts for speed must give the same answers as the long way round."""

from __future__ import annotations

import pytest

from edge.engine.spec import validate_job
from edge.http.api import static_refusal
from edge.problems import Problem


def test_snake_case_wins_over_its_camel_case_alias_at_every_level():
    job = validate_job(
        {
            "url": "https://api.example.com/x",
            "retry_at": 5,
            "retryAt": 6,
            "retryPolicy": {"maxRetries": 7, "max_retries": 8, "rerouteCodes": [502]},
            "webhooks": [{"url": "https://hooks.example.com/h", "hasQuorumVote": False, "has_quorum_vote": True}],
            "fallbackJob": {"url": "https://api.example.com/b", "trigger": {"type": "on_timeout", "timeoutMs": 9}},
        }
    ).to_wire()
    assert job["retry_at"] == 5
    assert job["retry_policy"]["max_retries"] == 8 and job["retry_policy"]["reroute_codes"] == [502]
    assert job["webhooks"][0]["has_quorum_vote"] is True
    assert job["fallback_job"]["trigger"] == {"type": "on_timeout", "timeout_ms": 9}


def test_a_camel_case_alias_is_validated_and_named_like_its_snake_case_field():
    with pytest.raises(Problem) as caught:
        validate_job({"url": "https://api.example.com/x", "onSuccess": {"url": "https://a.example", "retryAt": "soon"}})
    assert caught.value.field == "on_success.retry_at"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://127.0.0.1./",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1%25eth0]/",
        "http://LOCALHOST/",
        "http://api.localhost/",
    ],
)
def test_ip_literals_and_loopback_names_are_refused_without_dns(url: str):
    assert static_refusal(url) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "http://1.2.3.4.example/",
        "http://8.8.8.8/",
        "http://[2606:4700::1111]/",
        # Not IP literals to `ipaddress`; the connect-time guard judges what they resolve to.
        "http://2130706433/",
        "http://1.2.3.4.5/",
        "http://0x7f.0.0.1/",
    ],
)
def test_names_and_public_literals_are_left_to_the_connect_time_guard(url: str):
    assert static_refusal(url) is None
