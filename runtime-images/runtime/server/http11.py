"""infleet's own HTTP/1.1 server: one connection, an asyncio protocol over ``httptools``
(llhttp). The listening socket and the timeout sweep are in ``listener``.

Built for the one job of ``infleet serve``: each connection parses with llhttp in C, hands
the request's method, path, four headers and its body as one ``bytes`` object to
:class:`~infleet.runtime.server.app.HttpApp`, and answers with ONE ``transport.write`` of
the head and body together. No ASGI message dicts, no per-request task for the routes
answered at once (health, metadata, metrics), one task per inference request.

- Keep-alive (HTTP/1.1 default; HTTP/1.0 with ``Connection: keep-alive``) and pipelining:
  requests on one connection are answered strictly in order, one at a time. At most
  ``max_pipelined`` parsed requests wait, even when one read holds many more: llhttp is fed
  in pieces that can each end one request at most (:mod:`~infleet.runtime.server.framing`),
  and the rest of the read is held back, unparsed, until half of the waiting ones are
  answered.
- Bodies by ``Content-Length`` or ``Transfer-Encoding: chunked`` (decoded by llhttp); both
  at once is refused (400). Inference requests are admitted once their headers are read:
  413 on a declared length above the cap, 429 when too many requests are in flight or too
  many body bytes are buffered, 503 while draining, all before a body byte is kept.
  ``Expect: 100-continue`` is answered with 100 once admitted.
- Limits: request target above ``max_url_bytes`` -> 414; headers above
  ``max_header_bytes`` or ``max_headers`` fields -> 431, and a head (request line and
  headers as sent) above ``max_head_bytes`` -> 431 as soon as that many bytes arrived: llhttp
  hands over a header only once its line ends, so the count is kept on the bytes fed, and a
  line that never ends is never buffered past the cap. Malformed HTTP -> 400; methods other
  than GET and POST -> 405. Each of these, and 413, closes the connection.
- At most ``max_connections`` open connections; one more is answered 503 with
  ``Retry-After`` and closed without reading from it (counted in
  ``infleet_serve_connections_refused_total``).
- Timeouts, checked by one sweep a second rather than a timer per request: an idle
  keep-alive connection is closed after ``keep_alive_s``; a request not read in full within
  ``read_timeout_s`` of its first byte gets 408 and the connection is closed.
- A client that disconnects mid-body frees its reservation and is counted as a client
  error; one that disconnects while its request runs gets no answer (the result is dropped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from infleet.runtime.server.app import (
    Infer,
    Reply,
    error_reply,
)
from infleet.runtime.server.codec import HEADER_LENGTH
from infleet.runtime.server.errors import ServeError
from infleet.runtime.server.framing import piece_end, response_head
from infleet.runtime.server.metrics import Outcome

if TYPE_CHECKING:
    from infleet.runtime.server.listener import HttpServer

log = logging.getLogger(__name__)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEADER_LENGTH_SIZE = len(HEADER_LENGTH)
# bodies at least this large go out as a second buffer (writelines) instead of being copied
# behind the head
_JOIN_BELOW = 256 << 10


class _Request:
    """One request on a connection, from its first byte to its response."""

    __slots__ = (
        "admitted",
        "body_left",
        "chunks",
        "client_id",
        "close",
        "content_length",
        "expect",
        "head_bytes",
        "header_count",
        "header_length",
        "headers_size",
        "held",
        "method",
        "outcome",
        "reply",
        "size",
        "started",
        "target",
        "url",
    )

    def __init__(self, started: float) -> None:
        self.url = b""
        self.method = ""
        self.head_bytes = 0
        """Bytes fed to llhttp while this request's head was arriving."""
        self.headers_size = 0
        self.header_count = 0
        self.content_length: bytes | None = None
        self.body_left = 0
        """Bytes of a ``Content-Length`` body still to come (0 for chunked bodies)."""
        self.header_length: bytes | None = None
        self.client_id: bytes | None = None
        self.expect = False
        self.target: Infer | None = None
        self.reply: Reply | None = None
        self.outcome = Outcome.SUCCESS
        self.chunks: list[bytes] = []
        self.size = 0
        self.held = 0
        self.admitted = False
        self.close = False
        self.started = started


class _Refused(Exception):
    """The request cannot be parsed on: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Stopped(Exception):
    """Raised from a callback to stop llhttp once the connection reads no more requests."""


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.limits = server.app.limits
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.reading: _Request | None = None  # being parsed
        self.active: _Request | None = None  # being answered
        self.waiting: deque[_Request] = deque()  # parsed, to be answered in order
        self.held = b""  # read but not parsed: the pipeline was full
        self.feeding = False  # inside _feed (callbacks must not feed again)
        self.stopped = False  # no more requests are read from this connection
        self.paused_reading = False
        self.paused_writing = False
        self.closed = False
        self.idle_since = self.loop.time()

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            self.stopped = True  # nothing of it is read
            self.app.connection_refused()
            message = f"{len(server.connections)} connections are open, the most this server takes"
            reply = error_reply(503, f"{message}; retry later", b"retry-after: 1\r\n")
            status, content_type, headers, body = reply
            head = response_head(status, content_type, headers, len(body), server.date, True)
            transport.write(head + body)
            transport.close()
            return
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for request in (self.reading, *self.waiting):
            if request is not None:  # never answered: the client left
                self._finish(request, Outcome.CLIENT_ERROR)
        self.reading = None
        self.waiting.clear()
        if self.server.closed_waiter is not None and not self.server.connections:
            self.server.closed_waiter.set()

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        if self.held:  # the pipeline is full: keep what the transport had read already
            self.held += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        self.feeding = True
        try:
            self._feed_pieces(data)
        except httptools.HttpParserUpgrade:
            self._stop()  # the request before the upgrade is answered; nothing after it
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Stopped):
                pass
            elif isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:
                log.error("HTTP request handling failed", exc_info=cause or e)
                self._refuse(500, "internal error")
        except httptools.HttpParserError as e:
            self._refuse(400, f"malformed HTTP request: {e}")
        finally:
            self.feeding = False

    def _feed_pieces(self, data: bytes) -> None:
        """Feed llhttp ``data`` in pieces that can each end one request at most
        (:func:`~infleet.runtime.server.framing.piece_end`): the pipeline cap then holds
        within one read, and what does not fit is held back unparsed. The pieces start where
        a request starts or inside the one being read, so every byte of a piece fed while a
        head is arriving is that head's: ``head_bytes`` is exact."""
        view = memoryview(data)
        limits = self.limits
        pos, end = 0, len(data)
        while pos < end and not self.stopped:
            if len(self.waiting) >= limits.max_pipelined:
                self.held = data[pos:]
                self._pause_reading()
                return
            request = self.reading
            if request is None:
                stop = piece_end(
                    data, pos, body_left=0, in_request=False, head_room=limits.max_head_bytes
                )
            else:
                head_room = None if request.method else limits.max_head_bytes - request.head_bytes
                stop = piece_end(
                    data, pos, body_left=request.body_left, in_request=True, head_room=head_room
                )
            self.parser.feed_data(view[pos:stop] if pos or stop < end else data)
            request = self.reading
            if request is not None and not request.method:  # all of it was this head
                request.head_bytes += stop - pos
                if request.head_bytes > limits.max_head_bytes:
                    self._refuse(431, f"the request head is above {limits.max_head_bytes} bytes")
                    return
            pos = stop

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.active is None:
            self._next()

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.stopped:
            raise _Stopped
        self.reading = _Request(time.perf_counter())

    def on_url(self, url: bytes) -> None:
        request = self.reading
        assert request is not None
        request.url += url
        if len(request.url) > self.limits.max_url_bytes:
            raise _Refused(414, f"the request target is above {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.reading
        assert request is not None
        request.headers_size += len(name) + len(value)
        request.header_count += 1
        if (
            request.headers_size > self.limits.max_header_bytes
            or request.header_count > self.limits.max_headers
        ):
            raise _Refused(431, "request header fields too large")
        n = len(name)
        if n == 14 and name.lower() == b"content-length":
            request.content_length = value
        elif n == _HEADER_LENGTH_SIZE and name.lower() == HEADER_LENGTH:
            request.header_length = value
        elif n == 12 and name.lower() == b"x-request-id":
            request.client_id = value
        elif n == 6 and name.lower() == b"expect":
            request.expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        request = self.reading
        assert request is not None
        method = request.method = self.parser.get_method().decode()
        if not self.parser.should_keep_alive():
            request.close = True
        declared = None
        if request.content_length is not None:  # llhttp checked it is a number
            declared = request.body_left = int(request.content_length)
        if method != "GET" and method != "POST":
            request.reply = error_reply(
                405, f"method {method} not allowed", b"allow: GET, POST\r\n"
            )
            return
        path = self._path(request.url)
        route = self.app.route(method, path)
        if isinstance(route, Reply):
            request.reply = route
            return
        request.target = route
        try:
            request.held = self.app.admit(declared)
            request.admitted = True
        except ServeError as e:
            request.reply, request.outcome = self.app.failure(route.name, e, request.client_id)
            if request.reply.status != 429 or request.expect:  # 413, 503 draining
                request.close = True
                self._answer_early(request)
            return
        if request.expect and self.active is None and not self.waiting:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.stopped:
            raise _Stopped
        request = self.reading
        assert request is not None
        if request.body_left:
            request.body_left -= len(body)
        if request.reply is not None:
            return  # refused or not an inference request: the body is dropped
        size = request.size + len(body)
        if size > request.held:  # chunked, or a body longer than declared (llhttp stops that)
            try:
                self.app.reserve(request.held, size)
            except ServeError as e:
                request.reply, request.outcome = self.app.failure(
                    request.target.name if request.target else "", e, request.client_id
                )
                request.chunks.clear()
                request.close = True
                self._answer_early(request)
                return
            request.held = size
        request.size = size
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.stopped:
            raise _Stopped
        request = self.reading
        assert request is not None
        self.reading = None
        self._queue(request)

    # --- answering, in order ----------------------------------------------------------

    def _path(self, url: bytes) -> str:
        if url[:1] != b"/":  # absolute form (a proxy's request line)
            try:
                url = httptools.parse_url(url).path or b"/"
            except httptools.HttpParserInvalidURLError:
                raise _Refused(400, "malformed request target") from None
        cut = url.find(b"?")
        if cut >= 0:
            url = url[:cut]
        path = url.decode("utf-8", "replace")
        return unquote(path) if "%" in path else path

    def _queue(self, request: _Request) -> None:
        if self.active is None and not self.waiting and not self.paused_writing:
            self._start(request)
            return
        self.waiting.append(request)
        if len(self.waiting) >= self.limits.max_pipelined:
            self._pause_reading()

    def _pause_reading(self) -> None:
        if not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        """Read on once at most half the pipeline waits: first what was held back (which
        may fill it again), then the socket. Never from inside a feed, whose loop decides."""
        if not self.paused_reading or self.stopped or self.closed or self.feeding:
            return
        half = self.limits.max_pipelined // 2
        if len(self.waiting) > half:
            return
        if self.held:
            data, self.held = self.held, b""
            self._feed(data)
            if self.held or self.stopped or len(self.waiting) > half:
                return
        self.paused_reading = False
        self.transport.resume_reading()

    def _answer_early(self, request: _Request) -> None:
        """Answer a refused request without reading its body, then close."""
        self.reading = None
        self._stop()
        self._queue(request)

    def _refuse(self, status: int, message: str) -> None:
        """The connection cannot be read on: answer ``status`` after what is queued, close."""
        request = self.reading or _Request(time.perf_counter())
        self.reading = None
        if request.admitted:  # its own reply decides the outcome recorded
            request.outcome = Outcome.CLIENT_ERROR
        request.reply = error_reply(status, message)
        request.close = True
        self._stop()
        self._queue(request)

    def _stop(self) -> None:
        self.stopped = True
        self.held = b""
        self._pause_reading()

    def _start(self, request: _Request) -> None:
        self.active = request
        if request.reply is None and request.target is not None:
            task = self.loop.create_task(self._infer(request))
            task.add_done_callback(_log_failure)
            return
        self._respond(request, request.reply or error_reply(500, "no reply"))

    async def _infer(self, request: _Request) -> None:
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.chunks = []
        assert request.target is not None
        reply, request.outcome = await self.app.infer(
            request.target, body, request.header_length, request.client_id
        )
        self._respond(request, reply)

    def _respond(self, request: _Request, reply: Reply) -> None:
        close = request.close or self.server.draining or (self.stopped and not self.waiting)
        # Counted before the answer's bytes leave: a client that has its answer and then
        # scrapes /metrics finds it there (counted after the write, a scrape from another
        # process could land in between; CI caught 199 of 200).
        self._finish(request, request.outcome)
        if not self.closed:
            status, content_type, headers, body = reply
            head = response_head(status, content_type, headers, len(body), self.server.date, close)
            if request.method == "HEAD":
                self.transport.write(head)
            elif len(body) < _JOIN_BELOW:
                self.transport.write(head + body)
            else:
                self.transport.writelines((head, body))
        self.active = None
        if close:
            self.waiting.clear()  # pipelined after a closing answer: never answered
            if not self.closed:
                self.transport.close()
            return
        self._next()

    def _finish(self, request: _Request, outcome: str) -> None:
        if request.target is not None:
            self.app.release(request.held, request.admitted)
            request.held = 0
            request.admitted = False
            self.app.record(request.target.name, outcome, request.started)
            request.target = None

    def _next(self) -> None:
        self.idle_since = self.loop.time()
        if self.waiting and not self.paused_writing:
            self._start(self.waiting.popleft())
        self._resume_reading()

    # --- timeouts (the server's sweep) --------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        reading = self.reading
        if reading is not None and not self.stopped:
            if time.perf_counter() - reading.started > self.limits.read_timeout_s:
                self._refuse(408, "the request was not received in time")
        elif (
            self.active is None
            and not self.waiting
            and not self.held
            and (self.server.draining or now - self.idle_since > self.limits.keep_alive_s)
        ):
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.active is None and not self.waiting and not self.closed:
            self.transport.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("inference task failed", exc_info=task.exception())
