"""One outbound HTTP attempt, and nothing else.

The executor sends a job's request through the node's shared `OutboundHttp` (edge/outbound.py) and reports what
happened as an `AttemptResult`: it never raises for network trouble, and it never decides about retries (that is
`scheduler.retry`). Redirects are not followed: a 3xx is the job's result, so a redirect can never lead a job into
an address the SSRF guard would refuse.

Racing regions (a later issue) cancels attempts from outside with Trio cancel scopes; this code keeps no state
that a cancellation could leave half-written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import trio

from edge.outbound import OutboundHttp, read_capped
from edge.runtime import Runtime
from edge.ssrf import TargetRefused, check_url, refusal_of

RESPONSE_BYTES_MAX = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    read_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt produced: a response, or an error string (then `status_code` is None)."""

    duration_s: float
    status_code: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    body_truncated: bool = False
    error: str | None = None
    retryable: bool = True  # False for errors that no retry can fix (the SSRF guard refused the target)

    def response_dict(self) -> dict[str, Any]:
        """The `response` object of the webhook payload and the job record."""
        headers: dict[str, str] = {}
        for name, value in self.headers:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        response: dict[str, Any] = {"status_code": self.status_code, "headers": headers, "body": self.body}
        if self.body_truncated:
            response["body_truncated"] = True
        return response


class Executor:
    """Sends job requests with per-attempt timeouts and a bounded response size."""

    def __init__(self, outbound: OutboundHttp, runtime: Runtime, *, allow_private_targets: bool) -> None:
        self._outbound = outbound
        self._runtime = runtime
        self._allow_private = allow_private_targets

    async def execute(
        self,
        *,
        method: str,
        url: str,
        headers: dict[str, str],
        body: str | None,
        timeouts: Timeouts,
    ) -> AttemptResult:
        started = trio.current_time()
        try:
            await check_url(url, resolver=self._runtime.resolver, allow_private=self._allow_private)
        except TargetRefused as exc:
            return AttemptResult(duration_s=0.0, error=f"target refused: {exc.reason}", retryable=False)
        timeout = httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s)
        content = body.encode() if body is not None else None
        try:
            with trio.fail_after(timeouts.total_s):
                async with self._outbound.stream(
                    method, url, headers=headers, content=content, timeout=timeout
                ) as response:
                    raw, truncated = await read_capped(response, RESPONSE_BYTES_MAX)
        except trio.TooSlowError:
            return AttemptResult(trio.current_time() - started, error=f"timeout after {timeouts.total_s:g}s")
        except httpx.TimeoutException as exc:
            return AttemptResult(trio.current_time() - started, error=f"timeout: {type(exc).__name__}")
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
