"""An open-loop load generator for tests: real inference requests at a set rate (httpx,
concurrent, in a thread of its own), with every answer's latency and status kept.

Requests start on a fixed schedule whatever the answers do (open loop, as users arrive),
up to ``max_in_flight`` at once: past that the generator waits for a slot, so an overloaded
server sees a bounded backlog and the test a bounded number of sockets.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Answer:
    at: float
    """Monotonic time the request finished."""
    latency_s: float
    status: int
    """HTTP status; 0 when the transport failed."""


@dataclass
class Load:
    url: str
    body: bytes
    headers: dict[str, str]
    rate_rps: float
    max_in_flight: int = 48
    timeout_s: float = 30.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _restart: bool = False

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 10)
            self._thread = None

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def set_rate(self, rate_rps: float) -> None:
        """From now on, ``rate_rps`` (the schedule starts again from this instant)."""
        self.rate_rps = rate_rps
        self._restart = True

    def window(self, seconds: float) -> list[Answer]:
        since = time.monotonic() - seconds
        return [a for a in list(self.answers) if a.at >= since]

    @staticmethod
    def p99_ms(answers: list[Answer]) -> float | None:
        ok = sorted(a.latency_s for a in answers if a.status == 200)
        if not ok:
            return None
        return ok[min(len(ok) - 1, int(0.99 * len(ok)))] * 1000

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.max_in_flight,
                              max_keepalive_connections=self.max_in_flight)
        slots = asyncio.Semaphore(self.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(limits=limits, timeout=self.timeout_s) as client:
            start = time.monotonic()
            i = 0
            while not self._stop.is_set():
                if self._restart:
                    self._restart, start, i = False, time.monotonic(), 0
                due = start + i / self.rate_rps
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()
                task = asyncio.create_task(self._one(client, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient, slots: asyncio.Semaphore) -> None:
        t0 = time.monotonic()
        try:
            r = await client.post(self.url, content=self.body, headers=self.headers)
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        finally:
            slots.release()
        t1 = time.monotonic()
        self.answers.append(Answer(t1, t1 - t0, status))
