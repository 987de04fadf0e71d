"""What reading HTTP/1.1 takes in either direction (RFC 9112): the bytes a head may hold, header lines, a message
body framed by Content-Length or chunked coding, and the errors for a peer that breaks any of it.

Strict on purpose, because what is read here goes on to somebody else (a request to an app or an upstream, a
response to a client or into a job's result), and every leniency between two parsers is a request-smuggling
gap: a head holding a bare CR or LF, NUL or another control byte, a header name that is not a token (obs-fold
included: the line starts with a space), a malformed or conflicting Content-Length, or a chunk that does not
frame, is a `WireError`.
"""

from __future__ import annotations

import re
from typing import Final

Header = tuple[bytes, bytes]

# Limits: a chunk-size line; the trailer section (dropped, but read); Content-Length digits (a petabyte: no real
# body, and an int the body's bookkeeping never overflows in any language a peer is written in).
CHUNK_LINE_BYTES_MAX: Final = 1024
TRAILER_BYTES_MAX: Final = 64 * 1024
CONTENT_LENGTH_DIGITS_MAX: Final = 18

TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A chunk-size line: the size, then extensions (ignored) or whitespace, nothing before the size.
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;.*|[ \t]*)")
# Bytes a head may hold at all (visible ASCII, obs-text, SP, HTAB, and CRLF as line ends): one translate finds
# any other.
_HEAD_BYTES: Final = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0x100)])


class WireError(Exception):
    """The peer broke HTTP/1.1 (or a head to send would have). `status` is the answer a server gives a client
    that did it: 400, or 431 (head too large), 501 (a transfer coding it does not do), 505 (not HTTP/1.x)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Need:
    """The parser needs more bytes (or the end of the stream) before it can say more."""


NEED_DATA: Final = Need()
END: Final = b""  # the body has ended (a body chunk is never empty)


def head_lines(raw: bytes) -> list[bytes]:
    """The lines of a head (without its blank line), each checked for stray bytes: CR and LF only as CRLF."""
    lines = raw.split(b"\r\n")
    if raw.count(b"\r") != len(lines) - 1 or raw.count(b"\n") != len(lines) - 1 or raw.translate(None, _HEAD_BYTES):
        raise WireError("the head holds a bare CR or LF, NUL or another control byte")
    return lines


def header_fields(lines: list[bytes]) -> list[Header]:
    """(name as spelled, value without surrounding whitespace) for every `name: value` line."""
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.fullmatch(name):  # obs-fold (a leading space) fails here too
            raise WireError("a header line is not `name: value`")
        headers.append((name, value.strip(b" \t")))
    return headers


def content_length(values: list[bytes]) -> int:
    """The one length that every Content-Length line says (each may be a list of the same number)."""
    lengths = {value.strip(b" \t") for line in values for value in line.split(b",")}
    if len(lengths) != 1:
        raise WireError("conflicting Content-Length values")
    (value,) = lengths
    if not value.isdigit() or len(value) > CONTENT_LENGTH_DIGITS_MAX:
        raise WireError("Content-Length is not a number of bytes")
    return int(value)


def lists_token(value: bytes, token: bytes) -> bool:
    """Whether a comma-separated header value lists `token` (lower case), case-insensitively."""
    return token in (part.strip(b" \t") for part in value.lower().split(b","))


def has_token(headers: list[Header], header: bytes, token: bytes) -> bool:
    """Whether a comma-separated header (`header` in lower case) lists `token` (lower case), case-insensitively."""
    return any(name.lower() == header and lists_token(value, token) for name, value in headers)


class BodyReader:
    """The buffer of one connection's incoming bytes, and the body of the message being read from it.

    A subclass reads heads and calls `_frame_length` or `_frame_chunked`; `_body` then returns body chunks
    (non-empty bytes), `END`, or `NEED_DATA`. A peer closing inside a body is a `WireError`.
    """

    __slots__ = ("_buffer", "_closed", "_remaining", "_state")

    def __init__(self) -> None:
        self._buffer = b""
        self._closed = False
        self._state = "idle"
        self._remaining = 0

    def feed(self, data: bytes) -> None:
        """More bytes from the peer; b"" says it closed its side."""
        if data:
            self._buffer += data
        else:
            self._closed = True

    @property
    def closed(self) -> bool:
        """The peer has closed its side."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return len(self._buffer)

    def _frame_length(self, length: int) -> None:
        self._remaining = length
        self._state = "length" if length else "done"

    def _frame_chunked(self) -> None:
        self._state = "size"

    def _body(self) -> bytes | Need:
        if self._state == "length":
            return self._length_body()
        if self._state == "done":
            return END
        return self._chunked_body()

    def _take(self, size: int) -> bytes:
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _length_body(self) -> bytes | Need:
        if self._remaining == 0:
            self._state = "done"
            return END
        if not self._buffer:
            return self._starved()
        data = self._take(self._remaining)
        self._remaining -= len(data)
        return data

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
            if state == "data-end":  # the CRLF after a chunk's data, refused at its first wrong byte
                if not b"\r\n".startswith(self._buffer[:2]):
                    raise WireError("a chunk is longer than its size")
                if len(self._buffer) < 2:
                    return self._starved()
                self._buffer = self._buffer[2:]
                self._state = "size"
                continue
            line = self._line(TRAILER_BYTES_MAX if state == "trailers" else CHUNK_LINE_BYTES_MAX)
            if line is None:
                return self._starved()
            if state == "size":
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise WireError("a chunk-size line is not a hexadecimal size")
                self._remaining = int(size[1], 16)
                self._state = "data" if self._remaining else "trailers"
            elif not line:  # the blank line after the trailers (which are dropped)
                self._state = "done"
                return END
            else:
                header_fields([line])  # a trailer is a header line, as strictly as one in the head

    def _line(self, bytes_max: int) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > bytes_max:
                raise WireError("a chunk-size or trailer line is too long")
            if b"\n" in self._buffer:  # (a line ended by a bare LF would wait forever for its CRLF)
                raise WireError("a chunk-size or trailer line ends with a bare LF")
            return None
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        if b"\r" in line or b"\n" in line or line.translate(None, _HEAD_BYTES):
            raise WireError("a chunk-size or trailer line holds a stray byte")
        return line

    def _starved(self) -> Need:
        if self._closed:
            raise WireError("the peer closed the connection inside a message body")
        return NEED_DATA
