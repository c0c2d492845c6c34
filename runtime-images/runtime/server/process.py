"""The server process: uvicorn, model loading at startup, and the SIGTERM drain.

Imported only by ``infleet serve`` (it pulls uvicorn in at module level).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import uvicorn

from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server.app import HttpLimits, ServerApp
from infleet.runtime.server.batcher import BatchPolicy
from infleet.runtime.server.command import ServeConfig
from infleet.runtime.server.dataplane import DataPlane
from infleet.runtime.server.engines import load_engine
from infleet.runtime.server.errors import ServeError

log = logging.getLogger("infleet.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with a graceful drain on SIGTERM/SIGINT instead of a prompt stop.

    uvicorn's own handler stops accepting at once and, after shutting down, re-raises the
    signal, so the process dies by SIGTERM (status 143). Here the first signal turns
    readiness false and refuses new inference requests with 503 while the requests in
    flight finish; then uvicorn shuts down normally and the process exits 0. A second
    Ctrl-C exits at once.
    """

    def __init__(self, config: uvicorn.Config, dataplane: DataPlane, drain_timeout_s: float):
        super().__init__(config)
        self.dataplane = dataplane
        self.drain_timeout_s = drain_timeout_s
        self.loading: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[None] | None = None
        self._drain_started = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started:
            if sig == signal.SIGINT:
                self.force_exit = self.should_exit = True
            return
        self._drain_started = True
        log.info("signal %d: draining (not ready; new requests get 503)", sig)
        self.dataplane.begin_drain()
        if self._loop is None:
            self.should_exit = True
        else:
            self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        if await self.dataplane.wait_drained(self.drain_timeout_s):
            log.info("drained; exiting")
        else:
            log.warning("drain timeout: %d requests still in flight", self.dataplane.in_flight)
        self.should_exit = True


async def load_model(
    dataplane: DataPlane, config: ServeConfig, path: Path, manifest: EngineManifest
) -> None:
    name = config.model_name or manifest.model_name
    started = time.perf_counter()
    engine = await asyncio.to_thread(load_engine, manifest, path.parent, config.engine)
    policy = config.policy
    if not config.batch_size_given:
        policy = BatchPolicy(
            manifest.max_batch_size,
            policy.max_queue_delay_s,
            policy.max_queue_size,
            policy.max_concurrent_batches,
        )
    model = dataplane.add_model(name, config.model_version, manifest, engine, policy)
    await dataplane.warm_up(model)
    seconds = time.perf_counter() - started
    dataplane.metrics.model_load.labels(name).set(seconds)
    log.info(
        "model %r loaded on %s in %.2f s (max batch %d, batching %s)",
        name,
        engine.description,
        seconds,
        model.batcher.policy.max_batch_size,
        "on" if model.batcher.batchable else "off: no dynamic batch dimension",
    )


def serve(config: ServeConfig, manifests: list[tuple[Path, EngineManifest]]) -> int:
    dataplane = DataPlane()
    failures: list[BaseException] = []

    async def load_all() -> None:
        try:
            for path, manifest in manifests:
                await load_model(dataplane, config, path, manifest)
            log.info("ready: %s", ", ".join(m.name for m in dataplane.models()))
        except Exception as e:  # reported, then the server stops and exits 1
            log.error("loading failed: %s", e, exc_info=not isinstance(e, ServeError))
            failures.append(e)
            server.should_exit = True

    async def startup() -> None:
        server.loading = asyncio.get_running_loop().create_task(load_all())

    async def shutdown() -> None:
        if server.loading is not None and not server.loading.done():
            server.loading.cancel()
        dataplane.close()

    app = ServerApp(
        dataplane,
        HttpLimits(
            max_body_bytes=config.max_body_bytes,
            max_in_flight=config.max_in_flight,
            max_buffered_bytes=config.max_buffered_bytes,
        ),
        startup=startup,
        shutdown=shutdown,
    )
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        lifespan="on",
        access_log=False,
        log_config=None,  # keep the CLI's logging setup
        proxy_headers=False,  # client addresses are not used; skip the per-request middleware
        server_header=False,
        timeout_graceful_shutdown=int(config.drain_timeout_s) + 1,
    )
    server = DrainingServer(uv_config, dataplane, config.drain_timeout_s)
    server.run()
    exit_now(1 if failures else 0)


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, once the drain is done.

    By now every request is answered, the batchers' threads are joined and the engines are
    closed. What is left is CPython finalising every module, and with TVM imported that costs
    about 0.5 s of CPU (its FFI registry and native libraries): under heavy load on 2 cores it
    stretched to several seconds and once past a 30 s stop deadline. Nothing here needs
    the teardown, so flush the logs and leave.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream
            stream.flush()
    os._exit(code)
