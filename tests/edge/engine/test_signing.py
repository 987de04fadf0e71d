"""Webhook signatures: interop with the public SDK's verifier, and our own verifier's rules."""

from __future__ import annotations

import json
import re
import time

import pytest
from ezthrottle.webhook_utils import try_verify_with_secrets, verify_webhook_signature

from edge.engine.signing import sign_webhook, verify_webhook

SECRET = "whsec_primary_0123456789"
OLD_SECRET = "whsec_secondary_9876543210"
BODY = json.dumps(
    {"job_id": "job_1", "status": "success", "metadata": {"note": "café ☕"}}, ensure_ascii=False
).encode()
NOW = 1_763_674_210


def test_header_format() -> None:
    header = sign_webhook(SECRET, BODY, NOW)
    assert re.fullmatch(r"t=1763674210,v1=[0-9a-f]{64}", header)
    assert sign_webhook(SECRET, BODY, NOW) == header  # deterministic
    assert sign_webhook(SECRET, BODY, NOW + 1) != header  # the timestamp is inside the MAC


def test_the_public_sdk_accepts_and_rejects_like_we_do() -> None:
    """The SDK reads time.time(), so this one test signs with the real current time."""
    now = int(time.time())
    header = sign_webhook(SECRET, BODY, now)
    tampered = BODY.replace(b"success", b"failed!")
    old_header = sign_webhook(SECRET, BODY, now - 3600)

    assert verify_webhook_signature(BODY, header, SECRET) == (True, "valid")
    assert verify_webhook(BODY, header, [SECRET], now=now)

    assert verify_webhook_signature(tampered, header, SECRET) == (False, "signature_mismatch")
    assert not verify_webhook(tampered, header, [SECRET], now=now)

    assert verify_webhook_signature(BODY, header, OLD_SECRET) == (False, "signature_mismatch")
    assert not verify_webhook(BODY, header, [OLD_SECRET], now=now)

    verified, reason = verify_webhook_signature(BODY, old_header, SECRET)
    assert not verified and reason.startswith("timestamp_expired")
    assert not verify_webhook(BODY, old_header, [SECRET], now=now)

    assert try_verify_with_secrets(BODY, sign_webhook(OLD_SECRET, BODY, now), SECRET, OLD_SECRET) == (
        True,
        "valid_secondary",
    )


def test_rotation_accepts_any_listed_secret() -> None:
    header = sign_webhook(OLD_SECRET, BODY, NOW)
    assert verify_webhook(BODY, header, [SECRET, OLD_SECRET], now=NOW)
    assert not verify_webhook(BODY, header, [SECRET], now=NOW)
    assert not verify_webhook(BODY, header, [], now=NOW)


@pytest.mark.parametrize(
    ("skew_s", "valid"),
    [(0, True), (300, True), (-300, True), (300.5, False), (-301, False), (86_400, False)],
)
def test_tolerance_both_ways(skew_s: float, valid: bool) -> None:
    header = sign_webhook(SECRET, BODY, NOW)
    assert verify_webhook(BODY, header, [SECRET], now=NOW + skew_s) is valid


def test_custom_tolerance() -> None:
    header = sign_webhook(SECRET, BODY, NOW)
    assert verify_webhook(BODY, header, [SECRET], now=NOW + 30, tolerance_s=60)
    assert not verify_webhook(BODY, header, [SECRET], now=NOW + 61, tolerance_s=60)


def test_several_v1_entries_any_may_match() -> None:
    good = sign_webhook(SECRET, BODY, NOW).split(",")[1]
    assert verify_webhook(BODY, f"t={NOW},v1={'0' * 64},{good}", [SECRET], now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={NOW}",
        "v1=" + "0" * 64,
        f"t=abc,v1={'0' * 64}",
        f"t=-{NOW},v1={'0' * 64}",
        f"t={NOW},v1=ÿ非ascii",
        f"t={'9' * 5000},v1={'0' * 64}",  # longer than int() accepts: must not raise
        f"t={NOW},v1=",
    ],
)
def test_malformed_headers_are_invalid_not_errors(header: str) -> None:
    assert verify_webhook(BODY, header, [SECRET], now=NOW) is False
