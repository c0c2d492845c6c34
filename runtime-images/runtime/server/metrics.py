"""Prometheus metrics of the server, in a registry of its own (no module-level globals).

Names follow Prometheus conventions (``promtool check metrics``): base units in the name
(``_seconds``), ``_total`` only on counters, snake_case labels. The autoscaler reads
``infleet_serve_requests_total``, the latency histogram and ``infleet_serve_queue_depth``.

With ``--workers N`` (N > 1) every worker writes its values to files of prometheus_client's
multiprocess mode and exposes the merge of all workers' files (see
:mod:`~infleet.runtime.server.workers`): counters and histograms are summed over workers,
and each gauge says how its per-worker values combine (``multiprocess_mode``, ignored by the
plain in-process registry that one worker uses).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Latency buckets from 0.5 ms (a small CPU model) to 10 s (a cold GPU batch).
_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Outcome:
    """Values of the ``outcome`` label (a closed set keeps the series count bounded)."""

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    SERVER_ERROR = "server_error"


def multiprocess_values() -> bool:
    """Whether prometheus_client chose its file-backed value class at import (it does when
    ``PROMETHEUS_MULTIPROC_DIR`` was set then; nothing can change it afterwards)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess: bool = False) -> None:
        """``multiprocess``: this is one worker of several; expose the merge of every
        worker's files in ``$PROMETHEUS_MULTIPROC_DIR`` instead of this process's values."""
        self.registry = CollectorRegistry()
        r: CollectorRegistry | None = self.registry
        if multiprocess:
            if not multiprocess_values():
                raise RuntimeError(
                    "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set, "
                    "so its values are per process and cannot be merged over workers"
                )
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            r = None  # the metrics write files; the collector reads them all back
        self.requests = Counter(
            "infleet_serve_requests",
            "Inference requests answered, by model and outcome.",
            ["model", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "infleet_serve_request_duration_seconds",
            "Time from receiving an inference request's body to sending its response.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_duration = Histogram(
            "infleet_serve_queue_duration_seconds",
            "Time a request waited in the batch queue before its batch started.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_duration = Histogram(
            "infleet_serve_batch_duration_seconds",
            "Engine time of one batch, merging and splitting included.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "infleet_serve_batch_size_rows",
            "Rows (inferences) per engine batch.",
            ["model"],
            buckets=_BATCH,
            registry=r,
        )
        self.connections_refused = Counter(
            "infleet_serve_connections_refused",
            "Connections answered 503 and closed because --max-connections were open.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "infleet_serve_queue_depth_requests",
            "Requests waiting in the batch queue.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",  # the pod's queue: all live workers' together
        )
        self.in_flight = Gauge(
            "infleet_serve_requests_in_flight",
            "Inference requests being decoded, queued, run or encoded.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_load = Gauge(
            "infleet_serve_model_load_duration_seconds",
            "Time to load the engine and run its warm-up batch.",
            ["model"],
            registry=r,
            # the workers load at once and the pod is ready when the slowest is: its time
            multiprocess_mode="max",
        )
        self.ready = Gauge(
            "infleet_serve_ready",
            "1 when the server is ready to take inference requests, else 0.",
            registry=r,
            multiprocess_mode="livemin",  # 1 only when every live worker is ready
        )

    def observer(self, model: str) -> ModelObserver:
        return ModelObserver(self, model)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelObserver:
    """The batcher's :class:`~infleet.runtime.server.batcher.BatchObserver` for one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._queue = metrics.queue_duration.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._run = metrics.batch_duration.labels(model)
        self._depth = metrics.queue_depth.labels(model)

    def batch_done(self, size: int, queue_waits_s: list[float], run_s: float) -> None:
        self._batch.observe(size)
        self._run.observe(run_s)
        for wait in queue_waits_s:
            self._queue.observe(wait)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)
