"""HTTP/1.1 requests as a server reads them, sans I/O (RFC 9112): the front end's parser (edge/http/http1.py).

Why not h11 (it parsed every request before): h11 was a third of what a trivial request cost the front end (a
connection object per request, an event per step, every header through a regex), and the front end only needs
the reading half. This parser is no more lenient than h11 anywhere, which a differential test checks on
generated heads (tests/edge/wire/test_request_against_h11.py): what h11 refuses is refused here, and what both
accept reads the same. It is stricter where leniency is how request smuggling starts:

- the head as edge/wire/framing.py reads it: CRLF line ends only (h11 takes a bare LF), no control byte but
  HTAB (h11 takes most), no obs-fold (h11 joins folded lines), nothing before the request line;
- Transfer-Encoding and Content-Length together is a 400 (h11 lets chunked win), and so is Transfer-Encoding on
  HTTP/1.0; a transfer coding other than a lone chunked is a 501, as in h11;
- one Content-Length line holding one number (h11 took repeats of the same number);
- one Host, and exactly one on HTTP/1.1; an HTTP version other than 1.0 and 1.1 is a 505;
- a head over `head_bytes_max` is a 431 when complete too (h11 only refused an incomplete one).

A request without Content-Length or Transfer-Encoding has no body. After a request's body the parser reads the
next head from what is left (pipelining); the caller decides whether a connection carries another request.
"""

from __future__ import annotations

import re
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
    head_lines,
    header_fields,
    lists_token,
)

__all__ = ["END", "NEED_DATA", "Need", "RequestHead", "RequestParser", "WireError"]

_REQUEST_LINE: Final = re.compile(b"(" + TOKEN.pattern + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_VERSIONS: Final = frozenset({b"1.0", b"1.1"})
# The headers that decide framing and the connection's fate, looked at on the way through.
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"host", b"connection", b"expect", b"upgrade"})


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: bytes
    target: bytes  # as received: origin-form (path and query) usually
    http_version: bytes  # b"1.0" or b"1.1"
    headers: list[Header]  # names in lower case, values without surrounding whitespace, in order
    keep_alive: bool  # HTTP/1.1 without `Connection: close`, and not asking to switch protocols (Upgrade, CONNECT)
    expects_continue: bool  # HTTP/1.1 `Expect: 100-continue`: the client waits for a 100 before its body


class RequestParser(BodyReader):
    """Reads the requests of one connection: feed it bytes (b"" at EOF); take a head with `next_head()`, then its
    body with `next_body()` until `END`; then the next head.

    `next_head()` returns a `RequestHead`, `NEED_DATA`, or None when the client closed the connection between
    requests. A broken head or body raises `WireError`, whose `status` is the answer to give.
    """

    __slots__ = ("_head_bytes_max",)

    def __init__(self, *, head_bytes_max: int) -> None:
        super().__init__()
        self._head_bytes_max = head_bytes_max

    @property
    def body_done(self) -> bool:
        """The last head's body has been read to its end (or it had none)."""
        return self._state in ("done", "idle")

    def next_head(self) -> RequestHead | Need | None:
        if not self.body_done:
            raise WireError("the last request's body is still being read")
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self._head_bytes_max:
                raise WireError("the request head is too large", status=431)
            if buffer and buffer[0] < 0x21:  # (not a method: TLS to a cleartext port, a stray CRLF)
                raise WireError("the request line starts with a space or control byte")
            if buffer.count(b"\n") != buffer.count(b"\r\n"):  # (else a client ending lines with LF waits forever)
                raise WireError("the head ends a line with a bare LF")
            if not self._closed:
                return NEED_DATA
            if buffer:
                raise WireError("the client closed the connection inside a request head")
            return None
        if end + 4 > self._head_bytes_max:
            raise WireError("the request head is too large", status=431)
        raw, self._buffer = buffer[:end], buffer[end + 4 :]
        return self._parse(raw)

    def next_body(self) -> bytes | Need:
        """The next piece of the body (non-empty bytes), `END`, or `NEED_DATA`."""
        return self._body()

    def _parse(self, raw: bytes) -> RequestHead:
        lines = head_lines(raw)
        line = _REQUEST_LINE.fullmatch(lines[0])
        if line is None:
            raise WireError("the request line is not `method target HTTP/x.y`")
        method, target, version = line.groups()
        if version not in _VERSIONS:
            raise WireError("only HTTP/1.0 and HTTP/1.1 are served over this protocol", status=505)
        headers = []
        lengths: list[bytes] = []
        coding: bytes | None = None
        hosts = 0
        keep_alive = version == b"1.1" and method != b"CONNECT"
        expects_continue = False
        for name, value in header_fields(lines[1:]):
            name = name.lower()
            if name in _FRAMING:
                if name == b"content-length":
                    lengths.append(value)
                elif name == b"transfer-encoding":
                    if coding is not None:
                        raise WireError("more than one Transfer-Encoding line", status=501)
                    coding = value = value.lower()
                    if coding != b"chunked":
                        raise WireError("the only transfer coding served is a lone chunked", status=501)
                elif name == b"host":
                    hosts += 1
                elif name == b"connection":
                    keep_alive = keep_alive and not lists_token(value, b"close")
                elif name == b"expect":
                    expects_continue = expects_continue or (version == b"1.1" and lists_token(value, b"100-continue"))
                else:  # upgrade: the answer comes over HTTP/1.1 and the connection closes
                    keep_alive = False
            headers.append((name, value))
        if hosts > 1 or (hosts == 0 and version == b"1.1"):
            raise WireError("an HTTP/1.1 request names exactly one Host")
        if coding is not None:
            if lengths:
                raise WireError("both Transfer-Encoding and Content-Length (how request smuggling starts)")
            if version != b"1.1":
                raise WireError("Transfer-Encoding on HTTP/1.0")
            self._frame_chunked()
        elif lengths:
            if len(lengths) > 1 or b"," in lengths[0]:  # (h11 took a list of one number; no client sends one)
                raise WireError("more than one Content-Length")
            self._frame_length(content_length(lengths))
        else:
            self._frame_length(0)
        return RequestHead(method, target, version, headers, keep_alive, expects_continue)
