"""Who a request belongs to: configured keys, the Bearer token, the trusted tier header, anonymous callers."""

from __future__ import annotations

from typing import Any

from edge.config import ProtectConfig
from edge.proxy.callers import KEY_LABELS_MAX, CallerDirectory
from scheduler import Tier
from tests.edge.proxy.support import protect_keys

BIG, SMALL = "cust_big_0123456789abc", "cust_small_0123456789"
KEYS = protect_keys(
    [
        {"key": BIG, "id": "big", "tier": "paid", "weight": 3, "rate_per_s": 2.5},
        {"key": SMALL, "tier": "reserved"},
    ]
)


def directory(**settings: Any) -> CallerDirectory:
    settings.setdefault("keys", KEYS)
    return CallerDirectory(ProtectConfig(listen="127.0.0.1:0", upstream="http://127.0.0.1:9", **settings))


def scope(*headers: tuple[str, str], client: str = "192.0.2.7") -> dict[str, Any]:
    return {"headers": [(k.encode(), v.encode()) for k, v in headers], "client": (client, 5555)}


def test_a_configured_key_gets_its_own_queue_tier_weight_and_rate() -> None:
    big = directory().identify(scope(("x-api-key", BIG)))
    assert big.label == "big"
    assert (big.policy.tier, big.policy.weight, big.policy.rate_per_s, big.policy.burst) == (Tier.PAID, 3.0, 2.5, 3)
    assert BIG not in big.key  # the scheduler key holds a digest prefix, never the key
    small = directory().identify(scope(("x-api-key", SMALL)))
    assert small.policy.tier is Tier.RESERVED and small.label.startswith("key-") and small.key != big.key


def test_unknown_and_missing_keys_are_anonymous_by_address_in_the_free_tier() -> None:
    unknown = directory().identify(scope(("x-api-key", "cust_nobody_01234567")))
    missing = directory().identify(scope())
    elsewhere = directory().identify(scope(client="198.51.100.1"))
    assert unknown == missing
    assert (unknown.key, unknown.label, unknown.policy.tier) == ("addr:192.0.2.7", "anonymous", Tier.FREE)
    assert elsewhere.key == "addr:198.51.100.1"
    limited = directory(anonymous_rate_per_s=0.5).identify(scope())
    assert (limited.policy.rate_per_s, limited.policy.burst) == (0.5, 1)


def test_the_authorization_header_means_its_bearer_token() -> None:
    bearer = directory(key_header="Authorization")
    assert bearer.identify(scope(("authorization", f"Bearer {BIG}"))).label == "big"
    assert bearer.identify(scope(("authorization", f"bearer  {BIG} "))).label == "big"
    assert bearer.identify(scope(("authorization", f"Basic {BIG}"))).label == "anonymous"
    assert bearer.identify(scope(("x-api-key", BIG))).label == "anonymous"


def test_the_tier_header_is_trusted_only_when_configured() -> None:
    claimed = scope(("x-api-key", SMALL), ("x-customer-tier", "free"))
    assert directory().identify(claimed).policy.tier is Tier.RESERVED  # not configured: ignored
    trusting = directory(tier_header="X-Customer-Tier")
    assert trusting.identify(claimed).policy.tier is Tier.FREE
    vouched = trusting.identify(scope(("x-api-key", "cust_external_0123456"), ("x-customer-tier", "Paid")))
    assert (vouched.policy.tier, vouched.label) == (Tier.PAID, "other")
    assert vouched.key.startswith("key:") and "cust_external" not in vouched.key
    assert trusting.identify(scope(("x-customer-tier", "gold"))).label == "anonymous"
    keyless = trusting.identify(scope(("x-customer-tier", "reserved")))
    assert (keyless.key, keyless.policy.tier) == ("addr:192.0.2.7", Tier.RESERVED)


def test_metric_labels_stay_bounded_however_many_keys_are_configured() -> None:
    many = protect_keys({"key": f"cust_many_{n:012d}", "id": f"k{n}"} for n in range(KEY_LABELS_MAX + 5))
    labels = {directory(keys=many).identify(scope(("x-api-key", f"cust_many_{n:012d}"))).label for n in range(25)}
    assert len(labels) == KEY_LABELS_MAX + 1 and "other" in labels
