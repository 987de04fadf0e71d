"""The ASGI spec's scope and messages as plain dicts (one dict type keeps the apps simple), how both protocols of
the front end build a request's scope, the one exception the front end raises into an app (the client is gone), and
the one extension it offers (`DisconnectWatch`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import unquote

import trio

ASGIScope = dict[str, Any]
ASGIMessage = dict[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected: there is nobody left to answer (raised by `send`, and by apps that notice first)."""


DISCONNECT_WATCH: Final = "ezthrottle.disconnect"  # the key of a `DisconnectWatch` in a scope's "extensions"


class DisconnectWatch(Protocol):
    """The client's leaving, told to the app without a task of its own (`scope["extensions"][DISCONNECT_WATCH]`).

    ASGI's way is a task that awaits `receive()` until `http.disconnect`: a nursery, a task and a cancellation per
    request, which was a quarter of a proxied request's cost. Here the front end watches instead, and only requests
    that last: HTTP/1.1 reads a connection for EOF once its body is read and the request has run for a while
    (edge/http/http1.py), HTTP/2 knows at once from its reader (a reset stream, a lost connection)."""

    @property
    def gone(self) -> bool:
        """The client left: nobody will read an answer."""

    def cancel_on_disconnect(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` when the client leaves (at once if it has); a scope that has exited meanwhile is
        unaffected."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A connection's two ends and scheme, as every scope on it names them."""

    client: tuple[Any, ...]
    server: tuple[Any, ...]
    scheme: str

    @classmethod
    def of(cls, stream: trio.abc.Stream, transport: trio.SocketStream) -> Endpoints:
        """`stream` carries the bytes: `transport` itself, or TLS over it."""
        socket = transport.socket
        return cls(
            tuple(socket.getpeername()[:2]), tuple(socket.getsockname()[:2]), "http" if stream is transport else "https"
        )


def http_scope(
    endpoints: Endpoints,
    *,
    http_version: str,
    method: str,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    watch: DisconnectWatch,
) -> ASGIScope:
    """The scope of one request; `target` is its origin-form target as received (path and query), `watch` tells
    the client's leaving."""
    raw_path, _, query = target.partition(b"?")
    path = raw_path.decode("latin-1")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": method,
        "scheme": endpoints.scheme,
        "path": unquote(path) if "%" in path else path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "client": endpoints.client,
        "server": endpoints.server,
        "extensions": {DISCONNECT_WATCH: watch},
    }
