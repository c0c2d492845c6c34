"""HTTP/1.1 message framing for :mod:`~infleet.runtime.server.http11`, as pure functions:
where the next piece of input fed to llhttp ends, and the head of an answer.

llhttp parses whatever it is given to the end: one read holding a hundred pipelined
requests yields a hundred requests, and a header line is handed over only once it ends.
Feeding it in pieces that can each end at most one request lets the connection stop at
its pipeline cap in the middle of a read, and count the bytes of a head as they arrive.
"""

from __future__ import annotations

from http import HTTPStatus

BLANK_LINE = b"\r\n\r\n"
"""Ends every head and every chunked body (llhttp insists on CRLF, never a bare LF)."""

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def piece_end(
    data: bytes, pos: int, *, body_left: int, in_request: bool, head_room: int | None
) -> int:
    """Where the piece of ``data`` starting at ``pos`` ends, so that at most one request can
    end inside it, and then only at its last byte.

    ``body_left``: bytes still to come of the current request's ``Content-Length`` body (0
    when none is arriving). ``in_request``: a request has begun and not ended (its head or a
    chunked body is arriving). ``head_room``: while a head is arriving (or before one
    begins), how many more bytes it may have; the piece ends one byte past that, so a head
    over the cap is seen with one byte to spare and never buffered beyond it.

    A request ends at the end of its ``Content-Length`` body, or else at a blank line: its
    head's or its chunked body's. So a piece is the rest of the current body, or everything
    up to the next blank line; a blank line that began in the previous read (``pos`` < 3)
    is found by going line by line. In the common case of one request per read that is two
    pieces: the head, found by a short scan, and the body, never scanned.
    """
    end = len(data)
    if body_left > 0:
        return min(end, pos + body_left)
    if in_request and pos < 3:
        cut = data.find(b"\n", pos)
        stop = end if cut < 0 else cut + 1
    else:
        cut = data.find(BLANK_LINE, max(0, pos - 3))
        stop = end if cut < 0 else cut + 4
    if head_room is not None:
        stop = min(stop, pos + head_room + 1)
    return stop


def response_head(
    status: int, content_type: bytes, headers: bytes, length: int, date: bytes, close: bool
) -> bytes:
    """The status line and header block of an answer: ``headers`` (``name: value\\r\\n``
    lines) first, then content type, length, date and, when ``close``, ``connection: close``."""
    return b"%scontent-type: %s\r\ncontent-length: %d\r\n%sdate: %s\r\n%s\r\n" % (
        _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status,
        content_type,
        length,
        headers,
        date,
        b"connection: close\r\n" if close else b"",
    )
