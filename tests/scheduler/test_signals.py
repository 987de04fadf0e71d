"""Limit-header parsing: every dialect in the wild, precedence, malformed values, junk that must not crash."""

from __future__ import annotations

import math
from random import Random
from typing import Any

import pytest

from scheduler.signals import (
    DELAY_MAX_S,
    RECOGNISED_HEADERS,
    LimitSignals,
    is_rate_limit_refusal,
    parse_limit_headers,
)

# 2023-11-14 22:13:20 UTC: a fixed wall clock, so every HTTP date below converts to a known delay.
WALL_NOW = 1_700_000_000.0
HTTP_DATE_90_S_LATER = "Tue, 14 Nov 2023 22:14:50 GMT"

FIELDS = (
    "rps",
    "max_concurrent",
    "account_queue",
    "retry_after_s",
    "remaining",
    "reset_after_s",
    "policy_rps",
)


def parse(*headers: tuple[str, str], wall_now: float = WALL_NOW) -> LimitSignals:
    return parse_limit_headers(headers, wall_now=wall_now)


def present_fields(signals: LimitSignals) -> dict[str, Any]:
    return {name: getattr(signals, name) for name in FIELDS if getattr(signals, name) is not None}


# (case, headers, expected non-None fields, expected sources)
DIALECTS: list[tuple[str, list[tuple[str, str]], dict[str, Any], dict[str, str]]] = [
    (
        "github primary limit exhausted (reset as unix seconds)",
        [
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-used", "5000"),
            ("x-ratelimit-reset", "1700000060"),
            ("x-ratelimit-resource", "core"),
        ],
        {"remaining": 0, "reset_after_s": 60.0},
        {"remaining": "x-ratelimit-remaining", "reset_after_s": "x-ratelimit-reset"},
    ),
    (
        "github secondary limit (403 with retry-after)",
        [("retry-after", "60"), ("x-ratelimit-remaining", "4990")],
        {"retry_after_s": 60.0, "remaining": 4990},
        {"retry_after_s": "retry-after", "remaining": "x-ratelimit-remaining"},
    ),
    (
        "openai requests and tokens (durations)",
        [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
        {"remaining": 59, "reset_after_s": 1.0},
        {"remaining": "x-ratelimit-remaining-requests", "reset_after_s": "x-ratelimit-reset-requests"},
    ),
    (
        "ietf draft, one policy",
        [("RateLimit-Policy", '"burst";q=100;w=60'), ("RateLimit", '"burst";r=50;t=30')],
        {"remaining": 50, "reset_after_s": 30.0, "policy_rps": 100 / 60},
        {"remaining": "ratelimit", "reset_after_s": "ratelimit", "policy_rps": "ratelimit-policy"},
    ),
    (
        "ietf draft, several policies: the most restrictive wins",
        [
            ("RateLimit-Policy", '"burst";q=100;w=60, "day";q=1000;w=86400'),
            ("RateLimit", '"burst";r=50;t=30, "day";r=0;t=3600'),
        ],
        {"remaining": 0, "reset_after_s": 3600.0, "policy_rps": 1000 / 86400},
        {"remaining": "ratelimit", "reset_after_s": "ratelimit", "policy_rps": "ratelimit-policy"},
    ),
    (
        "ietf draft, token names, spaces after semicolons, extra params",
        [("ratelimit-policy", "burst; q=10; w=1; pk=:cHJvamVjdDEyMw==:"), ("ratelimit", "burst; r=9; t=1")],
        {"remaining": 9, "reset_after_s": 1.0, "policy_rps": 10.0},
        {"remaining": "ratelimit", "reset_after_s": "ratelimit", "policy_rps": "ratelimit-policy"},
    ),
    (
        "ietf draft, quoted names holding separators",
        [("RateLimit", '"a,b;c";r=3;t=4, "x\\"y";r=7;t=1')],
        {"remaining": 3, "reset_after_s": 4.0},
        {"remaining": "ratelimit", "reset_after_s": "ratelimit"},
    ),
    (
        "ietf draft, policies in other units do not set a request rate",
        [("RateLimit-Policy", '"bytes";q=1000000;w=1;qu="content-bytes", "req";q=20;w=10;qu="requests"')],
        {"policy_rps": 2.0},
        {"policy_rps": "ratelimit-policy"},
    ),
    (
        "ietf draft, remaining without a reset",
        [("RateLimit", '"burst";r=0')],
        {"remaining": 0},
        {"remaining": "ratelimit"},
    ),
    ("stripe plain 429: nothing to read", [("Stripe-Should-Retry", "true"), ("Request-Id", "req_1")], {}, {}),
    (
        "ezthrottle provider headers",
        [
            ("X-EZTHROTTLE-RPS", "5"),
            ("X-EZTHROTTLE-MAX-CONCURRENT", "3"),
            ("X-EZTHROTTLE-ACCOUNT-QUEUE", "enabled"),
        ],
        {"rps": 5.0, "max_concurrent": 3, "account_queue": True},
        {
            "rps": "x-ezthrottle-rps",
            "max_concurrent": "x-ezthrottle-max-concurrent",
            "account_queue": "x-ezthrottle-account-queue",
        },
    ),
    (
        "retry-after as an IMF-fixdate",
        [("Retry-After", HTTP_DATE_90_S_LATER)],
        {"retry_after_s": 90.0},
        {"retry_after_s": "retry-after"},
    ),
    (
        "retry-after as an RFC 850 date (two-digit year)",
        [("Retry-After", "Tuesday, 14-Nov-23 22:14:50 GMT")],
        {"retry_after_s": 90.0},
        {"retry_after_s": "retry-after"},
    ),
    (
        "retry-after as an asctime date (space-padded day)",
        [("Retry-After", "Sun Nov  5 22:13:20 2023")],
        {"retry_after_s": 0.0},  # in the past: go now
        {"retry_after_s": "retry-after"},
    ),
]


@pytest.mark.parametrize(
    ("headers", "fields", "sources"), [case[1:] for case in DIALECTS], ids=[c[0] for c in DIALECTS]
)
def test_dialects_in_the_wild(headers: list[tuple[str, str]], fields: dict[str, Any], sources: dict[str, str]) -> None:
    signals = parse(*headers)
    assert present_fields(signals) == pytest.approx(fields)
    assert signals.sources == sources
    assert signals.malformed == ()


@pytest.mark.parametrize(
    ("header", "value", "field", "expected"),
    [
        ("x-ezthrottle-rps", "2.5", "rps", 2.5),
        ("x-ezthrottle-rps", " 10 ", "rps", 10.0),
        ("x-ezthrottle-rps", "0.1", "rps", 0.5),  # below the contract's minimum: clamped
        ("x-ezthrottle-rps", "0", "rps", 0.5),
        ("x-ezthrottle-rps", ".75", "rps", 0.75),
        ("x-ezthrottle-max-concurrent", "1", "max_concurrent", 1),
        ("x-ezthrottle-max-concurrent", "100", "max_concurrent", 100),
        ("x-ezthrottle-account-queue", "Disabled", "account_queue", False),
        ("x-ezthrottle-account-queue", "TRUE", "account_queue", True),
        ("x-ezthrottle-account-queue", "false", "account_queue", False),
        ("x-ezthrottle-account-queue", "1", "account_queue", True),
        ("x-ezthrottle-account-queue", "0", "account_queue", False),
        ("retry-after", "120", "retry_after_s", 120.0),
        ("retry-after", "0", "retry_after_s", 0.0),
        ("retry-after", "1.5", "retry_after_s", 1.5),
        ("retry-after", "-3", "retry_after_s", 0.0),  # negative: clamped
        ("retry-after", "999999999", "retry_after_s", DELAY_MAX_S),  # capped at a day
        ("retry-after", "Sat, 01 Jan 2050 00:00:00 GMT", "retry_after_s", DELAY_MAX_S),
        ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT", "retry_after_s", 0.0),
        ("retry-after", "tue, 14 nov 2023 22:14:50 gmt", "retry_after_s", 90.0),  # case-insensitive
        ("retry-after", "Tue, 14 Nov 2023 22:13:20 UTC", "retry_after_s", 0.0),
        ("x-ratelimit-reset-requests", "1s", "reset_after_s", 1.0),
        ("x-ratelimit-reset-requests", "6m0s", "reset_after_s", 360.0),
        ("x-ratelimit-reset-requests", "12ms", "reset_after_s", 0.012),
        ("x-ratelimit-reset-requests", "1h2m3.5s", "reset_after_s", 3723.5),
        ("x-ratelimit-reset-requests", "250us", "reset_after_s", 0.00025),
        ("x-ratelimit-reset-requests", "20ns", "reset_after_s", 2e-8),
        ("x-ratelimit-reset-requests", "48h", "reset_after_s", DELAY_MAX_S),
        ("x-ratelimit-reset-requests", "1.5", "reset_after_s", 1.5),  # bare number: seconds
        ("x-ratelimit-reset", "1700000060", "reset_after_s", 60.0),  # unix seconds
        ("x-ratelimit-reset", "1700000060000", "reset_after_s", 60.0),  # unix milliseconds
        ("x-ratelimit-reset", "1600000000", "reset_after_s", 0.0),  # a reset in the past
        ("x-ratelimit-reset", "30", "reset_after_s", 30.0),
        ("x-ratelimit-remaining", "0", "remaining", 0),
        ("x-ratelimit-remaining-requests", "4999", "remaining", 4999),
        ("ratelimit", '"b";r=5;t=100000', "reset_after_s", DELAY_MAX_S),
        ("ratelimit", '"a";r=0;t=5, "b";r=0;t=60', "reset_after_s", 60.0),  # tie on r: the longer wait
        ("ratelimit-policy", '"a";q=10;w=1, "b";q=30;w=60', "policy_rps", 0.5),
    ],
)
def test_single_header_values(header: str, value: str, field: str, expected: Any) -> None:
    signals = parse((header, value))
    assert getattr(signals, field) == pytest.approx(expected)
    assert signals.sources[field] == header
    assert signals.malformed == ()


MALFORMED_VALUES = {
    "x-ezthrottle-rps": ["", "fast", "nan", "inf", "-inf", "1e3", "1_0", "\u0661\u0662", "5/s", "1.2.3"],
    "x-ezthrottle-max-concurrent": ["0", "-1", "2.5", "many", "9" * 20, "+3"],
    "x-ezthrottle-account-queue": ["yes", "", "2", "enabled please"],
    "retry-after": [
        "soon",
        "",
        "1e3",
        "Tue, 31 Feb 2023 00:00:00 GMT",
        "Tue, 14 Nov 2023 25:00:00 GMT",
        "Tue, 14 Nov 2023 22:14:50",
        "Tue, 14 Foo 2023 22:14:50 GMT",
        "120 seconds",
    ],
    "ratelimit": ['"burst";t=30', '"burst";r=-1;t=5', '"burst";r=5;t=soon', "garbage", "", '"b";r=1.5'],
    "x-ratelimit-remaining-requests": ["-1", "lots", "5.5", ""],
    "x-ratelimit-remaining": ["-1", "lots", "5.5", "1" * 19],
    "x-ratelimit-reset-requests": ["6 minutes", "1d", "s", "1m-2s", "", "m1", "1 s"],
    "x-ratelimit-reset": ["tomorrow", "nan", "1e9", "\u0663s"],
    "ratelimit-policy": ['"burst";q=100', '"burst";q=0;w=60', '"b";q=100;w=0', '"b";w=60', "q=1;w=1", ""],
}


@pytest.mark.parametrize(
    ("header", "value"),
    [(header, value) for header, values in MALFORMED_VALUES.items() for value in values],
)
def test_malformed_values_are_ignored_and_named(header: str, value: str) -> None:
    signals = parse((header, value))
    assert present_fields(signals) == {}
    assert signals.sources == {}
    assert signals.malformed == (header,)


def test_every_recognised_header_has_malformed_cases() -> None:
    assert set(MALFORMED_VALUES) == set(RECOGNISED_HEADERS)


def test_header_names_are_case_insensitive() -> None:
    signals = parse(("X-RateLimit-Remaining", "7"), ("RETRY-AFTER", "3"), ("x-EzThrottle-Rps", "4"))
    assert (signals.remaining, signals.retry_after_s, signals.rps) == (7, 3.0, 4.0)
    assert signals.sources == {
        "remaining": "x-ratelimit-remaining",
        "retry_after_s": "retry-after",
        "rps": "x-ezthrottle-rps",
    }


def test_repeated_single_valued_header_uses_its_first_parsable_line() -> None:
    signals = parse(("Retry-After", "later"), ("Retry-After", "5"), ("Retry-After", "9"))
    assert signals.retry_after_s == 5.0
    assert signals.malformed == ()
    assert parse(("Retry-After", "later"), ("Retry-After", "never")).malformed == ("retry-after",)


def test_repeated_ietf_lines_form_one_list() -> None:
    signals = parse(
        ("RateLimit-Policy", '"burst";q=100;w=60'),
        ("RateLimit-Policy", '"day";q=1000;w=86400'),
        ("RateLimit", '"burst";r=40;t=20'),
        ("RateLimit", "junk"),
        ("RateLimit", '"day";r=2;t=500'),
    )
    assert signals.policy_rps == pytest.approx(1000 / 86400)
    assert (signals.remaining, signals.reset_after_s) == (2, 500.0)
    assert signals.malformed == ()


def test_ietf_beats_openai_beats_github_and_shadowed_junk_is_still_named() -> None:
    signals = parse(
        ("x-ratelimit-remaining", "oops"),
        ("x-ratelimit-remaining-requests", "10"),
        ("x-ratelimit-reset", "1700000100"),
        ("x-ratelimit-reset-requests", "2s"),
        ("RateLimit", '"burst";r=5;t=7'),
    )
    assert (signals.remaining, signals.reset_after_s) == (5, 7.0)
    assert signals.sources == {"remaining": "ratelimit", "reset_after_s": "ratelimit"}
    assert signals.malformed == ("x-ratelimit-remaining",)


def test_openai_suffixed_headers_beat_the_unsuffixed_ones() -> None:
    signals = parse(
        ("x-ratelimit-remaining", "100"),
        ("x-ratelimit-reset", "1700000100"),
        ("x-ratelimit-remaining-requests", "3"),
        ("x-ratelimit-reset-requests", "2s"),
    )
    assert (signals.remaining, signals.reset_after_s) == (3, 2.0)


def test_malformed_higher_precedence_header_falls_back_to_the_next() -> None:
    signals = parse(("RateLimit", '"burst";r=lots'), ("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "9"))
    assert (signals.remaining, signals.reset_after_s) == (4, 9.0)
    assert signals.malformed == ("ratelimit",)


def test_ietf_remaining_without_t_takes_the_reset_from_another_header() -> None:
    signals = parse(("RateLimit", '"burst";r=0'), ("x-ratelimit-reset-requests", "3s"))
    assert (signals.remaining, signals.reset_after_s) == (0, 3.0)
    assert signals.sources == {"remaining": "ratelimit", "reset_after_s": "x-ratelimit-reset-requests"}


def test_retry_after_and_ratelimit_t_are_both_reported() -> None:
    signals = parse(("Retry-After", "40"), ("RateLimit", '"burst";r=0;t=10'))
    assert (signals.retry_after_s, signals.reset_after_s) == (40.0, 10.0)


def test_rfc850_two_digit_years_more_than_50_years_ahead_are_last_century() -> None:
    wall_now_2023 = WALL_NOW
    assert parse(("Retry-After", "Sunday, 06-Nov-94 08:49:37 GMT"), wall_now=wall_now_2023).retry_after_s == 0.0
    # 73 -> 2073 would be 50 years ahead in 2023 (allowed), so it stays in this century: far future, capped.
    assert parse(("Retry-After", "Tuesday, 14-Nov-73 22:14:50 GMT"), wall_now=wall_now_2023).retry_after_s == (
        DELAY_MAX_S
    )
    # 74 -> 2074 is more than 50 years ahead: it means 1974, long past.
    assert parse(("Retry-After", "Wednesday, 14-Nov-74 22:14:50 GMT"), wall_now=wall_now_2023).retry_after_s == 0.0


def test_empty_headers_give_empty_signals() -> None:
    assert parse() == LimitSignals()


def test_huge_values_are_rejected_quickly() -> None:
    signals = parse(("Retry-After", "9" * 100_000), ("RateLimit", '"a";r=1;' * 20_000 + "x"))
    assert signals.retry_after_s is None
    assert signals.remaining == 1
    assert signals.malformed == ("retry-after",)


JUNK_ALPHABET = 'abcxyzGMT ,;="\\()*:/?-._~\t\u00b5\u00e9\u4e2d\U0001f600'
VALID_SAMPLES = {
    "x-ezthrottle-rps": "2.5",
    "x-ezthrottle-max-concurrent": "4",
    "x-ezthrottle-account-queue": "enabled",
    "retry-after": HTTP_DATE_90_S_LATER,
    "ratelimit": '"burst";r=50;t=30, "day";r=9;t=600',
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining": "4999",
    "x-ratelimit-reset-requests": "1h2m3.5s",
    "x-ratelimit-reset": "1700000060",
    "ratelimit-policy": '"burst";q=100;w=60;qu="requests"',
}


def random_case(rng: Random, name: str) -> str:
    return "".join(char.upper() if rng.random() < 0.5 else char for char in name)


def junk(rng: Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def mutate(rng: Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        position = rng.randint(0, len(chars))
        action = rng.random()
        if action < 0.4 and chars:
            del chars[min(position, len(chars) - 1)]
        elif action < 0.8:
            chars.insert(position, rng.choice(JUNK_ALPHABET + "0123456789"))
        elif chars:
            chars[min(position, len(chars) - 1)] = rng.choice("0123456789-+.e")
    return "".join(chars)


@pytest.mark.parametrize("seed", range(300))
def test_digit_free_junk_is_never_parsed_and_always_named(seed: int) -> None:
    rng = Random(seed)
    names = rng.sample(RECOGNISED_HEADERS, rng.randint(1, len(RECOGNISED_HEADERS)))
    headers = [(random_case(rng, name), "~" + junk(rng, JUNK_ALPHABET)) for name in names]
    signals = parse(*headers)
    assert present_fields(signals) == {}
    assert signals.sources == {}
    assert sorted(signals.malformed) == sorted(names)


def assert_sane(signals: LimitSignals, names_sent: set[str]) -> None:
    assert signals.rps is None or (math.isfinite(signals.rps) and signals.rps >= 0.5)
    assert signals.max_concurrent is None or signals.max_concurrent >= 1
    for delay in (signals.retry_after_s, signals.reset_after_s):
        assert delay is None or 0.0 <= delay <= DELAY_MAX_S
    assert signals.remaining is None or signals.remaining >= 0
    assert signals.policy_rps is None or (math.isfinite(signals.policy_rps) and signals.policy_rps > 0)
    assert set(signals.sources) == set(present_fields(signals))
    assert set(signals.sources.values()) <= names_sent
    assert set(signals.malformed) <= names_sent
    assert len(set(signals.malformed)) == len(signals.malformed)


@pytest.mark.parametrize("seed", range(300))
def test_mutated_and_random_values_never_raise_and_stay_in_range(seed: int) -> None:
    rng = Random(seed)
    headers: list[tuple[str, str]] = []
    for name in rng.sample(RECOGNISED_HEADERS, rng.randint(1, len(RECOGNISED_HEADERS))):
        for _ in range(rng.randint(1, 2)):
            value = mutate(rng, VALID_SAMPLES[name]) if rng.random() < 0.7 else junk(rng, JUNK_ALPHABET + "0123456789")
            headers.append((random_case(rng, name), value))
    signals = parse(*headers, wall_now=rng.uniform(0.0, 4e9))
    assert_sane(signals, {name.lower() for name, _ in headers})


@pytest.mark.parametrize(
    ("status_code", "remaining", "retry_after_s", "refused"),
    [
        (429, None, None, True),
        (429, 5, None, True),
        (403, 0, None, True),  # GitHub: primary quota used up
        (403, None, 60.0, True),  # GitHub: secondary limit
        (403, 12, None, False),  # forbidden for another reason
        (403, None, None, False),
        (404, 0, None, False),
        (503, None, 30.0, False),  # overloaded, not rate limited: the job's retry policy decides
        (200, 0, None, False),
        (None, 0, 5.0, False),
    ],
)
def test_rate_limit_refusals(
    status_code: int | None, remaining: int | None, retry_after_s: float | None, refused: bool
) -> None:
    assert is_rate_limit_refusal(status_code, remaining=remaining, retry_after_s=retry_after_s) is refused
