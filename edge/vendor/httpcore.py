"""httpcore's HTTP/2 connection, patched so that cancelled requests are reset (httpcore 1.0.9 only).

httpcore 1.0.9 never resets an HTTP/2 stream whose request was cancelled, and after 100 such streams the
connection refuses new requests (encode/httpcore#1022). The node-to-node API (edge/placement/peers.py) sends
deadline-bounded forwards over one HTTP/2 connection per peer, and the key's owner cancels remote attempts (a
race's losers), so cancellations happen all the time; this module carries the fix, which is why httpcore is pinned.
`install()` replaces two private methods of `AsyncHTTP2Connection`:

- `_response_closed`, which httpcore calls (shielded from cancellation) both when a request fails or is cancelled
  before its response head arrived and when a response is closed before its body ended. The replacement resets the
  stream in h2's state, which frees its slot (tests/edge/placement/test_peers.py: 130 cancelled requests), and then
  writes the RST_STREAM frame at once. h2 only queues frames, and httpcore writes what h2 queued only when some
  request on the connection next writes: on an otherwise quiet connection the server never learned that the request
  was abandoned and worked on it until then (measured: the serving node's app saw `http.disconnect` only when the
  next request came, a second later in that check). A remote attempt has to stop when its caller gives up
  (tests/edge/placement/test_remote_attempts.py measures the cancel reaching the upstream).
- `_write_outgoing_data`, which takes every byte h2 has queued and then writes it. Cancelled between the two (trio
  checks for cancellation before it sends anything), the bytes are lost while h2 believes them sent: the HEADERS
  of a new stream, say, after which the stream's RST_STREAM is a reset of a stream the server never saw, which it
  answers with GOAWAY(PROTOCOL_ERROR) and every other stream of the connection fails (HPACK state goes out of step
  too). The replacement shields the write once the bytes are taken, so they are written or the connection is marked
  broken; the request's write timeout still bounds it. The cancellation takes effect right after.

The reset's write is bounded by `RESET_WRITE_S_MAX`: it runs shielded from the caller's cancellation, so a peer that
stopped reading must not hold the cancelled caller longer than that. If the connection's write lock is not free by
then, the frame stays queued and leaves with whoever writes next (the holder of the lock, usually); if the write
itself times out, the connection is marked broken exactly as httpcore marks it after any failed write.

XX: trio only (the node runs under Trio); the shield and the lock wait use trio cancel scopes.
"""

from __future__ import annotations

import contextlib

import h2.errors
import h2.exceptions
import httpcore
import trio
from httpcore._async.http2 import AsyncHTTP2Connection

# The fix wraps a private method of this exact release; re-read any other release before trusting it.
PATCHED_VERSION = "1.0.9"
# How long a cancelled request may spend getting its RST_STREAM out (lock wait and write together). A frame of
# 13 bytes goes into the socket buffer at once unless the peer has stopped reading.
RESET_WRITE_S_MAX = 0.5

# Read, never changed, at import: `install()` is the only code that replaces them.
_original_response_closed = AsyncHTTP2Connection._response_closed
_original_write_outgoing_data = AsyncHTTP2Connection._write_outgoing_data


def installed_version() -> str:
    return httpcore.__version__


def install() -> None:
    """Make every HTTP/2 connection reset, at once, a stream whose response is closed unfinished, and never lose
    bytes to a cancelled write (idempotent).

    Raises RuntimeError, and patches nothing more, when the installed httpcore is not the release patched, or when
    something else has already replaced one of the methods.
    """
    found = installed_version()
    if found != PATCHED_VERSION:
        raise RuntimeError(
            f"edge.vendor.httpcore patches httpcore {PATCHED_VERSION}, but httpcore {found} is installed: "
            "re-check encode/httpcore#1022 and AsyncHTTP2Connection._response_closed and _write_outgoing_data "
            "against the new release before moving the pin in pyproject.toml"
        )
    for name, original, replacement in _patches():
        current = getattr(AsyncHTTP2Connection, name)
        if current is not replacement and current is not original:
            raise RuntimeError(f"httpcore's AsyncHTTP2Connection.{name} is already patched: {current!r}")
    for name, _original, replacement in _patches():
        setattr(AsyncHTTP2Connection, name, replacement)


def is_installed() -> bool:
    return all(getattr(AsyncHTTP2Connection, name) is replacement for name, _, replacement in _patches())


def _patches() -> tuple[tuple[str, object, object], ...]:
    """(method name, httpcore's own, the replacement) for each method patched."""
    return (
        ("_response_closed", _original_response_closed, _response_closed_with_reset),
        ("_write_outgoing_data", _original_write_outgoing_data, _write_outgoing_data_whole),
    )


async def _response_closed_with_reset(self: AsyncHTTP2Connection, stream_id: int) -> None:
    """Reset an HTTP/2 stream whose response is closed before the stream ended, and send the reset now (see the
    module docstring)."""
    stream = self._h2_state.streams.get(stream_id)
    if stream is not None and not stream.closed:
        reset = False
        # A connection that is itself closing refuses the reset, and then there is nothing left to free or send.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2_state.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            reset = True
        if reset:
            await _write_queued_frames(self)
    await _original_response_closed(self, stream_id)


async def _write_queued_frames(connection: AsyncHTTP2Connection) -> None:
    """Write what h2 has queued on `connection` (the RST_STREAM just made), within RESET_WRITE_S_MAX.

    Mirrors httpcore's `_write_outgoing_data` (same lock, same bookkeeping of a failed write), which needs a
    request only to look up its write timeout.
    """
    deadline = trio.current_time() + RESET_WRITE_S_MAX
    lock = connection._write_lock
    locked = False
    with trio.move_on_at(deadline):
        await lock.__aenter__()
        locked = True  # no checkpoint between acquiring and this line: a timeout either got the lock or not
    if not locked:
        return  # the frame stays queued; the lock's holder or the next writer sends it
    try:
        if connection._write_exception is not None:
            return
        data = connection._h2_state.data_to_send()
        if not data:
            return
        try:
            await connection._network_stream.write(data, max(deadline - trio.current_time(), 0.001))
        except Exception as exc:
            # What httpcore does after any failed write: no more writes, and the pool drops the connection.
            connection._write_exception = exc
            connection._connection_error = True
    finally:
        await lock.__aexit__()


async def _write_outgoing_data_whole(self: AsyncHTTP2Connection, request: httpcore.Request) -> None:
    """httpcore's `_write_outgoing_data`, with the write shielded once the bytes are taken from h2 (see the module
    docstring); the request's write timeout still bounds it."""
    timeout = request.extensions.get("timeout", {}).get("write", None)
    async with self._write_lock:
        data_to_send = self._h2_state.data_to_send()
        if self._write_exception is not None:
            raise self._write_exception
        with trio.CancelScope(shield=True):
            try:
                await self._network_stream.write(data_to_send, timeout)
            except Exception as exc:
                # As httpcore does: every later write fails the same way, and the pool drops the connection.
                self._write_exception = exc
                self._connection_error = True
                raise
