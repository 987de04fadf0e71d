"""GET /api/v1/jobs/{job_id}/events: a job's life as Server-Sent Events, through whichever node the client asks.

The events come from the event bus of the member that holds the job (edge/engine/shell/events.py), read through
the router (`JobRouter.read_events`: on this node, or long-polled over the internal API from the member holding
it, which may change while the stream is open), and are written as they arrive, one `event:` / `data:` frame each
(`data` is the event as one line of JSON). A comment line goes out whenever nothing else did for KEEPALIVE_S, so
proxies keep the connection open and the client sees the stream is alive; the node's idle timeout
(`server.idle_timeout_s`) only closes connections with no request in progress, so it never cuts a stream.

The stream ends with its `end` event (the job is final and each of its webhooks was tried once; later retries of
a webhook that failed are in GET /api/v1/jobs/{job_id}), when the node stops, or when the client goes away; none
of these touches the job. When no member keeps the job's events (it ended before its holder last restarted, or
the bounded bus forgot it), the stream follows the job's record instead: a `snapshot` event whenever it changes,
looked at every POLL_S, and `end` once the job is final and its webhooks were tried.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from edge.engine.records import JobRecord
from edge.engine.shell.events import TooManyReaders, first_round_done
from edge.http.h2 import H2_CONCURRENT_STREAMS_MAX
from edge.http.server import ASGISend, end_streamed_response, send_body_part, start_streamed_response
from edge.placement.routing import EventCursor, JobRouter
from edge.problems import Problem
from edge.store import StoreError

KEEPALIVE_S: Final = 15.0
POLL_S: Final = 2.0  # how often a job whose events no member keeps is looked up
# Open streams per node; more are refused (503). Each stream of a job held elsewhere keeps a long poll open on the
# one HTTP/2 connection to its holder, so they may take half of its streams: forwards and copies keep the rest.
STREAMS_MAX: Final = H2_CONCURRENT_STREAMS_MAX // 2
STREAM_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))

Waiter = Callable[[], Awaitable[None]]


class JobEventStreams:
    """The open event streams of one node (at most STREAMS_MAX)."""

    def __init__(self, router: JobRouter, *, stopping: Waiter) -> None:
        """`stopping` returns when the node begins to stop: every stream then ends at once."""
        self._router = router
        self._stopping = stopping
        self._open = 0

    async def serve(self, record: JobRecord, send: ASGISend, *, caller_gone: Waiter) -> None:
        """Stream the job of `record` (whose account the caller proved) until its end, the node's stop or the
        caller's going (`caller_gone` returns then). A Problem, before anything is sent, when too many are open."""
        if self._open >= STREAMS_MAX:
            raise Problem(
                503,
                "Too many event streams",
                f"this node has {STREAMS_MAX} event streams open",
                kind="too-many-streams",
                headers={"Retry-After": "5"},
            )
        self._open += 1
        try:
            await start_streamed_response(send, 200, content_type=b"text/event-stream", headers=STREAM_HEADERS)
            writer = _EventWriter(send)
            await writer.comment(f"events of job {record.job_id}")  # the head goes out now, not with the first event
            async with trio.open_nursery() as nursery:

                async def end_when(waiter: Waiter) -> None:
                    await waiter()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(end_when, caller_gone)
                nursery.start_soon(end_when, self._stopping)
                await self._follow(record, writer)
                nursery.cancel_scope.cancel()
            await end_streamed_response(send)
        finally:
            self._open -= 1

    async def _follow(self, record: JobRecord, writer: _EventWriter) -> None:
        cursor = EventCursor()
        shown: dict[str, Any] | None = None
        while True:
            try:
                batch = await self._router.read_events(record.job_id, cursor, KEEPALIVE_S)
            except TooManyReaders:
                await writer.comment("too many readers of this job; try again later")
                return
            if batch.tracked:
                for event in batch.events:
                    await writer.event(event.kind, event.data)
                    if event.kind == "end":
                        return
                await writer.keep_alive()
                continue
            with contextlib.suppress(StoreError):  # the store failed for now: the record as it was, until next time
                record = await self._router.find(record.job_id) or record
            snapshot = _snapshot(record)
            if snapshot != shown:
                await writer.event("snapshot", _COMPACT_JSON.encode(snapshot).encode())
                shown = snapshot
            if record.is_terminal and first_round_done(record.deliveries):
                end = {
                    "type": "end",
                    "job_id": record.job_id,
                    "status": record.status,
                    "webhooks": record.webhook_outcome,
                }
                await writer.event("end", _COMPACT_JSON.encode(end).encode())
                return
            await trio.sleep(POLL_S)
            await writer.keep_alive()


def _snapshot(record: JobRecord) -> dict[str, Any]:
    """What the record says of the job, for a stream that has no events to follow."""
    return {
        "type": "snapshot",
        "job_id": record.job_id,
        "status": record.status,
        "attempts_total": record.attempts_total,
        "last_attempt": record.attempts[-1].to_wire() if record.attempts else None,
        "next_attempt_at_ms": record.next_attempt_at_ms,
        "webhooks": record.webhook_outcome,
    }


class _EventWriter:
    """Writes Server-Sent Events frames, and a comment when nothing was written for KEEPALIVE_S."""

    def __init__(self, send: ASGISend) -> None:
        self._send = send
        self._written_at = trio.current_time()

    async def event(self, kind: str, data: bytes) -> None:
        await self._write(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")

    async def comment(self, text: str) -> None:
        await self._write(b": " + text.encode() + b"\n\n")

    async def keep_alive(self) -> None:
        if trio.current_time() - self._written_at >= KEEPALIVE_S:
            await self.comment("keep-alive")

    async def _write(self, frame: bytes) -> None:
        await send_body_part(self._send, frame)
        self._written_at = trio.current_time()
