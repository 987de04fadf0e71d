"""The request body as the proxy reads it, and why a slow client can never pin an upstream slot for long.

When the slot is taken relative to reading the body decides who a slow client hurts:

- Read everything before admission (nginx's request buffering): a slow client then costs no upstream slot, but
  a 50 MB upload would have to be held in memory or spooled to disk, doubling its latency and making disk a
  new thing to exhaust.
- Stream everything after admission: no buffering at all, but a client that sends one byte a second holds a
  slot (and an upstream connection) for as long as it likes: slowloris against the upstream.

So the proxy does both, split by size. Before asking the scheduler for a slot it reads the first
`body_buffer_bytes` (64 KiB by default), which is the whole body of almost every API call; that read must
finish within `body_timeout_s`, or the client gets 408 having never held a slot. Only a body larger than the
buffer streams after admission, and then under a minimum-rate guard: counting only the time spent waiting
for the client (not time the upstream spends reading), the client must have delivered
`body_rate_min_bytes_per_s` on average after a grace of `body_timeout_s`, and may never go silent for longer
than `body_timeout_s`; past either, the upload is cut and the client gets 408. A slot held by a slow uploader
is therefore bounded by its size over the minimum rate, and by the listener's `upstream_total_timeout_s`.

Memory per request is the buffer plus one 64 KiB read of the front end (over HTTP/2, what the stream's flow
control window lets the client send ahead: 64 KiB), whatever the body's size; memory per listener is bounded by
that times the queue and concurrency limits.

Disconnects: a body that ends early (`http.disconnect` while reading it) is `ClientGone`. After the body, the front
end tells the app (edge/http/asgi.py: DisconnectWatch); over HTTP/1.1 only once the body has been read to the end,
so a client with a body larger than the buffer that disconnects while queued is noticed when its turn comes (its
slot is released at once): watching earlier would mean reading, and so buffering, the rest of its body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from edge.config import ProtectConfig
from edge.http.asgi import ClientGone as ClientGone
from edge.http.server import REFUSED_BODY_DRAIN_BYTES_MAX
from edge.problems import Problem

Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class BodyLimits:
    bytes_max: int
    buffer_bytes: int
    timeout_s: float
    rate_min_bytes_per_s: float

    @classmethod
    def of(cls, protect: ProtectConfig) -> BodyLimits:
        return cls(
            bytes_max=protect.body_bytes_max,
            buffer_bytes=protect.body_buffer_bytes,
            timeout_s=protect.body_timeout_s,
            rate_min_bytes_per_s=protect.body_rate_min_bytes_per_s,
        )


def _too_large(limit: int) -> Problem:
    return Problem(413, "Body too large", f"the request body is over {limit} bytes", kind="body-too-large")


def _too_slow(detail: str) -> Problem:
    # No `Connection: close` (HTTP/2 forbids it): the front end closes an HTTP/1.1 connection whose body is unread.
    return Problem(408, "Request timeout", detail, kind="body-timeout")


class RequestBody:
    """One request's body: `read_head` before admission, then iterate it (the upstream streams it up)."""

    __slots__ = (
        "_head",
        "_limits",
        "_receive",
        "_received",
        "_streamed",
        "_waited_s",
        "complete",
        "finished_at",
        "gone",
    )

    def __init__(self, receive: Receive, limits: BodyLimits) -> None:
        self._receive = receive
        self._limits = limits
        self._head: list[bytes] = []
        self._received = 0
        # Bytes and waiting time since the head, for the minimum-rate guard.
        self._streamed = 0
        self._waited_s = 0.0
        self.complete = False  # the body has been read to its end
        self.finished_at = 0.0
        self.gone = False

    def whole(self) -> bytes:
        """The body, once `complete` straight after `read_head` (it fitted the buffer)."""
        return b"".join(self._head)

    async def read_head(self, declared_length: int | None) -> None:
        """Read the whole body, or its first `buffer_bytes`, within `timeout_s`; 408/413 as a `Problem`."""
        limits = self._limits
        if declared_length is not None and declared_length > limits.bytes_max:
            await self.drain()
            raise _too_large(limits.bytes_max)
        with trio.move_on_after(limits.timeout_s) as waited:
            # At least one message even with no buffer: a bodiless request is complete after it.
            while not self.complete and self._received < max(1, limits.buffer_bytes):
                chunk = self._take(await self._receive())
                if chunk:
                    self._head.append(chunk)
        if waited.cancelled_caught:
            raise _too_slow(f"the request body did not arrive within {limits.timeout_s:g} s")
        if self._received > limits.bytes_max:
            await self.drain()
            raise _too_large(limits.bytes_max)

    async def drain(self) -> None:
        """Read and discard the rest (up to REFUSED_BODY_DRAIN_BYTES_MAX, under the rate guard) before a refusal
        goes out."""
        drained = 0
        try:
            while not self.complete and drained <= REFUSED_BODY_DRAIN_BYTES_MAX:
                drained += len(await self._guarded_chunk())
        except Problem:
            return  # too slow to be worth waiting for: answer now and let the connection close

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self._head:
            return self._head.pop(0)
        if self.complete:
            raise StopAsyncIteration
        chunk = await self._guarded_chunk()
        if self._received > self._limits.bytes_max:
            await self.drain()
            raise _too_large(self._limits.bytes_max)
        return chunk

    async def _guarded_chunk(self) -> bytes:
        """The next chunk after the head, under the minimum-rate and silence guard (see the module docstring)."""
        limits = self._limits
        allowance_s = limits.timeout_s + self._streamed / limits.rate_min_bytes_per_s - self._waited_s
        started = trio.current_time()
        with trio.move_on_after(max(0.0, min(limits.timeout_s, allowance_s))) as waited:
            message = await self._receive()
        self._waited_s += trio.current_time() - started
        if waited.cancelled_caught:
            raise _too_slow(
                f"the request body arrived slower than {limits.rate_min_bytes_per_s:g} bytes/s "
                f"or paused for {limits.timeout_s:g} s"
            )
        chunk = self._take(message)
        self._streamed += len(chunk)
        return chunk

    def _take(self, message: dict[str, Any]) -> bytes:
        if message["type"] == "http.disconnect":
            self.gone = True
            self.complete = True
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        self._received += len(chunk)
        if not message.get("more_body", False):
            self.finished_at = trio.current_time()
            self.complete = True
        return chunk
