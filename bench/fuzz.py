"""Fuzzing: what a peer, a provider or a client can send never crashes, hangs or surprises the node.

Four targets, each fed structure-aware random inputs from a seeded generator (so a run can be repeated), most of
them mutations of valid inputs so that they get past the first check:

- gossip: a received datagram, `Envelope.open` (cluster/envelope.py, which decodes with cluster/codec.py), once
  without a keyring and once with one (the mutated datagram signed, so the decoder meets it): never raises.
- limit_headers: a provider's response headers, `parse_limit_headers` (scheduler/signals.py): never raises, and
  every value it returns is within its documented bounds.
- validate_job: a job body, `validate_job` (edge/engine/spec.py): a 422 `Problem` naming a field, or a spec the
  store can save and read back as it was, whose requests (nested jobs' too) httpx can build, with header names and
  regions that match their patterns.
- proxy_head: a request head at a protected listener and its upstream's response head, through the functions
  `ProxyApp` runs on them, in its order (edge/proxy/app.py, callers.py, headers.py): a 400 `Problem` or a request
  httpx can send; for heads that are valid HTTP/1.1, a forwarded head h11 would send; no hop-by-hop header either
  way.

An input fails when it raises anything else or breaks an invariant; it hangs when it takes over HANG_S (a SIGALRM
interrupts it: pure-Python loops and regular expressions stop at a signal). The generators are plain `random`, not
hypothesis: on job bodies, hypothesis took 3 ms to draw one input, where these take 0.1 ms to draw and run one,
which is what makes 100,000 inputs per target a run of seconds.

Run: `python -m bench fuzz` (its section of RESULTS.md), `python -m bench.fuzz [INPUTS]` (prints JSON).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from random import Random
from typing import Any

import h11
import httpx
import msgpack
from prometheus_client import CollectorRegistry

from cluster.codec import encode_message
from cluster.envelope import Channel, Envelope, Opened
from cluster.keyring import Keyring
from cluster.messages import (
    Ack,
    Alive,
    CounterEntry,
    Counters,
    Dead,
    IndirectPing,
    MemberInfo,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    Shared,
    SharedEntry,
    Suspect,
)
from edge.config import ENV_PROTECT, load_config
from edge.engine import spec
from edge.engine.spec import JobSpec, validate_job
from edge.http.openapi import EXAMPLE_JOB, document
from edge.problems import Problem
from edge.proxy.app import ProxyApp, _declared_length, _origin_form_target
from edge.proxy.callers import CallerDirectory
from edge.proxy.gate import Gate
from edge.proxy.headers import HOP_BY_HOP, downstream_response_headers, upstream_request_headers
from edge.proxy.metrics import ProxyMetrics
from scheduler.signals import DELAY_MAX_S, RECOGNISED_HEADERS, RPS_MIN, LimitSignals, parse_limit_headers

INPUTS = 100_000
HANG_S = 1.0
SEED = 1
FAILURES_KEPT = 5  # examples kept per target, for the report


class Hang(BaseException):
    """Raised by the SIGALRM guard inside an input that ran too long (a BaseException: no `except Exception` in
    the code under test may swallow it)."""


class Refused(Exception):
    """What a target raises for an input the code refused the documented way (a 422, a 400)."""


# -- the harness -----------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One function under fuzz: `generate` makes an input, `run` feeds it and checks the outcome."""

    name: str
    function: str  # what is fuzzed, for the report
    generate: Callable[[Random], Any]
    run: Callable[[Any], None]  # returns when accepted, raises Refused when refused as documented


@dataclass
class Report:
    target: str
    function: str
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    failures: int = 0
    hangs: int = 0
    slowest_s: float = 0.0
    wall_s: float = 0.0
    examples: list[str] = field(default_factory=list)

    def keep(self, kind: str, value: Any, error: BaseException | None = None) -> None:
        if len(self.examples) < FAILURES_KEPT:
            self.examples.append(f"{kind}: {error!r:.200} for {value!r:.300}")


def _alarm(_signum: int, _frame: Any) -> None:
    raise Hang


@contextlib.contextmanager
def hang_guard() -> Iterator[None]:
    """Within the block, an expiring `signal.setitimer` raises Hang in whatever is running (main thread only)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz(target: Target, inputs: int, *, seed: int = SEED, hang_s: float = HANG_S) -> Report:
    """Feed `inputs` generated inputs to `target`, one at a time, each under the hang guard."""
    rng = Random(f"{seed}:{target.name}")
    report = Report(target.name, target.function)
    started = time.perf_counter()
    with hang_guard():
        for _ in range(inputs):
            value = target.generate(rng)
            began = time.perf_counter()
            try:
                signal.setitimer(signal.ITIMER_REAL, hang_s)
                try:
                    target.run(value)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                report.accepted += 1
            except Refused:
                report.refused += 1
            except Hang:
                report.hangs += 1
                report.keep("hang", value)
            except Exception as error:  # an unexpected exception or a broken invariant (AssertionError)
                report.failures += 1
                report.keep("failure", value, error)
            report.slowest_s = max(report.slowest_s, time.perf_counter() - began)
            report.inputs += 1
    report.wall_s = time.perf_counter() - started
    return report


# -- building blocks for inputs --------------------------------------------------------------------------------

# Values that sit on edges: integer widths, JSON's exact-integer limit, the job's own bounds, odd text.
# fmt: off
EDGE_INTS = (
    0, 1, -1, 2, 99, 100, 599, 600, 10**30, -(2**63), -(2**64),
    *(2**bits + step for bits in (31, 32, 53, 63, 64) for step in (-1, 0, 1)),
    spec.DEADLINE_MS_MAX, spec.DEADLINE_MS_MAX + 1, spec.HEDGE_AFTER_MS_MAX, spec.URL_CHARS_MAX,
)
EDGE_FLOATS = (0.0, -0.0, 0.5, 1.5, 1e-300, 1e300, -1e300, math.inf, -math.inf, math.nan)
EDGE_TEXTS = (
    "", " ", "\x00", "\r\n", "\n", "\t", "\ud800", "\udfff", "\u200b", "\ufeff", "é", "ß", "ſ", "ı", "İ", "ﬀ", "𝔘",
    "\\", '"', "%00", "%2F", "../", "auto", "true", "null", "1e400", "9" * 50, "a" * 300,
    "a" * (spec.URL_CHARS_MAX + 1),
)
# fmt: on
ALPHABET = "abcxyzAZ09-_.:/?#@!$&'()*+,;=%~ \t\r\n\x00\x7f\x80\xff\"\\é€𝔘\ud800"


def text(rng: Random, max_size: int = 24) -> str:
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(EDGE_TEXTS)
    if roll < 0.4:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(max_size)))
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(max_size)))


def scalar(rng: Random) -> Any:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.25:
        return rng.random() < 0.5
    if roll < 0.5:
        return rng.choice(EDGE_INTS) if rng.random() < 0.5 else rng.randrange(-1000, 100_000)
    if roll < 0.6:
        return rng.choice(EDGE_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)
    return text(rng)


def json_value(rng: Random, depth: int = 3, keys: tuple[str, ...] = ()) -> Any:
    """A JSON-like value (what `json.loads` can return, lone surrogates and NaN included)."""
    roll = rng.random()
    if depth <= 0 or roll < 0.6:
        return scalar(rng)
    if roll < 0.8:
        return [json_value(rng, depth - 1, keys) for _ in range(rng.randrange(4))]
    names = keys or (text(rng, 8),)
    return {
        (rng.choice(names) if rng.random() < 0.8 else text(rng, 8)): json_value(rng, depth - 1, keys)
        for _ in range(rng.randrange(5))
    }


def _containers(doc: Any) -> list[Any]:
    """Every list and dict inside `doc`, itself included."""
    found, stack = [], [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            found.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return found


def mutate_tree(rng: Random, doc: Any, new_value: Callable[[Random], Any], names: tuple[str, ...] = ()) -> Any:
    """`doc` (a fresh copy) with 1 to 4 changes: a value replaced, a key removed or added, an element dropped or
    duplicated. Trees of lists and dicts, as JSON and msgpack both are."""
    doc = _copy(doc)
    for _ in range(rng.randrange(1, 5)):
        containers = _containers(doc)
        if not containers:
            return new_value(rng)
        node = rng.choice(containers)
        if isinstance(node, dict):
            roll = rng.random()
            if node and roll < 0.6:
                node[rng.choice(list(node))] = new_value(rng)
            elif node and roll < 0.8:
                del node[rng.choice(list(node))]
            else:
                node[rng.choice(names) if names and rng.random() < 0.8 else text(rng, 10)] = new_value(rng)
        elif node:
            index = rng.randrange(len(node))
            roll = rng.random()
            if roll < 0.6:
                node[index] = new_value(rng)
            elif roll < 0.8:
                del node[index]
            else:
                node.insert(index, _copy(node[index]))
        else:
            node.append(new_value(rng))
    return doc


def _copy(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {key: _copy(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [_copy(value) for value in doc]
    return doc


def mutate_bytes(rng: Random, data: bytes) -> bytes:
    """`data` with 1 to 4 byte-level changes: flips, random bytes inserted or deleted, a cut, a repeat."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        roll, at = rng.random(), rng.randrange(len(out) + 1)
        if roll < 0.35 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif roll < 0.55:
            out[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif roll < 0.75:
            del out[at : at + rng.randrange(1, 9)]
        elif roll < 0.9:
            del out[at:]
        else:
            out[at:at] = out[at : at + rng.randrange(1, 32)]
    return bytes(out)


# -- gossip ----------------------------------------------------------------------------------------------------

GOSSIP_KEY = bytes(range(32, 64))
GOSSIP_BATCHES: tuple[tuple[Message, ...], ...] = (
    (Ping(seq=1, target="receiver"), Ack(seq=2)),
    (IndirectPing(seq=3, target="c", target_address=("::1", 7946), want_nack=True), Nack(seq=4)),
    (
        Suspect(node="b", incarnation=5, accuser="c", accuser_incarnation=2),
        Alive(node="b", incarnation=6, address=("127.0.0.1", 7946), region="iad", api_address="http://[::1]:8080"),
        Dead(node="b", incarnation=7, accuser="b", accuser_incarnation=7),
    ),
    (
        PushPull(
            members=(
                MemberInfo(
                    node="b",
                    address=("10.0.0.2", 7946),
                    region="lax",
                    api_address="http://10.0.0.2:8080",
                    incarnation=1,
                    state=MemberState.SUSPECT,
                ),
            ),
            is_reply=True,
            shared=(SharedEntry(key="account_queue:https://a.example", value=False, wall_ms=5, node="b"),),
            counters=(CounterEntry(name="usage|acme|2026-01", node="b", value=3),),
        ),
    ),
    (
        Shared(entry=SharedEntry(key="k", value=1.5, wall_ms=2**40, node="a")),
        Counters(entries=(CounterEntry(name="mint|acme|2026-01", node="a", value=10**6),)),
    ),
)


def _packet_bodies() -> list[bytes]:
    """Each batch sealed unsigned: version byte + msgpack (a keyed receiver gets it signed afterwards)."""
    sealer = Envelope(sender="a", epoch=1, keyring=None, insecure=True, packet_bytes_max=1400, stream_bytes_max=1 << 20)
    return [sealer.seal(Channel.PACKET, [encode_message(m) for m in batch]) for batch in GOSSIP_BATCHES]


def _check_opened(opened: Opened | None) -> None:
    assert opened is None or all(isinstance(message, Message) for message in opened.messages), opened


def _receiver(keyring: Keyring | None) -> Envelope:
    return Envelope(
        sender="receiver",
        epoch=1,
        keyring=keyring,
        insecure=keyring is None,
        packet_bytes_max=1400,
        stream_bytes_max=1 << 20,
    )


def gossip_target() -> Target:
    bodies = _packet_bodies()
    trees = [msgpack.unpackb(body[1:]) for body in bodies]
    keyring = Keyring(GOSSIP_KEY)
    insecure = _receiver(None)

    def msgpack_value(rng: Random) -> Any:
        return rng.randbytes(rng.randrange(8)) if rng.random() < 0.1 else json_value(rng, 2)

    def generate(rng: Random) -> bytes:
        roll = rng.random()
        if roll < 0.1:
            return rng.randbytes(rng.randrange(1500))
        if roll < 0.45:
            return mutate_bytes(rng, rng.choice(bodies))
        try:
            packed = msgpack.packb(mutate_tree(rng, rng.choice(trees), msgpack_value), use_bin_type=True)
        except (OverflowError, ValueError, TypeError):  # an int beyond msgpack's 64 bits, a lone surrogate
            return mutate_bytes(rng, rng.choice(bodies))
        return b"\x01" + packed

    def run(data: bytes) -> None:
        _check_opened(insecure.open(Channel.PACKET, data))
        # A fresh keyed receiver each time, so that what decodes is accepted (and counted) rather than dropped as
        # a replay of the seeds' counters; the insecure one keeps its replay windows across inputs.
        opened = _receiver(keyring).open(Channel.PACKET, data + keyring.sign(data))
        _check_opened(opened)
        if opened is None:
            raise Refused

    return Target("gossip", "cluster.envelope.Envelope.open", generate, run)


# -- rate-limit headers ----------------------------------------------------------------------------------------

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Monday", "Sunday", "Xyz")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Jun", "Dec", "jan", "Foo")
_PARAMETERS = ("r", "t", "q", "w", "qu", "pk", "R", "")
_QUOTED_VALUES = ('"requests"', '"content-bytes"', '"a\\"b"', '"12"')


def _number_text(rng: Random) -> str:
    forms = (
        lambda: str(rng.choice(EDGE_INTS)),
        lambda: f"{rng.uniform(-10, 1e4):.{rng.randrange(4)}f}",
        lambda: rng.choice(("+2", "-3", ".5", "5.", "1e5", "nan", "inf", "0x10", "1_000", "９", "1 000", "")),
        lambda: "9" * rng.randrange(1, 60),
        lambda: str(rng.randrange(10**9, 2 * 10**12)),  # unix seconds or milliseconds
    )
    return rng.choice(forms)()


def _duration_text(rng: Random) -> str:
    units = ("h", "m", "s", "ms", "us", "µs", "μs", "ns", "x", "")
    return "".join(f"{_number_text(rng)}{rng.choice(units)}" for _ in range(rng.randrange(1, 4)))


def _date_text(rng: Random) -> str:
    day, year = rng.randrange(0, 40), rng.choice((0, 1, 70, 99, 1970, 2026, 9999, 10000))
    clock = f"{rng.randrange(0, 30):02}:{rng.randrange(0, 70):02}:{rng.randrange(0, 70):02}"
    weekday, month = rng.choice(_WEEKDAYS), rng.choice(_MONTH_NAMES)
    forms = (
        f"{weekday}, {day:02} {month} {year:04} {clock} GMT",
        f"{weekday}, {day:02}-{month}-{year % 100:02} {clock} GMT",
        f"{weekday} {month} {day:2} {clock} {year}",
    )
    return rng.choice(forms)


def _structured_text(rng: Random) -> str:
    """An IETF RateLimit / RateLimit-Policy list: members with parameters, quotes and escapes."""
    members = []
    for _ in range(rng.randrange(1, 4)):
        name = rng.choice(('"default"', '"a,b;c"', '"x\\"y"', "bare", '"unterminated', ""))
        params = [
            f"{rng.choice(_PARAMETERS)}={rng.choice((_number_text(rng), *_QUOTED_VALUES))}"
            for _ in range(rng.randrange(4))
        ]
        members.append(";".join([name, *params]))
    return rng.choice((", ", ",", " , ")).join(members)


def _header_value(rng: Random, name: str) -> str:
    makers = {
        "retry-after": (_number_text, _date_text),
        "ratelimit": (_structured_text,),
        "ratelimit-policy": (_structured_text,),
        "x-ezthrottle-account-queue": (lambda r: r.choice(("true", "FALSE", "enabled", "0", "yes", "")),),
        "x-ratelimit-reset": (_number_text, _duration_text),
        "x-ratelimit-reset-requests": (_duration_text, _number_text),
    }
    value = rng.choice(makers.get(name, (_number_text,)))(rng)
    roll = rng.random()
    if roll < 0.2:
        return "".join(rng.choice((value, text(rng, 6))) for _ in range(2))
    if roll < 0.3:
        return f"  {value}\t"
    return value


def limit_headers_target() -> Target:
    def generate(rng: Random) -> tuple[list[tuple[str, str]], float]:
        headers = []
        for _ in range(rng.randrange(1, 7)):
            name = rng.choice(RECOGNISED_HEADERS) if rng.random() < 0.9 else text(rng, 12)
            spelled = rng.choice((name, name.upper(), name.title(), f" {name} "))
            headers.append((spelled, _header_value(rng, name) if rng.random() < 0.85 else text(rng, 40)))
        wall_now = rng.uniform(1.7e9, 2.1e9) if rng.random() < 0.9 else rng.choice((0.0, -1e12, 1e12, 1e17, 5e18))
        return headers, wall_now

    def run(value: tuple[list[tuple[str, str]], float]) -> None:
        headers, wall_now = value
        signals = parse_limit_headers(headers, wall_now=wall_now)
        _check_signals(signals)
        if not signals.sources:
            raise Refused

    return Target("limit_headers", "scheduler.signals.parse_limit_headers", generate, run)


def _check_signals(signals: LimitSignals) -> None:
    """The bounds scheduler/signals.py documents for what it returns."""
    for delay in (signals.retry_after_s, signals.reset_after_s):
        assert delay is None or 0.0 <= delay <= DELAY_MAX_S, signals
    assert signals.rps is None or (math.isfinite(signals.rps) and signals.rps >= RPS_MIN), signals
    assert signals.policy_rps is None or (math.isfinite(signals.policy_rps) and signals.policy_rps > 0), signals
    assert signals.max_concurrent is None or signals.max_concurrent >= 1, signals
    assert signals.remaining is None or signals.remaining >= 0, signals
    assert set(signals.sources.values()) | set(signals.malformed) <= set(RECOGNISED_HEADERS), signals


# -- the job validator -----------------------------------------------------------------------------------------


def _job_schemas(schemas: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for name in ("Job", "FallbackJob", "Webhook", "RetryPolicy"):
        yield schemas[name]
    yield from schemas["Trigger"]["oneOf"]


# Every field name of a job and of what it nests, camelCase aliases included: the documented ones.
JOB_NAMES = tuple(
    sorted(
        {name for schema in _job_schemas(document()["components"]["schemas"]) for name in schema.get("properties", {})}
    )
)
VALID_JOBS: tuple[dict[str, Any], ...] = (
    EXAMPLE_JOB,
    {"url": "https://api.example.com/v1/x"},
    {
        "url": "http://[2001:db8::1]:8443/p?q=1",
        "method": "delete",
        "headers": {"X-Api-Key": "k", "Accept": "*/*"},
        "retryPolicy": {"maxRetries": 0, "retryCodes": []},
        "webhooks": [{"url": "https://h.example", "hasQuorumVote": False, "regions": ["iad"]}],
        "hedgeAfterMs": "auto",
        "onFailureTimeoutMs": 0,
        "fallbackJob": {
            "url": "https://b.example",
            "trigger": {"type": "on_timeout", "timeoutMs": 500},
            "fallback_job": {"url": "https://c.example", "trigger": {"type": "on_error"}},
        },
    },
)


def _job_value(rng: Random) -> Any:
    roll = rng.random()
    if roll < 0.15:
        return _copy(rng.choice(VALID_JOBS))  # a valid job where a field belongs: nesting
    if roll < 0.3:
        return rng.choice(("https://a.example/", "http://10.0.0.1/", "ftp://x", "HTTPS://A.EXAMPLE:0/", "http://a b"))
    return json_value(rng, 2, JOB_NAMES)


def validate_job_target() -> Target:
    def generate(rng: Random) -> Any:
        roll = rng.random()
        if roll < 0.7:
            return mutate_tree(rng, rng.choice(VALID_JOBS), _job_value, JOB_NAMES)
        return json_value(rng, 4, JOB_NAMES)

    def run(doc: Any) -> None:
        try:
            job = validate_job(doc, account_id="acme")
        except Problem as problem:
            assert problem.status == 422 and isinstance(problem.field, str), problem
            raise Refused from None
        _check_job(job)

    return Target("validate_job", "edge.engine.spec.validate_job", generate, run)


def _check_job(job: JobSpec) -> None:
    """An accepted job keeps its promises: the store can save it and read it back as it was, the executor can
    build its request (and every nested job's), and what goes on the wire is what the contract allows."""
    wire = job.to_wire()
    assert JobSpec.from_wire(msgpack.unpackb(msgpack.packb(wire))) == job, wire
    for step in _chain(job):
        body = step.body.encode() if step.body is not None else None
        httpx.Request(step.method, step.parsed_url, headers=step.headers, content=body)
        assert all(spec.HEADER_NAME_PATTERN.fullmatch(name) for name in step.headers), step.headers
        assert all(spec.REGION_PATTERN.fullmatch(region) for region in step.regions), step.regions
        assert len(step.url) <= spec.URL_CHARS_MAX and step.origin, step.url


def _chain(job: JobSpec) -> Iterator[JobSpec]:
    yield job
    for nested in (job.on_success, job.on_failure, job.fallback_job):
        if nested is not None:
            yield from _chain(nested)


# -- the proxy's request head ----------------------------------------------------------------------------------

PROXY_KEY = "cust_fuzz_0123456789abc"
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
FIELD_CHARS = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)])
# fmt: off
HEAD_NAMES = (
    b"host", b"x-api-key", b"authorization", b"x-tier", b"content-length", b"connection", b"keep-alive",
    b"transfer-encoding", b"te", b"upgrade", b"proxy-authorization", b"expect", b"forwarded", b"x-forwarded-for",
    b"date", b"set-cookie", b":authority", b":path",
)
HEAD_VALUES = (
    PROXY_KEY.encode(), f"Bearer {PROXY_KEY}".encode(), b"bearer  x", b"paid", b"RESERVED", b"12", b"-1", b"1e3",
    b"99999999999999999999999", b"close, x-api-key", b"keep-alive, Upgrade", b"for=192.0.2.1;proto=https",
    b'for="[2001:db8::1]:80"', b"100-continue", b"chunked", b"a.example:8080", b"[::1]:80",
)
# fmt: on
CLIENTS = (("192.0.2.7", 5555), ("2001:db8::7", 443), None)


@dataclass(frozen=True, slots=True)
class Exchange:
    """A request head at the listener (an ASGI scope) and the head of the upstream's answer."""

    scope: dict[str, Any]
    response_headers: list[tuple[bytes, bytes]]


def _field_value(rng: Random) -> bytes:
    """A header value h11 accepts (visible bytes and obs-text, inner spaces), or anything, now and then."""
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(HEAD_VALUES)
    if roll < 0.9:
        inner = bytes(rng.choice(FIELD_CHARS + b" \t") for _ in range(rng.randrange(12)))
        return inner.strip(b" \t")
    return bytes(byte for byte in rng.randbytes(rng.randrange(12)) if byte not in b"\r\n\x00")  # h11 and h2 refuse


def _field_name(rng: Random) -> bytes:
    if rng.random() < 0.6:
        return rng.choice(HEAD_NAMES)
    return "".join(rng.choice(TOKEN_CHARS) for _ in range(rng.randrange(1, 10))).encode()


def _target(rng: Random) -> tuple[bytes, bytes]:
    """raw_path and query_string: origin-form mostly, and what an HTTP/2 client may put in :path."""
    roll = rng.random()
    if roll < 0.6:
        path = b"/" + bytes(rng.choice(FIELD_CHARS[:94]) for _ in range(rng.randrange(20)))
    elif roll < 0.8:
        path = rng.choice((b"*", b"http://evil.example/", b"//evil.example/x", b"", b"/%00", b"/a b", b"/\xff"))
    else:
        path = rng.randbytes(rng.randrange(20))
    query = b"" if rng.random() < 0.6 else bytes(rng.choice(FIELD_CHARS[:94]) for _ in range(rng.randrange(10)))
    return path, query


def _headers(rng: Random) -> list[tuple[bytes, bytes]]:
    return [(_field_name(rng), _field_value(rng)) for _ in range(rng.randrange(8))]


def proxy_head_target() -> Target:
    protect = load_config(
        None,
        env={
            ENV_PROTECT: json.dumps(
                [
                    {
                        "listen": "127.0.0.1:0",
                        "upstream": "http://127.0.0.1:9",
                        "tier_header": "x-tier",
                        "keys": [{"key": PROXY_KEY, "tier": "paid", "rate_per_s": 5}],
                    }
                ]
            )
        },
    ).protect[0]
    bearer = load_config(
        None,
        env={
            ENV_PROTECT: json.dumps([{"listen": "127.0.0.1:0", "upstream": "http://a", "key_header": "authorization"}])
        },
    ).protect[0]
    # The app is built, never served: only its URL mapping is used (the gate's timer is never started). With it,
    # `_origin_form_target` and `_declared_length`, private to the app, are what `ProxyApp._proxy` runs on a head.
    metrics = ProxyMetrics(CollectorRegistry()).listener("fuzz")
    app = ProxyApp(
        protect,
        gate=Gate(protect.scheduler_policy(), fairness=True, metrics=metrics),
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
        metrics=metrics,
    )
    directories = (CallerDirectory(protect), CallerDirectory(bearer))

    def generate(rng: Random) -> Exchange:
        raw_path, query = _target(rng)
        headers = _headers(rng)
        if rng.random() < 0.8:
            headers.insert(rng.randrange(len(headers) + 1), (b"host", rng.choice(HEAD_VALUES[-2:])))
        scope = {
            "type": "http",
            "method": rng.choice(("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "QUERY")),
            "scheme": rng.choice(("http", "https")),
            "raw_path": raw_path,
            "path": raw_path.decode("latin-1"),
            "query_string": query,
            "headers": headers,
            "client": rng.choice(CLIENTS),
        }
        return Exchange(scope, _headers(rng))

    def run(exchange: Exchange) -> None:
        scope = exchange.scope
        try:
            target = _origin_form_target(scope)
        except Problem as problem:
            assert problem.status == 400, problem
            raise Refused from None
        for directory in directories:
            directory.identify(scope)
        try:
            length = _declared_length(scope["headers"])
        except Problem as problem:
            assert problem.status == 400, problem
            raise Refused from None
        assert length is None or length >= 0
        url = app._upstream_url(target)
        client = scope["client"][0] if scope["client"] else None
        forwarded = upstream_request_headers(scope["headers"], client_host=client, scheme=scope["scheme"])
        _check_forwarded(forwarded)
        request = httpx.Request(scope["method"], url, headers=forwarded)
        if _is_http11(scope["method"], target, scope["headers"]):
            _send_http11(request.method, target, forwarded)  # h11 must send what it would have received
        answered = downstream_response_headers(exchange.response_headers)
        assert all(name == name.lower() and name not in HOP_BY_HOP and name != b"date" for name, _ in answered)

    return Target("proxy_head", "edge.proxy.app, .callers, .headers", generate, run)


def _check_forwarded(headers: list[tuple[bytes, bytes]]) -> None:
    names = [name for name, _ in headers]
    assert not any(name in HOP_BY_HOP or name.startswith((b"proxy-", b":")) for name in names), names
    assert names.count(b"forwarded") == 1 and names.count(b"x-forwarded-for") == 1, names


def _is_http11(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an HTTP/1.1 server (h11, as hypercorn runs it) could have received this head."""
    if any(name.startswith(b":") for name, _ in headers):
        return False
    try:
        _send_http11(method, target, headers)
    except h11.LocalProtocolError:
        return False
    return True


def _send_http11(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    h11.Connection(h11.CLIENT).send(h11.Request(method=method, target=target, headers=headers))


# -- the benchmark ---------------------------------------------------------------------------------------------

TARGETS: tuple[Callable[[], Target], ...] = (
    gossip_target,
    limit_headers_target,
    validate_job_target,
    proxy_head_target,
)


def run(inputs: int = INPUTS, *, seed: int = SEED) -> dict[str, Any]:
    """Every target, in the shape `python -m bench` renders, with the raw reports under `measurements`."""
    reports = [fuzz(make(), inputs, seed=seed) for make in TARGETS]
    rows = [
        {
            "target": report.target,
            "inputs": f"{report.inputs:,}",
            "accepted / refused": f"{report.accepted:,} / {report.refused:,}",
            "failures": str(report.failures),
            f"hangs (> {HANG_S:g} s)": str(report.hangs),
            "slowest input (ms)": f"{report.slowest_s * 1000:.1f}",
            "inputs/s": f"{report.inputs / report.wall_s:,.0f}",
        }
        for report in reports
    ]
    return {
        "title": "Fuzzing: gossip datagrams, rate-limit headers, job bodies, proxy request heads",
        "about": __doc__.strip().splitlines()[0],
        "targets": {report.target: report.function for report in reports},
        "commands": ["python -m bench fuzz", f"python -m bench.fuzz {inputs}"],
        "rows": rows,
        "checks": {
            "failures (an unexpected exception or a broken invariant)": sum(r.failures for r in reports),
            "hangs": sum(r.hangs for r in reports),
        },
        "notes": [
            f"Seed {seed}; inputs are generated by bench/fuzz.py (structure-aware, mostly mutations of valid "
            "inputs); 'accepted' went through every check (an opened datagram, a header that gave a signal, a "
            "job, a request forwarded), 'refused' was refused the documented way. Failures and hangs list their "
            "first inputs in `python -m bench.fuzz`'s JSON.",
            "Found by this harness and fixed with it (regression tests in tests/edge/engine/): job "
            "bodies the store could not save (text with a lone surrogate, an integer beyond 64 bits: 500s) and "
            "a non-ASCII header value, accepted and then unsendable (the job's first attempt stopped the node).",
        ],
        "measurements": {"fuzz": [vars(report) for report in reports]},
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else INPUTS)["measurements"], indent=2))
