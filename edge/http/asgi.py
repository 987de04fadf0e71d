"""The ASGI spec's scope and messages as plain dicts (hypercorn types each kind as a TypedDict; one dict type keeps
the apps simple, and edge/http/server.py is where the two meet)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

ASGIScope = dict[str, Any]
ASGIMessage = dict[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]
