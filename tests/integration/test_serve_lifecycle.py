"""``infleet serve`` under overload and on SIGTERM, with a deliberately slow real model."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import ServerProcess, json_input

from infleet.runtime.server import samples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slow_dir(tmp_path_factory):
    # ~0.1 s per engine call on a 2-core machine, whatever the batch size
    return samples.slow_engine(tmp_path_factory.mktemp("slow"), products=16).parent


def _body(value: float) -> dict:
    return {"inputs": [json_input("x", np.full((1, 1), value, np.float32), "FP32")]}


async def _post(client: httpx.AsyncClient, value: float) -> tuple[httpx.Response, float]:
    response = await client.post("/v2/models/slow/infer", json=_body(value))
    return response, time.perf_counter()


def test_overload_is_refused_at_once_with_429_and_retry_after(tmp_path) -> None:
    # slower still (~0.3 s a call): all twelve requests must arrive while the first runs
    slower = samples.slow_engine(tmp_path / "slower", products=48).parent
    server = ServerProcess(
        ["--engine-dir", str(slower), "--max-batch-size", "1", "--max-queue-size", "2"],
        tmp_path / "serve.log",
    )
    try:
        server.wait_ready()

        async def main() -> list[tuple[httpx.Response, float]]:
            limits = httpx.Limits(max_connections=12)
            async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as c:
                return await asyncio.gather(*(_post(c, float(i)) for i in range(12)))

        results = asyncio.run(main())
        ok = [(r, t) for r, t in results if r.status_code == 200]
        refused = [(r, t) for r, t in results if r.status_code == 429]
        assert len(ok) + len(refused) == 12, [r.status_code for r, _ in results]
        # one request runs, two wait; the rest cannot be queued
        assert 3 <= len(ok) <= 4 and len(refused) >= 8
        for response, _ in refused:
            assert response.headers["retry-after"] == "1"
            assert "queue is full" in response.json()["error"]
        # "at once": every refusal came back before the first accepted request finished
        assert max(t for _, t in refused) < min(t for _, t in ok)
        for response, _ in ok:  # the accepted ones got their own value back
            assert response.json()["outputs"][0]["data"][0] in range(12)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'infleet_serve_requests_total{model="slow",outcome="overloaded"}' in metrics
    finally:
        assert server.stop() == 0, server.log()


def test_in_flight_limit_refuses_with_429(slow_dir, tmp_path) -> None:
    server = ServerProcess(
        ["--engine-dir", str(slow_dir), "--max-in-flight", "3"], tmp_path / "serve.log"
    )
    try:
        server.wait_ready()

        async def main() -> list[tuple[httpx.Response, float]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                return await asyncio.gather(*(_post(c, 1.0) for _ in range(8)))

        statuses = sorted(r.status_code for r, _ in asyncio.run(main()))
        assert statuses.count(200) >= 3 and statuses.count(429) >= 1, statuses
    finally:
        assert server.stop() == 0, server.log()


async def _until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 30) -> None:
    """Poll the server until ``check()`` holds (a bounded wait on a condition)."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def _sample(exposition: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def test_sigterm_drains_in_flight_requests_then_exits_zero(slow_dir, tmp_path) -> None:
    server = ServerProcess(
        ["--engine-dir", str(slow_dir), "--max-batch-size", "2"], tmp_path / "serve.log"
    )
    try:
        server.wait_ready()

        async def main() -> tuple[list[httpx.Response], int, httpx.Response | Exception]:
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=30) as c,
                httpx.AsyncClient(base_url=server.url, timeout=5) as probe,
            ):
                in_flight = [asyncio.create_task(_post(c, float(i))) for i in range(6)]
                running = 0

                async def all_admitted_some_running() -> bool:
                    # none may arrive after SIGTERM, and some must still be in flight then
                    nonlocal running
                    text = (await probe.get("/metrics")).text
                    running = int(_sample(text, "infleet_serve_requests_in_flight"))
                    done = _sample(
                        text, "infleet_serve_requests_total", model="slow", outcome="success"
                    )
                    return running > 0 and running + done == 6

                await _until(all_admitted_some_running, "six requests admitted, some in flight")
                server.sigterm()

                async def not_ready() -> bool:
                    return (await probe.get("/v2/health/ready")).status_code == 503

                await _until(not_ready, "readiness to turn false")  # the drain began
                try:
                    after: httpx.Response | Exception = await probe.post(
                        "/v2/models/slow/infer", json=_body(9.0)
                    )
                except httpx.TransportError as e:  # already closed: refused too
                    after = e
                done = await asyncio.gather(*in_flight)
                return [r for r, _ in done], running, after

        done, running, infer = asyncio.run(main())
        assert running > 0  # SIGTERM came while requests were in flight...
        assert [r.status_code for r in done] == [200] * 6  # ...and every one was served
        assert sorted(r.json()["outputs"][0]["data"][0] for r in done) == [0, 1, 2, 3, 4, 5]
        if isinstance(infer, httpx.Response):
            assert infer.status_code == 503 and infer.headers["retry-after"]
            assert "shutting down" in infer.json()["error"]
        assert server.proc.wait(30) == 0, server.log()
        assert "drained" in server.log()
    finally:
        server.stop()


def test_with_a_shutdown_delay_sigterm_serves_on_not_ready_then_drains(slow_dir, tmp_path
                                                                       ) -> None:
    # What a pod being deleted needs: the gateway routes to it until the endpoints catch up.
    server = ServerProcess(
        ["--engine-dir", str(slow_dir), "--shutdown-delay-s", "2"], tmp_path / "serve.log"
    )
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            server.sigterm()
            deadline = time.monotonic() + 10
            while c.get("/v2/health/ready").status_code != 503:
                assert time.monotonic() < deadline, "readiness never turned false"
                time.sleep(0.01)
            during = c.post("/v2/models/slow/infer", json=_body(3.0))
            assert during.status_code == 200, during.text  # not ready, still served
            assert during.json()["outputs"][0]["data"][0] == 3.0
            assert server.proc.poll() is None
        assert server.proc.wait(30) == 0, server.log()
        log = server.log()
        assert "serving 2 s more" in log and "shutdown delay over" in log and "drained" in log
    finally:
        server.stop()


def test_an_engine_that_fails_to_load_exits_1_with_the_reason(tmp_path) -> None:
    manifest = samples.identity_engine(tmp_path / "broken", "FP32")
    (manifest.parent / "model.onnx").write_bytes(b"this is not an ONNX model")
    server = ServerProcess(["--manifest", str(manifest)], tmp_path / "serve.log")
    try:
        assert server.proc.wait(60) == 1
        assert "onnxruntime cannot load model.onnx" in server.log()
    finally:
        server.stop()


def test_bad_arguments_fail_before_binding_with_one_line(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "manifest.json"
    for args, needle in [
        ([], "give at least one --manifest or --engine-dir"),
        (["--manifest", str(missing)], "cannot read manifest"),
        (["--manifest", str(missing), "--max-batch-size", "0"], "at least 1"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "infleet", "serve", *args], capture_output=True, text=True
        )
        assert out.returncode == 1, out.stderr
        assert needle in out.stderr and "Traceback" not in out.stderr


def test_workers_share_the_port_and_drain_together(slow_dir, tmp_path) -> None:
    server = ServerProcess(
        ["--engine-dir", str(slow_dir), "--workers", "2"], tmp_path / "serve.log"
    )
    try:
        server.wait_ready()
        deadline = time.monotonic() + 60
        while server.log().count("ready: slow") < 2:  # both workers loaded
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)

        async def main() -> list[tuple[httpx.Response, float]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                return await asyncio.gather(*(_post(c, float(i)) for i in range(8)))

        results = asyncio.run(main())
        assert [r.status_code for r, _ in results] == [200] * 8
        assert "2 workers (" in server.log()
        server.sigterm()
        assert server.proc.wait(30) == 0, server.log()
        assert server.log().count("drained") == 2
    finally:
        server.stop()


def _read_answer(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one answer; the body by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), head, body


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_connection_and_head_bounds_hold_over_raw_sockets(slow_dir, tmp_path) -> None:
    server = ServerProcess(
        ["--engine-dir", str(slow_dir), "--max-connections", "2"], tmp_path / "serve.log"
    )
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        server.wait_ready()
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        for sock in held:  # both are open and served
            sock.sendall(live)
            assert _read_answer(sock)[0] == 200
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as third:
            status, head, body = _read_answer(third)  # answered before it sent a byte
            assert status == 503 and b"connection: close" in head and b"retry-after: 1" in head
            assert b"2 connections are open" in body
            assert _closed(third)
        # a header line that never ends: 431 once the head passes 80 KiB (the default),
        # long before the 30 s read timeout
        sock = held[0]
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * (80 << 10))
        status, head, body = _read_answer(sock)
        assert status == 431 and b"connection: close" in head
        assert b"the request head is above 81920 bytes" in body
        assert _closed(sock)
        held[1].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # still open and served
        status, _, metrics = _read_answer(held[1])
        assert status == 200 and b"infleet_serve_connections_refused_total 1.0" in metrics
        for sock in held:
            sock.close()
    finally:
        assert server.stop() == 0, server.log()
