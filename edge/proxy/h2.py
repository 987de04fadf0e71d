"""HTTP/2 on a protected listener: a connection that opens with the h2c preface is handed to hypercorn.

Protected listeners have always accepted h2c with prior knowledge (tests/edge/proxy/test_forwarding.py), and
HTTP/2 is not where the proxy's per-request cost was measured, so it keeps hypercorn's implementation: the
front end (edge/proxy/server.py) reads the connection's first bytes, and when they are the preface, runs
hypercorn's per-connection driver on that stream with those bytes replayed. The app is the same `ProxyApp`,
so an HTTP/2 request goes through the same pipeline as an HTTP/1.1 one.

The settings are the job API's (edge/http/server.py `serve_asgi`) where they apply to one HTTP/2 connection.
hypercorn's driver can end with an exception on an abrupt disconnect (stack-notes: pgjones/hypercorn#225);
here that ends only the one connection, as the front end contains whatever a connection raises.
"""

from __future__ import annotations

import logging
from typing import Final, cast

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework

from edge.http.server import H2_CONCURRENT_STREAMS_MAX, KEEP_ALIVE_REQUESTS_MAX, ASGIApp

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

logger = logging.getLogger("ezthrottle.proxy")


class H2Handoff:
    """Runs hypercorn's HTTP/2 connection driver on streams the front end accepted."""

    def __init__(self, app: ASGIApp, header_bytes_max: int, idle_timeout_s: float) -> None:
        config = Config()
        config.accesslog = None  # requests carry API keys
        config.errorlog = logger.getChild("hypercorn")
        config.include_server_header = False
        config.keep_alive_max_requests = KEEP_ALIVE_REQUESTS_MAX
        config.h2_max_concurrent_streams = H2_CONCURRENT_STREAMS_MAX
        config.keep_alive_timeout = idle_timeout_s
        config.h2_max_header_list_size = header_bytes_max
        self._config = config
        self._app = ASGIWrapper(cast(ASGIFramework, app))
        self._context = WorkerContext(None)

    async def serve(self, stream: trio.SocketStream, received: bytes) -> None:
        """Serve one connection whose first bytes, already read, were `received`."""
        replayed = cast(trio.SSLStream[trio.SocketStream], _Replayed(stream, received))  # it takes either kind
        await TCPServer(self._app, self._config, self._context, {}, replayed).run()

    async def stop(self) -> None:
        """Tell every HTTP/2 connection that the server is stopping (hypercorn then closes idle ones)."""
        await self._context.terminated.set()


class _Replayed(trio.abc.Stream):
    """A socket stream whose first `receive_some` returns bytes read from it earlier."""

    def __init__(self, stream: trio.SocketStream, received: bytes) -> None:
        self.socket = stream.socket  # hypercorn reads the addresses from it
        self._stream = stream
        self._received = received

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._received:
            data, self._received = self._received, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
