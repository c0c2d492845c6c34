"""The operator's own Prometheus metrics, and the HTTP endpoint that serves them with the
liveness and readiness checks (``/healthz``, ``/readyz``, ``/metrics``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

API_WRITES = Counter(
    "infleet_operator_api_writes_total",
    "Writes the operator sent to the API server, by verb and kind",
    ["verb", "kind"],
)
RECONCILES = Counter(
    "infleet_operator_reconciles_total",
    "Reconciles of InferenceDeployments, by outcome (ok, retry, invalid, error)",
    ["outcome"],
)
RECONCILE_SECONDS = Histogram(
    "infleet_operator_reconcile_duration_seconds",
    "Time of one reconcile (read, plan, apply)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BUILDS = Counter(
    "infleet_operator_builds_total",
    "Engine builds by event (started, succeeded, failed)",
    ["event"],
)
PROBES = Counter(
    "infleet_operator_test_inferences_total",
    "Test inferences sent to serving classes, by outcome",
    ["outcome"],
)
DEPLOYMENTS = Gauge(
    "infleet_operator_deployments",
    "InferenceDeployments by phase, as last reconciled",
    ["phase"],
)

_PER_CLASS = ["namespace", "deployment", "class"]
AUTOSCALER_DECISIONS = Counter(
    "infleet_operator_autoscaler_decisions_total",
    "Autoscaler decisions by mode (hold, scale-up, panic, scale-down, bounds, no-metrics, "
    "infeasible)",
    ["mode"],
)
AUTOSCALER_REPLICAS = Gauge(
    "infleet_operator_autoscaler_replicas",
    "Replicas the autoscaler decided, per deployment and class",
    _PER_CLASS,
)
AUTOSCALER_CAPACITY = Gauge(
    "infleet_operator_autoscaler_capacity_per_replica_rps",
    "Capacity of one replica at the SLO the autoscaler uses (profile x learnt correction)",
    _PER_CLASS,
)
AUTOSCALER_OBSERVED_RPS = Gauge(
    "infleet_operator_autoscaler_observed_rps",
    "Request rate the autoscaler observed over its last window",
    _PER_CLASS,
)
AUTOSCALER_OBSERVED_P99 = Gauge(
    "infleet_operator_autoscaler_observed_p99_seconds",
    "p99 latency the autoscaler observed over its last window",
    _PER_CLASS,
)
AUTOSCALER_TARGET_RPS = Gauge(
    "infleet_operator_autoscaler_target_rps",
    "Capacity the autoscaler provisions for (smoothed demand, headroom, stabilized)",
    ["namespace", "deployment"],
)


class HealthServer:
    """``/healthz`` answers while the event loop runs; ``/readyz`` once kopf has started
    (indexes filled, watches running) and the configuration is valid."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        self.host, self.port, self._ready = host, port, ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        await asyncio.sleep(0)
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="starting\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
