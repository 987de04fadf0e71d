"""One port, every protocol: HTTP/1.1, h2c (prior knowledge, Upgrade), TLS with ALPN, IPv6, graceful stop."""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from edge.http.server import ASGIReceive, ASGISend, serve_asgi

from .servers import echo_app, running

# Hypercorn's own default, after which it closes the connection; our server must keep going past it.
HYPERCORN_DEFAULT_REQUESTS_PER_CONNECTION = 1000
# A one-day P-256 certificate for 127.0.0.1 (EC keys generate in milliseconds, RSA can take a second).
SELF_SIGNED_ARGS = ("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
SELF_SIGNED_ARGS += ("-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1")


async def test_http11_on_the_reported_port() -> None:
    async with running(echo_app) as server:
        host, port = server.host_port
        assert host == "127.0.0.1"
        assert port != 0
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{server.url}/jobs", content=b"12345")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.text == "1.1 POST 5"
    assert "server" not in response.headers


async def test_h2c_prior_knowledge_multiplexes_one_connection() -> None:
    async with running(echo_app) as server, httpx.AsyncClient(http1=False, http2=True) as client:
        responses: list[httpx.Response] = []

        async def post(size: int) -> None:
            responses.append(await client.post(f"{server.url}/jobs", content=b"x" * size))

        async with trio.open_nursery() as nursery:
            for size in range(20):
                nursery.start_soon(post, size)
    assert sorted(response.text for response in responses) == sorted(f"2 POST {size}" for size in range(20))
    assert {response.http_version for response in responses} == {"HTTP/2"}


async def test_an_h2c_upgrade_request_is_answered_over_http11_then_the_connection_closes() -> None:
    """RFC 9110 lets a server ignore Upgrade (RFC 9113 deprecates h2c's): the request gets its answer on HTTP/1.1,
    no 101; the connection then closes, as the client may already be sending HTTP/2."""
    async with running(echo_app) as server:
        h2_client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        settings = h2_client.initiate_upgrade_connection()
        stream = await trio.open_tcp_stream(*server.host_port)
        upgrade = (
            b"GET /upgrade HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        received = b""
        with trio.fail_after(5):
            await stream.send_all(upgrade)
            while chunk := await stream.receive_some():
                received += chunk
        await stream.aclose()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b" 101 " not in received
    assert received.endswith(b"1.1 GET 0\r\n0\r\n\r\n")


@pytest.fixture(scope="module")
def self_signed_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1, made with the openssl CLI (skips the TLS tests without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, *SELF_SIGNED_ARGS, "-keyout", str(keyfile), "-out", str(certfile)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certfile, keyfile


def client_tls_context(certfile: Path, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certfile))
    context.set_alpn_protocols(alpn)
    return context


@pytest.mark.parametrize(("offered", "negotiated"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")])
async def test_tls_alpn_negotiates_what_the_client_offers(
    self_signed_certificate: tuple[Path, Path], offered: list[str], negotiated: str
) -> None:
    certfile, keyfile = self_signed_certificate
    async with running(echo_app, certfile=str(certfile), keyfile=str(keyfile)) as server:
        host, port = server.host_port
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=client_tls_context(certfile, offered), https_compatible=True
        )
        with trio.fail_after(5):
            await stream.do_handshake()
        assert stream.selected_alpn_protocol() == negotiated
        await stream.aclose()

        verify = client_tls_context(certfile, offered)
        async with httpx.AsyncClient(http2="h2" in offered, verify=verify) as client:
            response = await client.get(f"https://{server.bound[0]}/secure")
    expected_version = "2" if negotiated == "h2" else "1.1"
    assert response.text == f"{expected_version} GET 0"


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="both certfile and keyfile"):
        trio.run(functools.partial(serve_asgi, echo_app, bind="127.0.0.1:0", certfile="cert.pem"))


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
async def test_ipv6_and_ipv4_binds_are_reported_and_served() -> None:
    async with running(echo_app, bind=["[::1]:0", "127.0.0.1:0"]) as server:
        ipv6, ipv4 = server.bound
        assert ipv6.startswith("[::1]:")
        assert ipv4.startswith("127.0.0.1:")
        assert not ipv6.endswith(":0")
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            texts = [(await client.get(f"http://{address}/")).text for address in server.bound]
    assert texts == ["2 GET 0", "2 GET 0"]


async def test_http11_connection_outlives_hypercorns_default_request_cap() -> None:
    """Load generators never reconnect: past 1000 requests hypercorn's default would close the connection."""
    request_count = HYPERCORN_DEFAULT_REQUESTS_PER_CONNECTION + 5
    async with running(echo_app) as server:
        stream = await trio.open_tcp_stream(*server.host_port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * request_count)  # pipelined
        received = b""
        with trio.fail_after(15):
            while received.count(b"HTTP/1.1 200 ") < request_count:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                received += chunk
        await stream.aclose()
    assert received.count(b"HTTP/1.1 200 ") == request_count
    assert b"connection: close" not in received.lower()


async def test_lifespan_runs_and_shutdown_is_graceful() -> None:
    lifespan_events: list[str] = []

    async def app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                lifespan_events.append(message["type"])
                await send({"type": f"{message['type']}.complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await echo_app(scope, receive, send)

    async with running(app) as server:
        assert lifespan_events == ["lifespan.startup"]
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).text == "1.1 GET 0"
    assert server.stopped.is_set()
    assert lifespan_events == ["lifespan.startup", "lifespan.shutdown"]


async def test_app_that_ignores_lifespan_starts_and_stops_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running(echo_app) as server, httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "1.1 GET 0"
    assert server.stopped.is_set()
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_app_that_abandons_lifespan_halfway_is_served_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await receive()  # takes the startup message, then leaves without answering it
            return
        await echo_app(scope, receive, send)

    async with running(app) as server, httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "1.1 GET 0"
    assert server.stopped.is_set()
    assert "continuing without Lifespan support" in caplog.text
