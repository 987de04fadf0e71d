"""The node's outbound HTTP: each request goes straight to one pooled httpx transport.

Job attempts, webhook deliveries and forwards to other nodes need a request sent and its response streamed back,
and nothing more. `httpx.AsyncClient` brings more, none of it wanted here: a cookie jar (the node's client is
shared by every account, so a cookie one account's upstream set would ride on another account's request),
redirect following (a job's 3xx is its result), auth flows, event hooks, and default headers naming httpx.
Leaving the client out also leaves out its cost per request, which was about a fifth of a simulated run's time
(bench/RESULTS.md, simulator speed). Connection pooling, TLS, the SSRF guard (edge/outbound/ssrf.py) and the simulated
network all live in the transport, so they are the same either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import final

import httpx

from edge.outbound.origins import parsed_url

# Sent unless the request names them itself. No brotli or zstd: httpx decodes those only with optional packages.
DEFAULT_HEADERS = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"), ("User-Agent", "ezthrottle-edge"))


@final
class OutboundHttp:
    """Sends requests through `transport`, which it owns: `aclose` (or leaving `async with`) closes the transport's
    pooled connections."""

    __slots__ = ("_transport",)

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"<OutboundHttp via {type(self._transport).__name__}>"

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: httpx.Timeout,
    ) -> AsyncIterator[httpx.Response]:
        """The response, its body not yet read; it is closed when the block ends.

        Raises httpx.InvalidURL for a URL httpx cannot send, and an httpx.TransportError (or what the transport
        raises, such as the SSRF guard's refusal) when no response arrives."""
        merged = httpx.Headers(DEFAULT_HEADERS)
        merged.update(headers)
        request = httpx.Request(
            method,
            url if isinstance(url, httpx.URL) else parsed_url(url),
            headers=merged,
            content=content,
            extensions={"timeout": timeout.as_dict()},
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> OutboundHttp:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.aclose()


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the (decoded) body, and whether there was more; a larger body is cut rather than
    held in memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False
