"""Run one protected listener: its upstream pool, its gate's timer task and its HTTP server, in one nursery."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import trio

from edge.config import ProtectConfig
from edge.http.server import serve_asgi
from edge.proxy.app import ProxyApp
from edge.proxy.gate import Gate
from edge.proxy.metrics import ProxyMetrics
from edge.proxy.upstream import Upstream, UpstreamPool, UpstreamTimeouts


@asynccontextmanager
async def open_proxy(
    protect: ProtectConfig, *, metrics: ProxyMetrics, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[ProxyApp]:
    """A ready `ProxyApp` with its gate's timer running; the upstream pool is closed on exit.

    `transport` replaces the real upstream pool (the simulator's network); the caller keeps ownership of it.
    """
    listener_metrics = metrics.listener(protect.label)
    gate = Gate(protect.scheduler_policy(), fairness=protect.fairness, metrics=listener_metrics)
    async with contextlib.AsyncExitStack() as stack:
        upstream: Upstream | httpx.AsyncBaseTransport
        if transport is None:
            # One connection per slot: the gate admits no more requests than that, so the pool never queues.
            upstream = UpstreamPool(
                protect.upstream, timeouts=UpstreamTimeouts.of(protect), idle_max=protect.max_concurrency
            )
            stack.push_async_callback(upstream.aclose)
        else:
            upstream = transport
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(gate.run)
        yield ProxyApp(protect, gate=gate, transport=upstream, metrics=listener_metrics)
        nursery.cancel_scope.cancel()


async def serve_protected(
    protect: ProtectConfig,
    *,
    metrics: ProxyMetrics,
    wall_clock: Callable[[], float],
    transport: httpx.AsyncBaseTransport | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one `[[protect]]` listener until `shutdown_trigger` returns (then drain) or until cancelled.

    Reports the bound "host:port" strings. `wall_clock` (unix seconds) dates the answers.
    """
    async with open_proxy(protect, metrics=metrics, transport=transport) as app:
        await serve_asgi(
            app,
            bind=protect.listen,
            header_bytes_max=protect.header_bytes_max,
            idle_timeout_s=protect.idle_timeout_s,
            wall_clock=wall_clock,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )
