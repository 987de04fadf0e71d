"""HTTP/1.1 as the node's own clients speak it, sans I/O: request heads out, responses in (RFC 9112).

Two clients use it: the inbound proxy's upstream pool (edge/proxy/upstream.py) and the outbound transport of job
attempts and webhook deliveries (edge/outbound/keepalive.py).

Why not h11: h11 validates and tracks both sides of a connection for any peer, and that was about 40 us of each
proxied request (building and re-validating the request's headers, a state machine step per event). A client
needs less: what it writes was validated on the way in (by edge/wire/request.py or h2 for the proxy, by job
validation for attempts) and is checked again here in one pass. Reading is as strict as edge/wire/framing.py
says, because the peer may be anyone (a provider, a webhook receiver) and what it sends goes on to a client or
into a job's result; a status line that is not HTTP/1.x with three digits is a `WireError` too (the caller fails
the exchange and closes the connection).

Framing, in RFC 9112 section 6.3's order: no body after HEAD, 1xx, 204 and 304; both Transfer-Encoding and
Content-Length is an error; chunked when it is the last transfer coding, another one last means read until
close; then Content-Length; else read until close. 1xx heads other than 101 are skipped (a 101 is an error:
these clients never ask to upgrade). A connection is reusable only after a complete response that was HTTP/1.1,
not `Connection: close`, not close-delimited, with nothing after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from edge.wire.framing import (
    END,
    NEED_DATA,
    TOKEN,
    BodyReader,
    Header,
    Need,
    WireError,
    content_length,
    has_token,
    head_lines,
    header_fields,
)

__all__ = [
    "END",
    "LAST_CHUNK",
    "NEED_DATA",
    "Need",
    "ResponseHead",
    "ResponseParser",
    "WireError",
    "chunk",
    "request_head",
]

# A response head as large as the front end's own request limit allows (h11's default was 16 KiB; Apache's 8 KiB
# per line and nginx's 4 x 8 KiB buffers in spirit).
HEAD_BYTES_MAX: Final = 64 * 1024
_NO_BODY_STATUSES: Final = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: list[Header]  # names as the upstream spelled them


def request_head(method: bytes, target: bytes, headers: Iterable[Header]) -> bytes:
    """A request's head, checked: a line break or NUL in any part would smuggle a header (or a request) in."""
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    count = 1
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
        count += 1
    lines.append(b"\r\n")
    head = b"".join(lines)
    if head.count(b"\n") != count + 1 or head.count(b"\r") != count + 1 or b"\x00" in head:
        raise WireError("a request line or header holds a line break or NUL")
    if not TOKEN.fullmatch(method) or b" " in target:
        raise WireError("the method must be a token and the target have no spaces")
    return head


def chunk(data: bytes) -> bytes:
    """One non-empty chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


class ResponseParser(BodyReader):
    """Reads the responses of one connection, one per `expect`: feed it bytes, take its events.

    `next_event()` returns a `ResponseHead`, then body chunks (non-empty bytes), then `END`; or `NEED_DATA`.
    `feed(b"")` says the upstream closed its side.
    """

    __slots__ = ("_head_only", "_keep_alive")

    def __init__(self) -> None:
        super().__init__()
        self._head_only = False
        self._keep_alive = False

    def expect(self, *, head_only: bool) -> None:
        """Start reading the response to a request just sent (`head_only` for HEAD: never a body)."""
        if self._state not in ("idle", "done"):
            raise WireError("a response is still being read")
        self._state = "head"
        self._head_only = head_only

    @property
    def reusable(self) -> bool:
        """Whether another request may be sent on this connection now."""
        return self._state == "done" and self._keep_alive and not self._buffer and not self._closed

    def next_event(self) -> ResponseHead | bytes | Need:
        state = self._state
        if state == "head":
            return self._head()
        if state == "close":
            return self._close_delimited_body()
        if state == "idle":
            raise WireError("no response is expected")
        return self._body()

    def _head(self) -> ResponseHead | bytes | Need:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_BYTES_MAX:
                    raise WireError(f"the response head is over {HEAD_BYTES_MAX} bytes")
                if self._closed:
                    raise WireError("the upstream closed the connection before a response")
                return NEED_DATA
            raw, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            status, headers, version = _parse_head(raw)
            if status >= 200:
                break
            if status == 101:
                raise WireError("the upstream switched protocols, which it was never asked to")
        self._keep_alive = version == b"HTTP/1.1" and not has_token(headers, b"connection", b"close")
        self._frame(status, headers)
        return ResponseHead(status, headers)

    def _frame(self, status: int, headers: list[Header]) -> None:
        if self._head_only or status in _NO_BODY_STATUSES:
            self._state = "done"
            return
        codings = [value for name, value in headers if name.lower() == b"transfer-encoding"]
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        if codings and lengths:
            raise WireError("both Transfer-Encoding and Content-Length (how request smuggling starts)")
        if codings:
            if b",".join(codings).rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                self._frame_chunked()
            else:  # another coding last: the body ends with the connection
                self._state = "close"
                self._keep_alive = False
            return
        if lengths:
            self._frame_length(content_length(lengths))
            return
        self._state = "close"
        self._keep_alive = False

    def _close_delimited_body(self) -> bytes | Need:
        if self._buffer:
            return self._take(len(self._buffer))
        if self._closed:
            self._state = "done"
            return END
        return NEED_DATA


def _parse_head(raw: bytes) -> tuple[int, list[Header], bytes]:
    lines = head_lines(raw)
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or not code.isdigit()
        or len(code) != 3
        or rest[3:4] not in (b"", b" ")
    ):
        raise WireError("the status line is not HTTP/1.x with a three-digit status")
    return int(code), header_fields(lines[1:]), version
