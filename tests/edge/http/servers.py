"""Test helpers: run `serve_asgi` in a nursery, and tiny ASGI apps to serve."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from edge.http.server import ASGIApp, ASGIReceive, ASGISend, serve_asgi

# How long a test waits for a graceful stop before calling the server stuck.
STOP_TIMEOUT_S = 5.0


@dataclass(slots=True)
class RunningServer:
    bound: list[str]
    stopped: trio.Event  # set when serve_asgi returns or raises, so tests can assert it is still serving

    @property
    def url(self) -> str:
        return f"http://{self.bound[0]}"

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.bound[0].rsplit(":", 1)
        return host.strip("[]"), int(port)


@asynccontextmanager
async def running(
    app: ASGIApp, *, bind: str | list[str] = "127.0.0.1:0", **serve_options: Any
) -> AsyncIterator[RunningServer]:
    """Serve `app` for the body of the `async with`, then stop it gracefully (and fail if that hangs)."""
    stop = trio.Event()
    stopped = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_asgi(
                app,
                bind=bind,
                shutdown_trigger=stop.wait,
                graceful_timeout_s=1.0,
                task_status=task_status,
                **serve_options,
            )
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve)
        yield RunningServer(bound=bound, stopped=stopped)
        stop.set()
        with trio.fail_after(STOP_TIMEOUT_S):
            await stopped.wait()


async def read_body(receive: ASGIReceive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def echo_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
    """Answers "<http version> <method> <body length>", so tests can see what the server understood."""
    if scope["type"] != "http":
        return  # no lifespan support: serve_asgi must cope with an app that simply returns
    body = await read_body(receive)
    text = f"{scope['http_version']} {scope['method']} {len(body)}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": text})
