"""infleet's own HTTP/1.1 server: an asyncio protocol over ``httptools`` (llhttp).

Built for the one job of ``infleet serve``: each connection parses with llhttp in C, hands
the request's method, path, four headers and its body as one ``bytes`` object to
:class:`~infleet.runtime.server.app.HttpApp`, and answers with ONE ``transport.write`` of
the head and body together. No ASGI message dicts, no per-request task for the routes
answered at once (health, metadata, metrics), one task per inference request.

- Keep-alive (HTTP/1.1 default; HTTP/1.0 with ``Connection: keep-alive``) and pipelining:
  requests on one connection are answered strictly in order, one at a time; reading pauses
  while 16 parsed requests wait.
- Bodies by ``Content-Length`` or ``Transfer-Encoding: chunked`` (decoded by llhttp); both
  at once is refused (400). Inference requests are admitted once their headers are read:
  413 on a declared length above the cap, 429 when too many requests are in flight or too
  many body bytes are buffered, 503 while draining, all before a body byte is kept.
  ``Expect: 100-continue`` is answered with 100 once admitted.
- Limits: request target above ``max_url_bytes`` -> 414; headers above
  ``max_header_bytes`` or ``max_headers`` fields -> 431; malformed HTTP -> 400; methods
  other than GET and POST -> 405. Each of these, and 413, closes the connection.
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
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from infleet.runtime.server.app import (
    HttpApp,
    Infer,
    Reply,
    error_reply,
)
from infleet.runtime.server.errors import ServeError
from infleet.runtime.server.metrics import Outcome

log = logging.getLogger(__name__)

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_MAX_PIPELINE = 16
# bodies at least this large go out as a second buffer (writelines) instead of being copied
# behind the head
_JOIN_BELOW = 256 << 10


class _Request:
    """One request on a connection, from its first byte to its response."""

    __slots__ = (
        "admitted",
        "chunks",
        "client_id",
        "close",
        "content_length",
        "expect",
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
        self.headers_size = 0
        self.header_count = 0
        self.content_length: bytes | None = None
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
        self.stopped = False  # no more requests are read from this connection
        self.paused_reading = False
        self.paused_writing = False
        self.closed = False
        self.idle_since = self.loop.time()

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections.add(self)

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
        try:
            self.parser.feed_data(data)
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
        elif n == 31 and name.lower() == b"inference-header-content-length":
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
        declared = None
        if request.content_length is not None:  # llhttp checked it is a number
            declared = int(request.content_length)
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
        if len(self.waiting) >= _MAX_PIPELINE and not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()

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
        if not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()

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
        if not self.closed:
            status, content_type, headers, body = reply
            head = b"%scontent-type: %s\r\ncontent-length: %d\r\n%sdate: %s\r\n%s\r\n" % (
                _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status,
                content_type,
                len(body),
                headers,
                self.server.date,
                b"connection: close\r\n" if close else b"",
            )
            if request.method == "HEAD":
                self.transport.write(head)
            elif len(body) < _JOIN_BELOW:
                self.transport.write(head + body)
            else:
                self.transport.writelines((head, body))
        self._finish(request, request.outcome)
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
        if self.paused_reading and not self.stopped and len(self.waiting) < _MAX_PIPELINE // 2:
            self.paused_reading = False
            self.transport.resume_reading()

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
            and (self.server.draining or now - self.idle_since > self.limits.keep_alive_s)
        ):
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.active is None and not self.waiting and not self.closed:
            self.transport.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("inference task failed", exc_info=task.exception())


class HttpServer:
    """The listening socket and its connections."""

    def __init__(self, app: HttpApp) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.closed_waiter: asyncio.Event | None = None
        self.date = formatdate(usegmt=True).encode()
        self._server: asyncio.base_events.Server | None = None
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def draining(self) -> bool:
        return self.app.dataplane.draining

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self._server = await self.loop.create_server(
            lambda: HttpConnection(self),
            host,
            port,
            backlog=2048,
            reuse_port=reuse_port or None,
        )
        self._tick()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def _tick(self) -> None:
        self.date = formatdate(usegmt=True).encode()
        now = self.loop.time()
        for connection in list(self.connections):
            connection.check_timeouts(now)
        interval = min(1.0, self.app.limits.keep_alive_s / 2, self.app.limits.read_timeout_s / 2)
        self._sweep = self.loop.call_later(interval, self._tick)

    async def close(self, timeout_s: float) -> None:
        """Stop listening, close idle connections, and wait (up to ``timeout_s``) for the
        others to answer what they hold and close."""
        if self._server is not None:
            self._server.close()
        if self._sweep is not None:
            self._sweep.cancel()
        for connection in list(self.connections):
            connection.close_if_idle()
        if self.connections:
            self.closed_waiter = asyncio.Event()
            try:
                await asyncio.wait_for(self.closed_waiter.wait(), timeout_s)
            except TimeoutError:
                log.warning("%d connections still open at exit", len(self.connections))
