"""The ASGI app driven directly (no socket): limits that must hold under concurrency."""

from __future__ import annotations

import asyncio

import orjson

from infleet.runtime.server.app import HttpLimits, ServerApp
from infleet.runtime.server.dataplane import DataPlane


def scope(length: int) -> dict:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "headers": [(b"content-length", str(length).encode())],
    }


async def call(app: ServerApp, length: int, gate: asyncio.Event | None = None) -> dict:
    sent: list[dict] = []

    async def receive() -> dict:
        if gate is not None:
            await gate.wait()  # the client is slow to send its body
        return {"type": "http.request", "body": b"x" * length, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope(length), receive, send)
    start, body = sent
    return {"status": start["status"], **orjson.loads(body["body"])}


def test_buffered_body_bytes_are_bounded_across_requests() -> None:
    app = ServerApp(DataPlane(), HttpLimits(max_body_bytes=1000, max_buffered_bytes=1500))

    async def main() -> None:
        gate = asyncio.Event()
        slow = asyncio.create_task(call(app, 800, gate))  # holds 800 bytes while it waits
        await asyncio.sleep(0.01)
        refused = await call(app, 800)
        assert refused["status"] == 429 and "buffered" in refused["error"]
        gate.set()
        assert (await slow)["status"] == 400  # its body is junk, but it was let in
        after = await call(app, 800)  # the budget was given back
        assert after["status"] == 400 and "malformed JSON" in after["error"]

    asyncio.run(main())


def test_in_flight_limit_refuses_before_reading() -> None:
    app = ServerApp(DataPlane(), HttpLimits(max_in_flight=1))

    async def main() -> None:
        gate = asyncio.Event()
        slow = asyncio.create_task(call(app, 10, gate))
        await asyncio.sleep(0.01)
        refused = await call(app, 10)
        assert refused["status"] == 429 and "in flight" in refused["error"]
        gate.set()
        await slow
        assert app.dataplane.in_flight == 0

    asyncio.run(main())


def test_draining_refuses_new_requests_with_503() -> None:
    plane = DataPlane()
    app = ServerApp(plane)
    plane.begin_drain()
    result = asyncio.run(call(app, 10))
    assert result["status"] == 503 and "shutting down" in result["error"]
    assert plane.in_flight == 0
