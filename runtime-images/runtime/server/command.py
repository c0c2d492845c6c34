"""``infleet serve``: load engines from their manifests and serve them over HTTP.

The process starts listening at once (liveness answers while a large engine loads), loads
each engine in a worker thread, runs one warm-up batch through its batcher, and only then
turns ready. SIGTERM (or Ctrl-C) turns readiness false; after ``--shutdown-delay-s`` (requests
still served meanwhile, while load balancers drop the server) the drain begins: new inference
requests get 503 with ``Connection: close``, requests already in flight finish, then the
process exits 0. A second Ctrl-C exits at once.

Configuration is parsed in :func:`run`, never at import.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infleet.runtime.manifest import EngineManifest
    from infleet.runtime.server.batcher import BatchPolicy
    from infleet.runtime.server.engines import EngineOptions

log = logging.getLogger("infleet.serve")


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("engines (give one or more)")
    src.add_argument(
        "--manifest",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="engine manifest (manifest.json) to serve; repeatable",
    )
    src.add_argument(
        "--engine-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="engine directory holding manifest.json; repeatable",
    )
    src.add_argument("--model-name", help="served name (one engine only; default: the manifest's)")
    src.add_argument("--model-version", default="1", help="served version (default: 1)")
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 (a pod serves on all of its interfaces)
        help="address to bind (default: 0.0.0.0)",
    )
    net.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    net.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        help="largest request body; larger ones get 413 (default: 64)",
    )
    net.add_argument(
        "--max-buffer-mb",
        type=float,
        default=512.0,
        help="request bodies held in memory at once, all together; beyond, 429 (default: 512)",
    )
    net.add_argument(
        "--max-in-flight",
        type=int,
        default=1024,
        help="inference requests handled at once; more get 429 (default: 1024)",
    )
    net.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="open connections per worker; one more is answered 503 and closed (default: 1024)",
    )
    net.add_argument(
        "--keep-alive-s",
        type=float,
        default=5.0,
        help="close a keep-alive connection idle for this long (default: 5)",
    )
    net.add_argument(
        "--read-timeout-s",
        type=float,
        default=30.0,
        help="a request must arrive in full within this of its first byte, else 408 (default: 30)",
    )
    net.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the port (SO_REUSEPORT), each with its own engine and "
        "its share of the CPUs (default: 1)",
    )
    net.add_argument(
        "--metrics-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --workers above 1: where the workers keep their metric files, summed by "
        "every /metrics; must be empty or absent, emptied at exit (default: a fresh "
        "directory under $TMPDIR, removed at exit)",
    )
    b = parser.add_argument_group("batching")
    b.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="rows per engine batch (default and upper bound: the manifest's)",
    )
    b.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=2.0,
        help="longest a request waits for its batch to fill (default: 2)",
    )
    b.add_argument(
        "--max-queue-size",
        type=int,
        default=256,
        help="requests allowed to wait per model; more get 429 (default: 256)",
    )
    b.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=0.0,
        help="refuse a request at once (429) when the requests ahead of it and its own would "
        "take longer than this to run at the engine's recent speed: SLO-aware admission, "
        "so that those admitted still answer in time (default: 0, off)",
    )
    b.add_argument(
        "--batch-concurrency",
        type=int,
        default=1,
        help="batches run at once per model (default: 1; raise for GPUs)",
    )
    e = parser.add_argument_group("engine")
    e.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads per worker (default: the CPUs this container may use, from its "
        "cgroup CPU limit or CPU set, divided among the workers)",
    )
    e.add_argument(
        "--spin",
        action="store_true",
        help="let idle engine threads busy-wait (only with cores to spare for the server)",
    )
    e.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="where to run (default: auto, the accelerator when present)",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=30.0,
        help="longest SIGTERM waits for in-flight requests (default: 30)",
    )
    parser.add_argument(
        "--shutdown-delay-s",
        type=float,
        default=0.0,
        help="after SIGTERM, seconds to keep serving (not ready) before the drain refuses new "
        "requests: how long the load balancer takes to drop this server (default: 0; the "
        "operator sets its own)",
    )


@dataclass(frozen=True, slots=True)
class ServeConfig:
    manifests: tuple[Path, ...]
    model_name: str | None
    model_version: str
    host: str
    port: int
    max_body_bytes: int
    max_in_flight: int
    max_buffered_bytes: int
    max_connections: int
    policy: BatchPolicy
    batch_size_given: bool
    engine: EngineOptions
    drain_timeout_s: float
    shutdown_delay_s: float = 0.0
    keep_alive_s: float = 5.0
    read_timeout_s: float = 30.0
    workers: int = 1
    metrics_dir: Path | None = None


def parse_config(args: argparse.Namespace) -> ServeConfig:
    from infleet.runtime.hardware import cpu_limit_threads
    from infleet.runtime.manifest import MANIFEST_FILE
    from infleet.runtime.server.batcher import BatchPolicy
    from infleet.runtime.server.engines import EngineOptions
    from infleet.runtime.server.errors import ConfigError

    manifests = [*args.manifest, *(d / MANIFEST_FILE for d in args.engine_dir)]
    if not manifests:
        raise ConfigError("give at least one --manifest or --engine-dir")
    if args.model_name and len(manifests) > 1:
        raise ConfigError("--model-name only works with a single engine")
    try:
        policy = BatchPolicy(
            max_batch_size=1 << 30 if args.max_batch_size is None else args.max_batch_size,
            max_queue_delay_s=args.max_queue_delay_ms / 1000,
            max_queue_size=args.max_queue_size,
            max_concurrent_batches=args.batch_concurrency,
            max_queue_wait_s=args.max_queue_wait_ms / 1000 if args.max_queue_wait_ms else None,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.max_in_flight < 1 or args.max_body_mb <= 0 or not 0 <= args.port < 65536:
        raise ConfigError("--max-in-flight, --max-body-mb and --port must be positive")
    if args.max_connections < 1:
        raise ConfigError("--max-connections must be at least 1")
    if args.threads < 0:
        raise ConfigError("--threads must not be negative (0: the CPUs this container may use)")
    if args.workers < 1 or (args.workers > 1 and args.port == 0):
        raise ConfigError("--workers must be at least 1, and needs a fixed --port above 1")
    if args.metrics_dir is not None:
        from infleet.runtime.server.workers import check_metrics_dir

        if args.workers < 2:
            raise ConfigError("--metrics-dir only works with --workers above 1")
        problem = check_metrics_dir(args.metrics_dir)
        if problem:
            raise ConfigError(f"--metrics-dir: {problem}")
    if not 0 <= args.shutdown_delay_s <= 600 or args.drain_timeout_s < 0:
        raise ConfigError("--shutdown-delay-s must lie in 0..600 and --drain-timeout-s must "
                          "not be negative")
    if args.keep_alive_s <= 0 or args.read_timeout_s <= 0:
        raise ConfigError("--keep-alive-s and --read-timeout-s must be positive")
    if args.max_buffer_mb < args.max_body_mb:
        raise ConfigError("--max-buffer-mb must be at least --max-body-mb")
    return ServeConfig(
        manifests=tuple(manifests),
        model_name=args.model_name,
        model_version=args.model_version,
        host=args.host,
        port=args.port,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_in_flight=args.max_in_flight,
        max_buffered_bytes=int(args.max_buffer_mb * (1 << 20)),
        max_connections=args.max_connections,
        policy=policy,
        batch_size_given=args.max_batch_size is not None,
        engine=EngineOptions(
            threads=args.threads or max(1, cpu_limit_threads() // args.workers),
            device=args.device,
            spin=args.spin,
        ),
        drain_timeout_s=args.drain_timeout_s,
        shutdown_delay_s=args.shutdown_delay_s,
        keep_alive_s=args.keep_alive_s,
        read_timeout_s=args.read_timeout_s,
        workers=args.workers,
        metrics_dir=args.metrics_dir,
    )


def read_manifest(path: Path) -> EngineManifest:
    from pydantic import ValidationError

    from infleet.runtime.manifest import EngineManifest
    from infleet.runtime.server.errors import ConfigError

    try:
        return EngineManifest.model_validate_json(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read manifest {path}: {e.strerror}") from None
    except ValidationError as e:
        raise ConfigError(f"{path} is not a valid engine manifest: {e}") from None


def run(args: argparse.Namespace) -> int:
    from infleet.runtime.server.workers import use_metrics_dir

    config = parse_config(args)
    manifests = [(path, read_manifest(path)) for path in config.manifests]  # fail before binding
    # Before the import below, which is the first of prometheus_client: the library picks
    # per-process or file-backed (--workers N) values once, at import, from the environment.
    metrics_dir = use_metrics_dir(config.workers, config.metrics_dir)
    from infleet.runtime.server.process import serve

    return serve(config, manifests, metrics_dir)
