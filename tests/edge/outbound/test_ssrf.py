"""The SSRF guard: address classification, and the connect-time guard against a real local server.

The guarded transport is the single entry point for names: every refusal below goes through a request on it.
Public addresses are never contacted: those in the tables are only classified, and where a name resolving to one
is allowed, `redirect` stands in for the guard's sockets, records the vetted address it was asked to connect to
and connects to the local server instead. The resolver is the injected DNS boundary, so the tests pass plain
async functions that map names to addresses.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio
import trio.testing

from edge.engine.spec import validate_job
from edge.outbound.ssrf import OpenTcp, forbidden_reason, guarded_transport, refusal_of
from edge.problems import Problem

FORBIDDEN = [
    ("127.0.0.1", "127.0.0.0/8: loopback"),
    ("127.255.1.2", "loopback"),
    ("10.1.2.3", "RFC 1918"),
    ("172.16.5.4", "RFC 1918"),
    ("172.31.255.255", "RFC 1918"),
    ("192.168.1.1", "RFC 1918"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.10.1", "link-local"),
    ("100.64.0.1", "shared address space"),
    ("100.100.100.200", "cloud metadata"),
    ("0.0.0.0", "'this network'"),
    ("255.255.255.255", "broadcast"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("64:ff9b::7f00:1", "NAT64 (RFC 6052) form of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
    ("2002:a9fe:a9fe::1", "cloud metadata"),
    ("2002:c0a8:101::", "6to4 form of 192.168.1.1"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("4000::1", "outside 2000::/3"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "Teredo"),
    ("2001:2::1", "not globally routable"),
    ("example.com", "not an IP address"),
    ("", "not an IP address"),
]
PUBLIC = [
    "93.184.215.14",
    "8.8.8.8",
    "1.1.1.1",
    "2606:2800:21f:cb07:6820:80:3d16:2d66",
    "2a00:1450:4001:82a::200e",
    "::ffff:93.184.215.14",
    "64:ff9b::5db8:d70e",  # NAT64 of 93.184.215.14
    "2002:5db8:d70e::1",  # 6to4 of 93.184.215.14
]


@pytest.mark.parametrize(("ip", "rule"), FORBIDDEN)
def test_forbidden_addresses_name_address_and_rule(ip: str, rule: str) -> None:
    reason = forbidden_reason(ip)
    assert reason is not None and rule in reason, reason
    assert ip.split("%")[0] in reason or ip == ""


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip: str) -> None:
    assert forbidden_reason(ip) is None


def make_resolver(records: dict[str, list[str]]) -> tuple[Callable[[str], Awaitable[list[str]]], list[str]]:
    """A resolver over fixed records, and the list of names it was asked for."""
    asked: list[str] = []

    async def resolve(host: str) -> list[str]:
        asked.append(host)
        if host not in records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return records[host]

    return resolve, asked


RECORDS = {
    "public.test": ["93.184.215.14", "2606:2800:21f:cb07:6820:80:3d16:2d66"],
    "mixed.test": ["93.184.215.14", "10.0.0.5"],
    "metadata.test": ["169.254.169.254"],
    "localhost": ["127.0.0.1", "::1"],
    "empty.test": [],
}


class LocalServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 that counts the TCP connections it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        received = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in received:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                received += chunk
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        await stream.aclose()


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[LocalServer]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    local = LocalServer(listeners[0].socket.getsockname()[1])
    await nursery.start(trio.serve_listeners, local.handle, listeners)
    yield local


def client_for(
    *,
    allow_private: bool,
    resolver: Callable[[str], Awaitable[list[str]]],
    open_tcp: OpenTcp = trio.open_tcp_stream,
) -> httpx.AsyncClient:
    transport = guarded_transport(
        allow_private=allow_private,
        resolver=resolver,
        max_connections=4,
        max_keepalive_connections=2,
        keepalive_expiry_s=5,
        open_tcp=open_tcp,
    )
    return httpx.AsyncClient(transport=transport, timeout=5)


class RedirectingOpener:
    """Opens the guard's sockets to the local server instead, recording every (address, port) it was asked for.

    The guard has vetted the address by the time it opens a socket, so what is recorded is exactly what a real
    connection would have gone to, and an allowed public address is never contacted.
    """

    def __init__(self, local_port: int) -> None:
        self.local_port = local_port
        self.connected: list[tuple[str, int]] = []
        self.local_addresses: list[str | None] = []  # what each connection was bound to (`source_address`)

    async def __call__(self, host: str, port: int, *, local_address: str | None = None) -> trio.SocketStream:
        self.connected.append((host, port))
        self.local_addresses.append(local_address)
        return await trio.open_tcp_stream("127.0.0.1", self.local_port, local_address=local_address)


@pytest.fixture
def redirect(server: LocalServer) -> RedirectingOpener:
    return RedirectingOpener(server.port)


async def test_a_public_name_is_allowed_and_connected_to_by_its_vetted_address(
    server: LocalServer, redirect: RedirectingOpener
) -> None:
    resolve, asked = make_resolver(RECORDS)
    async with client_for(allow_private=False, resolver=resolve, open_tcp=redirect) as client:
        response = await client.get("http://public.test/v1/charges?x=1")
    assert (response.status_code, response.text) == (200, "hello")
    assert asked == ["public.test"]
    assert redirect.connected == [("93.184.215.14", 80)]  # the first vetted address, not the name
    assert server.connections == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://mixed.test/", "mixed.test resolves to a forbidden address: 10.0.0.5 is in 10.0.0.0/8"),
        ("http://metadata.test/latest/meta-data/", "cloud metadata"),
        ("HTTP://LOCALHOST:8080/", "localhost resolves to a forbidden address: 127.0.0.1"),
        ("http://nowhere.test/", "nowhere.test does not resolve"),
        ("http://empty.test/", "empty.test does not resolve"),
    ],
)
async def test_refusals_name_the_reason(
    url: str, reason: str, server: LocalServer, redirect: RedirectingOpener
) -> None:
    resolve, _asked = make_resolver(RECORDS)
    async with client_for(allow_private=False, resolver=resolve, open_tcp=redirect) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(url)
    refused = refusal_of(caught.value)
    assert refused is not None and reason in refused.reason, refused
    parsed = httpx.URL(url)
    assert refused.url == f"{parsed.host}:{parsed.port or 80}"
    assert reason in str(caught.value)  # the attempt's error says why, for the job's record
    assert redirect.connected == [] and server.connections == 0


@pytest.mark.parametrize(
    ("url", "transport_error", "detail"),
    [
        ("ftp://public.test/", httpx.UnsupportedProtocol, "must be an http:// or https:// URL"),
        ("file:///etc/passwd", httpx.UnsupportedProtocol, "must be an http:// or https:// URL"),
        ("http:///path-only", httpx.UnsupportedProtocol, "not an http(s) URL with a host"),
        ("http://[::1", httpx.InvalidURL, "is not a valid URL"),
    ],
)
async def test_urls_that_are_not_http_with_a_host_never_reach_the_guard(
    url: str, transport_error: type[Exception], detail: str, server: LocalServer, redirect: RedirectingOpener
) -> None:
    """httpx refuses them before any transport is asked, so intake refuses them first, naming the field."""
    with pytest.raises(Problem) as problem:
        validate_job({"url": url})
    assert (problem.value.status, problem.value.field) == (422, "url")
    assert problem.value.detail is not None and detail in problem.value.detail
    resolve, asked = make_resolver(RECORDS)
    async with client_for(allow_private=False, resolver=resolve, open_tcp=redirect) as client:
        with pytest.raises(transport_error) as caught:
            await client.get(url)
    assert refusal_of(caught.value) is None
    assert asked == [] and redirect.connected == [] and server.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://user:pw@10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        # httpx reads the host after the last "@": the guard judges the host the request goes to.
        "http://public.test\\@127.0.0.1/",
    ],
)
async def test_ip_literals_are_checked_without_dns(url: str, server: LocalServer, redirect: RedirectingOpener) -> None:
    resolve, asked = make_resolver(RECORDS)
    async with client_for(allow_private=False, resolver=resolve, open_tcp=redirect) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(url)
    refused = refusal_of(caught.value)
    assert refused is not None and forbidden_reason(httpx.URL(url).host) == refused.reason
    assert asked == [] and redirect.connected == [] and server.connections == 0


async def test_guarded_transport_refuses_loopback_before_connecting(server: LocalServer) -> None:
    resolve, _asked = make_resolver(RECORDS)
    async with client_for(allow_private=False, resolver=resolve) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://127.0.0.1:{server.port}/")
    assert "127.0.0.1 is in 127.0.0.0/8: loopback" in str(caught.value)
    refused = refusal_of(caught.value)
    assert refused is not None and "loopback" in refused.reason
    assert server.connections == 0


async def test_plain_transport_when_private_targets_are_allowed(server: LocalServer) -> None:
    resolve, _asked = make_resolver(RECORDS)
    async with client_for(allow_private=True, resolver=resolve) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/")
    assert (response.status_code, response.text, response.http_version) == (200, "hello", "HTTP/1.1")
    assert server.connections == 1
    assert refusal_of(httpx.ConnectError("connection refused")) is None


async def test_allow_private_checks_only_the_shape(server: LocalServer) -> None:
    """Names are not resolved by the guard's resolver: one that fails, fails like any connect error."""
    resolve, asked = make_resolver(RECORDS)  # would refuse localhost, and does not know nowhere.test
    async with client_for(allow_private=True, resolver=resolve) as client:
        response = await client.get(f"http://localhost:{server.port}/")  # the OS resolves it (/etc/hosts)
        assert response.status_code == 200
        with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)) as caught:
            await client.get("http://nowhere.test/", timeout=httpx.Timeout(5, connect=2))
        assert refusal_of(caught.value) is None
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("gopher://127.0.0.1/")
    assert asked == []
    with pytest.raises(Problem) as problem:  # and intake refuses the scheme whatever the policy
        validate_job({"url": "gopher://127.0.0.1/"})
    assert (problem.value.status, problem.value.field) == (422, "url")


async def test_name_resolving_to_loopback_is_refused_at_connect_time(server: LocalServer) -> None:
    """Nothing checks the name before the request: the transport alone must stop it."""
    resolve, asked = make_resolver({"rebound.test": ["127.0.0.1"]})
    async with client_for(allow_private=False, resolver=resolve) as client:
        with pytest.raises(httpx.ConnectError, match=r"rebound\.test resolves to a forbidden address: 127"):
            await client.get(f"http://rebound.test:{server.port}/")
    assert asked == ["rebound.test"]
    assert server.connections == 0


async def test_dns_rebinding_is_caught_on_the_connection_it_would_take_over(
    server: LocalServer, redirect: RedirectingOpener
) -> None:
    """The name is public for the first connection and loopback for the next: each is vetted on its own answer."""
    answers = [["93.184.215.14"], ["127.0.0.1"]]

    async def rebinding(host: str) -> list[str]:
        return answers.pop(0)

    url = "http://rebind.test/"
    async with client_for(allow_private=False, resolver=rebinding, open_tcp=redirect) as client:
        first = await client.get(url)  # the server closes the connection, so the next request opens another
        with pytest.raises(
            httpx.ConnectError, match=r"refusing rebind\.test:80: rebind\.test resolves to a forbidden"
        ) as caught:
            await client.get(url)
    assert first.status_code == 200
    refused = refusal_of(caught.value)
    assert refused is not None and "rebind.test resolves to a forbidden address: 127.0.0.1" in refused.reason
    assert answers == []
    assert redirect.connected == [("93.184.215.14", 80)]
    assert server.connections == 1


async def test_connect_timeout_covers_a_hanging_resolver() -> None:
    async def hanging(host: str) -> list[str]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with client_for(allow_private=False, resolver=hanging) as client:
        started = trio.current_time()
        with pytest.raises(httpx.ConnectTimeout):
            await client.get("http://slow.test/", timeout=httpx.Timeout(5, connect=0.2))
    assert trio.current_time() - started < 2


async def test_a_slow_resolver_is_bounded_by_the_callers_deadline(
    autojump_clock: trio.testing.MockClock, redirect: RedirectingOpener
) -> None:
    """The engine bounds an attempt with its own cancel scope; resolving happens inside it, so it is cut short."""
    resolved: list[str] = []

    async def slow(host: str) -> list[str]:
        await trio.sleep(10)
        resolved.append(host)
        return ["93.184.215.14"]

    async with client_for(allow_private=False, resolver=slow, open_tcp=redirect) as client:  # its own timeouts: 5 s
        started = trio.current_time()
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.5):
            await client.get("http://slow.test/")
        assert trio.current_time() - started == pytest.approx(0.5)
    assert resolved == [] and redirect.connected == []
