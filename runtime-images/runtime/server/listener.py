"""The listening socket of infleet's HTTP/1.1 server, its connections (``http11``), the
once-a-second sweep of their timeouts, and the close at exit."""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate

from infleet.runtime.server.app import HttpApp
from infleet.runtime.server.http11 import HttpConnection

log = logging.getLogger(__name__)


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
        return self.app.draining

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
