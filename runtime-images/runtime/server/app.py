"""The HTTP transport: a pure ASGI application over the data plane.

No web framework and no middleware stack: the routes are few and fixed, and every
microsecond spent here is added to every request. This module is the ONE place where errors
become HTTP status codes (``STATUS``, looked up along the exception's MRO), so the data plane
and the codec never mention HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from infleet.runtime.server.codec import (
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
from infleet.runtime.server.wire import ModelReadyResponse

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

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
_JSON = b"application/json"
_OCTET = b"application/octet-stream"


def status_of(error: BaseException) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, Outcome.SERVER_ERROR


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_body_bytes: int = 64 << 20
    max_in_flight: int = 1024
    """Inference requests being handled at once (decode to encode); one more gets 429."""
    max_buffered_bytes: int = 512 << 20
    """Request bodies held in memory at once, all requests together; beyond it, 429. With
    the per-request cap this bounds memory where the request count alone would not."""


class _ClientGone(Exception):
    """The client disconnected before sending its whole body."""


class ServerApp:
    """ASGI callable. ``startup`` runs in the lifespan startup (it loads the models)."""

    def __init__(
        self,
        dataplane: DataPlane,
        limits: HttpLimits | None = None,
        startup: Callable[[], Awaitable[None]] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.limits = limits or HttpLimits()
        self._startup = startup
        self._shutdown = shutdown
        self._m = dataplane.metrics
        self._m.in_flight.set_function(lambda: dataplane.in_flight)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._buffered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._startup is not None:
                    await self._startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._shutdown is not None:
                    await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- routing --------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                await self._model_route(method, parts[2:], scope, receive, send)
                return
            if method == "GET" and len(parts) == 1:
                await self._json(send, 200, self.dataplane.server_metadata())
                return
            if method == "GET" and len(parts) == 3 and parts[1] == "health":
                if parts[2] == "live":
                    await self._json(send, 200, {"live": self.dataplane.live()})
                    return
                if parts[2] == "ready":
                    ready = self.dataplane.ready()
                    await self._json(send, 200 if ready else 503, {"ready": ready})
                    return
        elif parts == ["metrics"] and method == "GET":
            await _respond(send, 200, self._m.exposition(), self._m.content_type.encode())
            return
        await self._json(send, 404, {"error": f"no route {method} {scope['path']}"})

    async def _model_route(
        self, method: str, rest: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        name, version = rest[0], None
        rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else "" if not rest else None
        try:
            if action == "infer":
                if method != "POST":
                    await self._json(send, 405, {"error": "use POST for infer"})
                    return
                await self._infer(name, version, scope, receive, send)
                return
            if method != "GET" or action not in ("", "ready"):
                await self._json(send, 404, {"error": f"no route {method} {scope['path']}"})
                return
            if action == "ready":
                ready = self.dataplane.model_ready(name, version)
                body = ModelReadyResponse(name=name, ready=ready)
                await self._json(send, 200 if ready else 503, body)
            else:
                await self._json(send, 200, self.dataplane.model_metadata(name, version))
        except ServeError as e:
            status, _ = status_of(e)
            await self._json(send, status, {"error": str(e)})

    # --- infer ----------------------------------------------------------------------

    async def _infer(
        self, name: str, version: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # The hot path: every line here is paid per request, so headers are scanned once for
        # the three that matter, metric children are cached, and a request id is generated
        # only when the client sent none and one is needed (an error to log).
        started = time.perf_counter()
        content_length = header_length = client_id = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                content_length = value
            elif key == b"inference-header-content-length":
                header_length = value
            elif key == b"x-request-id":
                client_id = value.decode("latin-1")
        dataplane = self.dataplane
        outcome = Outcome.SUCCESS
        admitted = False
        held = [0]  # body bytes this request reserved from the shared budget
        try:
            dataplane.admit()
            # counted only once admitted: refused requests must not hold a drain open
            dataplane.in_flight += 1
            admitted = True
            if dataplane.in_flight > self.limits.max_in_flight:
                raise Overloaded(
                    f"{self.limits.max_in_flight} inference requests are in flight; retry later"
                )
            body = await self._read_body(content_length, receive, held)
            length = _header_length(header_length)
            if len(body) > _OFFLOAD_BYTES:
                request = await asyncio.to_thread(decode_infer_request, body, length)
            else:
                request = decode_infer_request(body, length)
            response = await dataplane.infer(name, version, request)
            payload, json_length = encode_infer_response(response, request)
            extra = [(b"x-request-id", client_id.encode("latin-1"))] if client_id else []
            if json_length is not None:
                extra.append((b"inference-header-content-length", str(json_length).encode()))
                content_type = _OCTET
            else:
                content_type = _JSON
            await _respond(send, 200, payload, content_type, extra, close=dataplane.draining)
        except _ClientGone:
            outcome = Outcome.CLIENT_ERROR
        except Exception as e:
            status, outcome = status_of(e)
            request_id = client_id or uuid.uuid4().hex
            if status >= 500 and not isinstance(e, Unavailable):
                log.error("request %s to model %r failed", request_id, name, exc_info=e)
                message = f"internal error (request id {request_id}); see the server log"
                if isinstance(e, ServeError):
                    message = f"{e} (request id {request_id})"
            else:
                message = str(e)
            extra = [(b"x-request-id", request_id.encode("latin-1"))]
            if isinstance(e, Unavailable):
                extra.append((b"retry-after", str(e.retry_after_s).encode()))
            await _respond(
                send,
                status,
                dumps({"error": message}),
                _JSON,
                extra,
                close=dataplane.draining or status == 413,
            )
        finally:
            if admitted:
                dataplane.in_flight -= 1
            self._buffered -= held[0]
            self._record(name, outcome, time.perf_counter() - started)

    def _record(self, name: str, outcome: str, seconds: float) -> None:
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
        children[1].observe(seconds)

    def _reserve(self, held: list[int], size: int) -> None:
        if size > held[0]:
            extra = size - held[0]
            if self._buffered + extra > self.limits.max_buffered_bytes:
                raise Overloaded(
                    f"{self._buffered} bytes of request bodies are buffered; retry later"
                )
            self._buffered += extra
            held[0] = size

    async def _read_body(self, declared: bytes | None, receive: Receive, held: list[int]) -> bytes:
        limit = self.limits.max_body_bytes
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                raise PayloadTooLarge(f"the body has {int(declared)} bytes; the limit is {limit}")
            self._reserve(held, int(declared))  # refuse before reading a byte
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is above the limit of {limit} bytes")
            self._reserve(held, size)  # chunked bodies: reserve as they grow
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _json(send: Send, status: int, document: BaseModel | dict[str, Any]) -> None:
        body = dumps(document.model_dump() if isinstance(document, BaseModel) else document)
        await _respond(send, status, body, _JSON)


def _header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if not raw.strip().isdigit():
        text = raw.decode("latin-1")
        raise InvalidInput(f"Inference-Header-Content-Length must be an integer, not {text!r}")
    return int(raw)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    close: bool = False,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    if close:  # draining or an unread body: do not keep this connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
