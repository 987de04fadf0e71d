"""Parse what a provider's response headers say about its limits into one `LimitSignals` value.

Providers speak several dialects (reference/anchors.md, "Rate-limit signals in the wild"):
- EZThrottle's own `X-EZTHROTTLE-RPS`, `X-EZTHROTTLE-MAX-CONCURRENT`, `X-EZTHROTTLE-ACCOUNT-QUEUE`;
- `Retry-After` (RFC 9110): delta-seconds or an HTTP-date in any of its three historic formats;
- the IETF draft (httpapi-ratelimit-headers): `RateLimit: "name";r=50;t=30` and
  `RateLimit-Policy: "name";q=100;w=60` (structured-field lists);
- OpenAI: `x-ratelimit-{remaining,reset}-requests`, resets as Go-style durations (`6m0s`, `12ms`);
- GitHub: `x-ratelimit-{remaining,reset}`, reset as unix seconds.

Why one tolerant parser: the values drive queue-wide blocking, so a provider's typo must never crash a queue
or wedge it for a century. Every header that is present but unusable is ignored and named in `malformed`
(for a metric), every delay is clamped to [0, DELAY_MAX_S], and nothing here raises on any header text.

Precedence: `_HEADER_PARSERS` is ordered; for each field the first header in that order that parses wins
(the IETF `RateLimit` beats `x-ratelimit-*-requests`, which beats the unsuffixed GitHub form). A header
repeated on several lines uses its first parsable line, except the two IETF fields, which are lists: their
lines are joined, as HTTP list semantics require (RFC 9110 section 5.3), and unusable members are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

# A day: longer waits are far more likely a provider bug (or a hostile upstream) than a real schedule.
DELAY_MAX_S = 86_400.0
# The API contract's minimum accepted rate (ezthrottle-api.md, "Rate control signals").
RPS_MIN = 0.5
# x-ratelimit-reset values above this are unix timestamps (GitHub), below it durations in seconds. 1e9 s is
# September 2001 as an epoch and 31 years as a duration, so neither reading can be confused with the other.
EPOCH_THRESHOLD_S = 1e9
# Above this the timestamp must be in milliseconds (1e12 s is the year 33658); read as seconds, it would
# block a queue for the whole DELAY_MAX_S.
EPOCH_MS_THRESHOLD = 1e12
# Longest number or duration text we look at; keeps parsing bounded and every parsed float finite.
_NUMBER_TEXT_MAX = 40

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_COUNT = re.compile(r"[0-9]{1,18}")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(h|ms|m|s|us|µs|μs|ns)")
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")
_DURATION_UNIT_S = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_CLOCK = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
# RFC 9110 section 5.6.7: senders use IMF-fixdate; recipients must also accept RFC 850 and asctime dates.
_IMF_FIXDATE = re.compile(rf"[a-z]{{3}}, (?P<day>[0-9]{{1,2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_CLOCK} (?:gmt|utc)")
_RFC850_DATE = re.compile(rf"[a-z]{{6,9}}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_CLOCK} gmt")
_ASCTIME_DATE = re.compile(rf"[a-z]{{3}} {_MONTH} (?P<day>[ 0-9]?[0-9]) {_CLOCK} (?P<year>[0-9]{{4}})")

_SWITCH_WORDS = {"enabled": True, "true": True, "1": True, "disabled": False, "false": False, "0": False}

SignalValue = float | int | bool


@dataclass(frozen=True, slots=True)
class LimitSignals:
    """What one response said about the provider's limits; None means the response did not say."""

    rps: float | None = None
    max_concurrent: int | None = None
    account_queue: bool | None = None
    retry_after_s: float | None = None
    remaining: int | None = None
    reset_after_s: float | None = None
    policy_rps: float | None = None
    # field name -> lower-case header it came from, e.g. {"remaining": "x-ratelimit-remaining-requests"}
    sources: dict[str, str] = field(default_factory=dict)
    # lower-case names of headers that were present but unusable, in precedence order
    malformed: tuple[str, ...] = ()


def is_rate_limit_refusal(status_code: int | None, *, remaining: int | None, retry_after_s: float | None) -> bool:
    """Whether a response refused the request for rate alone: a 429, or a 403 with rate-limit evidence.

    GitHub answers an exhausted quota or a secondary limit with 403 (or 429) plus `x-ratelimit-remaining: 0`
    or `Retry-After`; treating that 403 as a plain client error would fail jobs that only had to wait.
    """
    if status_code == 429:
        return True
    return status_code == 403 and (remaining == 0 or retry_after_s is not None)


def _clamp_delay(seconds: float) -> float:
    return min(DELAY_MAX_S, max(0.0, seconds))


def _decimal(text: str) -> float | None:
    if len(text) > _NUMBER_TEXT_MAX or not _DECIMAL.fullmatch(text):
        return None
    return float(text)


def _count(text: str) -> int | None:
    return int(text) if _COUNT.fullmatch(text) else None


def _duration_s(text: str) -> float | None:
    """Go-style duration as OpenAI sends it: `1s`, `6m0s`, `12ms`, `1h2m3.5s`."""
    if len(text) > _NUMBER_TEXT_MAX or not _DURATION.fullmatch(text):
        return None
    return sum(float(amount) * _DURATION_UNIT_S[unit] for amount, unit in _DURATION_PART.findall(text))


def _rfc850_year(two_digits: int, wall_now: float) -> int:
    """RFC 9110: a two-digit year that looks more than 50 years ahead belongs to the previous century."""
    this_year = datetime.fromtimestamp(wall_now, UTC).year
    year = this_year - this_year % 100 + two_digits
    return year - 100 if year > this_year + 50 else year


def _http_date_unix_s(text: str, wall_now: float) -> float | None:
    lowered = " ".join(text.lower().split())
    try:
        for pattern in (_IMF_FIXDATE, _RFC850_DATE, _ASCTIME_DATE):
            match = pattern.fullmatch(lowered)
            if match is None:
                continue
            year = int(match["year"])
            if pattern is _RFC850_DATE:
                year = _rfc850_year(year, wall_now)
            moment = datetime(
                year,
                _MONTHS.index(match["month"]) + 1,
                int(match["day"]),
                int(match["hour"]),
                int(match["minute"]),
                min(int(match["second"]), 59),  # a leap second is not worth rejecting the header over
                tzinfo=UTC,
            )
            return moment.timestamp()
    except (ValueError, OverflowError, OSError):  # 31 Feb, hour 25, or a wall_now outside datetime's range
        return None
    return None


def _parse_rps(text: str, wall_now: float) -> float | None:
    rate = _decimal(text)
    return None if rate is None else max(RPS_MIN, rate)


def _parse_max_concurrent(text: str, wall_now: float) -> int | None:
    limit = _count(text)
    return limit if limit is not None and limit >= 1 else None


def _parse_switch(text: str, wall_now: float) -> bool | None:
    return _SWITCH_WORDS.get(text.lower())


def _parse_count(text: str, wall_now: float) -> int | None:
    return _count(text)


def _parse_retry_after(text: str, wall_now: float) -> float | None:
    seconds = _decimal(text)
    if seconds is not None:
        return _clamp_delay(seconds)
    moment = _http_date_unix_s(text, wall_now)
    return None if moment is None else _clamp_delay(moment - wall_now)


def _parse_reset(text: str, wall_now: float) -> float | None:
    """A unix timestamp (GitHub) when the number is past EPOCH_THRESHOLD_S, else a duration (OpenAI)."""
    seconds = _decimal(text)
    if seconds is None:
        seconds = _duration_s(text)
    elif seconds > EPOCH_THRESHOLD_S:
        epoch_s = seconds / 1000.0 if seconds > EPOCH_MS_THRESHOLD else seconds
        seconds = epoch_s - wall_now
    return None if seconds is None else _clamp_delay(seconds)


def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double-quoted strings (a quoted member name may contain `,` or `;`)."""
    parts: list[str] = []
    start = 0
    in_quotes = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == separator and not in_quotes:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _structured_list_params(lines: list[str]) -> list[dict[str, str]]:
    """The parameters of each member of a structured-field list (RFC 8941), leniently.

    Member names are not needed by any caller, so they are skipped rather than validated; a parameter without
    `=` is a boolean true (`?1`); a repeated key keeps its last value, as RFC 8941 says.
    """
    members: list[dict[str, str]] = []
    for member in _split_unquoted(",".join(lines), ","):
        params: dict[str, str] = {}
        for param in _split_unquoted(member, ";")[1:]:
            key, has_value, value = param.partition("=")
            params[key.strip().lower()] = _unquote(value.strip()) if has_value else "?1"
        members.append(params)
    return members


def _parse_ratelimit(lines: list[str], wall_now: float) -> dict[str, SignalValue]:
    """IETF `RateLimit`: of several policies, the binding one has the fewest left, then the longest wait."""
    usable: list[tuple[int, float | None]] = []
    for params in _structured_list_params(lines):
        remaining = _count(params.get("r", ""))
        reset_text = params.get("t")
        reset_s = None if reset_text is None else _decimal(reset_text)
        if remaining is not None and (reset_text is None or reset_s is not None):
            usable.append((remaining, reset_s))
    if not usable:
        return {}
    remaining, reset_s = min(usable, key=lambda item: (item[0], -(item[1] if item[1] is not None else -1.0)))
    fields: dict[str, SignalValue] = {"remaining": remaining}
    if reset_s is not None:
        fields["reset_after_s"] = _clamp_delay(reset_s)
    return fields


def _parse_ratelimit_policy(lines: list[str], wall_now: float) -> dict[str, SignalValue]:
    """IETF `RateLimit-Policy`: quota q per window w seconds; the most restrictive request policy wins.

    The window `w` is required here: without it there is no rate to pace at. Policies counted in other quota
    units (`qu`, e.g. content-bytes) are skipped because they do not limit requests per second.
    """
    rates: list[float] = []
    for params in _structured_list_params(lines):
        quota = _decimal(params.get("q", ""))
        window_s = _decimal(params.get("w", ""))
        counts_requests = params.get("qu", "requests").lower() == "requests"
        if quota is not None and window_s is not None and quota > 0 and window_s > 0 and counts_requests:
            rates.append(quota / window_s)
    return {"policy_rps": min(rates)} if rates else {}


HeaderParser = Callable[[list[str], float], dict[str, SignalValue]]


def _first_parsable(field_name: str, parse: Callable[[str, float], SignalValue | None]) -> HeaderParser:
    """A parser for a single-valued header: the first of its lines that parses wins."""

    def parse_lines(lines: list[str], wall_now: float) -> dict[str, SignalValue]:
        for line in lines:
            value = parse(line.strip(), wall_now)
            if value is not None:
                return {field_name: value}
        return {}

    return parse_lines


# Ordered by precedence: for each field, the earliest header here that parses supplies it.
_HEADER_PARSERS: dict[str, HeaderParser] = {
    "x-ezthrottle-rps": _first_parsable("rps", _parse_rps),
    "x-ezthrottle-max-concurrent": _first_parsable("max_concurrent", _parse_max_concurrent),
    "x-ezthrottle-account-queue": _first_parsable("account_queue", _parse_switch),
    "retry-after": _first_parsable("retry_after_s", _parse_retry_after),
    "ratelimit": _parse_ratelimit,
    "x-ratelimit-remaining-requests": _first_parsable("remaining", _parse_count),
    "x-ratelimit-remaining": _first_parsable("remaining", _parse_count),
    "x-ratelimit-reset-requests": _first_parsable("reset_after_s", _parse_reset),
    "x-ratelimit-reset": _first_parsable("reset_after_s", _parse_reset),
    "ratelimit-policy": _parse_ratelimit_policy,
}

RECOGNISED_HEADERS = tuple(_HEADER_PARSERS)


def parse_limit_headers(headers: Iterable[tuple[str, str]], *, wall_now: float) -> LimitSignals:
    """Read the limit signals from one response's headers; never raises on any header text.

    Pass each header line separately (httpx: `response.headers.multi_items()`); a client that joins repeated
    lines with ", " turns two `Retry-After` dates into one unparsable value.
    """
    lines_by_header: dict[str, list[str]] = {}
    for name, value in headers:
        header = name.strip().lower()
        if header in _HEADER_PARSERS:
            lines_by_header.setdefault(header, []).append(value)

    values: dict[str, SignalValue] = {}
    sources: dict[str, str] = {}
    malformed: list[str] = []
    for header, parse in _HEADER_PARSERS.items():
        lines = lines_by_header.get(header)
        if lines is None:
            continue
        parsed = parse(lines, wall_now)
        if not parsed:
            malformed.append(header)
        for field_name, field_value in parsed.items():
            if field_name not in values:
                values[field_name] = field_value
                sources[field_name] = header
    # Each parser returns its fields in their own types (rps a float, max_concurrent an int, ...), which one
    # dict type cannot say field by field.
    return LimitSignals(**cast("dict[str, Any]", values), sources=sources, malformed=tuple(malformed))
