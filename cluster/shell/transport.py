"""The transport contract of the cluster shell, and its implementation on real UDP and TCP sockets.

The contract (`Transport`) is memberlist's transport.go cut to what the core asks for (actions.py): best-effort
packets and reliable one-shot streams.
- `send_packet` / `receive_packet`: datagrams. Loss, reordering and send failures are normal; a failed send is
  counted, never raised.
- `exchange`: open a stream, send one request frame, read one reply frame (a push-pull). Any failure raises
  `TransportError`; the core retries on its own schedule.
- `serve_streams`: accept streams and answer each request with what the handler returns (no reply: just close).
The shell sees nothing else, so the simulator can stand in its own transport (`TransportFactory`).

The socket implementation binds one UDP socket and one TCP listener to the same host:port, IPv4 or IPv6 (on `::`
dual-stack: IPv4 peers appear as plain IPv4 addresses, and IPv4 destinations are sent as IPv4-mapped). A stream
carries length-prefixed frames (4-byte big-endian length, then the bytes); a frame announced over
`stream_bytes_max` is refused before a byte of it is read. Every stream, inbound or outbound, runs under one
timeout for the whole exchange, inbound streams are capped at `streams_max` at once (more are closed on accept),
and a failure ends that stream alone and is counted: a bad or slow peer can cost a connection, never the shell.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields
from typing import Any, Protocol, final

import trio

from cluster.messages import Address

FRAME_HEADER = struct.Struct(">I")
# Reads of a frame body are taken in chunks of this size, so an announced length is never allocated up front.
RECEIVE_CHUNK_BYTES = 64 * 1024
# Connections waiting to be accepted. A cluster opens a handful of push-pulls per interval; memberlist leaves the
# kernel default, which is 4096 on recent Linux: far more than a SWIM member ever needs.
LISTEN_BACKLOG = 128
# After an OS error on accept (EMFILE and the like) or on a datagram read: wait this long before the next try,
# so a persistent error cannot spin a core.
SOCKET_ERROR_PAUSE_S = 0.05
# With port 0, the UDP socket picks a free port and TCP binds the same one; if TCP finds it taken, start over.
PORT_PICK_ATTEMPTS = 16


class TransportError(Exception):
    """An exchange failed: refused, reset, timed out, or answered without a well-formed reply frame."""


class _FrameError(Exception):
    """A peer sent a frame we refuse: longer than the limit, or cut short by the connection closing."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TransportLimits:
    """What the shell tells its transport: size limits from the core's config, and its own stream policy."""

    packet_bytes_max: int
    stream_bytes_max: int
    stream_timeout_s: float  # for a whole stream exchange, inbound or outbound
    streams_max: int  # inbound streams served at once


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class TransportStatistics:
    """What went wrong below the envelope (a frozen snapshot); well-formed garbage is the envelope's to count."""

    packet_send_errors: int = 0
    packet_receive_errors: int = 0
    accept_errors: int = 0
    streams_accepted: int = 0
    streams_refused: int = 0  # over streams_max: closed unread
    stream_timeouts: int = 0
    stream_frames_refused: int = 0  # announced over stream_bytes_max, or cut short
    stream_failures: int = 0  # reset or closed by the peer


# Handles one inbound stream request: the reply to write back, or None to close without one.
StreamHandler = Callable[[bytes], bytes | None]


class Transport(Protocol):
    """Best-effort packets and reliable one-shot streams between members (see the module docstring)."""

    @property
    def local_address(self) -> Address:
        """The address actually bound (the real port when asked for port 0)."""
        ...

    async def send_packet(self, address: Address, data: bytes) -> None: ...

    async def receive_packet(self) -> tuple[Address, bytes]:
        """The next datagram and its source. Datagrams over packet_bytes_max may arrive cut to one byte over."""
        ...

    async def exchange(self, address: Address, request: bytes, timeout_s: float) -> bytes: ...

    async def serve_streams(
        self, handler: StreamHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept and answer streams until cancelled."""
        ...

    def statistics(self) -> TransportStatistics: ...


class TransportFactory(Protocol):
    """Binds a transport for the life of the context: the shell's only way to get one."""

    def __call__(self, bind: Address, limits: TransportLimits) -> AbstractAsyncContextManager[Transport]: ...


def _frame(data: bytes) -> bytes:
    return FRAME_HEADER.pack(len(data)) + data


async def _receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < count:
        chunk = await stream.receive_some(min(count - len(buffer), RECEIVE_CHUNK_BYTES))
        if not chunk:
            raise _FrameError(f"connection closed {len(buffer)} bytes into a {count}-byte read")
        buffer += chunk
    return bytes(buffer)


async def _receive_frame(stream: trio.abc.ReceiveStream, bytes_max: int) -> bytes:
    (length,) = FRAME_HEADER.unpack(await _receive_exactly(stream, FRAME_HEADER.size))
    if length > bytes_max:
        raise _FrameError(f"a {length}-byte frame is over the {bytes_max}-byte limit")
    return await _receive_exactly(stream, length)


def _peer_address(sockaddr: Any) -> Address:
    """A socket address as the core's (host, port): IPv4-mapped IPv6 unwrapped, any scope id dropped."""
    host = str(sockaddr[0]).partition("%")[0]
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed, int(sockaddr[1])


@final
class SocketTransport:
    """The real `Transport`: a UDP socket and a TCP listener on one host:port. Built by `open_socket_transport`."""

    __slots__ = ("_active_streams", "_counts", "_family", "_limits", "_listener", "_local_address", "_udp")

    def __init__(
        self,
        *,
        udp: trio.socket.SocketType,
        listener: trio.SocketListener,
        local_address: Address,
        limits: TransportLimits,
    ) -> None:
        self._udp = udp
        self._listener = listener
        self._family = udp.family
        self._local_address = local_address
        self._limits = limits
        self._counts = {field.name: 0 for field in fields(TransportStatistics)}
        self._active_streams = 0

    def __repr__(self) -> str:
        host, port = self._local_address
        return f"<SocketTransport {host}:{port}: {self._active_streams} streams being served>"

    @property
    def local_address(self) -> Address:
        return self._local_address

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(**self._counts)

    async def send_packet(self, address: Address, data: bytes) -> None:
        try:
            await self._udp.sendto(data, self._socket_destination(address))
        except OSError:  # unreachable, wrong family, buffer full: a lost datagram
            self._counts["packet_send_errors"] += 1

    async def receive_packet(self) -> tuple[Address, bytes]:
        while True:
            try:
                # One byte over the limit: an oversize datagram still reads as oversize (the envelope drops it).
                data, source = await self._udp.recvfrom(self._limits.packet_bytes_max + 1)
                return _peer_address(source), data
            except OSError:
                self._counts["packet_receive_errors"] += 1
                await trio.sleep(SOCKET_ERROR_PAUSE_S)

    async def exchange(self, address: Address, request: bytes, timeout_s: float) -> bytes:
        host, port = address
        try:
            with trio.fail_after(timeout_s):
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(_frame(request))
                    return await _receive_frame(stream, self._limits.stream_bytes_max)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, _FrameError) as exc:
            raise TransportError(f"stream to {host}:{port} failed: {exc!r}") from exc

    async def serve_streams(
        self, handler: StreamHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await self._listener.accept()
                except OSError:
                    self._counts["accept_errors"] += 1
                    await trio.sleep(SOCKET_ERROR_PAUSE_S)
                    continue
                if self._active_streams >= self._limits.streams_max:
                    self._counts["streams_refused"] += 1
                    await stream.aclose()
                    continue
                self._counts["streams_accepted"] += 1
                self._active_streams += 1
                nursery.start_soon(self._serve_one, stream, handler)

    async def _serve_one(self, stream: trio.SocketStream, handler: StreamHandler) -> None:
        try:
            with trio.move_on_after(self._limits.stream_timeout_s) as timeout:
                async with stream:
                    request = await _receive_frame(stream, self._limits.stream_bytes_max)
                    reply = handler(request)
                    if reply is not None:
                        await stream.send_all(_frame(reply))
            if timeout.cancelled_caught:
                self._counts["stream_timeouts"] += 1
        except _FrameError:
            self._counts["stream_frames_refused"] += 1
        except (OSError, trio.BrokenResourceError):
            self._counts["stream_failures"] += 1
        finally:
            self._active_streams -= 1

    def _socket_destination(self, address: Address) -> Address:
        """On an IPv6 socket, an IPv4 destination goes out IPv4-mapped (dual-stack `::` reaches it)."""
        host, port = address
        if self._family == trio.socket.AF_INET6 and ipaddress.ip_address(host).version == 4:
            return f"::ffff:{host}", port
        return address


async def _bind_pair(family: int, host: str, port: int) -> tuple[trio.socket.SocketType, trio.socket.SocketType] | None:
    """A bound UDP socket and a listening TCP socket on one port; None if port 0 picked a port TCP finds taken."""
    udp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    tcp = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        if family == trio.socket.AF_INET6 and ipaddress.ip_address(host).is_unspecified:
            for sock in (udp, tcp):
                sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 0)  # dual-stack
        # A restarted member rebinds its port while connections of its previous life sit in TIME_WAIT.
        tcp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await udp.bind((host, port))
        try:
            await tcp.bind((host, udp.getsockname()[1]))
        except OSError as exc:
            if port == 0 and exc.errno == errno.EADDRINUSE:
                udp.close()
                tcp.close()
                return None
            raise
        tcp.listen(LISTEN_BACKLOG)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


@contextlib.asynccontextmanager
async def open_socket_transport(bind: Address, limits: TransportLimits) -> AsyncIterator[SocketTransport]:
    """Bind UDP and TCP on `bind` (an IP literal; port 0 picks a port free for both); close both on exit."""
    host, port = bind
    family = trio.socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else trio.socket.AF_INET
    for _attempt in range(PORT_PICK_ATTEMPTS):
        pair = await _bind_pair(family, host, port)
        if pair is not None:
            break
    else:
        raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host} after {PORT_PICK_ATTEMPTS} tries")
    udp, tcp = pair
    try:
        local_address = (ipaddress.ip_address(host).compressed, udp.getsockname()[1])
        yield SocketTransport(udp=udp, listener=trio.SocketListener(tcp), local_address=local_address, limits=limits)
    finally:
        udp.close()
        tcp.close()
