"""HTTP semantics over the data plane: routes, admission, the infer handler, status codes.

No web framework, no ASGI: the connection protocol (``http11``) hands a parsed request's
method, path, a few headers and the body as one ``bytes`` object to this module and writes
back the :class:`Reply`. The routes are few and fixed, and every microsecond spent here is
added to every request. This module is the ONE place where errors become HTTP status codes
(``STATUS``, looked up along the exception's MRO), so the data plane and the codec never
mention HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel

from infleet.runtime.server.codec import (
    HEADER_LENGTH,
    decode_infer_request,
    dumps,
    encode_infer_response,
)
from infleet.runtime.server.dataplane import DataPlane
from infleet.runtime.server.errors import (
    EngineError,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServeError,
    Unavailable,
)
from infleet.runtime.server.metrics import Outcome
from infleet.runtime.server.wire import (
    ErrorResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerMetadataResponse,
)

log = logging.getLogger(__name__)

# error class -> (status, outcome label); the most specific class on the MRO wins
STATUS: dict[type[BaseException], tuple[int, str]] = {
    PayloadTooLarge: (413, Outcome.TOO_LARGE),
    InvalidInput: (400, Outcome.CLIENT_ERROR),
    ModelNotFound: (404, Outcome.NOT_FOUND),
    Overloaded: (429, Outcome.OVERLOADED),
    NotReady: (503, Outcome.UNAVAILABLE),
    Unavailable: (503, Outcome.UNAVAILABLE),
    EngineError: (500, Outcome.SERVER_ERROR),
    ServeError: (500, Outcome.SERVER_ERROR),
}

# bodies above this are decoded in a worker thread so one huge request cannot stall the loop
_OFFLOAD_BYTES = 1 << 20
JSON = b"application/json"
OCTET = b"application/octet-stream"


def status_of(error: BaseException) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, Outcome.SERVER_ERROR


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP server process takes at once. The in-flight cap is the data plane's
    (:class:`~infleet.runtime.server.dataplane.DataPlane`), shared by every transport."""

    max_body_bytes: int = 64 << 20
    max_buffered_bytes: int = 512 << 20
    """Request bodies held in memory at once, all requests together; beyond it, 429. With
    the per-request cap this bounds memory where the request count alone would not."""
    max_url_bytes: int = 8 << 10
    """A longer request target gets 414."""
    max_header_bytes: int = 64 << 10
    """All header names and values of one request together; more (or more than
    ``max_headers`` fields) gets 431."""
    max_headers: int = 100
    max_head_bytes: int = 80 << 10
    """The request line and header block as they arrive, framing and whitespace included;
    counted as the bytes come in, so a header line that never ends gets 431 at this size
    instead of being buffered until the read timeout. It must hold ``max_url_bytes +
    max_header_bytes``; the default leaves 8 KiB for the framing of ``max_headers`` lines."""
    max_pipelined: int = 16
    """Requests parsed on one connection and waiting for their turn to be answered; the
    connection reads nothing more (not even the rest of a read already made) until half
    of them are answered."""
    max_connections: int = 1024
    """Open connections; one more is answered 503 and closed at once."""
    keep_alive_s: float = 5.0
    """An idle keep-alive connection (no request begun) is closed after this."""
    read_timeout_s: float = 30.0
    """A request must arrive in full (headers and body) within this of its first byte;
    otherwise 408 and the connection is closed (slow clients cannot hold a slot forever)."""

    def __post_init__(self) -> None:
        sizes = (self.max_body_bytes, self.max_url_bytes, self.max_header_bytes)
        counts = (self.max_headers, self.max_pipelined, self.max_connections)
        if min(*sizes, *counts) < 1 or self.keep_alive_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("HTTP limits must be positive")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError("max_buffered_bytes must be at least max_body_bytes")
        if self.max_head_bytes < self.max_url_bytes + self.max_header_bytes:
            raise ValueError("max_head_bytes must be at least max_url_bytes + max_header_bytes")


class Reply(NamedTuple):
    """A response: status, content type, extra header lines (``name: value\\r\\n`` each)
    and the body. ``http11`` adds the length, date and connection headers."""

    status: int
    content_type: bytes
    headers: bytes
    body: bytes


class Infer(NamedTuple):
    """The route of an inference request (POST .../infer)."""

    name: str
    version: str | None


def json_reply(status: int, document: BaseModel | dict[str, Any], headers: bytes = b"") -> Reply:
    body = dumps(document.model_dump() if isinstance(document, BaseModel) else document)
    return Reply(status, JSON, headers, body)


def error_reply(status: int, message: str, headers: bytes = b"") -> Reply:
    return Reply(status, JSON, headers, ErrorResponse.body(message))


class HttpApp:
    """Routes, admission and the infer handler; shared by every connection."""

    def __init__(self, dataplane: DataPlane, limits: HttpLimits | None = None) -> None:
        self.dataplane = dataplane
        self.limits = limits or HttpLimits()
        self._m = dataplane.metrics
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.buffered = 0
        """Bytes of request bodies reserved by the requests being read or handled."""

    # --- routing --------------------------------------------------------------------

    def route(self, method: str, path: str) -> Reply | Infer:
        """The reply of a route answered at once, or the target of an inference request."""
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                return self._model_route(method, parts[2:], path)
            if method == "GET" and len(parts) == 1:
                meta = self.dataplane.server_metadata()
                return json_reply(200, ServerMetadataResponse.of(meta))
            if method == "GET" and len(parts) == 3 and parts[1] == "health":
                if parts[2] == "live":
                    return json_reply(200, {"live": self.dataplane.live()})
                if parts[2] == "ready":
                    ready = self.dataplane.ready()
                    return json_reply(200 if ready else 503, {"ready": ready})
        elif parts == ["metrics"] and method == "GET":
            return Reply(200, self._m.content_type.encode(), b"", self._m.exposition())
        return error_reply(404, f"no route {method} {path}")

    def _model_route(self, method: str, rest: list[str], path: str) -> Reply | Infer:
        name, version = rest[0], None
        rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else "" if not rest else None
        if action == "infer":
            if method != "POST":
                return error_reply(405, "use POST for infer", b"allow: POST\r\n")
            return Infer(name, version)
        if method != "GET" or action not in ("", "ready"):
            return error_reply(404, f"no route {method} {path}")
        try:
            if action == "ready":
                ready = self.dataplane.model_ready(name, version)
                return json_reply(200 if ready else 503, ModelReadyResponse(name=name, ready=ready))
            meta = self.dataplane.model_metadata(name, version)
            return json_reply(200, ModelMetadataResponse.of(meta))
        except ServeError as e:
            return error_reply(status_of(e)[0], str(e))

    # --- infer ----------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Every answer closes its connection from now on (the data plane is draining)."""
        return self.dataplane.draining

    def admit(self, declared: int | None) -> int:
        """Let an inference request in once its headers are read, before any body byte.

        The data plane admits it (or refuses: 503 draining, 429 too many in flight), then
        its declared body size is reserved from the shared budget; returns the bytes
        reserved. Raises (and holds nothing) when it must be refused: also 413 for a
        declared body above the cap, 429 when too many bytes are buffered. Every request
        let in is given back with :meth:`release`.
        """
        self.dataplane.admit()
        if declared is None:
            return 0
        try:
            if declared > self.limits.max_body_bytes:
                raise PayloadTooLarge(
                    f"the body has {declared} bytes; the limit is {self.limits.max_body_bytes}"
                )
            self.reserve(0, declared)
        except ServeError:
            self.dataplane.release()
            raise
        return declared

    def reserve(self, held: int, size: int) -> None:
        """Grow a request's reservation from ``held`` to ``size`` bytes, or raise 429."""
        if size > self.limits.max_body_bytes:
            raise PayloadTooLarge(
                f"the body is above the limit of {self.limits.max_body_bytes} bytes"
            )
        extra = size - held
        if self.buffered + extra > self.limits.max_buffered_bytes:
            raise Overloaded(f"{self.buffered} bytes of request bodies are buffered; retry later")
        self.buffered += extra

    def release(self, held: int, admitted: bool) -> None:
        self.buffered -= held
        if admitted:
            self.dataplane.release()

    async def infer(
        self, target: Infer, body: bytes, header_length: bytes | None, client_id: bytes | None
    ) -> tuple[Reply, str]:
        """Decode, run and encode one admitted inference request: (reply, outcome)."""
        try:
            length = _header_length(header_length)
            if len(body) > _OFFLOAD_BYTES:
                request = await asyncio.to_thread(decode_infer_request, body, length)
            else:
                request = decode_infer_request(body, length)
            response = await self.dataplane.infer(target.name, target.version, request)
            payload, json_length = encode_infer_response(response, request)
        except Exception as e:
            return self.failure(target.name, e, client_id)
        extra = b"x-request-id: %s\r\n" % client_id if client_id else b""
        if json_length is not None:
            extra += b"%s: %d\r\n" % (HEADER_LENGTH, json_length)
            return Reply(200, OCTET, extra, payload), Outcome.SUCCESS
        return Reply(200, JSON, extra, payload), Outcome.SUCCESS

    def failure(self, name: str, error: Exception, client_id: bytes | None) -> tuple[Reply, str]:
        """The reply to a failed inference request; faults are logged with the request id."""
        status, outcome = status_of(error)
        request_id = client_id.decode("latin-1") if client_id else uuid.uuid4().hex
        if status >= 500 and not isinstance(error, Unavailable):
            log.error("request %s to model %r failed", request_id, name, exc_info=error)
            message = f"internal error (request id {request_id}); see the server log"
            if isinstance(error, ServeError):
                message = f"{error} (request id {request_id})"
        else:
            message = str(error)
        extra = b"x-request-id: %s\r\n" % request_id.encode("latin-1")
        if isinstance(error, Unavailable):
            extra += b"retry-after: %d\r\n" % error.retry_after_s
        return error_reply(status, message, extra), outcome

    def connection_refused(self) -> None:
        """A connection was turned away at ``max_connections``."""
        self._m.connections_refused.inc()

    def record(self, name: str, outcome: str, started: float) -> None:
        key = (name, outcome)
        children = self._children.get(key)
        if children is None:
            # one label value per served model plus "_unknown": fuzzed names stay bounded
            label = name if self.dataplane.has_model(name) else "_unknown"
            children = (
                self._m.requests.labels(label, outcome),
                self._m.request_duration.labels(label),
            )
            if label != "_unknown":
                self._children[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)


def _header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if not raw.strip().isdigit():
        text = raw.decode("latin-1")
        raise InvalidInput(f"Inference-Header-Content-Length must be an integer, not {text!r}")
    return int(raw)
