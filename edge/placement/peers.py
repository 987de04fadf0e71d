"""The node-to-node API: forward a job to its queue key's owner, hand queues over, find a job on any node.

Served under `/internal/v1/` on the node's API port and spoken over keep-alive HTTP/1.1 (`peer_transport`, the
node's own transport, edge/outbound/keepalive.py): a call takes an idle connection to its peer or opens one, so
concurrent calls never wait behind each other. Bodies are msgpack of `JobRecord.to_wire()`.

Why not HTTP/2, which carried these calls before on one connection per peer: with jobs arriving at two nodes at
once, forwards going one way and copies (edge/placement/replication.py) the other stalled each other until the
forward deadline (`python -m bench.workers` measured 1-3 jobs/s on two workers), and httpcore never resets a
cancelled HTTP/2 stream (encode/httpcore#1022), which a race's losers are all the time. On HTTP/1.1 a cancelled
call closes its connection, which the serving node notices at once, and forwards are batched (below), so few
calls carry many jobs.

Authentication happens before any of a body is read, because the port is the public one. Every request carries
`X-EZThrottle-Cluster: t=<unix seconds>,n=<body bytes>,b=<hex SHA-256 of the body>,v2=<hex>` where `v2` is the
cluster keyring's HMAC-SHA256 of `t`, the method, the path, `n` and `b`. The serving node checks the head first
(`verify_head`: `t` within `CLOCK_SKEW_S_MAX`, then one HMAC per ring key over those few dozen bytes), so a caller
without a key costs a header parse and is answered 401 before a byte of its body is read (the connection is then
dropped rather than drained); then it reads at most `n` bytes and checks their digest against `b`
(`SignedHead.check_body`), which the tag covers. Any key of the ring verifies, so keys rotate as for gossip.

Without a keyring (`--insecure-cluster`, a development mode) nothing is signed, and only callers on a loopback
address are served (`InternalRoutes.admit`, 403 otherwise): such a cluster's members must reach each other over
loopback, as on one development machine.

A store that fails while serving a call (disk full) answers 503 + Retry-After (`store_unavailable`); the caller
sees `PeerStoreError` and tells its own client the same, instead of waiting for a healthy owner that will not come.

Routes (all POST, so that every request is signed over a body):
    jobs      accept records, each msgpack in a bin (the owner makes each durable)
                                                                -> {results: [{record, created} | {refused, ...}]}
    handoff   accept records moving to this node               -> {accepted}
    find      a job by id, if this node holds it                -> {record | None}
    cancel    cancel a queued job held here                     -> {record | None, found}
    queues    queues with a key prefix                          -> {queues}
    attempt   run one outbound attempt here                     -> the attempt's result (below)
    replicate keep copies of records (edge/placement/replication.py) -> {held: [record | None per record]}
    replica-pull  every copy held of some queue keys (and of the keys `owned_by` owns) -> {records}
    events    a job's events kept here after a sequence number, waiting up to wait_s for more (a long poll,
              abandoned when the caller goes)                   -> {events: [[seq, kind, json]], tracked, state}
                                                                   | {busy} (too many readers)
    dashboard this node's part of the dashboard (edge/http/dashboard.py) for an account, or for the operator (None)
                                                                -> {view}

Remote attempts (multi-region execution): the key's owner keeps the queue, the pacing and the job record; an
attempt "in region R" is run by a node of R through that node's own `Executor`, SSRF guard included, and the
answer carries what the attempt produced. The serving node keeps no job state: when the caller goes away (it
cancelled a race's loser, or died), the attempt is cancelled, which closes its upstream connection.

    request  {method, url, headers: [[name, value], ...] | {name: value}, body: str | None,
              timeouts: {connect_s, read_s, total_s}}
    reply    {status_code: int | None, headers: [[name, value], ...], body: str, body_truncated, error: str | None,
              retryable, duration_s}   (`edge.engine.outcome.AttemptResult`, field for field)

Cancellation end to end: the caller cancels its `PeerClient.attempt`, which closes that call's connection; the
serving node's front end (edge/http/http1.py) does not cancel the app but answers its next `receive()` with
`http.disconnect`, which the API hands to `InternalRoutes.handle` as `caller_gone`; the attempt runs beside a task
waiting on it, and is cancelled when it returns.

Forwarded jobs travel in batches (`PeerClient.submit`): per peer, a few `jobs` calls at a time, each carrying
every submission that arrived while the calls before it were out (up to FORWARD_BATCH_RECORDS_MAX records or
FORWARD_BATCH_BYTES_MAX bytes). Under load a forward then costs a share of one signed request instead of a request
of its own, on both nodes; a lone submission still goes at once. The owner makes a batch's jobs durable
concurrently, so they share its store's group commits, and answers each on its own: a refusal or a store failure
of one is that submission's alone.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import httpx
import msgpack
import trio

from cluster import Keyring
from cluster.messages import CounterEntry
from edge.engine.outcome import AttemptResult
from edge.engine.queue import BacklogFull
from edge.engine.records import JobRecord
from edge.engine.shell.events import EventBatch, PublishedEvent, TooManyReaders, TrackState
from edge.engine.shell.executor import Executor, Timeouts
from edge.engine.shell.queues import QueueManager
from edge.outbound.client import OutboundHttp, read_capped
from edge.outbound.keepalive import KeepAliveTransport, PoolLimits
from edge.outbound.origins import parse_http_url
from edge.outbound.ssrf import plain_connect
from edge.placement.usage import QuotaExceeded
from edge.problems import PROBLEM_TYPE_BASE, STORE_UNAVAILABLE, Problem, store_unavailable
from edge.runtime import Runtime
from edge.store import Store, StoreError

log = logging.getLogger("ezthrottle.internal")
# A quota lender that has not answered in this long is taken as unreachable (edge/placement/usage.py): the
# submission waiting for the rights is refused with a short Retry-After rather than held for the forward deadline.
LEND_TIMEOUT_S = 1.0

# Forwarded jobs in one `jobs` call, at most, and their encoded size (one job's body is at most
# server.body_bytes_max, 1 MiB by default); and the calls out to one peer at a time.
FORWARD_BATCH_RECORDS_MAX = 256
FORWARD_BATCH_BYTES_MAX = 8 * 1024 * 1024
FORWARD_CALLS_PER_PEER = 4

# Connections to the other nodes, all peers together: one per call in flight (remote attempts hold theirs for the
# attempt's length), the idle ones kept for reuse. Idle ones are let go before the serving node's idle timeout (5 s
# by default) would close them under a request.
PEER_CONNECTIONS_MAX = 1024
PEER_IDLE_CONNECTIONS_MAX = 64
PEER_IDLE_EXPIRY_S = 4.0

PREFIX = "/internal/v1/"
AUTH_HEADER = "X-EZThrottle-Cluster"
CLOCK_SKEW_S_MAX = 30.0
CONTENT_TYPE = "application/msgpack"
# A reply larger than this is refused rather than held in memory. Replies are records, lists of queues, or an
# attempt's result, whose body the serving executor caps at 1 MiB (up to 3 MiB as UTF-8 once undecodable bytes
# are replaced); the largest request the API takes is as large (edge/http/api.py, INTERNAL_BODY_BYTES_MAX).
REPLY_BYTES_MAX = 64 * 1024 * 1024
# The longest attempt a node runs for a peer. Its caller normally gives up first (`PeerClient.attempt`); this
# bounds what a peer that vanished without closing its connection (a partition) can leave running here.
ATTEMPT_TIMEOUT_S_MAX = 3600.0

# The longest a reader of a job's events waits here for the next one (a peer's long poll); its caller waits this
# long plus the forward deadline.
EVENTS_WAIT_S_MAX = 60.0

# Waits until the caller of the request being served has gone (its stream was reset or its connection closed).
CallerGone = Callable[[], Awaitable[None]]
_Result = TypeVar("_Result")


async def _unless_gone(caller_gone: CallerGone, work: Callable[[], Awaitable[_Result]]) -> _Result | None:
    """What `work()` returns, or None when the caller went away first: the work is then cancelled."""
    result: _Result | None = None
    async with trio.open_nursery() as nursery:

        async def abandon_when_gone() -> None:
            await caller_gone()
            nursery.cancel_scope.cancel()

        nursery.start_soon(abandon_when_gone)
        result = await work()
        nursery.cancel_scope.cancel()
    return result


class BadSignature(Exception):
    """Why a request's cluster signature was refused (the 401's detail)."""


@dataclass(frozen=True, slots=True)
class SignedHead:
    """What a verified head says of its body; the body is trusted once it matches (`check_body`)."""

    body_bytes: int
    body_sha256: str  # hex

    def check_body(self, body: bytes) -> None:
        if len(body) != self.body_bytes or not hmac.compare_digest(hashlib.sha256(body).hexdigest(), self.body_sha256):
            raise BadSignature("the body is not the one signed")


def _signed_head(timestamp: str, method: str, path: str, head: SignedHead) -> bytes:
    # The prefix keeps these tags apart from gossip's, made with the same keys.
    return f"ezthrottle-internal-v2\n{timestamp}\n{method}\n{path}\n{head.body_bytes}\n{head.body_sha256}".encode()


def sign_request(keyring: Keyring, *, method: str, path: str, body: bytes, wall_s: float) -> str:
    timestamp = str(int(wall_s))
    head = SignedHead(len(body), hashlib.sha256(body).hexdigest())
    tag = keyring.sign(_signed_head(timestamp, method, path, head)).hex()
    return f"t={timestamp},n={head.body_bytes},b={head.body_sha256},v2={tag}"


def verify_head(keyring: Keyring, header: str, *, method: str, path: str, wall_s: float) -> SignedHead:
    """The head's claims about its body, if its tag verifies for this method and path now; BadSignature otherwise.
    Costs a parse and one HMAC per ring key over a few dozen bytes, whatever the body's size."""
    if not header:
        raise BadSignature(f"no {AUTH_HEADER} header")
    parts = dict(item.strip().split("=", 1) for item in header.split(",") if "=" in item)
    timestamp, length, digest, tag = (parts.get(name, "") for name in ("t", "n", "b", "v2"))
    if not (_decimal(timestamp) and _decimal(length) and _hex(digest, 64) and _hex(tag, 64)):
        raise BadSignature(f"a malformed {AUTH_HEADER} header (want t=<unix s>,n=<bytes>,b=<sha256>,v2=<hmac>)")
    off_s = abs(wall_s - int(timestamp))
    if off_s > CLOCK_SKEW_S_MAX:
        raise BadSignature(f"signed at a time {off_s:.0f} s off this node's clock (at most {CLOCK_SKEW_S_MAX:g} s)")
    head = SignedHead(int(length), digest)
    if not keyring.verify(_signed_head(timestamp, method, path, head), bytes.fromhex(tag)):
        raise BadSignature("not signed by a key of this cluster's keyring")
    return head


def _decimal(text: str) -> bool:
    return 0 < len(text) <= 12 and text.isascii() and text.isdigit()


def _hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def _problem_kind(body: bytes) -> str | None:
    """The kind of a problem+json body (`edge.problems`), None for any other body."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind.removeprefix(PROBLEM_TYPE_BASE) if isinstance(kind, str) else None


def _pack(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def _unpack(data: bytes) -> dict[str, Any]:
    doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(doc, dict):
        raise ValueError("expected a map")
    return doc


def _next_batch(waiting: deque[_Forward]) -> list[_Forward]:
    """Take the next batch off a lane, oldest first, skipping what its caller took back; the first one always
    goes, however large."""
    batch: list[_Forward] = []
    size = 0
    while waiting and len(batch) < FORWARD_BATCH_RECORDS_MAX:
        forward = waiting[0]
        if forward.abandoned:
            waiting.popleft()
            continue
        if batch and size + len(forward.packed) > FORWARD_BATCH_BYTES_MAX:
            break
        batch.append(waiting.popleft())
        size += len(forward.packed)
    return batch


class ReplicaHolder(Protocol):
    """The serving side of replication (edge/placement/replication.py `Replicator`)."""

    async def receive(self, records: list[JobRecord]) -> list[JobRecord | None]: ...

    async def pull(self, keys: Collection[str], owned_by: str | None = None) -> list[JobRecord]: ...


class PeerError(Exception):
    """A peer could not be reached or answered badly; the caller decides whether to retry elsewhere."""


class PeerStoreError(PeerError):
    """The peer was reached but its store failed (503 store-unavailable): waiting for membership to change will not
    help, so a caller whose client waits answers it 503 + Retry-After (`store_unavailable`)."""


@dataclass(slots=True, eq=False)
class _Forward:
    """One submission waiting in a peer's lane: its record in msgpack (packed once: its size bounds the batch, and
    the batch carries it as it is), then the owner's answer (or why there is none)."""

    packed: bytes
    done: trio.Event = field(default_factory=trio.Event)
    answer: dict[str, Any] | None = None
    error: PeerError | None = None
    abandoned: bool = False  # its caller stopped waiting before it was sent: it is not sent


@dataclass(slots=True)
class _Lane:
    """The submissions for one peer not sent yet, and how many calls carry earlier ones now."""

    waiting: deque[_Forward] = field(default_factory=deque)
    calls: int = 0


def peer_transport() -> KeepAliveTransport:
    """Keep-alive HTTP/1.1 to the other nodes (edge/outbound/keepalive.py), not vetted by the SSRF guard: the
    addresses are the cluster's own, and every call is signed."""
    limits = PoolLimits(
        connections_max=PEER_CONNECTIONS_MAX, idle_max=PEER_IDLE_CONNECTIONS_MAX, idle_expiry_s=PEER_IDLE_EXPIRY_S
    )
    return KeepAliveTransport(connect=plain_connect(local_address=None, open_tcp=trio.open_tcp_stream), limits=limits)


class PeerClient:
    """Calls other nodes' internal API. Forwarded jobs are batched per peer (see the module docstring), by tasks
    in `nursery`, which must outlive the client's use."""

    def __init__(self, *, keyring: Keyring | None, runtime: Runtime, timeout_s: float, nursery: trio.Nursery) -> None:
        """`timeout_s` bounds each network step of a call (connect, each read and write); the forward deadline."""
        self._keyring = keyring
        self._runtime = runtime
        self._outbound = OutboundHttp(runtime.transport or peer_transport())
        self._timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s)
        self._nursery = nursery
        self._lanes: dict[str, _Lane] = {}

    async def aclose(self) -> None:
        await self._outbound.aclose()

    async def _call(
        self, api_address: str, route: str, doc: dict[str, Any], *, deadline_s: float | None = None
    ) -> dict[str, Any]:
        """One signed call; with `deadline_s`, the whole call (reply included) must end within it, and the peer
        may stay silent that long (a remote attempt says nothing until its upstream answered)."""
        path = PREFIX + route
        body = _pack(doc)
        headers = {"Content-Type": CONTENT_TYPE}
        if self._keyring is not None:
            headers[AUTH_HEADER] = sign_request(
                self._keyring, method="POST", path=path, body=body, wall_s=self._runtime.wall_clock()
            )
        timeout = self._timeout if deadline_s is None else httpx.Timeout(self._timeout_s, read=deadline_s)
        try:
            with trio.fail_after(math.inf if deadline_s is None else deadline_s):
                async with self._outbound.stream(
                    "POST", f"http://{api_address}{path}", headers=headers, content=body, timeout=timeout
                ) as response:
                    reply, truncated = await read_capped(response, REPLY_BYTES_MAX)
        except trio.TooSlowError:
            raise PeerError(f"{api_address}: no answer within {deadline_s:g} s") from None
        except httpx.HTTPError as exc:
            raise PeerError(f"{api_address}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            if response.status_code == 503 and _problem_kind(reply) == STORE_UNAVAILABLE:
                raise PeerStoreError(f"{api_address}: its store failed")
            raise PeerError(f"{api_address}: HTTP {response.status_code}")
        if truncated:
            raise PeerError(f"{api_address}: reply over {REPLY_BYTES_MAX} bytes")
        try:
            return _unpack(reply)
        except (ValueError, msgpack.ExtraData) as exc:
            raise PeerError(f"{api_address}: unreadable reply") from exc

    async def submit(self, api_address: str, record: JobRecord) -> tuple[JobRecord, bool]:
        """The owner's answer to a forwarded job, sent in a batch with the others waiting for that owner: the stored
        job and whether it is new. BacklogFull or QuotaExceeded when the owner refused it, PeerStoreError when its
        store failed, PeerError when the owner could not be reached or answered something else. A caller cancelled
        before its job went out takes it back; after, the owner may still accept it (its retry, under the same
        idempotency key, then finds it)."""
        forward = _Forward(msgpack.packb(record.to_wire(), use_bin_type=True))
        lane = self._lanes.setdefault(api_address, _Lane())
        lane.waiting.append(forward)
        if lane.calls < FORWARD_CALLS_PER_PEER:
            lane.calls += 1
            self._nursery.start_soon(self._drain, api_address, lane)
        try:
            await forward.done.wait()
        finally:
            forward.abandoned = True
        if forward.error is not None:
            raise forward.error
        answer = forward.answer
        assert answer is not None
        refused = answer.get("refused")
        if refused == "backlog-full":
            raise BacklogFull(record.account_id, int(answer["limit"]))
        if refused == "quota-exceeded":
            raise QuotaExceeded(record.account_id, int(answer["limit"]), int(answer["retry_at_ms"]))
        if refused == STORE_UNAVAILABLE:
            raise PeerStoreError(f"{api_address}: its store failed")
        if refused == "problem":
            raise PeerError(f"{api_address}: HTTP {answer.get('status')} ({answer.get('detail')})")
        try:
            return JobRecord.from_wire(answer["record"]), bool(answer["created"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"{api_address}: unreadable jobs answer ({exc})") from None

    async def _drain(self, api_address: str, lane: _Lane) -> None:
        """Send the lane's waiting submissions, a batch per call, until none is left (one of the lane's calls)."""
        try:
            while batch := _next_batch(lane.waiting):
                await self._send_batch(api_address, batch)
        finally:
            lane.calls -= 1
            if not lane.calls and not lane.waiting and self._lanes.get(api_address) is lane:
                del self._lanes[api_address]

    async def _send_batch(self, api_address: str, batch: list[_Forward]) -> None:
        try:
            reply = await self._call(api_address, "jobs", {"records": [forward.packed for forward in batch]})
            answers = reply["results"]
            if not isinstance(answers, list) or len(answers) != len(batch):
                raise PeerError(f"{api_address}: jobs answered {len(answers)} of {len(batch)} records")
            for forward, answer in zip(batch, answers, strict=True):
                if not isinstance(answer, dict):
                    raise PeerError(f"{api_address}: unreadable jobs answer")
                forward.answer = answer
        except (KeyError, TypeError) as exc:
            for forward in batch:
                forward.error = PeerError(f"{api_address}: unreadable jobs reply ({exc})")
        except PeerError as exc:
            for forward in batch:
                forward.error = exc
        finally:
            for forward in batch:
                if forward.answer is None and forward.error is None:  # cancelled: the node is stopping
                    forward.error = PeerError(f"{api_address}: the forward was cut short")
                forward.done.set()

    async def hand_off(self, api_address: str, records: list[JobRecord]) -> int:
        reply = await self._call(api_address, "handoff", {"records": [r.to_wire() for r in records]})
        return int(reply["accepted"])

    async def find(self, api_address: str, job_id: str) -> JobRecord | None:
        reply = await self._call(api_address, "find", {"job_id": job_id})
        return JobRecord.from_wire(reply["record"]) if reply.get("record") else None

    async def cancel(self, api_address: str, job_id: str) -> tuple[JobRecord | None, bool]:
        reply = await self._call(api_address, "cancel", {"job_id": job_id})
        record = JobRecord.from_wire(reply["record"]) if reply.get("record") else None
        return record, bool(reply["found"])

    async def queues(self, api_address: str, prefix: str) -> list[dict[str, Any]]:
        return list((await self._call(api_address, "queues", {"prefix": prefix}))["queues"])

    async def stop(self, api_address: str, job_id: str) -> bool:
        """Stop a step job if the peer holds it; whether it did."""
        return bool((await self._call(api_address, "stop", {"job_id": job_id}))["found"])

    async def lend(
        self, api_address: str, *, account_id: str, month: str, wanted: int, borrower: str
    ) -> list[CounterEntry]:
        """Ask the peer for quota rights (edge/placement/usage.py); its ledger entries of that quota."""
        doc = {"account_id": account_id, "month": month, "wanted": wanted, "borrower": borrower}
        reply = await self._call(api_address, "lend", doc, deadline_s=min(LEND_TIMEOUT_S, self._timeout_s))
        try:
            return [CounterEntry(name=str(n), node=str(o), value=int(v)) for n, o, v in reply["entries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"{api_address}: unreadable lend reply ({exc})") from None

    async def replicate(self, api_address: str, records: list[JobRecord]) -> list[JobRecord | None]:
        """Have the peer keep copies of `records`; per record None, or the job it holds under that record's
        idempotency key instead."""
        reply = await self._call(api_address, "replicate", {"records": [r.to_wire() for r in records]})
        try:
            held = [None if wire is None else JobRecord.from_wire(wire) for wire in reply["held"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"{api_address}: unreadable replicate reply ({exc})") from None
        if len(held) != len(records):
            raise PeerError(f"{api_address}: replicate answered {len(held)} of {len(records)} records")
        return held

    async def events(self, api_address: str, job_id: str, *, after: int, wait_s: float) -> EventBatch:
        """The events the peer keeps of a job after `after`, waiting there up to `wait_s` for more; TooManyReaders
        when it has as many readers as it takes."""
        doc = {"job_id": job_id, "after": after, "wait_s": wait_s}
        reply = await self._call(api_address, "events", doc, deadline_s=wait_s + self._timeout_s)
        if reply.get("busy"):
            raise TooManyReaders
        try:
            events = [
                PublishedEvent(int(seq), str(kind), json.loads(bytes(data))) for seq, kind, data in reply["events"]
            ]
            return EventBatch(events, tracked=bool(reply["tracked"]), state=_track_state(reply["state"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"{api_address}: unreadable events reply ({exc})") from None

    async def dashboard(self, api_address: str, account_id: str | None) -> dict[str, Any]:
        """The peer's part of the dashboard, for one account or (None) for the operator."""
        view = (await self._call(api_address, "dashboard", {"account_id": account_id}))["view"]
        if not isinstance(view, dict):
            raise PeerError(f"{api_address}: unreadable dashboard reply")
        return view

    async def replica_pull(self, api_address: str, keys: list[str], *, owned_by: str | None = None) -> list[JobRecord]:
        """Every copy the peer holds of the given queue keys, and with `owned_by` of the keys that member owns."""
        doc: dict[str, Any] = {"keys": keys}
        if owned_by is not None:
            doc["owned_by"] = owned_by
        reply = await self._call(api_address, "replica-pull", doc)
        try:
            return [JobRecord.from_wire(wire) for wire in reply["records"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"{api_address}: unreadable replica-pull reply ({exc})") from None

    async def report(self, api_address: str, step: JobRecord) -> None:
        """Tell the peer that holds a step's root that the step ended."""
        await self._call(api_address, "step", {"record": step.to_wire()})

    async def attempt(
        self,
        api_address: str,
        *,
        method: str,
        url: str | httpx.URL,
        headers: dict[str, str],
        body: str | None,
        timeouts: Timeouts,
    ) -> AttemptResult:
        """Run one attempt on the node at `api_address` and return what it produced there.

        The call may take the attempt's whole `total_s` plus the forward deadline (for reaching the peer and
        carrying the answer back). PeerError when the peer cannot be reached, refuses the call or does not answer
        in that time; the caller decides where to go next. Cancelling this call closes its connection, and the
        serving node then cancels the attempt (the module docstring).
        """
        doc = {
            "method": method,
            "url": str(url),
            "headers": [[name, value] for name, value in headers.items()],
            "body": body,
            "timeouts": {"connect_s": timeouts.connect_s, "read_s": timeouts.read_s, "total_s": timeouts.total_s},
        }
        reply = await self._call(api_address, "attempt", doc, deadline_s=timeouts.total_s + self._timeout_s)
        try:
            return attempt_result_from_wire(reply)
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerError(f"{api_address}: unreadable attempt reply ({exc})") from None


def attempt_result_to_wire(result: AttemptResult) -> dict[str, Any]:
    return {
        "status_code": result.status_code,
        "headers": [[name, value] for name, value in result.headers],
        "body": result.body,
        "body_truncated": result.body_truncated,
        "error": result.error,
        "retryable": result.retryable,
        "duration_s": result.duration_s,
    }


def attempt_result_from_wire(doc: dict[str, Any]) -> AttemptResult:
    """The inverse of `attempt_result_to_wire`; KeyError, TypeError or ValueError for anything else."""
    status_code, error = doc["status_code"], doc["error"]
    if status_code is not None and type(status_code) is not int:
        raise TypeError("status_code is not an integer")
    if error is not None and not isinstance(error, str):
        raise TypeError("error is not a string")
    if status_code is None and error is None:
        raise ValueError("neither a status code nor an error")
    duration_s = doc["duration_s"]
    if type(duration_s) not in (int, float) or not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError("duration_s is not a duration")
    return AttemptResult(
        duration_s=float(duration_s),
        status_code=status_code,
        headers=tuple(_string_pairs(doc["headers"], "headers")),
        body=_string(doc["body"], "body"),
        body_truncated=_flag(doc["body_truncated"], "body_truncated"),
        error=error,
        retryable=_flag(doc["retryable"], "retryable"),
    )


def _track_state(value: Any) -> TrackState:
    if value not in ("open", "ended", "moved"):
        raise ValueError(f"unknown state {value!r}")
    return cast(TrackState, value)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} is not a string")
    return value


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field} is not a boolean")
    return value


def _string_pairs(value: Any, field: str) -> list[tuple[str, str]]:
    """`[[name, value], ...]` or `{name: value}` as a list of string pairs."""
    if isinstance(value, dict):
        value = list(value.items())
    if not isinstance(value, list):
        raise TypeError(f"{field} is neither a list of pairs nor a map")
    pairs: list[tuple[str, str]] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 2 or not all(isinstance(part, str) for part in item):
            raise TypeError(f"{field} holds something other than a pair of strings")
        pairs.append((item[0], item[1]))
    return pairs


def _timeout_s(timeouts: Any, name: str) -> float:
    value = timeouts[name]
    if type(value) not in (int, float) or not 0 < value <= ATTEMPT_TIMEOUT_S_MAX:
        raise Problem(
            400,
            "Malformed request",
            f"timeouts.{name} must be a number of seconds in (0, {ATTEMPT_TIMEOUT_S_MAX:g}]",
            field=f"timeouts.{name}",
        )
    return float(value)


def is_loopback(host: str | None) -> bool:
    """Whether a caller's address (the ASGI scope's `client` host) is loopback; IPv4-mapped IPv6 included, as a
    dual-stack listener reports IPv4 callers that way."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _unauthorized(refused: BadSignature) -> Problem:
    return Problem(401, "Unauthorized", f"cluster authentication failed: {refused}", kind="cluster-unauthorized")


@dataclass(frozen=True, slots=True)
class InternalCall:
    """A call whose head `InternalRoutes.admit` accepted; its body is read next, `body_bytes_max` at most."""

    route: str
    signed: SignedHead | None  # None in a cluster without keys
    body_bytes_max: int


class InternalRoutes:
    """The serving side: admit each call on its head (`admit`), then hand it to the local queue manager and store,
    or (attempts) to the node's executor."""

    def __init__(
        self,
        *,
        keyring: Keyring | None,
        runtime: Runtime,
        manager: QueueManager,
        store: Store,
        executor: Executor,
        lend: Callable[[str, str, int, str], Awaitable[list[CounterEntry]]] | None = None,
    ) -> None:
        self._lend = lend
        self._keyring = keyring
        self._runtime = runtime
        self._manager = manager
        self._store = store
        self._executor = executor
        self._replicas: ReplicaHolder | None = None
        self._dashboard_view: Callable[[str | None], dict[str, Any]] | None = None
        self._routes: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "replicate": self._replicate,
            "replica-pull": self._replica_pull,
            "jobs": self._jobs,
            "handoff": self._handoff,
            "find": self._find,
            "cancel": self._cancel,
            "queues": self._queues,
            "stop": self._stop,
            "step": self._step,
            "lend": self._lend_rights,
            "dashboard": self._dashboard,
        }
        # Routes whose work is abandoned when the caller goes away; None from them means it went away.
        self._watched_routes: dict[str, Callable[[dict[str, Any], CallerGone], Awaitable[dict[str, Any] | None]]] = {
            "attempt": self._attempt,
            "events": self._events,
        }

    def admit(
        self, method: str, path: str, auth_header: str, *, client_host: str | None, body_bytes_max: int
    ) -> InternalCall:
        """Judge a call on its head alone, before any of its body is read: 401 without a valid signature (403 from
        a caller off loopback, without keys), 404 for no such route, 413 for a signed body over `body_bytes_max`."""
        signed = None
        if self._keyring is None:
            if not is_loopback(client_host):
                raise Problem(
                    403,
                    "Cluster keys required",
                    f"this cluster has no keys (--insecure-cluster), so its internal API answers loopback callers "
                    f"only, not {client_host}; set cluster.keys on every member to cluster across hosts",
                    kind="cluster-keys-required",
                )
        else:
            try:
                signed = verify_head(
                    self._keyring, auth_header, method=method, path=path, wall_s=self._runtime.wall_clock()
                )
            except BadSignature as refused:
                raise _unauthorized(refused) from None
        route = path.removeprefix(PREFIX)
        if method != "POST" or (route not in self._routes and route not in self._watched_routes):
            raise Problem(404, "Not found", f"no internal route {path}")
        if signed is not None and signed.body_bytes > body_bytes_max:
            detail = f"the request body is over {body_bytes_max} bytes"
            raise Problem(413, "Body too large", detail, kind="body-too-large")
        return InternalCall(route, signed, body_bytes_max if signed is None else signed.body_bytes)

    async def handle(self, call: InternalCall, body: bytes, *, caller_gone: CallerGone | None = None) -> bytes | None:
        """The reply to an admitted call, or None when the caller went away before it (only a route that watches
        for that ends early, and only when `caller_gone` is given: it returns once the caller has gone)."""
        if call.signed is not None:
            try:
                call.signed.check_body(body)
            except BadSignature as refused:
                raise _unauthorized(refused) from None
        try:
            doc = _unpack(body)
        except (ValueError, msgpack.ExtraData):
            raise Problem(400, "Malformed request", "the body is not a msgpack map") from None
        try:
            if call.route in self._routes:
                return _pack(await self._routes[call.route](doc))
            reply = await self._watched_routes[call.route](doc, caller_gone or trio.sleep_forever)
        except (KeyError, TypeError) as exc:
            raise Problem(400, "Malformed request", f"missing or mistyped field: {exc}") from None
        except StoreError:
            log.exception("the store failed serving the internal call %s", call.route)
            raise store_unavailable(f"this node's store failed serving {call.route}") from None
        return None if reply is None else _pack(reply)

    async def _attempt(self, doc: dict[str, Any], caller_gone: CallerGone) -> dict[str, Any] | None:
        method, url = _string(doc["method"], "method"), _string(doc["url"], "url")
        try:
            parsed = parse_http_url(url)
        except ValueError as exc:
            raise Problem(400, "Malformed request", f"url: {exc}", field="url") from None
        headers: dict[str, str] = {}
        for name, value in _string_pairs(doc["headers"], "headers"):
            headers[name] = f"{headers[name]}, {value}" if name in headers else value  # RFC 9110 §5.3
        body = doc["body"]
        if body is not None:
            body = _string(body, "body")
        raw_timeouts = doc["timeouts"]
        if not isinstance(raw_timeouts, dict):
            raise TypeError("timeouts is not a map")
        timeouts = Timeouts(
            connect_s=_timeout_s(raw_timeouts, "connect_s"),
            read_s=_timeout_s(raw_timeouts, "read_s"),
            total_s=_timeout_s(raw_timeouts, "total_s"),
        )
        # When the caller goes, the executor's request is cancelled: its connection closes.
        execute = partial(self._executor.execute, method=method, url=parsed, headers=headers, body=body)
        result = await _unless_gone(caller_gone, partial(execute, timeouts=timeouts))
        if result is None:
            log.debug("a remote attempt was abandoned: its caller went away")
            return None
        return attempt_result_to_wire(result)

    async def _events(self, doc: dict[str, Any], caller_gone: CallerGone) -> dict[str, Any] | None:
        wait_s, after = doc["wait_s"], doc["after"]
        if type(wait_s) not in (int, float) or not 0 <= wait_s <= EVENTS_WAIT_S_MAX:
            raise Problem(400, "Malformed request", f"wait_s: seconds in [0, {EVENTS_WAIT_S_MAX:g}]", field="wait_s")
        if type(after) is not int:
            raise TypeError("after is not an integer")
        try:
            batch = await _unless_gone(
                caller_gone, partial(self._manager.events.read, _string(doc["job_id"], "job_id"), after, wait_s)
            )
        except TooManyReaders:
            return {"busy": True}
        if batch is None:
            return None
        events = [[event.seq, event.kind, event.data] for event in batch.events]
        return {"events": events, "tracked": batch.tracked, "state": batch.state}

    def serve_dashboard(self, view: Callable[[str | None], dict[str, Any]]) -> None:
        """Answer `dashboard` with `view(account_id)` (this node's part; edge/http/dashboard.py)."""
        self._dashboard_view = view

    async def _dashboard(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self._dashboard_view is None:
            raise Problem(404, "Not found", "this node serves no dashboard")
        account_id = doc["account_id"]
        if account_id is not None:
            account_id = _string(account_id, "account_id")
        return {"view": self._dashboard_view(account_id)}

    def serve_replicas(self, holder: ReplicaHolder) -> None:
        """Answer `replicate` and `replica-pull` (a node that replicates; edge/placement/replication.py)."""
        self._replicas = holder

    def _replica_holder(self) -> ReplicaHolder:
        if self._replicas is None:
            raise Problem(404, "Not found", "this node does not replicate jobs (cluster.replicas = 1)")
        return self._replicas

    async def _replicate(self, doc: dict[str, Any]) -> dict[str, Any]:
        holder = self._replica_holder()
        held = await holder.receive([JobRecord.from_wire(wire) for wire in doc["records"]])
        return {"held": [None if record is None else record.to_wire() for record in held]}

    async def _replica_pull(self, doc: dict[str, Any]) -> dict[str, Any]:
        holder = self._replica_holder()
        keys = doc["keys"]
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise Problem(400, "Malformed request", "keys: a list of strings", field="keys")
        owned_by = doc.get("owned_by")
        if owned_by is not None:
            owned_by = _string(owned_by, "owned_by")
        return {"records": [record.to_wire() for record in await holder.pull(keys, owned_by)]}

    async def _jobs(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A batch of forwarded jobs, made durable concurrently (so they share group commits), each answered."""
        packed = doc["records"]
        if not isinstance(packed, list) or len(packed) > FORWARD_BATCH_RECORDS_MAX:
            raise TypeError(f"records must be a list of at most {FORWARD_BATCH_RECORDS_MAX}")
        if not all(isinstance(blob, bytes) for blob in packed):
            raise TypeError("records must be msgpack blobs")
        try:
            records = [JobRecord.from_wire(msgpack.unpackb(blob, raw=False)) for blob in packed]
        except (ValueError, msgpack.ExtraData) as exc:
            raise TypeError(f"unreadable record ({exc})") from None
        answers: list[dict[str, Any]] = [{} for _ in records]
        async with trio.open_nursery() as nursery:
            for index, record in enumerate(records):
                nursery.start_soon(self._accept_forwarded, record, answers, index)
        return {"results": answers}

    async def _accept_forwarded(self, record: JobRecord, answers: list[dict[str, Any]], index: int) -> None:
        try:
            stored, created = await self._manager.submit(record)
        except BacklogFull as full:
            answers[index] = {"refused": "backlog-full", "limit": full.limit}
        except QuotaExceeded as spent:
            answers[index] = {"refused": "quota-exceeded", "limit": spent.limit, "retry_at_ms": spent.retry_at_ms}
        except StoreError:
            log.exception("the store failed accepting forwarded job %s", record.job_id)
            answers[index] = {"refused": STORE_UNAVAILABLE}
        except Problem as problem:  # e.g. its replicas could not confirm it: what a call of its own would answer
            answers[index] = {"refused": "problem", "status": problem.status, "detail": problem.detail}
        else:
            answers[index] = {"record": stored.to_wire(), "created": created}

    async def _handoff(self, doc: dict[str, Any]) -> dict[str, Any]:
        records = [JobRecord.from_wire(wire) for wire in doc["records"]]
        return {"accepted": await self._manager.accept_handoff(records)}

    async def _find(self, doc: dict[str, Any]) -> dict[str, Any]:
        job_id = str(doc["job_id"])
        record = self._manager.live_job(job_id) or await self._store.get_job(job_id)
        return {"record": record.to_wire() if record else None}

    async def _cancel(self, doc: dict[str, Any]) -> dict[str, Any]:
        job_id = str(doc["job_id"])
        found = self._manager.live_job(job_id) or await self._store.get_job(job_id)
        cancelled = await self._manager.cancel(job_id) if found else None
        return {"record": (cancelled or found).to_wire() if found else None, "found": found is not None}

    async def _stop(self, doc: dict[str, Any]) -> dict[str, Any]:
        job_id = str(doc["job_id"])
        found = self._manager.live_job(job_id) is not None
        if found:
            await self._manager.stop(job_id, forward=False)
        return {"found": found}

    async def _step(self, doc: dict[str, Any]) -> dict[str, Any]:
        step = JobRecord.from_wire(doc["record"])
        if step.parent_id is None or not step.is_terminal:
            raise Problem(400, "Malformed request", "record: not a finished step job", field="record")
        await self._manager.step_ended(step, forward=False)
        return {}

    async def _lend_rights(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self._lend is None:
            raise Problem(404, "Not found", "this node does not meter plan usage")
        wanted = doc["wanted"]
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise Problem(400, "Malformed request", "wanted: a positive integer", field="wanted")
        entries = await self._lend(
            _string(doc["account_id"], "account_id"),
            _string(doc["month"], "month"),
            wanted,
            _string(doc["borrower"], "borrower"),
        )
        return {"entries": [[e.name, e.node, e.value] for e in entries]}

    async def _queues(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {"queues": self._manager.queues_with_prefix(str(doc["prefix"]))}
