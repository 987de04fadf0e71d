"""The front end's request parser against h11 (which parsed every request before it), on generated input.

Each input is a few pipelined requests built from parts that smuggling attacks and sloppy clients use (odd
Content-Length and Transfer-Encoding values, both at once, obs-fold, bare CR and LF, control bytes, a second
Host, chunk extensions and trailers, odd versions), then sometimes mutated byte by byte. Both parsers read it the
way the front end does (head, body to its end, next head while the connection stays open). The rule: whatever h11
refuses is refused here, at the same request or earlier; what both accept reads the same (method, target,
version, headers, body, whether the connection stays open, whether the client waits for 100-continue).
Refusing what h11 accepts is allowed (this parser is stricter by design), but the test also checks that most
valid requests are accepted, so a parser that refused everything would fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import h11

from edge.wire.request import END, Need, RequestHead, RequestParser, WireError

LIMIT = 4096
INPUTS = 20_000
SEED = 20261202

# Each part: the usual values first, then odd ones, picked one time in ODD (so about half the inputs are valid).
ODD = 0.08
METHODS = ([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"M-SEARCH"], [b"CONNECT", b"G@T", b"", b"get"])
TARGETS = ([b"/", b"/a?b=1&c", b"*", b"http://x/y", b"/%41"], [b"/\x80", b"/a b", b"", b"/\x7f"])
VERSIONS = ([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1"])
LENGTHS = ([b"0", b"3", b"5", b"05"], [b" 5 ", b"5, 5", b"5,6", b"-1", b"+5", b"0x5", b"", b"5 5", b"1" * 21])
CODINGS = ([b"chunked", b"Chunked", b" chunked "], [b"gzip, chunked", b"chunked, gzip", b"identity", b"chunked\x0b"])
HEADERS = (
    [
        b"host: a",
        b"Connection: close",
        b"Connection: keep-alive",
        b"connection: Upgrade, close",
        b"Upgrade: h2c",
        b"Expect: 100-continue",
        b"expect: 100-continue, x",
        b"X-A: b",
        b"X-A:  spaced  value ",
        b"X-A: \x80\xff obs-text",
        b"X-A: a\tb",
        b"x-long: " + b"v" * 300,
    ],
    [
        b"Host:",
        b"X-A: ctl\x01",
        b"X-A: nul\x00",
        b"X-A: cr\rhidden",
        b" folded: line",
        b"\tfolded",
        b"X-A : space",
        b"X-A",
        b": empty",
        b"X(A): bad",
    ],
)
CHUNK_SIZES = ([b"5", b"05", b"5;ext", b"5;a=b;c", b"5 ", b"5\t"], [b" 5", b"5 ;x", b"0x5", b"g", b""])
CHUNK_ENDS = ([b"\r\n"], [b"", b"\n", b"x\r\n"])
TRAILERS = ([b"", b"T: 1\r\n"], [b"bad trailer\r\n", b" folded: t\r\n", b"T: a\x01\r\n"])
LINE_ENDS = ([b"\r\n"], [b"\n", b"\r", b"\r\r\n"])


def pick(rng: random.Random, part: tuple[list[bytes], list[bytes]]) -> bytes:
    usual, odd = part
    return rng.choice(odd if rng.random() < ODD else usual)


def generated(rng: random.Random) -> tuple[bytes, bool]:
    """Input bytes, and whether the client then closes its side."""
    data = b"".join(_request(rng) for _ in range(rng.choice([1, 1, 2, 3])))
    if rng.random() < 0.25:
        for _ in range(rng.choice([1, 1, 2])):
            data = _mutated(rng, data)
    if rng.random() < 0.05:
        data = data[: rng.randrange(len(data) + 1)]
    return data, rng.random() < 0.3


def _request(rng: random.Random) -> bytes:
    end = pick(rng, LINE_ENDS)
    line = pick(rng, METHODS) + b" " + pick(rng, TARGETS) + b" " + pick(rng, VERSIONS)
    if rng.random() < ODD / 4:
        line = line.replace(b" ", rng.choice([b"  ", b"\t"]), 1)
    headers = [b"Host: x"] if rng.random() > ODD / 2 else []
    headers += [pick(rng, HEADERS) for _ in range(rng.choice([0, 1, 2, 3]))]
    body = b""
    framing = rng.random()
    if framing < 0.35:
        length = pick(rng, LENGTHS)
        headers.append(b"Content-Length: " + length)
        if rng.random() < ODD:
            headers.append(b"Content-Length: " + pick(rng, LENGTHS))
        body = b"hello"[: int(length) if length.strip().isdigit() and int(length) <= 5 else 3]
    elif framing < 0.6:
        headers.append(b"Transfer-Encoding: " + pick(rng, CODINGS))
        if rng.random() < ODD:
            headers.append(rng.choice([b"Content-Length: 5", b"Transfer-Encoding: chunked"]))
        body = _chunked(rng)
    rng.shuffle(headers)
    return line + end + b"".join(header + end for header in headers) + end + body


def _chunked(rng: random.Random) -> bytes:
    chunks = [pick(rng, CHUNK_SIZES) + b"\r\nhello" + pick(rng, CHUNK_ENDS) for _ in range(rng.choice([0, 1, 2]))]
    return b"".join(chunks) + b"0\r\n" + pick(rng, TRAILERS) + b"\r\n"


def _mutated(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    byte = bytes([rng.choice([0, 9, 10, 13, 32, 44, 58, 59, 0x7F, 0x80, rng.randrange(256)])])
    kind = rng.randrange(3)
    if kind == 0:
        return data[:at] + byte + data[at:]
    if kind == 1:
        return data[:at] + data[at + 1 :]
    return data[:at] + byte + data[at + 1 :]


@dataclass(frozen=True)
class Read:
    """One request as a parser read it (head fields as h11 reports them)."""

    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    expects_continue: bool
    body: bytes
    complete: bool  # the body was read to its end
    keep_alive: bool  # the connection may carry another request (meaningful when complete)


def read_with_h11(data: bytes, close: bool) -> tuple[list[Read], str]:
    """The requests h11 reads, as the front end drove it (a new h11 connection per request, fed the leftover), and
    how it stopped: "error", "need", "closed", or "close" (the connection ends after the last request)."""
    reads: list[Read] = []
    leftover = data
    for _ in range(8):
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
        if leftover:
            connection.receive_data(leftover)
        if close:
            connection.receive_data(b"")
        try:
            request = connection.next_event()
            if request is h11.NEED_DATA:
                return reads, "need"
            if not isinstance(request, h11.Request):
                return reads, "closed"
            waiting = connection.they_are_waiting_for_100_continue
            body, complete = b"", False
            while isinstance(event := connection.next_event(), h11.Data):
                body += bytes(event.data)
            complete = isinstance(event, h11.EndOfMessage)
        except h11.RemoteProtocolError:
            return reads, "error"
        keep_alive = complete and connection.their_state is h11.DONE
        headers = tuple((bytes(name), bytes(value)) for name, value in request.headers)
        reads.append(
            Read(request.method, request.target, request.http_version, headers, waiting, body, complete, keep_alive)
        )
        if not complete:
            return reads, "need"
        if not keep_alive:
            return reads, "close"
        leftover, closed = connection.trailing_data
        leftover = bytes(leftover)
        if closed and not leftover:
            return reads, "closed"
    return reads, "more"


def read_with_ours(data: bytes, close: bool) -> tuple[list[Read], str]:
    """The same, with the front end's parser (one per connection)."""
    parser = RequestParser(head_bytes_max=LIMIT)
    if data:  # (b"" is the end of the stream)
        parser.feed(data)
    if close:
        parser.feed(b"")
    reads: list[Read] = []
    try:
        for _ in range(8):
            head = parser.next_head()
            if head is None:
                return reads, "closed"
            if isinstance(head, Need):
                return reads, "need"
            body = b""
            while not isinstance(piece := parser.next_body(), Need) and piece is not END:
                body += piece
            complete = piece is END
            reads.append(_read(head, body, complete))
            if not complete:
                return reads, "need"
            if not head.keep_alive:
                return reads, "close"
            if parser.closed and not parser.buffered:
                return reads, "closed"
    except WireError:
        return reads, "error"
    return reads, "more"


def _read(head: RequestHead, body: bytes, complete: bool) -> Read:
    return Read(
        head.method,
        head.target,
        head.http_version,
        tuple(head.headers),
        head.expects_continue,
        body,
        complete,
        complete and head.keep_alive,
    )


def test_nothing_h11_refuses_is_accepted_and_what_both_accept_reads_the_same() -> None:
    rng = random.Random(SEED)
    agreed = stricter = both_refused = 0
    for number in range(INPUTS):
        data, close = generated(rng)
        theirs, their_end = read_with_h11(data, close)
        ours, our_end = read_with_ours(data, close)
        context = f"input {number}: {data!r} (close={close})"
        # Request by request: the same, until this parser refuses (it may refuse earlier than h11).
        for index, their_read in enumerate(theirs):
            if index == len(ours):
                assert our_end == "error", f"{context}: h11 read {their_read}, we stopped with {our_end}"
                break
            assert ours[index] == their_read, context
        else:
            assert len(ours) == len(theirs), context
            if their_end == "error":
                assert our_end == "error", f"{context}: h11 refused it, we read {ours} and stopped with {our_end}"
            elif our_end != their_end:
                assert our_end == "error", f"{context}: h11 stopped with {their_end}, we with {our_end}"
        if our_end == "error" and their_end == "error":
            both_refused += 1
        elif our_end == "error" or len(ours) < len(theirs):
            stricter += 1
        else:
            agreed += 1
    # The generator is meant to be mostly valid before its mutations: a parser refusing too much would show here.
    assert agreed > INPUTS * 0.3, (agreed, stricter, both_refused)
    assert both_refused > INPUTS * 0.3, (agreed, stricter, both_refused)


def test_valid_requests_are_never_refused() -> None:
    """Strictness only where h11 would be lenient: every valid request of the generator's parts, with no odd part,
    is read."""
    rng = random.Random(SEED + 1)
    for _ in range(2000):
        method, target = rng.choice(METHODS[0]), rng.choice(TARGETS[0])
        headers = [b"Host: x", *rng.sample(HEADERS[0][1:], 3)]
        framing = rng.randrange(3)
        body = b""
        if framing == 1:
            headers.append(b"Content-Length: 5")
            body = b"hello"
        elif framing == 2:
            headers.append(b"Transfer-Encoding: chunked")
            body = b"5;ext\r\nhello\r\n0\r\nT: 1\r\n\r\n"
        data = method + b" " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
        ours, end = read_with_ours(data, False)
        theirs, _ = read_with_h11(data, False)
        assert end != "error" and ours == theirs, data
