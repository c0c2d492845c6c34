"""infleet's HTTP/1.1 server in-process on a loopback port, spoken to over raw sockets: the
protocol's edge cases (framing, limits, pipelining, timeouts, disconnects) and admission."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import orjson
import pytest

from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server import samples
from infleet.runtime.server.app import HttpApp, HttpLimits
from infleet.runtime.server.batcher import BatchPolicy
from infleet.runtime.server.dataplane import DataPlane
from infleet.runtime.server.engines import EngineOptions, load_engine
from infleet.runtime.server.listener import HttpServer

X = np.arange(6, dtype=np.float32).reshape(2, 3)
BODY = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.ravel().tolist()}]}
)


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    return samples.identity_engine(tmp_path_factory.mktemp("id"), "FP32").parent


Scenario = Callable[[HttpServer, int], Awaitable[None]]


class Gate:
    """The real identity engine behind a gate the test opens and closes: while it is closed,
    a batch that started stays running (the one way to hold a request in flight at will)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.open = threading.Event()
        self.open.set()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.open.wait(20), "the test never opened the gate"
        return self._inner.run(inputs)


def serve(
    engine_dir: Path,
    scenario: Scenario,
    *,
    max_in_flight: int = 1024,
    **limits: float,
) -> DataPlane:
    """Run ``scenario(server, port)`` against a server holding the FP32 identity model (its
    engine's gate open: see :func:`engine_gate`)."""

    async def main() -> DataPlane:
        plane = DataPlane(max_in_flight=max_in_flight)
        manifest = EngineManifest.model_validate_json((engine_dir / "manifest.json").read_text())
        engine = Gate(load_engine(manifest, engine_dir, EngineOptions(threads=1)))
        model = plane.add_model(
            "identity_fp32", "1", manifest, engine, BatchPolicy(8, 0.001, 64, 1)
        )
        await plane.warm_up(model)
        server = HttpServer(HttpApp(plane, HttpLimits(**limits)))  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(scenario(server, server.port), 20)
        finally:
            engine.open.set()  # a scenario that failed with the gate closed must not hang here
            await server.close(1.0)
            plane.close()
        return plane

    return asyncio.run(main())


def engine_gate(server: HttpServer) -> threading.Event:
    """The gate of the identity model's engine in ``server``."""
    engine = server.app.dataplane.get_model("identity_fp32").engine
    assert isinstance(engine, Gate)
    return engine.open


async def until(condition: Callable[[], object], what: str, within_s: float = 10) -> None:
    """Let the server's callbacks run until ``condition()`` holds; fail after ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def infer_request(body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


async def closed(reader: asyncio.StreamReader, within_s: float = 5) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within_s) == b""
    except (ConnectionError, TimeoutError):
        return False


def test_keep_alive_serves_several_requests_on_one_connection(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(infer_request(extra="X-Request-Id: abc\r\n"))
            status, headers, body = await read_response(reader)
            assert status == 200 and headers["x-request-id"] == "abc"
            assert "connection" not in headers and headers["date"].endswith("GMT")
            assert orjson.loads(body)["outputs"][0]["data"] == X.ravel().tolist()
        assert len(server.connections) == 1
        writer.close()

    serve(engine_dir, scenario)


def test_pipelined_requests_are_answered_in_order(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # inference first (answered later, from the batcher), then a route answered at once
        writer.write(
            infer_request()
            + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
            + infer_request(b"{")
            + b"GET /v2/models/identity_fp32/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = [await read_response(reader) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 400, 200]
        assert b"outputs" in answers[0][2] and answers[1][2] == b'{"live":true}'
        assert b"malformed JSON" in answers[2][2] and b'"ready":true' in answers[3][2]
        writer.close()

    serve(engine_dir, scenario)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v2/health/live HTTP/9.9\r\n\r\n", 400),
        (b"GET /v2 HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"PUT /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (
            b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
    ],
    ids=[
        "request line",
        "version",
        "header line",
        "PUT",
        "HEAD",
        "long URL",
        "big header",
        "many headers",
        "length and chunked",
    ],
)
def test_bad_requests_get_a_clear_status(engine_dir, raw: bytes, status: int) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        if raw.startswith(b"HEAD"):  # a HEAD answer carries no body
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 405 ") and b"allow: GET, POST" in head
            writer.write(b"GET /v2/health/live HTTP/1.1\r\n\r\n")  # the next answer follows
            assert await read_response(reader) == (200, ANY, b'{"live":true}')
            return
        got, headers, body = await read_response(reader)
        assert got == status, body
        assert orjson.loads(body)["error"]
        if status != 405:
            assert headers["connection"] == "close"
            assert await closed(reader)
        writer.close()

    serve(engine_dir, scenario)


def test_chunked_bodies_are_read_and_capped(engine_dir) -> None:
    def chunked(body: bytes, size: int) -> bytes:
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"

    head = b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + chunked(BODY, 7))
        status, _, body = await read_response(reader)
        assert status == 200 and b"outputs" in body
        writer.write(head + chunked(b" " * 3000, 1000))  # the cap is 2000 bytes
        status, headers, body = await read_response(reader)
        assert status == 413 and headers["connection"] == "close"
        assert await closed(reader)
        assert server.app.buffered == 0 and server.app.dataplane.in_flight == 0

    serve(engine_dir, scenario, max_body_bytes=2000)


def test_declared_body_above_the_cap_is_refused_before_it_is_sent(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
        )
        status, headers, body = await read_response(reader)
        assert status == 413 and headers["connection"] == "close"
        assert b"the limit is 2000" in body
        assert await closed(reader)

    serve(engine_dir, scenario, max_body_bytes=2000)


def test_expect_100_continue(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = infer_request(extra="Expect: 100-continue\r\n")
        head, body = request.split(b"\r\n\r\n", 1)
        writer.write(head + b"\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        assert (await read_response(reader))[0] == 200

    serve(engine_dir, scenario)


def test_idle_and_slow_connections_are_closed_after_their_timeouts(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        idle_reader, _idle = await asyncio.open_connection("127.0.0.1", port)
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
        slow.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        for _ in range(3):  # slowloris: a header line now and then keeps it busy, not alive
            await asyncio.sleep(0.1)  # the slow client itself (the behaviour under test)
            slow.write(b"X-Slow: 1\r\n")
        status, headers, _ = await read_response(slow_reader)
        assert status == 408 and headers["connection"] == "close"
        assert await closed(slow_reader, 1)
        assert await closed(idle_reader, 2)  # idle keep-alive: closed without an answer
        assert not server.connections

    serve(engine_dir, scenario, keep_alive_s=0.5, read_timeout_s=0.5)


def test_a_client_gone_mid_body_frees_its_reservation(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request(b"x" * 1000)[:-900])  # headers and 100 of 1000 bytes
        await until(lambda: server.app.dataplane.in_flight == 1, "the request to be admitted")
        assert server.app.buffered == 1000  # its declared length, reserved at admission
        writer.close()
        await until(lambda: not server.connections, "the server to see the client leave")
        assert server.app.buffered == 0 and server.app.dataplane.in_flight == 0

    plane = serve(engine_dir, scenario)
    metrics = plane.metrics.exposition().decode()
    assert (
        'infleet_serve_requests_total{model="identity_fp32",outcome="client_error"} 1.0' in metrics
    )


def test_buffered_body_bytes_are_bounded_across_requests(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
        request = infer_request(BODY + b" " * (800 - len(BODY)))
        slow.write(request[:-10])  # holds 800 bytes while the rest is on its way
        await until(lambda: server.app.buffered == 800, "the slow body's reservation")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        status, headers, body = await read_response(reader)
        assert status == 429 and headers["retry-after"] == "1" and b"buffered" in body
        slow.write(request[-10:])
        assert (await read_response(slow_reader))[0] == 200
        writer.write(request)  # the budget was given back; the refused body was skipped
        assert (await read_response(reader))[0] == 200

    serve(engine_dir, scenario, max_body_bytes=1000, max_buffered_bytes=1500)


def test_in_flight_limit_refuses_before_reading(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
        slow.write(infer_request()[:-5])
        await until(lambda: server.app.dataplane.in_flight == 1, "the slow request's admission")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request())
        status, _, body = await read_response(reader)
        assert status == 429 and b"in flight" in body
        slow.write(infer_request()[-5:])
        assert (await read_response(slow_reader))[0] == 200
        assert server.app.dataplane.in_flight == 0

    serve(engine_dir, scenario, max_in_flight=1)


def test_draining_refuses_new_requests_with_503_and_close(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        server.app.dataplane.begin_drain()
        writer.write(infer_request())
        status, headers, body = await read_response(reader)
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"]
        assert b"shutting down" in body
        assert await closed(reader)
        assert server.app.dataplane.in_flight == 0

    serve(engine_dir, scenario)


# --- bounds: the head as it arrives, the pipeline within one read, the connections ---------

SMALL_HEAD = {"max_url_bytes": 1000, "max_header_bytes": 2000, "max_head_bytes": 4000}
LIVE = b"GET /v2/health/live HTTP/1.1\r\n\r\n"


def test_a_header_line_that_never_ends_gets_431_at_the_head_cap(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # a body longer than the cap, and a request pipelined behind it in the same write:
        # body bytes are not head bytes
        writer.write(infer_request(BODY + b" " * 5000) + LIVE)
        assert (await read_response(reader))[0] == 200
        assert await read_response(reader) == (200, ANY, b'{"live":true}')
        # a head of exactly max_head_bytes (whitespace before a short value) is served
        start, end = b"GET /v2/health/live HTTP/1.1\r\nX-Pad:", b"v\r\n\r\n"
        writer.write(start + b" " * (4000 - len(start) - len(end)) + end)
        assert await read_response(reader) == (200, ANY, b'{"live":true}')
        # one byte more, in a line that never ends, sent in pieces: refused as it arrives,
        # not buffered until the read timeout (60 s, past the scenario's deadline)
        line = b"GET /v2/health/live HTTP/1.1\r\nX-Big: "
        line += b"a" * (4001 - len(line))
        for i in range(0, len(line), 500):
            writer.write(line[i : i + 500])
            await writer.drain()
        status, headers, body = await read_response(reader)
        assert status == 431 and headers["connection"] == "close"
        assert orjson.loads(body) == {"error": "the request head is above 4000 bytes"}
        assert await closed(reader)

    serve(engine_dir, scenario, read_timeout_s=60, **SMALL_HEAD)


def test_the_pipeline_cap_holds_within_one_read(engine_dir) -> None:
    ready = b"GET /v2/models/identity_fp32/ready HTTP/1.1\r\n\r\n"

    async def scenario(server: HttpServer, port: int) -> None:
        gate = engine_gate(server)
        gate.clear()  # the inference request stays in flight, so the ones behind it wait
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(infer_request() + (LIVE + ready) * 20)  # 41 requests, 1.7 kB: one read
        await until(lambda: server.connections, "the connection")
        (connection,) = server.connections
        await until(lambda: connection.paused_reading, "the pipeline to fill")
        assert len(connection.waiting) == 16  # max_pipelined, not the 40 that were read
        assert connection.held  # the rest of the read, not parsed yet
        gate.set()
        answers = [await read_response(reader) for _ in range(41)]
        assert answers[0][0] == 200 and b"outputs" in answers[0][2]
        bodies = [body for _, _, body in answers[1:]]  # every one, in order
        assert bodies == [b'{"live":true}', b'{"name":"identity_fp32","ready":true}'] * 20
        assert not connection.held and not connection.paused_reading

    serve(engine_dir, scenario)


def test_connections_above_the_cap_get_503_and_are_closed(engine_dir) -> None:
    async def scenario(server: HttpServer, port: int) -> None:
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(LIVE)
            assert (await read_response(reader))[0] == 200
            held.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, headers, body = await read_response(reader)  # before it sent anything
        assert status == 503 and headers["connection"] == "close"
        assert headers["retry-after"] == "1"
        assert orjson.loads(body)["error"].startswith("2 connections are open")
        assert await closed(reader)
        assert len(server.connections) == 2
        held[0].close()
        await until(lambda: len(server.connections) == 1, "the server to see one close")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(LIVE)
        assert await read_response(reader) == (200, ANY, b'{"live":true}')  # room again

    plane = serve(engine_dir, scenario, max_connections=2)
    assert "infleet_serve_connections_refused_total 1.0" in plane.metrics.exposition().decode()
