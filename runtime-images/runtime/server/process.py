"""The server process: the event loop (uvloop when installed), infleet's HTTP server,
model loading at startup, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server.app import HttpApp, HttpLimits
from infleet.runtime.server.command import ServeConfig
from infleet.runtime.server.dataplane import DataPlane
from infleet.runtime.server.engines import load_engine
from infleet.runtime.server.errors import ServeError
from infleet.runtime.server.listener import HttpServer
from infleet.runtime.server.metrics import Metrics, multiprocess_values
from infleet.runtime.server.workers import MetricsDir, ReadyBoard, WorkerSlot, slow_load_fault

# open files beside the connections: the listening socket, engine and library files, logs,
# the metrics directory's files
_SPARE_FILES = 256

log = logging.getLogger("infleet.serve")


def served_name(config: ServeConfig, manifest: EngineManifest) -> str:
    return config.model_name or manifest.model_name


async def load_model(
    dataplane: DataPlane, config: ServeConfig, path: Path, manifest: EngineManifest
) -> None:
    name = served_name(config, manifest)
    started = time.perf_counter()
    engine = await asyncio.to_thread(load_engine, manifest, path.parent, config.engine)
    policy = config.policy
    if not config.batch_size_given:
        policy = replace(policy, max_batch_size=manifest.max_batch_size)
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


def serve(
    config: ServeConfig,
    manifests: list[tuple[Path, EngineManifest]],
    metrics_dir: MetricsDir | None = None,
) -> NoReturn:
    """Serve until SIGTERM/SIGINT has drained the requests in flight, then exit the process.

    ``metrics_dir``: with ``--workers N``, the directory :func:`use_metrics_dir
    <infleet.runtime.server.workers.use_metrics_dir>` set up before prometheus_client was
    imported; it is removed at exit."""
    allow_open_files(config.max_connections + _SPARE_FILES)
    if config.workers > 1:
        if metrics_dir is None:
            raise ValueError("--workers above 1 needs the metrics directory of use_metrics_dir")
        try:
            code = _supervise(config, manifests, metrics_dir)
        finally:
            metrics_dir.remove()
        exit_now(code)
    _serve_here(config, manifests)


def _serve_here(
    config: ServeConfig,
    manifests: list[tuple[Path, EngineManifest]],
    peers: WorkerSlot | None = None,
) -> NoReturn:
    try:
        import uvloop
    except ImportError:  # optional: the stock loop works, slower
        code = asyncio.run(_main(config, manifests, peers))
    else:
        code = uvloop.run(_main(config, manifests, peers))
    exit_now(code)


async def _main(
    config: ServeConfig,
    manifests: list[tuple[Path, EngineManifest]],
    peers: WorkerSlot | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    names = [served_name(config, manifest) for _, manifest in manifests]
    dataplane = DataPlane(
        Metrics(multiprocess=peers is not None),
        peers,
        expected=names,
        max_in_flight=config.max_in_flight,
    )
    limits = HttpLimits(
        max_body_bytes=config.max_body_bytes,
        max_buffered_bytes=config.max_buffered_bytes,
        max_connections=config.max_connections,
        keep_alive_s=config.keep_alive_s,
        read_timeout_s=config.read_timeout_s,
    )
    server = HttpServer(HttpApp(dataplane, limits))
    try:
        await server.start(config.host, config.port, reuse_port=config.workers > 1)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, e.strerror or e)
        return 1
    log.info("listening on http://%s:%d", config.host, server.port)
    stop = asyncio.Event()
    failures: list[BaseException] = []
    signals: list[int] = []

    async def load_all() -> None:
        try:
            if peers is not None and (delay := slow_load_fault(peers.worker)):
                log.warning("TEST-ONLY FAULT: worker %d waits %.1f s to load", peers.worker, delay)
                await asyncio.sleep(delay)
            for path, manifest in manifests:
                await load_model(dataplane, config, path, manifest)
            log.info("ready: %s", ", ".join(m.name for m in dataplane.models()))
        except Exception as e:  # reported, then the server stops and exits 1
            log.error("loading failed: %s", e, exc_info=not isinstance(e, ServeError))
            failures.append(e)
            stop.set()

    async def drain() -> None:
        if config.shutdown_delay_s > 0:
            await asyncio.sleep(config.shutdown_delay_s)
            log.info("shutdown delay over: draining (new requests get 503)")
            dataplane.begin_drain()
        if await dataplane.wait_drained(config.drain_timeout_s):
            log.info("drained; exiting")
        else:
            log.warning("drain timeout: %d requests still in flight", dataplane.in_flight)
        stop.set()

    def on_signal(sig: int) -> None:
        # The first signal drains: readiness false, then after the shutdown delay (requests
        # still served meanwhile) new inference requests 503 (and every answer closes its
        # connection), in-flight requests finish. A second Ctrl-C exits.
        signals.append(sig)
        if len(signals) == 1:
            if config.shutdown_delay_s > 0:
                log.info("signal %d: not ready; serving %g s more while endpoints forget this "
                         "server, then draining", sig, config.shutdown_delay_s)
                dataplane.begin_shutdown()
            else:
                log.info("signal %d: draining (not ready; new requests get 503)", sig)
                dataplane.begin_drain()
            tasks.append(loop.create_task(drain()))
        elif sig == signal.SIGINT:
            log.warning("second interrupt: exiting without waiting")
            stop.set()

    tasks = [loop.create_task(load_all())]
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await server.close(timeout_s=2.0)
    await asyncio.to_thread(dataplane.close)
    return 1 if failures else 0


def _supervise(
    config: ServeConfig, manifests: list[tuple[Path, EngineManifest]], metrics_dir: MetricsDir
) -> int:
    """``--workers N``: N forked server processes, each with its own engine and event loop,
    on one port (SO_REUSEPORT: the kernel spreads connections). Nothing is loaded before the
    fork. SIGTERM/SIGINT are passed on (each worker drains); the exit status is the first
    non-zero one. A worker that exits on its own stops the others.

    The workers share their metrics (files in ``metrics_dir``) and their readiness (a
    :class:`ReadyBoard` made here, before the fork): see :mod:`infleet.runtime.server.workers`.
    """
    from prometheus_client.multiprocess import mark_process_dead

    if not multiprocess_values():
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    threads = config.engine.threads
    board = ReadyBoard(config.workers, len(manifests))
    children: list[int] = []
    index: dict[int, int] = {}
    stopping = False

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(config.workers):
        pid = os.fork()
        if pid == 0:  # the worker sets its own handlers on its loop
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _serve_here(config, manifests, board.slot(i))
            except BaseException:
                log.exception("worker %d failed", i)
            finally:  # never return into the supervisor's code (and its clean-up)
                exit_now(1)
        children.append(pid)
        index[pid] = i
        if stopping:
            forward(signal.SIGTERM, None)
            break
    log.info("%d workers (%d engine threads each): %s", len(children), threads, children)
    code = 0
    while children:
        pid, status = os.wait()
        if pid not in children:
            continue
        children.remove(pid)
        board.clear(index[pid])
        # its live gauges leave the merge
        mark_process_dead(pid, str(metrics_dir.path))  # type: ignore[no-untyped-call]
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code != 0:
            log.error("worker %d exited with %d", pid, exit_code)
            code = code or (exit_code if exit_code > 0 else 1)
        if not stopping:  # one worker gone on its own: stop the rest
            forward(signal.SIGTERM, None)
    return code


def allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files towards ``wanted`` (at most to the hard limit).

    Shells and container runtimes often start processes with a soft limit of 1024 and a far
    higher hard one; left there, ``--max-connections`` would never be reached: accept()
    fails with EMFILE first, and asyncio stops accepting for a second at a time. Go raises
    the soft limit the same way at start-up.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "open files are limited to %d (hard limit): fewer than --max-connections "
            "allows; raise the limit (ulimit -Hn) or lower --max-connections",
            target,
        )


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
