"""The upstream pool's HTTP/1.1 (edge/proxy/wire.py), without sockets: heads out, responses in, every framing."""

from __future__ import annotations

import pytest

from edge.wire.response import END, Need, ResponseHead, ResponseParser, WireError, chunk, request_head


def read_all(data: bytes, *, head_only: bool = False, feed_by: int = 0, close: bool = False) -> list[object]:
    """Every event of one response fed `data` (in pieces of `feed_by` bytes, when set), then EOF if `close`."""
    parser = ResponseParser()
    parser.expect(head_only=head_only)
    pieces = [data[i : i + feed_by] for i in range(0, len(data), feed_by)] if feed_by else [data]
    events: list[object] = []
    for piece in [*pieces, *([b""] if close else [])]:
        parser.feed(piece)
        while not isinstance(event := parser.next_event(), Need):
            events.append(event)
            if event is END:
                return events
    return events


def body_of(events: list[object]) -> bytes:
    assert isinstance(events[0], ResponseHead) and events[-1] is END
    return b"".join(event for event in events[1:-1] if isinstance(event, bytes))


def test_a_request_head_is_one_line_per_header() -> None:
    head = request_head(b"POST", b"/a?b=1", [(b"host", b"api"), (b"content-length", b"2")])
    assert head == b"POST /a?b=1 HTTP/1.1\r\nhost: api\r\ncontent-length: 2\r\n\r\n"
    for bad in ([(b"x", b"a\r\nevil: 1")], [(b"x", b"a\nb")], [(b"x", b"\x00")]):
        with pytest.raises(WireError):
            request_head(b"GET", b"/", bad)
    with pytest.raises(WireError):
        request_head(b"GET", b"/ HTTP/1.1\r\nx", [])


@pytest.mark.parametrize("feed_by", [0, 1, 7])
def test_content_length_chunked_and_close_delimited_bodies(feed_by: int) -> None:
    sized = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", feed_by=feed_by)
    assert sized[0] == ResponseHead(200, [(b"Content-Length", b"5"), (b"X-A", b"b")])
    assert body_of(sized) == b"hello"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nT: x\r\n\r\n"
    assert body_of(read_all(chunked, feed_by=feed_by)) == b"hello!"
    closed = read_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", feed_by=feed_by, close=True)
    assert body_of(closed) == b"until the end"


def test_which_connections_may_be_reused() -> None:
    def reusable(data: bytes, **options: bool) -> bool:
        parser = ResponseParser()
        parser.expect(head_only=options.get("head_only", False))
        parser.feed(data)
        while parser.next_event() is not END:
            pass
        return parser.reusable

    assert reusable(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert reusable(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reusable(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", head_only=True)
    assert reusable(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert not reusable(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert not reusable(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert not reusable(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nstray")


def test_informational_heads_are_skipped_and_a_switch_is_refused() -> None:
    events = read_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx")
    assert events[0] == ResponseHead(200, [(b"content-length", b"1")]) and body_of(events) == b"x"
    with pytest.raises(WireError):
        read_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n")


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nX-Split: a\rb\r\ncontent-length: 0\r\n\r\n",  # bare CR
        b"HTTP/1.1 200 OK\r\nX-Split: a\nb: c\r\ncontent-length: 0\r\n\r\n",  # bare LF
        b"HTTP/1.1 200 OK\r\nX-Nul: \x00\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\ncontent-length: 0\r\n\r\n",  # obs-fold
        b"HTTP/1.1 200 OK\r\nBad Name: a\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n",  # longer than its size
    ],
)
def test_responses_that_could_smuggle_or_do_not_frame_are_refused(response: bytes) -> None:
    with pytest.raises(WireError):
        read_all(response)


def test_a_body_cut_short_by_the_upstream_is_an_error_not_an_end() -> None:
    for response in (
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\ncontent-le",
    ):
        with pytest.raises(WireError):
            read_all(response, close=True)


def test_a_head_over_the_limit_is_refused_before_it_ends() -> None:
    parser = ResponseParser()
    parser.expect(head_only=False)
    parser.feed(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000)
    with pytest.raises(WireError):
        parser.next_event()


def test_chunks_frame_their_length_in_hex() -> None:
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
