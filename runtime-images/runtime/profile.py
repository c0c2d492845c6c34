"""Latency profile: p50/p99 latency and throughput per batch size, measured on the build node.

The autoscaler's first capacity estimate per replica comes from this; it is corrected online.
Each batch size runs for a bounded time, so a slow engine costs a bounded build time. The
engine is the server's (``server/engines``): what is timed is one batch as serving runs it,
padding to compiled sizes included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from infleet.api import LatencyPoint
from infleet.runtime.server.engines.base import EngineRuntime


def profile_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to max_batch, and max_batch itself."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    if max_batch > 1:
        sizes.append(max_batch)
    return sizes


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, q))


def measure(
    engine: EngineRuntime,
    make_feeds: Callable[[int], Mapping[str, np.ndarray]],
    max_batch: int,
    seconds_per_size: float = 1.0,
    min_iters: int = 5,
    max_iters: int = 200,
    clock: Callable[[], float] = time.perf_counter,
    sizes: list[int] | None = None,
) -> list[LatencyPoint]:
    """Profile at ``sizes`` (default 1, 2, 4 ... max_batch).

    Every size is at most ``max_batch``, one batch as the server's batcher hands it over.
    Static-shape engines pass their compiled sizes: any other batch is padded up to one of them,
    so it costs what the next compiled size costs.
    """
    points = []
    for batch in [b for b in sizes or profile_batch_sizes(max_batch) if b <= max_batch]:
        feeds = make_feeds(batch)
        engine.run(feeds)  # warm-up: first-run allocations and JIT
        samples: list[float] = []
        deadline = clock() + seconds_per_size
        while len(samples) < max_iters and (len(samples) < min_iters or clock() < deadline):
            t0 = clock()
            engine.run(feeds)
            samples.append(clock() - t0)
        p50 = percentile_ms(samples, 50)
        points.append(
            LatencyPoint(
                batch_size=batch,
                p50_ms=round(p50, 4),
                p99_ms=round(percentile_ms(samples, 99), 4),
                throughput_ips=round(batch / (p50 / 1e3), 2) if p50 > 0 else 0.0,
            )
        )
    return points


def speed_score(profile: list[LatencyPoint], batch_sizes: list[int] | None = None) -> float:
    """Geometric mean throughput over the batch sizes that matter (all profiled by default).

    Geometric, so batch 1 (latency-bound traffic) weighs as much as the largest batch.
    """
    pts = [p for p in profile if batch_sizes is None or p.batch_size in batch_sizes]
    if not pts:
        return 0.0
    return float(np.exp(np.mean([np.log(max(p.throughput_ips, 1e-9)) for p in pts])))
