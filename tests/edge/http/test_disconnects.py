"""No single HTTP/2 connection may end the server, however it leaves: a GOAWAY, garbage or a reset mid-response,
or a body sent on after the answer (each of which ended hypercorn's whole server once, pgjones/hypercorn#225 and
#203, when it served HTTP/2 here)."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import MutableMapping
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest
import trio

from edge.http.server import ASGIReceive, ASGISend

from .servers import RunningServer, echo_app, running

CHUNK = b"x" * 16_384
CHUNKS_PER_RESPONSE = 16  # 256 KiB per response: the server is still sending when the client leaves
CONNECTIONS_PER_ROUND = 20
STREAMS_PER_CONNECTION = 10
ROUNDS = 4
BYTES_BEFORE_LEAVING = 100_000
ROUND_TIMEOUT_S = 10.0
SECRET_API_KEY = "sk-test-never-log-me"


async def streaming_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
    """Large responses sent in many pieces, so each connection always has sends in flight."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(CHUNKS_PER_RESPONSE):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def h2_client() -> h2.connection.H2Connection:
    """A client that never stalls the server on flow control, so the server's sends really are in progress."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    client.increment_flow_control_window(2**30)
    return client


def request_headers(method: str, path: str) -> list[tuple[str, str]]:
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "localhost")]


async def abort(stream: trio.SocketStream) -> None:
    """Close with a TCP RST instead of a FIN: SO_LINGER with a zero timeout."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def leave_mid_response(server: RunningServer, how: str) -> None:
    stream = await trio.open_tcp_stream(*server.host_port)
    client = h2_client()
    for _ in range(STREAMS_PER_CONNECTION):
        client.send_headers(client.get_next_available_stream_id(), request_headers("GET", "/big"), end_stream=True)
    await stream.send_all(client.data_to_send())
    received = 0
    while received < BYTES_BEFORE_LEAVING:
        chunk = await stream.receive_some()
        if not chunk:
            break
        received += len(chunk)
    if how == "goaway":
        client.close_connection()
        await stream.send_all(client.data_to_send())
    elif how == "garbage":
        await stream.send_all(b"\x00\x00\x00\xff" * 8)  # not a frame: the server must fail this connection
    await abort(stream)


async def test_abrupt_h2_disconnects_under_load() -> None:
    styles = ("goaway", "garbage", "reset")
    async with running(streaming_app) as server:
        for _ in range(ROUNDS):
            with trio.fail_after(ROUND_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    for index in range(CONNECTIONS_PER_ROUND):
                        nursery.start_soon(leave_mid_response, server, styles[index % len(styles)])
            await trio.sleep(0.05)  # let the server finish tearing the connections down
        assert not server.stopped.is_set(), "serve_asgi exited"
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            response = await client.get(f"{server.url}/after")
        assert response.status_code == 200
        assert len(response.content) == len(CHUNK) * CHUNKS_PER_RESPONSE


async def early_413_app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
    """Rejects without reading the body, as an intake endpoint does with an oversized job."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/too-big":
        await echo_app(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 413, "headers": []})
    await send({"type": "http.response.body", "body": b"too large"})


async def test_body_after_early_response_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    """The rest of a body sent after the answer is dropped (its flow control window given back), and the connection
    carries the next request."""
    caplog.set_level(logging.DEBUG)  # every logger, hpack's included, must keep the API key out
    async with running(early_413_app) as server:
        stream = await trio.open_tcp_stream(*server.host_port)
        client = h2_client()
        headers = [*request_headers("POST", "/too-big"), ("authorization", f"Bearer {SECRET_API_KEY}")]
        client.send_headers(1, headers)
        client.send_data(1, b"a" * 1000)
        await stream.send_all(client.data_to_send())
        events: list[h2.events.Event] = []

        async def until_ended(stream_id: int) -> None:
            while not any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id for e in events):
                chunk = await stream.receive_some()
                assert chunk, "server closed the connection"
                events.extend(client.receive_data(chunk))
                await stream.send_all(client.data_to_send())

        with trio.fail_after(5):
            await until_ended(1)
            client.send_data(1, b"b" * 16_000, end_stream=True)  # the rest of the body, after the answer
            client.send_headers(3, request_headers("POST", "/fine"))
            client.send_data(3, b"ok", end_stream=True)
            await stream.send_all(client.data_to_send())
            await until_ended(3)
        await stream.aclose()

        assert not server.stopped.is_set(), "serve_asgi exited"
        bodies = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == 3)
        assert bodies == b"2 POST 2"

    statuses = [dict(event.headers)[b":status"] for event in events if isinstance(event, h2.events.ResponseReceived)]
    assert statuses == [b"413", b"200"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text
    assert SECRET_API_KEY not in caplog.text
