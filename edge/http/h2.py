"""HTTP/2 behind the front end (edge/http/http1.py): a connection that speaks it is handed to hypercorn.

The front end reads a cleartext connection's first bytes, and when they are the h2c preface, runs hypercorn's
per-connection driver on that stream with those bytes replayed; a TLS connection that negotiated "h2" by ALPN is
handed over after its handshake. The app is the same in both protocols. HTTP/2 keeps hypercorn's implementation
(on top of h2): it is not where the per-request cost was measured (bench/RESULTS.md, "Inbound proxy overhead"),
and its flow control and stream state are what a new implementation would get wrong.

The driver is `GuardedTCPServer` (edge/vendor/hypercorn.py), so an abrupt disconnect (stack-notes:
pgjones/hypercorn#225) ends only its connection; the front end contains whatever a connection raises anyway.
"""

from __future__ import annotations

import logging
from typing import Final, cast

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework

from edge.vendor.hypercorn import GuardedTCPServer

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# nginx's default; enough for h2load -m 100 and for an SDK multiplexing many jobs over one connection.
H2_CONCURRENT_STREAMS_MAX: Final = 128
# Hypercorn's default (1000) sends GOAWAY after 1000 requests; load generators and long-lived SDK clients do not
# reconnect and report the rest as errors.
KEEP_ALIVE_REQUESTS_MAX: Final = 2**31 - 1

logger = logging.getLogger("ezthrottle.http")


class H2Handoff:
    """Runs hypercorn's HTTP/2 connection driver on streams the front end accepted."""

    def __init__(self, app: object, header_bytes_max: int, idle_timeout_s: float) -> None:
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
        """Serve one cleartext connection whose first bytes, already read, were `received`."""
        replayed = cast(trio.SSLStream[trio.SocketStream], _Replayed(stream, received))  # it takes either kind
        await GuardedTCPServer(self._app, self._config, self._context, {}, replayed).run()

    async def serve_tls(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        """Serve one TLS connection whose handshake (ALPN "h2") is done; the driver's own handshake call is then
        a no-op."""
        await GuardedTCPServer(self._app, self._config, self._context, {}, stream).run()

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
