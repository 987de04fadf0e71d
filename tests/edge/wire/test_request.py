"""The front end's request parser (edge/wire/request.py), without sockets: every framing, every refusal and the
status it carries, pipelining and EOF. Its agreement with h11 is tests/edge/wire/test_request_against_h11.py."""

from __future__ import annotations

import pytest

from edge.wire.request import END, Need, RequestHead, RequestParser, WireError

LIMIT = 16 * 1024


def read(data: bytes, *, feed_by: int = 0, close: bool = False) -> tuple[list[tuple[RequestHead, bytes]], str]:
    """Every request of `data` as (head, body) pairs, fed in pieces of `feed_by` bytes when set, then EOF if
    `close`; and how the stream ended, "need" or "closed"."""
    parser = RequestParser(head_bytes_max=LIMIT)
    pieces = [data[i : i + feed_by] for i in range(0, len(data), feed_by)] if feed_by else [data]
    pieces += [b""] if close else []
    out: list[tuple[RequestHead, bytes]] = []
    head: RequestHead | None = None
    body = b""
    for piece in pieces:
        parser.feed(piece)
        while True:
            if head is None:
                event = parser.next_head()
                if event is None:
                    return out, "closed"
                if isinstance(event, Need):
                    break
                head, body = event, b""
                continue
            chunk = parser.next_body()
            if isinstance(chunk, Need):
                break
            if chunk is END:
                out.append((head, body))
                head = None
                continue
            body += chunk
    return out, "need"


def refusal(data: bytes, *, close: bool = False) -> int:
    with pytest.raises(WireError) as caught:
        read(data, close=close)
    return caught.value.status


@pytest.mark.parametrize("feed_by", [0, 1, 5])
def test_heads_and_bodies_by_content_length_and_chunked(feed_by: int) -> None:
    data = (
        b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Two:  a  b \r\n\r\nhello"
        b"PUT /c HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nT: 1\r\n\r\n"
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    [(first, body1), (second, body2), (third, body3)], end = read(data, feed_by=feed_by)
    assert first == RequestHead(
        b"POST", b"/a?b=1", b"1.1", [(b"host", b"x"), (b"content-length", b"5"), (b"x-two", b"a  b")], True, False
    )
    assert body1 == b"hello"
    assert second.headers[1] == (b"transfer-encoding", b"chunked") and body2 == b"hello!"
    assert third.method == b"GET" and body3 == b"" and end == "need"


def test_what_decides_keep_alive_and_100_continue() -> None:
    def head(lines: bytes, version: bytes = b"1.1") -> RequestHead:
        [(parsed, _body)], _end = read(b"GET / HTTP/" + version + b"\r\nhost: x\r\n" + lines + b"\r\n")
        return parsed

    assert head(b"").keep_alive and not head(b"").expects_continue
    assert not head(b"Connection: keep-alive, Close\r\n").keep_alive
    assert not head(b"", b"1.0").keep_alive
    assert not head(b"Upgrade: h2c\r\nConnection: upgrade\r\n").keep_alive  # answered, then the connection closes
    assert head(b"Expect: 100-Continue\r\n").expects_continue
    assert not head(b"Expect: 100-continue\r\n", b"1.0").expects_continue  # (RFC 9110: ignored on HTTP/1.0)


def test_the_end_of_the_stream() -> None:
    assert read(b"", close=True) == ([], "closed")
    assert read(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", close=True)[1] == "closed"
    assert refusal(b"GET / HTTP/1.1\r\nhost", close=True) == 400  # (inside a head)
    assert refusal(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\nshort", close=True) == 400
    assert refusal(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", close=True) == 400


def test_a_head_over_the_limit_is_431_complete_or_not() -> None:
    big = b"x-big: " + b"a" * LIMIT + b"\r\n"
    assert refusal(b"GET / HTTP/1.1\r\nhost: x\r\n" + big) == 431
    assert refusal(b"GET / HTTP/1.1\r\nhost: x\r\n" + big + b"\r\n") == 431
    fits = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-big: " + b"a" * (LIMIT - 100) + b"\r\n\r\n"
    assert len(read(fits)[0]) == 1


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\nhost: x\n\n", 400),  # bare LF line ends
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: b\rc\r\n\r\n", 400),  # bare CR
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: b\x00\r\n\r\n", 400),  # NUL
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: b\x01\r\n\r\n", 400),  # another control byte
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-a : b\r\n\r\n", 400),  # space before the colon
        (b"GET / HTTP/1.1\r\nhost: x\r\n: b\r\n\r\n", 400),  # no name
        (b"GET / HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n", 400),
        (b"\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # a blank line first
        (b"\x16\x03\x01\x02\x00", 400),  # TLS to a cleartext port, refused before any line ends
        (b"GET  / HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # two spaces
        (b"GET / HTTP/1.1 \r\nhost: x\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nhost: x\r\n\r\n", 400),  # a method that is not a token
        (b"GET /\x7f HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (b"GET / http/1.1\r\nhost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nhost: x\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nhost: x\r\nhost: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1, 1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0x1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1 1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 9999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: \r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: identity\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", 501),
    ],
)
def test_refusals_and_their_status(data: bytes, status: int) -> None:
    assert refusal(data) == status


@pytest.mark.parametrize(
    "chunks",
    [
        b"5\r\nhello0\r\n\r\n",  # a chunk longer than its size
        b"x\r\n",  # not hexadecimal
        b" 5\r\nhello\r\n0\r\n\r\n",  # space before the size
        b"5 ;a\r\nhello\r\n0\r\n\r\n",  # space before an extension (h11 refuses it too)
        b"5\nhello\r\n0\r\n\r\n",  # bare LF
        b"5;a\x00\r\nhello\r\n0\r\n\r\n",  # a control byte in an extension
        b"0\r\nbad trailer\r\n\r\n",
        b"0\r\n folded: trailer\r\n\r\n",
        b"11111111111111111\r\n",  # 17 hex digits
        b"5" * 2000,  # a chunk-size line that never ends
    ],
)
def test_chunked_bodies_that_do_not_frame(chunks: bytes) -> None:
    head = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    assert refusal(head + chunks) == 400


def test_a_body_is_read_before_the_next_head() -> None:
    parser = RequestParser(head_bytes_max=LIMIT)
    parser.feed(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nab")
    assert isinstance(parser.next_head(), RequestHead) and not parser.body_done
    with pytest.raises(WireError):
        parser.next_head()
    assert parser.next_body() == b"ab" and isinstance(parser.next_body(), Need)
    parser.feed(b"cGET")
    assert parser.next_body() == b"c" and parser.next_body() is END and parser.body_done
    assert parser.buffered == 3 and isinstance(parser.next_head(), Need)
