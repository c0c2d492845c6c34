"""How the HTTP/1.1 connection feeds llhttp: random pipelined streams (GET, Content-Length
and chunked bodies full of blank lines) cut into random reads, fed to a real
:class:`HttpConnection` and its real llhttp parser. Its transport and listener are our own
fakes at that seam: they record what is written and let the test decide when the client
reads its answers, so the pipeline fills whenever the test wants it full."""

from __future__ import annotations

import itertools
import re
import time
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.server.app import HttpApp, HttpLimits
from infleet.runtime.server.dataplane import DataPlane
from infleet.runtime.server.framing import piece_end
from infleet.runtime.server.http11 import HttpConnection

ANSWER = re.compile(rb"no route (GET|POST) /r(\d+)")
NASTY = [b"\r\n\r\n", b"\r\n", b"\n", b"\r", b"0\r\n\r\n", b"GET /r0 HTTP/1.1\r\n\r\n", b"x"]


class Transport:
    """Records the answers; says whether the connection asked to stop reading."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.paused = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts) -> None:
        for part in parts:
            self.out += part

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


@st.composite
def requests(draw, index: int) -> tuple[bytes, int]:
    """One request to a path answered at once (404 naming /r<index>), and its head length."""
    kind = draw(st.sampled_from(["get", "length", "chunked"]))
    padding = b" " * draw(st.integers(0, 40))  # whitespace before a value is head, not value
    method = b"GET" if kind == "get" else b"POST"
    head = b"%s /r%d HTTP/1.1\r\nX-Pad:%sv\r\n" % (method, index, padding)
    body = b"".join(draw(st.lists(st.sampled_from(NASTY) | st.binary(max_size=30), max_size=6)))
    if kind == "get":
        return head + b"\r\n", len(head) + 2
    if kind == "length":
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        return head + body, len(head)
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    parts = [body[i : i + 7] for i in range(0, len(body), 7)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    return head + chunks + b"0\r\n\r\n", len(head)


@st.composite
def streams(draw) -> tuple[list[bytes], int, int]:
    """(the reads, the number of requests, the longest head)."""
    count = draw(st.integers(1, 12))
    made = [draw(requests(i)) for i in range(count)]
    stream = b"".join(raw for raw, _ in made)
    # cuts anywhere, and cuts inside blank lines (one begun in a read, ended in the next)
    inside = [m.start() + k for m in re.finditer(rb"(?=\r\n\r\n)", stream) for k in (1, 2, 3)]
    cuts = draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))
    cuts += draw(st.lists(st.sampled_from(inside), max_size=6))
    cuts = sorted(set(cuts))
    bounds = [0, *cuts, len(stream)]
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    return reads, count, max(head for _, head in made)


@settings(max_examples=300, deadline=None)
@given(streams(), st.integers(1, 4), st.booleans())
def test_the_pipeline_never_holds_more_than_its_cap_and_every_request_is_answered_in_order(
    stream: tuple[list[bytes], int, int], cap: int, answer_late: bool
) -> None:
    reads, count, longest_head = stream
    # the head cap at exactly the longest head: one byte miscounted would refuse it (431)
    limits = HttpLimits(
        max_url_bytes=16,
        max_header_bytes=longest_head - 16,
        max_head_bytes=longest_head,
        max_pipelined=cap,
    )
    app = HttpApp(DataPlane(), limits)
    listener = SimpleNamespace(
        app=app,
        loop=SimpleNamespace(time=time.monotonic),
        connections=set(),
        date=b"now",
        draining=False,
        closed_waiter=None,
    )
    connection = HttpConnection(listener)  # type: ignore[arg-type]
    transport = Transport()
    connection.connection_made(transport)
    if answer_late:
        connection.pause_writing()  # the client reads no answer: every request must wait
    for data in reads:
        for _ in range(count + 1):  # the client reads its answers, so the connection reads on
            if not transport.paused or transport.closed:
                break
            connection.resume_writing()
            if answer_late:
                connection.pause_writing()
            assert len(connection.waiting) <= cap
        assert not transport.paused or transport.closed, "reading never resumed"
        connection.data_received(data)
        assert len(connection.waiting) <= cap, "more requests parsed than the pipeline takes"
    for _ in range(count + 1):
        if not (connection.waiting or connection.held) or transport.closed:
            break
        connection.resume_writing()
        assert len(connection.waiting) <= cap
    assert not transport.closed, bytes(transport.out)
    answered = [int(n) for _, n in ANSWER.findall(bytes(transport.out))]
    assert answered == list(range(count))
    assert transport.out.count(b"HTTP/1.1 ") == count  # nothing but those 404s


def test_a_piece_ends_after_the_blank_line_or_the_body() -> None:
    data = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    first = piece_end(data, 0, body_left=0, in_request=False, head_room=100)
    assert data[:first] == b"GET /a HTTP/1.1\r\n\r\n"
    assert piece_end(data, first, body_left=0, in_request=False, head_room=100) == len(data)
    assert piece_end(b"0123456789", 2, body_left=5, in_request=True, head_room=None) == 7
    # no blank line yet: the head may grow to its room, and one byte past it
    assert piece_end(b"GET /" + b"a" * 50, 0, body_left=0, in_request=False, head_room=9) == 10
    # at the start of a read inside a request, line by line (a blank line may straddle)
    assert piece_end(b"\n\r\nGET", 0, body_left=0, in_request=True, head_room=None) == 1
    assert piece_end(b"\n\r\nGET", 1, body_left=0, in_request=True, head_room=None) == 3
