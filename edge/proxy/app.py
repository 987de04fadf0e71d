"""The ASGI app of one protected listener: identify, read the body's head, wait for a slot, forward, stream back.

Per request, in order (each step's failure is an RFC 9457 problem, `edge.problems`):

1. Only origin-form targets (`/path?query`) are proxied (400 otherwise): an absolute-form request must never
   turn the listener into an open proxy.
2. The caller is identified (edge/proxy/callers.py) and the body's head read (edge/proxy/body.py): 408 / 413
   before any slot is taken.
3. The gate (edge/proxy/gate.py) admits, queues or refuses: 429 for the key's own rate or queue limit, 503
   when the upstream is saturated beyond the queue budget or the wait timed out; each with Retry-After, plus
   the key's RateLimit fields when it has a rate.
4. The request goes upstream with its method, path, query and end-to-end headers, plus Forwarded and
   X-Forwarded-For (edge/proxy/headers.py); the body streams after its head. The response streams back as
   the upstream sends it (raw bytes, never decoded), carrying the key's RateLimit fields when it has a rate.
   502 when the upstream cannot be reached or breaks the protocol, 504 when it is too slow:
   `upstream_connect_timeout_s` to connect, `upstream_read_timeout_s` between bytes, and
   `upstream_total_timeout_s` for the whole exchange, which is the longest any request holds a slot.
5. The slot is freed with the exchange's outcome: SUCCESS with the upstream's latency (time to response
   headers, not counting the client's upload), OVERLOADED for a 429, a 503 or a timeout, FAILED otherwise.
   Adaptive concurrency, when on, learns from exactly these.

A client that leaves is noticed wherever it can be (edge/proxy/body.py): while queued it gives its place back;
mid-request the exchange is cancelled and the slot freed at once (that upstream connection is closed).
Once the response has started, a failure can only cut it short: HTTP/1.1 clients see the connection close
before the body ends.

The upstream is configured by the operator, so the SSRF guard that protects the job API's outbound calls
(edge/outbound/ssrf.py) does not apply to it: loopback and private addresses are exactly where upstreams live.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
import trio

from edge.config import ProtectConfig
from edge.http.asgi import DISCONNECT_WATCH, DisconnectWatch
from edge.http.server import ASGISend, send_whole_response
from edge.problems import PROBLEM_CONTENT_TYPE, Problem
from edge.proxy.body import BodyLimits, ClientGone, Receive, RequestBody
from edge.proxy.callers import CallerDirectory
from edge.proxy.gate import Gate, Pass
from edge.proxy.headers import downstream_response_headers, rate_limit_headers, upstream_request_headers
from edge.proxy.metrics import ListenerMetrics
from edge.proxy.upstream import (
    TransportUpstream,
    Upstream,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamTimeouts,
    upstream_url,
)
from scheduler import Outcome

_OVERLOAD_STATUSES: Final = frozenset({429, 503})
# What an origin-form target may hold: printable ASCII without '#' (a fragment is never sent). Checked before the
# gate with one `bytes.translate`, because a refused request should cost as little as possible.
_TARGET_BYTES: Final = bytes(byte for byte in range(0x21, 0x7F) if byte != ord("#"))


class _Exchange:
    """What became of one admitted request, for the problem to answer and the outcome to report."""

    __slots__ = ("done", "failure", "latency_s", "outcome", "started")

    def __init__(self) -> None:
        self.started = False  # the response start went to the client: no problem can be answered any more
        self.done = False
        self.failure: Problem | None = None
        self.outcome = Outcome.FAILED
        self.latency_s: float | None = None


class ProxyApp:
    """The ASGI application of one `[[protect]]` listener; `gate.run` must be running beside it."""

    def __init__(
        self,
        protect: ProtectConfig,
        *,
        gate: Gate,
        transport: Upstream | httpx.AsyncBaseTransport,
        metrics: ListenerMetrics,
    ) -> None:
        """`transport` is the way upstream (edge/proxy/upstream.py); an httpx transport is wrapped in one."""
        self.gate = gate
        self._protect = protect
        if isinstance(transport, httpx.AsyncBaseTransport):
            transport = TransportUpstream(transport, protect.upstream, timeouts=UpstreamTimeouts.of(protect))
        self._upstream = transport
        self._metrics = metrics
        self._callers = CallerDirectory(protect)
        self._limits = BodyLimits.of(protect)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return  # serve_asgi answers the lifespan protocol for apps without one
        try:
            await self._proxy(scope, receive, send)
        except ClientGone:
            self._metrics.on_client_failure("disconnected")
        except Problem as problem:
            if problem.kind in ("body-timeout", "body-too-large"):
                self._metrics.on_client_failure(problem.kind)
            await send_whole_response(
                send,
                problem.status,
                problem.body(scope["path"]),
                content_type=PROBLEM_CONTENT_TYPE,
                headers=problem.headers,
            )

    async def _proxy(self, scope: dict[str, Any], receive: Receive, send: ASGISend) -> None:
        target = _origin_form_target(scope)
        caller = self._callers.identify(scope)
        body = RequestBody(receive, self._limits)
        await body.read_head(_declared_length(scope["headers"]))
        client: DisconnectWatch = scope["extensions"][DISCONNECT_WATCH]
        try:
            hold = await self.gate.enter(caller, client=client)
        except Problem:
            await body.drain()
            raise
        exchange = _Exchange()
        try:
            await self._exchange(scope, target, body, hold, exchange, send, client)
        finally:
            self.gate.leave(hold, exchange.outcome, latency_s=exchange.latency_s)
        if exchange.failure is not None:
            raise exchange.failure
        if not exchange.done and (body.gone or client.gone):
            raise ClientGone

    def _upstream_url(self, target: bytes) -> httpx.URL:
        """The URL an httpx transport gets for `target` (`TransportUpstream`); a 400 if it cannot be built.
        bench/fuzz.py checks with it that every target the app lets through can be sent that way too."""
        try:
            return upstream_url(httpx.URL(self._protect.upstream), target)
        except ValueError:
            raise _bad_target() from None

    async def _exchange(
        self,
        scope: dict[str, Any],
        target: bytes,
        body: RequestBody,
        hold: Pass,
        exchange: _Exchange,
        send: ASGISend,
        client: DisconnectWatch,
    ) -> None:
        total_s = self._protect.upstream_total_timeout_s
        with trio.move_on_after(total_s) as total:
            client.cancel_on_disconnect(total)
            await self._forward(scope, target, body, hold, exchange, send)
        if total.cancelled_caught and not exchange.done and not client.gone:
            exchange.outcome = Outcome.OVERLOADED
            self._metrics.on_upstream_failure("timeout")
            if not exchange.started:
                exchange.failure = _upstream_timeout(f"the upstream did not answer within {total_s:g} s")

    async def _forward(
        self, scope: dict[str, Any], target: bytes, body: RequestBody, hold: Pass, exchange: _Exchange, send: ASGISend
    ) -> None:
        """One upstream exchange; every failure is recorded in `exchange`, only cancellation propagates."""
        headers = upstream_request_headers(
            scope["headers"], client_host=(scope.get("client") or (None,))[0], scheme=scope["scheme"]
        )
        sent_at = trio.current_time()
        try:
            response = await self._upstream.send(
                scope["method"].encode("ascii"), target, headers, body.whole() if body.complete else body
            )
        except Problem as problem:  # the client's body was too slow or too large while streaming up
            exchange.failure = problem
            return
        except ClientGone:
            return
        except UpstreamTimeout:
            exchange.outcome = Outcome.OVERLOADED
            exchange.failure = _upstream_timeout("the upstream did not answer in time")
            self._metrics.on_upstream_failure("timeout")
            return
        except UpstreamFailed as error:
            exchange.failure = Problem(502, "Bad gateway", str(error), kind="upstream-failed")
            self._metrics.on_upstream_failure(error.kind)
            return
        try:
            exchange.latency_s = trio.current_time() - max(sent_at, body.finished_at)
            response_headers = downstream_response_headers(response.headers)
            rate_limit = self.gate.rate_limit_status(hold.caller)
            if rate_limit is not None:
                response_headers += rate_limit_headers(rate_limit)
            exchange.started = True
            await send({"type": "http.response.start", "status": response.status, "headers": response_headers})
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            # Settled before the last send: the server may report the finished exchange as a disconnect, which
            # cancels this task at once.
            exchange.done = True
            exchange.outcome = Outcome.OVERLOADED if response.status in _OVERLOAD_STATUSES else Outcome.SUCCESS
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamTimeout:
            exchange.outcome = Outcome.OVERLOADED
            self._metrics.on_upstream_failure("timeout")
        except UpstreamFailed:
            self._metrics.on_upstream_failure("protocol")
        finally:
            await response.aclose()


def _origin_form_target(scope: dict[str, Any]) -> bytes:
    """The request target as received, if it is origin-form (`/path?query`) of printable ASCII; a 400 otherwise.

    Absolute-form above all is refused: forwarding it would make the listener an open proxy."""
    raw_path: bytes = scope["raw_path"]
    query: bytes = scope["query_string"]
    target = raw_path + b"?" + query if query else raw_path
    if not target.startswith(b"/") or target.translate(None, _TARGET_BYTES):
        raise _bad_target()
    return target


def _bad_target() -> Problem:
    return Problem(400, "Bad request target", "only origin-form targets (/path?query) of printable ASCII are proxied")


def _upstream_timeout(detail: str) -> Problem:
    return Problem(504, "Gateway timeout", detail, kind="upstream-timeout")


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length the client declared (h11 has validated it; over HTTP/2 it is checked here)."""
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise Problem(400, "Bad content length", "Content-Length must be a number of bytes")
            return int(value)
    return None
