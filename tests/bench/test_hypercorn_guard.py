"""The benchmarks' hypercorn yardstick: its guard patches only the release it was written for, never over someone
else's patch, and `serve_on_hypercorn` serves with it installed."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import hypercorn.trio.run
import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer

from bench import hypercorn_guard
from bench.common import serve_on_hypercorn
from edge.http.server import ASGIReceive, ASGISend
from tests.edge.http.servers import echo_app


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """hypercorn as before any install; restored afterwards."""
    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", TCPServer)


@pytest.mark.usefixtures("unpatched")
def test_install_is_idempotent_and_refuses_another_release(monkeypatch: pytest.MonkeyPatch) -> None:
    hypercorn_guard.install()
    hypercorn_guard.install()
    assert hypercorn.trio.run.TCPServer is hypercorn_guard.GuardedTCPServer
    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", TCPServer)
    monkeypatch.setattr(hypercorn_guard, "installed_version", lambda: "99.0.0")
    with pytest.raises(RuntimeError, match=r"patches hypercorn 0\.18\.0, but hypercorn 99\.0\.0 is installed"):
        hypercorn_guard.install()
    assert not hypercorn_guard.is_installed()


@pytest.mark.usefixtures("unpatched")
def test_a_patch_that_someone_else_replaced_is_not_overwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherTCPServer(TCPServer):
        pass

    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", OtherTCPServer)
    with pytest.raises(RuntimeError, match="already patched"):
        hypercorn_guard.install()
    assert hypercorn.trio.run.TCPServer is OtherTCPServer


async def echo_with_lifespan(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
    """`echo_app`, plus the lifespan protocol that hypercorn's worker insists on."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await echo_app(scope, receive, send)


@pytest.mark.usefixtures("unpatched")
async def test_the_yardstick_serves_both_protocols_guarded(nursery: trio.Nursery) -> None:
    (address,) = await nursery.start(partial(serve_on_hypercorn, echo_with_lifespan, bind="127.0.0.1:0"))
    assert hypercorn.trio.run.TCPServer is hypercorn_guard.GuardedTCPServer
    async with httpx.AsyncClient(http1=False, http2=True) as h2, httpx.AsyncClient() as h1:
        assert (await h2.post(f"http://{address}/", content=b"abc")).text == "2 POST 3"
        assert (await h1.get(f"http://{address}/")).text == "1.1 GET 0"
