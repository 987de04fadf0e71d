"""Who is calling: every request is mapped to a scheduler key, a `KeyPolicy` and a metric label.

- A key listed in `[[protect.keys]]` (from `key_header`, or the Bearer token when that is `authorization`):
  its own queue, with its configured tier, weight and rate.
- With `tier_header` configured and a valid tier in it, the operator's auth layer vouches for the caller: the
  header's tier wins, and a key that is not listed still gets a queue of its own (keyed by its digest).
- Anyone else is anonymous: keyed by client address, free tier. Behind another proxy every anonymous caller
  shares that proxy's address, which is the conservative failure (they compete with each other, not with
  customers).

Presented keys are hashed at once and never kept, logged or used as labels: scheduler keys hold a digest
prefix and metric labels hold the configured id. A key is found by its SHA-256 digest in a dict, one lookup
whatever the number of keys (`ProtectConfig.key_by_secret` scans them all, in constant time): the lookup's
timing can only depend on the digest, and nobody can steer a guess's digest toward a configured one, so it
says nothing useful about any secret. Metric labels are bounded: the first `KEY_LABELS_MAX`
configured keys have their own, everything else is "other" or "anonymous".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from edge.config import BEARER_KEY_HEADER, ProtectConfig
from scheduler import KeyPolicy, Tier

KEY_LABELS_MAX: Final = 20
OTHER_LABEL: Final = "other"
ANONYMOUS_LABEL: Final = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    """One request's identity as the scheduler and the metrics see it."""

    key: str
    policy: KeyPolicy
    label: str


class CallerDirectory:
    """Identifies callers of one protected listener from the request headers and the client address."""

    __slots__ = ("_anonymous", "_bearer", "_by_tier", "_key_header", "_known", "_tier_header")

    def __init__(self, protect: ProtectConfig) -> None:
        self._bearer = protect.key_header == BEARER_KEY_HEADER
        self._key_header = protect.key_header.encode("ascii")
        self._tier_header = None if protect.tier_header is None else protect.tier_header.encode("ascii")
        self._anonymous = protect.anonymous_policy()
        # Built once, by digest: the per-request path only looks them up.
        self._known = {
            key.key_sha256: Caller(
                key=f"key:{key.key_sha256.hex()[:32]}",
                policy=key.policy(),
                label=key.label if index < KEY_LABELS_MAX else OTHER_LABEL,
            )
            for index, key in enumerate(protect.keys)
        }
        self._by_tier = {tier: KeyPolicy(tier=tier) for tier in Tier}

    def identify(self, scope: dict[str, Any]) -> Caller:
        presented = self._presented_key(scope["headers"])
        tier = self._trusted_tier(scope["headers"])
        digest = None if presented is None else hashlib.sha256(presented.encode()).digest()
        caller = None if digest is None else self._known.get(digest)
        if caller is not None:
            if tier is None or tier is caller.policy.tier:
                return caller
            policy = KeyPolicy(
                tier=tier, weight=caller.policy.weight, rate_per_s=caller.policy.rate_per_s, burst=caller.policy.burst
            )
            return Caller(caller.key, policy, caller.label)
        if tier is not None and digest is not None:
            return Caller(f"key:{digest.hex()[:32]}", self._by_tier[tier], OTHER_LABEL)
        client = scope.get("client")
        address = client[0] if client else "unknown"
        policy = self._anonymous if tier is None else self._by_tier[tier]
        return Caller(f"addr:{address}", policy, ANONYMOUS_LABEL)

    def _presented_key(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        for name, value in headers:
            if name != self._key_header:
                continue
            text = value.decode("latin-1").strip()
            if self._bearer:
                scheme, _, token = text.partition(" ")
                text = token.strip() if scheme.lower() == "bearer" else ""
            return text or None
        return None

    def _trusted_tier(self, headers: list[tuple[bytes, bytes]]) -> Tier | None:
        if self._tier_header is None:
            return None
        for name, value in headers:
            if name == self._tier_header:
                try:
                    return Tier(value.decode("latin-1").strip().lower())
                except ValueError:
                    return None
        return None
