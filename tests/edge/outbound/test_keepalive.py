"""The outbound keep-alive transport against real servers on loopback: reuse, limits, timeouts, errors, TLS."""

from __future__ import annotations

import gzip
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from edge.outbound.keepalive import KeepAliveTransport, PoolLimits
from tests.edge.http.test_protocols import self_signed_certificate  # noqa: F401 (a fixture)

Answer = Callable[[bytes], bytes]  # request head -> the raw bytes to send back
DEFAULT_TIMEOUT = httpx.Timeout(5.0)


def ok(body: bytes = b"hello", *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (
        len(body),
        b"".join(h + b"\r\n" for h in extra),
        body,
    )


@dataclass
class ScriptedServer:
    """Reads request heads (and Content-Length bodies) on every connection and answers each with `answer`.

    `close_after` closes a connection after that many answers; `hold` keeps the server from answering at all.
    """

    answer: Answer = lambda head: ok()
    close_after: int | None = None
    hold: bool = False
    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        buffer, answered = b"", 0
        try:
            while self.close_after is None or answered < self.close_after:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                self.heads.append(head)
                self.bodies.append(buffer[:length])
                buffer = buffer[length:]
                if self.hold:
                    await trio.sleep_forever()
                await stream.send_all(self.answer(head))
                answered += 1
        except trio.BrokenResourceError:
            return
        finally:
            await trio.aclose_forcefully(stream)


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
def serve(nursery: trio.Nursery) -> Serve:
    """Starts a `ScriptedServer` on 127.0.0.1 (with TLS given a server context) and returns its base URL."""

    async def start(server: ScriptedServer, ssl_context: ssl.SSLContext | None = None) -> str:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        server.port = listeners[0].socket.getsockname()[1]
        if ssl_context is not None:
            tls = [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners]
            await nursery.start(trio.serve_listeners, server.handle, tls)
            return f"https://127.0.0.1:{server.port}"
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        return f"http://127.0.0.1:{server.port}"

    return start


async def plain_connect(host: str, port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream(host, port)


def client(
    connections_max: int = 4,
    idle_max: int = 4,
    idle_expiry_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> httpx.AsyncClient:
    limits = PoolLimits(connections_max=connections_max, idle_max=idle_max, idle_expiry_s=idle_expiry_s)
    transport = KeepAliveTransport(connect=plain_connect, limits=limits, ssl_context=ssl_context)
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def test_sequential_requests_share_one_connection_and_send_what_was_asked(serve: Serve) -> None:
    server = ScriptedServer()
    base = await serve(server)
    async with client() as http:
        first = await http.post(f"{base}/v1/charges?x=1", content=b"amount=5", headers={"X-Trace": "a"})
        second = await http.get(f"{base}/v1/ping")
    assert [(r.status_code, r.text, r.http_version) for r in (first, second)] == [(200, "hello", "HTTP/1.1")] * 2
    assert server.connections == 1
    assert server.heads[0].startswith(b"POST /v1/charges?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d" % server.port in server.heads[0] and b"\r\nX-Trace: a" in server.heads[0]
    assert server.bodies == [b"amount=5", b""]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (lambda head: ok(b"bye", b"connection: close"), "Connection: close"),
        (lambda head: b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nhi", "HTTP/1.0"),
        (lambda head: b"HTTP/1.1 200 OK\r\n\r\nuntil close", "close-delimited"),
    ],
)
async def test_a_connection_that_cannot_be_reused_is_not(serve: Serve, answer: Answer, why: str) -> None:
    server = ScriptedServer(answer=answer, close_after=1)
    base = await serve(server)
    async with client() as http:
        for _ in range(2):
            response = await http.get(f"{base}/")
            assert response.status_code == 200, why
    assert server.connections == 2, why


async def test_an_idle_connection_the_server_closed_is_noticed_before_reuse(serve: Serve) -> None:
    server = ScriptedServer(close_after=1)  # answers keep-alive, then hangs up anyway
    base = await serve(server)
    async with client() as http:
        assert (await http.get(f"{base}/a")).status_code == 200
        await trio.sleep(0.05)  # the FIN arrives: the idle connection reads as readable
        assert (await http.get(f"{base}/b")).status_code == 200
    assert server.connections == 2


async def test_idle_connections_expire(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:
    server = ScriptedServer()
    base = await serve(server)
    async with client(idle_expiry_s=10) as http:
        await http.get(f"{base}/")
        await trio.sleep(5)
        await http.get(f"{base}/")
        assert server.connections == 1
        await trio.sleep(11)
        await http.get(f"{base}/")
    assert server.connections == 2


async def test_a_body_left_unread_closes_the_connection(serve: Serve) -> None:
    server = ScriptedServer(answer=lambda head: ok(b"x" * 200_000))
    base = await serve(server)
    async with client() as http:
        async with http.stream("GET", f"{base}/big") as response:
            async for _chunk in response.aiter_raw():
                break
        assert len((await http.get(f"{base}/big")).content) == 200_000
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        lambda head: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        lambda head: ok(gzip.compress(b"hello world"), b"content-encoding: gzip"),
    ],
    ids=["chunked", "gzip"],
)
async def test_bodies_come_back_decoded(serve: Serve, answer: Answer) -> None:
    server = ScriptedServer(answer=answer)
    base = await serve(server)
    async with client() as http:
        responses = [await http.get(f"{base}/") for _ in range(2)]
    assert [r.text for r in responses] == ["hello world"] * 2
    assert server.connections == 1  # both framings end cleanly: the connection was kept


async def test_head_has_no_body_and_keeps_the_connection(serve: Serve) -> None:
    server = ScriptedServer(answer=lambda head: b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
    base = await serve(server)
    async with client() as http:
        for _ in range(2):
            response = await http.head(f"{base}/")
            assert (response.status_code, response.content) == (200, b"")
    assert server.connections == 1


async def test_connections_max_is_held_and_a_waiter_times_out(serve: Serve) -> None:
    slow = ScriptedServer(hold=True)
    base = await serve(slow)
    async with client(connections_max=1, timeout=httpx.Timeout(5, pool=0.2)) as http, trio.open_nursery() as nursery:
        nursery.start_soon(http.get, f"{base}/held")
        await trio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(f"{base}/waits")
        nursery.cancel_scope.cancel()
    assert slow.connections == 1


async def test_a_slot_held_by_an_idle_connection_elsewhere_is_taken_back(serve: Serve) -> None:
    first, second = ScriptedServer(), ScriptedServer()
    base_a, base_b = await serve(first), await serve(second)
    async with client(connections_max=1, timeout=httpx.Timeout(5, pool=0.5)) as http:
        assert (await http.get(f"{base_a}/")).status_code == 200
        assert (await http.get(f"{base_b}/")).status_code == 200  # not a PoolTimeout: a's idle one gave way
        assert (await http.get(f"{base_a}/")).status_code == 200
    assert (first.connections, second.connections) == (2, 1)


async def test_a_cancelled_exchange_frees_its_slot_and_is_never_reused(serve: Serve) -> None:
    held = ScriptedServer(hold=True)
    base = await serve(held)
    async with client(connections_max=1, timeout=httpx.Timeout(5, pool=0.5)) as http:
        with trio.move_on_after(0.1):
            await http.get(f"{base}/")
        held.hold = False
        assert (await http.get(f"{base}/")).status_code == 200  # the slot came back
    assert held.connections == 2


async def test_timeouts_and_protocol_errors_are_httpxs(serve: Serve) -> None:
    silent = ScriptedServer(hold=True)
    broken = ScriptedServer(answer=lambda head: b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
    base_silent, base_broken = await serve(silent), await serve(broken)
    async with client(timeout=httpx.Timeout(5, read=0.1)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{base_silent}/")
        with pytest.raises(httpx.RemoteProtocolError, match="conflicting Content-Length"):
            await http.get(f"{base_broken}/")
        with pytest.raises(httpx.ConnectError, match="could not connect"):
            await http.get(f"http://127.0.0.1:{free_port()}/")  # nothing listens there
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def test_the_connect_timeout_covers_a_connect_that_hangs() -> None:
    async def hanging(host: str, port: int) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    limits = PoolLimits(connections_max=1, idle_max=1, idle_expiry_s=5)
    transport = KeepAliveTransport(connect=hanging, limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, connect=0.1)) as http:
        with pytest.raises(httpx.ConnectTimeout):
            await http.get("http://slow.test/")
        with pytest.raises(httpx.ConnectTimeout):  # the slot of the failed connect came back
            await http.get("http://slow.test/")


async def test_https_verifies_the_certificate_and_reuses_the_connection(
    serve: Serve,
    self_signed_certificate: tuple[Path, Path],  # noqa: F811
) -> None:
    certfile, keyfile = self_signed_certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certfile, keyfile)
    server = ScriptedServer()
    base = await serve(server, server_context)
    trusting = ssl.create_default_context(cafile=str(certfile))
    async with client(ssl_context=trusting) as http:
        assert [(await http.get(f"{base}/")).text for _ in range(2)] == ["hello", "hello"]
    assert server.connections == 1
    async with client() as http:  # the system's roots do not know this certificate
        with pytest.raises(httpx.ConnectError, match="TLS"):
            await http.get(f"{base}/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_closing_the_transport_ends_the_exchanges_in_flight(serve: Serve) -> None:
    held = ScriptedServer(hold=True)
    base = await serve(held)
    limits = PoolLimits(connections_max=1, idle_max=1, idle_expiry_s=5)
    transport = KeepAliveTransport(connect=plain_connect, limits=limits)
    failed: list[BaseException] = []
    async with httpx.AsyncClient(transport=transport, timeout=5) as http, trio.open_nursery() as nursery:

        async def call() -> None:
            try:
                await http.get(f"{base}/")
            except httpx.TransportError as error:
                failed.append(error)

        nursery.start_soon(call)
        with trio.fail_after(5):
            while not held.heads:
                await trio.sleep(0.01)
        await transport.aclose()
    assert len(failed) == 1 and isinstance(failed[0], httpx.ReadError)
