"""httpcore's HTTP/2 connection, patched to reset the streams of cancelled requests (httpcore 1.0.9 only).

httpcore 1.0.9 never resets an HTTP/2 stream whose request was cancelled, and after 100 such streams the
connection refuses new requests (encode/httpcore#1022). The node-to-node API (edge/placement/peers.py) sends
deadline-bounded forwards over one HTTP/2 connection per peer, so cancellations happen;
`_response_closed_with_reset` carries the fix (reset the stream when its response closes unfinished), which is
why httpcore is pinned. `install()` puts it in place of `AsyncHTTP2Connection._response_closed`;
tests/edge/placement/test_peers.py shows the connection surviving 130 cancelled requests.
"""

from __future__ import annotations

import contextlib

import h2.errors
import h2.exceptions
import httpcore
from httpcore._async.http2 import AsyncHTTP2Connection

# The fix wraps a private method of this exact release; re-read any other release before trusting it.
PATCHED_VERSION = "1.0.9"

# Read, never changed, at import: `install()` is the only code that replaces it.
_original_response_closed = AsyncHTTP2Connection._response_closed


def installed_version() -> str:
    return httpcore.__version__


def install() -> None:
    """Make every HTTP/2 connection reset a stream whose response is closed unfinished (idempotent).

    Raises RuntimeError, and patches nothing, when the installed httpcore is not the release patched, or when
    something else has already replaced the method.
    """
    found = installed_version()
    if found != PATCHED_VERSION:
        raise RuntimeError(
            f"edge.vendor.httpcore patches httpcore {PATCHED_VERSION}, but httpcore {found} is installed: "
            "re-check encode/httpcore#1022 and AsyncHTTP2Connection._response_closed against the new release "
            "before moving the pin in pyproject.toml"
        )
    current = AsyncHTTP2Connection._response_closed
    if current is _response_closed_with_reset:
        return
    if current is not _original_response_closed:
        raise RuntimeError(f"httpcore's AsyncHTTP2Connection._response_closed is already patched: {current!r}")
    AsyncHTTP2Connection._response_closed = _response_closed_with_reset  # type: ignore[method-assign]


def is_installed() -> bool:
    return AsyncHTTP2Connection._response_closed is _response_closed_with_reset


async def _response_closed_with_reset(self: AsyncHTTP2Connection, stream_id: int) -> None:
    """Reset an HTTP/2 stream whose response is closed before the stream ended (see the module docstring)."""
    stream = self._h2_state.streams.get(stream_id)
    if stream is not None and not stream.closed:
        # Local state only: the RST_STREAM frame leaves with the connection's next write. A connection that
        # is itself closing refuses the reset, and then there is nothing left to free.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2_state.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    await _original_response_closed(self, stream_id)
