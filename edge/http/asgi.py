"""The ASGI spec's scope and messages as plain dicts (one dict type keeps the apps simple), and the one exception the
front end raises into an app: the client is gone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

ASGIScope = dict[str, Any]
ASGIMessage = dict[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected: there is nobody left to answer (raised by `send`, and by apps that notice first)."""
