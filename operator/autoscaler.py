"""The autoscaler's I/O within a reconcile: measure the load when a decision is due, keep what
the next tick needs, export the decision as the operator's own metrics.

One loop per InferenceDeployment (the reconcile daemon) calls :func:`view` before planning
and :func:`record` after; the decision itself is pure (:mod:`.scaling`, called by the
planner), so the replicas and the route weights are written by the one apply of the
reconcile, with server-side apply, like every other field of the children.

The measurement comes from ``metricsSource``: ``pods`` scrapes every ready serving pod's
``/metrics`` (two rounds, this tick's and the last, give the window), a URL asks Prometheus
for the window directly. Neither ever turns a pod that did not answer into zero load.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from infleet.api import InferenceDeploymentSpec
from infleet.operator import metrics, scaling
from infleet.operator.children import HTTP_PORT
from infleet.operator.metrics_source import PodScraper, PodTarget, PrometheusSource
from infleet.operator.observed import ServingPod
from infleet.scheduler.autoscale import AutoscaleState
from infleet.scheduler.errors import MetricsError
from infleet.scheduler.metrics import ClassObservation, PodScrape, observe_class

if TYPE_CHECKING:
    from infleet.operator.planner import Reconcile
    from infleet.operator.state import OperatorState, Ref

log = logging.getLogger("infleet.operator")

PROMETHEUS_CLASS_LABEL = "infleet_dev_class"
PROMETHEUS_DEPLOYMENT_LABEL = "infleet_dev_deployment"


@dataclass
class Memory:
    """What one deployment's autoscaler keeps between ticks, in memory. A restarted operator
    holds the replicas the Deployments have and resumes from the status the last one wrote
    (:func:`~infleet.operator.scaling.resume`: the learnt capacities, the target in force);
    the demand history is measured again."""

    state: AutoscaleState
    last_tick: float | None = None
    """Monotonic time of the last decision."""
    rounds: dict[str, list[PodScrape]] = field(default_factory=dict)
    """The last round of scrapes, per class."""
    held: dict[str, int] = field(default_factory=dict)
    fresh: bool = True
    """No decision taken yet: the first one resumes from the status (restart memory)."""


def _memory(state: OperatorState, ref: Ref, now: float) -> Memory:
    mem = state.autoscale.get(ref)
    if mem is None:
        # A fresh memory counts as having just scaled up: no class shrinks within the
        # stabilization window of an operator (re)start, whose load history is gone.
        mem = state.autoscale[ref] = Memory(AutoscaleState(last_scale_up=now))
    return mem


def governs(state: OperatorState, spec: InferenceDeploymentSpec) -> bool:
    return state.config.autoscaler.enabled and spec.replicas is None


def seconds_to_next_tick(state: OperatorState, ref: Ref) -> float | None:
    mem = state.autoscale.get(ref)
    if mem is None or mem.last_tick is None:
        return None
    due = mem.last_tick + state.config.autoscaler.interval_seconds - time.monotonic()
    return max(0.05, due)


async def view(
    state: OperatorState, ref: Ref, spec: InferenceDeploymentSpec, model: str,
    pods: Sequence[ServingPod],
) -> scaling.View | None:
    """The autoscaler's part of the snapshot; measures the load when a decision is due."""
    if not governs(state, spec):
        state.autoscale.pop(ref, None)
        return None
    cfg = state.config.autoscaler
    now = time.monotonic()
    mem = _memory(state, ref, now)
    # 5% early still counts as due: a poke just before the interval must not push the
    # tick a whole interval later.
    if mem.last_tick is not None and now - mem.last_tick < 0.95 * cfg.interval_seconds:
        return scaling.View(mem.state, dict(mem.held), fresh=mem.fresh)
    if state.config.metrics_source == "pods":
        observed = await _scrape(state, mem, spec, model, pods)
    else:
        observed = await _prometheus(state, ref, model)
    mem.last_tick = now
    tick = scaling.Tick(now=now, observed=observed,
                        stable_window_s=cfg.stable_window_seconds, min_requests=cfg.min_requests,
                        reserve=cfg.reserve_fraction, reserve_cost_share=cfg.reserve_cost_share)
    return scaling.View(mem.state, dict(mem.held), tick, fresh=mem.fresh)


async def _scrape(
    state: OperatorState, mem: Memory, spec: InferenceDeploymentSpec, model: str,
    pods: Sequence[ServingPod],
) -> dict[str, ClassObservation | None]:
    by_class: dict[str, list[ServingPod]] = defaultdict(list)
    for p in pods:
        if p.ready and p.ip and not p.deleting:
            by_class[p.node_class].append(p)
    targets = [(cls, PodTarget(p.name, f"http://{p.ip}:{HTTP_PORT}/metrics"))
               for cls, ps in by_class.items() for p in ps]
    scraper = PodScraper(state.http, timeout_s=state.config.autoscaler.scrape_timeout_seconds)
    scrapes = await scraper.scrape([t for _, t in targets], model)
    rounds: dict[str, list[PodScrape]] = defaultdict(list)
    for (cls, _), s in zip(targets, scrapes, strict=True):
        rounds[cls].append(s)
        if s.metrics is None:
            log.info("autoscaler: %s: %s", s.pod, s.error)
    out: dict[str, ClassObservation | None] = {}
    for cls, now_round in rounds.items():
        before = mem.rounds.get(cls, [])
        since = min((s.at for s in before), default=None)
        out[cls] = observe_class(before, now_round, spec.slo.latency_p99_ms, since)
    mem.rounds = dict(rounds)
    return out


async def _prometheus(state: OperatorState, ref: Ref, model: str
                      ) -> dict[str, ClassObservation | None]:
    cfg = state.config.autoscaler
    source = PrometheusSource(state.http, state.config.metrics_source,
                              timeout_s=cfg.scrape_timeout_seconds)
    selector = f'namespace="{ref[0]}",{PROMETHEUS_DEPLOYMENT_LABEL}="{ref[1]}"'
    try:
        found = await source.observe(model, selector=selector, by=PROMETHEUS_CLASS_LABEL,
                                     window_s=cfg.prometheus_window_seconds)
    except MetricsError as e:
        log.warning("%s/%s: autoscaler: %s (holding the replicas)", ref[0], ref[1], e)
        return {}
    return dict(found)


def record(state: OperatorState, ref: Ref, result: Reconcile) -> None:
    """Keep the decision for the next tick and export it."""
    mem = state.autoscale.get(ref)
    outcome = result.scale
    if mem is None or outcome is None:
        return
    mem.held = dict(outcome.replicas)
    d = outcome.decision
    if d is None:
        return
    mem.state = d.state
    mem.fresh = False  # resumed from the status (scaling.resume) by this first decision
    log.log(logging.INFO if d.changed else logging.DEBUG, "%s/%s: autoscaler: %s", ref[0],
            ref[1], d.reason)
    metrics.AUTOSCALER_DECISIONS.labels(d.mode.value).inc()
    ns, name = ref
    for c in d.classes:
        labels = (ns, name, c.name)
        metrics.AUTOSCALER_REPLICAS.labels(*labels).set(c.replicas)
        metrics.AUTOSCALER_CAPACITY.labels(*labels).set(c.capacity_rps)
        if c.observed_rps is not None:
            metrics.AUTOSCALER_OBSERVED_RPS.labels(*labels).set(c.observed_rps)
        if c.p99_ms is not None:
            metrics.AUTOSCALER_OBSERVED_P99.labels(*labels).set(c.p99_ms / 1000)
    metrics.AUTOSCALER_TARGET_RPS.labels(ns, name).set(d.inputs.target_rps)


def forget(state: OperatorState, ref: Ref) -> None:
    state.autoscale.pop(ref, None)
    for gauge in (metrics.AUTOSCALER_REPLICAS, metrics.AUTOSCALER_CAPACITY,
                  metrics.AUTOSCALER_OBSERVED_RPS, metrics.AUTOSCALER_OBSERVED_P99):
        for labels in list(gauge._metrics):  # prometheus_client keeps no public iterator
            if labels[:2] == ref:
                gauge.remove(*labels)
    with contextlib.suppress(KeyError):
        metrics.AUTOSCALER_TARGET_RPS.remove(*ref)


