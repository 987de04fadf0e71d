"""HTTP/1.1 as the node's own clients speak it, sans I/O: request heads out, responses in (RFC 9112).

Two clients use it: the inbound proxy's upstream pool (edge/proxy/upstream.py) and the outbound transport of job
attempts and webhook deliveries (edge/outbound/keepalive.py).

Why not h11 here, when the front end uses it: h11 validates and tracks both sides of a connection for any peer,
and that was about 40 us of each proxied request (building and re-validating the request's headers, a state
machine step per event). A client needs less: what it writes was validated on the way in (by h11 or h2 for the
proxy, by job validation for attempts) and is checked again here in one pass. Reading is strict,
because the peer may be anyone (a provider, a webhook receiver) and what it sends goes on to a client or into a
job's result: a byte that could split a header line (bare CR or LF, NUL, other controls), a header name that is
not a token (obs-fold included), a status line that is not HTTP/1.x with three digits, conflicting or malformed
Content-Length, or a chunk that does not frame, is a `WireError` (the caller fails the exchange and closes the
connection).

Framing, in RFC 9112 section 6.3's order: no body after HEAD, 1xx, 204 and 304; both Transfer-Encoding and
Content-Length is an error; chunked when it is the last transfer coding, another one last means read until
close; then Content-Length; else read until close. 1xx heads other than 101 are skipped (a 101 is an error:
these clients never ask to upgrade). A connection is reusable only after a complete response that was HTTP/1.1,
not `Connection: close`, not close-delimited, with nothing after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

Header = tuple[bytes, bytes]

# Limits: a response head as large as the front end's own request limit allows (h11's default: 16 KiB, like
# Apache's 8 KiB per line and nginx's 4 x 8 KiB buffers in spirit); a chunk-size line; the trailer section.
HEAD_BYTES_MAX: Final = 64 * 1024
CHUNK_LINE_BYTES_MAX: Final = 1024
TRAILER_BYTES_MAX: Final = 64 * 1024
CONTENT_LENGTH_DIGITS_MAX: Final = 18

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
# Bytes a head may hold at all (visible ASCII, obs-text, SP, HTAB, and CRLF as line ends): one translate finds
# any other.
_HEAD_BYTES: Final = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0x100)])
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class WireError(Exception):
    """The upstream broke HTTP/1.1 (or a header to send would have)."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: list[Header]  # names as the upstream spelled them


class Need:
    """The parser needs more bytes (or the end of the stream) before it can say more."""


NEED_DATA: Final = Need()
END: Final = b""  # the body has ended (a body chunk is never empty)


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
    if not _TOKEN.fullmatch(method) or b" " in target:
        raise WireError("the method must be a token and the target have no spaces")
    return head


def chunk(data: bytes) -> bytes:
    """One non-empty chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


class ResponseParser:
    """Reads the responses of one connection, one per `expect`: feed it bytes, take its events.

    `next_event()` returns a `ResponseHead`, then body chunks (non-empty bytes), then `END`; or `NEED_DATA`.
    `feed(b"")` says the upstream closed its side.
    """

    __slots__ = ("_buffer", "_closed", "_head_only", "_keep_alive", "_remaining", "_state")

    def __init__(self) -> None:
        self._buffer = b""
        self._closed = False
        self._state = "idle"
        self._head_only = False
        self._remaining = 0
        self._keep_alive = False

    def expect(self, *, head_only: bool) -> None:
        """Start reading the response to a request just sent (`head_only` for HEAD: never a body)."""
        if self._state not in ("idle", "done"):
            raise WireError("a response is still being read")
        self._state = "head"
        self._head_only = head_only

    def feed(self, data: bytes) -> None:
        if data:
            self._buffer += data
        else:
            self._closed = True

    @property
    def reusable(self) -> bool:
        """Whether another request may be sent on this connection now."""
        return self._state == "done" and self._keep_alive and not self._buffer and not self._closed

    def next_event(self) -> ResponseHead | bytes | Need:
        state = self._state
        if state == "head":
            return self._head()
        if state == "length":
            return self._length_body()
        if state == "close":
            return self._close_delimited_body()
        if state in ("size", "data", "data-end", "trailers"):
            return self._chunked_body()
        if state == "done":
            return END
        raise WireError("no response is expected")

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
        self._keep_alive = version == b"HTTP/1.1" and not _has_token(headers, b"connection", b"close")
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
                self._state = "size"
            else:  # another coding last: the body ends with the connection
                self._state = "close"
                self._keep_alive = False
            return
        if lengths:
            values = {value.strip() for line in lengths for value in line.split(b",")}
            if len(values) != 1:
                raise WireError("conflicting Content-Length values")
            (value,) = values
            if not value.isdigit() or len(value) > CONTENT_LENGTH_DIGITS_MAX:
                raise WireError("Content-Length is not a number of bytes")
            self._remaining = int(value)
            self._state = "length" if self._remaining else "done"
            return
        self._state = "close"
        self._keep_alive = False

    def _take(self, size: int) -> bytes:
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _length_body(self) -> bytes | Need:
        if self._remaining == 0:
            self._state = "done"
            return END
        if self._buffer:
            data = self._take(self._remaining)
            self._remaining -= len(data)
            return data
        if self._closed:
            raise WireError("the upstream closed the connection before the body's Content-Length")
        return NEED_DATA

    def _close_delimited_body(self) -> bytes | Need:
        if self._buffer:
            return self._take(len(self._buffer))
        if self._closed:
            self._state = "done"
            return END
        return NEED_DATA

    def _chunked_body(self) -> bytes | Need:
        while True:
            state = self._state
            if state == "data":
                if not self._buffer:
                    return self._starved()
                data = self._take(self._remaining)
                self._remaining -= len(data)
                if self._remaining == 0:
                    self._state = "data-end"
                return data
            line = self._line(TRAILER_BYTES_MAX if state == "trailers" else CHUNK_LINE_BYTES_MAX)
            if line is None:
                return self._starved()
            if state == "data-end":
                if line:
                    raise WireError("a chunk is longer than its size")
                self._state = "size"
            elif state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size):
                    raise WireError("a chunk size is not hexadecimal")
                self._remaining = int(size, 16)
                self._state = "data" if self._remaining else "trailers"
            elif not line:  # the blank line after the trailers (which are dropped)
                self._state = "done"
                return END

    def _line(self, bytes_max: int) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > bytes_max:
                raise WireError("a chunk-size or trailer line is too long")
            return None
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        if b"\r" in line or b"\n" in line or line.translate(None, _HEAD_BYTES):
            raise WireError("a chunk-size or trailer line holds a stray byte")
        return line

    def _starved(self) -> Need:
        if self._closed:
            raise WireError("the upstream closed the connection inside a chunked body")
        return NEED_DATA


def _parse_head(raw: bytes) -> tuple[int, list[Header], bytes]:
    lines = raw.split(b"\r\n")
    if raw.count(b"\r") != len(lines) - 1 or raw.count(b"\n") != len(lines) - 1 or raw.translate(None, _HEAD_BYTES):
        raise WireError("the response head holds a bare CR or LF, NUL or another control byte")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or not code.isdigit()
        or len(code) != 3
        or rest[3:4] not in (b"", b" ")
    ):
        raise WireError("the status line is not HTTP/1.x with a three-digit status")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # obs-fold (a leading space) fails here too
            raise WireError("a response header line is not `name: value`")
        headers.append((name, value.strip(b" \t")))
    return int(code), headers, version


def _has_token(headers: list[Header], header: bytes, token: bytes) -> bool:
    return any(
        name.lower() == header and token in (part.strip().lower() for part in value.split(b","))
        for name, value in headers
    )
