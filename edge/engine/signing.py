"""Webhook signatures in the public SDK's format, so receivers can keep using `ezthrottle.webhook_utils`.

Header `X-EZThrottle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. The
timestamp is inside the MAC so a captured delivery cannot be replayed later than the receiver's tolerance
(300 s by default). We MAC the raw body bytes; the SDK decodes the body as UTF-8 and re-encodes it, which
gives the same bytes for the JSON bodies we send.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

SIGNATURE_HEADER = "X-EZThrottle-Signature"
SIGNATURE_TOLERANCE_S = 300.0
TIMESTAMP_DIGITS_MAX = 12  # unix seconds have 10 digits until the year 2286; int() refuses > 4300 digits


def _mac_hex(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for `body` sent at unix time `timestamp` (whole seconds)."""
    return f"t={timestamp},v1={_mac_hex(secret, body, timestamp)}"


def verify_webhook(
    body: bytes,
    header: str,
    secrets: Sequence[str],
    *,
    now: float,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """True when `header` signs `body` with one of `secrets` at a time within `tolerance_s` of `now`.

    Several secrets make rotation painless: a receiver holds the new and the old secret until senders switch.
    Several `v1=` entries are accepted too (one per secret a sender signs with). Malformed headers are simply
    not valid; this never raises on untrusted input. Every comparison is constant-time.
    """
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit() and len(value) <= TIMESTAMP_DIGITS_MAX:
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value.encode(errors="replace"))  # bytes: compare_digest rejects non-ASCII str
    if timestamp is None or not signatures or abs(now - timestamp) > tolerance_s:
        return False
    expected = [_mac_hex(secret, body, timestamp).encode() for secret in secrets]
    return any(hmac.compare_digest(signature, mac) for signature in signatures for mac in expected)
