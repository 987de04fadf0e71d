"""One outbound HTTP attempt, and nothing else.

The executor sends a job's request through the node's shared `OutboundHttp` (edge/outbound/client.py) and reports what
happened as an `AttemptResult`: it never raises for network trouble, and it never decides about retries (that is
the queue core's, edge/engine/queue.py). Redirects are not followed: a 3xx is the job's result, so a redirect can
never lead a job into an address the SSRF guard would refuse.

The SSRF guard has one entry point, at connect time (edge/outbound/ssrf.py `guarded_transport`): the transport
resolves the name itself, within the attempt's own timeouts, and connects only to an address it vetted. A separate
DNS check before the request would only repeat it, outside the attempt's deadline.

Racing regions (a later issue) cancels attempts from outside with Trio cancel scopes; this code keeps no state
that a cancellation could leave half-written.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import trio

from edge.engine.outcome import AttemptResult
from edge.outbound.client import OutboundHttp, read_capped
from edge.outbound.ssrf import refusal_of

RESPONSE_BYTES_MAX = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    read_s: float
    total_s: float


class Executor:
    """Sends job requests with per-attempt timeouts and a bounded response size."""

    def __init__(self, outbound: OutboundHttp) -> None:
        self._outbound = outbound

    async def execute(
        self,
        *,
        method: str,
        url: str | httpx.URL,
        headers: dict[str, str],
        body: str | None,
        timeouts: Timeouts,
    ) -> AttemptResult:
        started = trio.current_time()
        timeout = httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s)
        try:
            content = body.encode() if body is not None else None
            with trio.fail_after(timeouts.total_s):
                async with self._outbound.stream(
                    method, url, headers=headers, content=content, timeout=timeout
                ) as response:
                    raw, truncated = await read_capped(response, RESPONSE_BYTES_MAX)
        except trio.TooSlowError:
            return AttemptResult(trio.current_time() - started, error=f"timeout after {timeouts.total_s:g}s")
        except httpx.TimeoutException as exc:
            return AttemptResult(trio.current_time() - started, error=f"timeout: {type(exc).__name__}")
        except UnicodeEncodeError as exc:
            # A header value httpx cannot encode or a body with a lone surrogate, in a job stored before intake
            # refused them (edge/engine/spec.py): no retry can send it, and raising would stop the node.
            error = f"the request cannot be encoded ({exc.reason})"
            return AttemptResult(trio.current_time() - started, error=error, retryable=False)
        except httpx.HTTPError as exc:
            refused = refusal_of(exc)
            if refused is not None:
                return AttemptResult(
                    trio.current_time() - started, error=f"target refused: {refused.reason}", retryable=False
                )
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return AttemptResult(trio.current_time() - started, error=error)
        return AttemptResult(
            duration_s=trio.current_time() - started,
            status_code=response.status_code,
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw),
            body=raw.decode(response.encoding or "utf-8", errors="replace"),
            body_truncated=truncated,
        )
