"""The autoscaler inside the reconcile plan: which classes it governs, their inputs, and what
of its decision reaches the Deployments, the route weights and the status. Pure.

The planner places a deployment first (:func:`~infleet.scheduler.plan.plan_deployment`: the
classes, their engines, room and a replica count to start from). Then, unless
``spec.replicas`` pins the count (the scale subresource wins: the placement honours the pin
and the autoscaler stays out), this module overrides the replicas of the classes it governs:
real classes (a process serves there) with an engine to serve, except emulated ones (their
latency is the emulator's: nothing to scale on or learn from). Simulated and emulated classes
keep the placement's count, and the bounds the autoscaler gets are the spec's minus theirs;
the load it measures and plans for is the governed classes' own.

A reconcile is not always a tick: pokes (a pod turned ready, a build finished) reconcile at
any time, decisions are taken every ``autoscaler.intervalSeconds`` over the window since
the last one. Between ticks the classes hold the replicas last decided (so one writer, the
operator, keeps them whatever else edits the Deployment), or, after a restart, the replicas
their Deployments have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from infleet.api import (
    AutoscalerStatus,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
    ObservedLoad,
)
from infleet.scheduler.autoscale import (
    AutoscaleSettings,
    AutoscaleState,
    ClassInput,
    ClassMemory,
    ScaleDecision,
    decide_scale,
)
from infleet.scheduler.capacity import ClassProfile
from infleet.scheduler.metrics import ClassObservation

MATERIAL_RPS = 1.0
"""Observed load in the status is rewritten when it moves by more than this (or 10%), or the
decision changed: a status write per tick for noise would be load on the API server."""


@dataclass(frozen=True, slots=True)
class Tick:
    """What the loop measured for this tick."""

    now: float
    """The decision clock (seconds, monotonic across ticks)."""
    observed: Mapping[str, ClassObservation | None]
    """Per class; a class missing or None: nothing answered (unknown load, never zero)."""
    stable_window_s: float = 60.0
    min_requests: float = 100.0
    reserve: float = 3.0
    reserve_cost_share: float = 0.1


@dataclass(frozen=True, slots=True)
class View:
    """The autoscaler's part of the snapshot."""

    state: AutoscaleState
    held: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Replicas last decided per class (empty after a restart)."""
    tick: Tick | None = None
    """None: no decision is due this reconcile; the classes hold."""
    fresh: bool = False
    """The memory is new (a started or restarted operator): :func:`resume` seeds it from the
    status the last operator wrote."""


@dataclass(frozen=True, slots=True)
class Governed:
    """One class the autoscaler governs, as the planner sees it."""

    name: str
    profile: ClassProfile
    cost_per_hour: float
    replicas: int
    """Replicas its Deployment has now (0: none yet)."""
    ready_replicas: int
    room: int
    """Replicas of this deployment that fit in the class (its own pods included)."""
    has_deployment: bool
    planned: int
    """The placement's count: where a class has neither a Deployment nor a decision yet."""


@dataclass(frozen=True, slots=True)
class Outcome:
    replicas: Mapping[str, int]
    corrections: Mapping[str, float]
    """Factor on each class's profiled capacity (the route weights follow it)."""
    decision: ScaleDecision | None
    """None when no decision was taken this reconcile."""


def settings_for(
    spec: InferenceDeploymentSpec, others: int, tick: Tick | None
) -> AutoscaleSettings:
    """The spec's rules, with ``others`` replicas (simulated and emulated classes') taken off
    the bounds."""
    hi = max(0, spec.scaling.max_replicas - others)
    lo = min(hi, max(0, spec.scaling.min_replicas - others))
    base = AutoscaleSettings.from_spec(spec)
    out = replace(base, min_replicas=lo, max_replicas=hi)
    if tick is not None:
        out = replace(out, stable_window_s=tick.stable_window_s, min_requests=tick.min_requests,
                      reserve=tick.reserve, reserve_cost_share=tick.reserve_cost_share)
    return out


def decide(
    view: View, spec: InferenceDeploymentSpec, governed: Sequence[Governed], others: int,
    previous: InferenceDeploymentStatus | None = None,
) -> Outcome:
    """Replicas for the governed classes: this tick's decision, or what they hold."""
    corrections = {g.name: view.state.classes[g.name].correction
                   for g in governed if g.name in view.state.classes}
    if view.tick is None:
        held = {g.name: view.held.get(g.name, g.replicas if g.has_deployment else g.planned)
                for g in governed}
        return Outcome(MappingProxyType(held), MappingProxyType(corrections), None)
    state = view.state
    if view.fresh:
        state = resume(state, governed, previous, view.tick.now, spec)
    inputs = []
    for g in governed:
        now_replicas = view.held.get(g.name, g.replicas) if g.has_deployment else 0
        inputs.append(ClassInput(
            name=g.name, profile=g.profile, cost_per_hour=g.cost_per_hour,
            replicas=now_replicas, ready_replicas=min(g.ready_replicas, now_replicas)
            if g.has_deployment else 0,
            free_replicas=max(0, g.room - now_replicas),
            observed=view.tick.observed.get(g.name),
        ))
    d = decide_scale(inputs, settings_for(spec, others, view.tick), state, view.tick.now)
    corrections = {c.name: c.correction for c in d.classes}
    return Outcome(d.replicas, MappingProxyType(corrections), d)


def resume(
    state: AutoscaleState, governed: Sequence[Governed],
    previous: InferenceDeploymentStatus | None, now: float, spec: InferenceDeploymentSpec,
) -> AutoscaleState:
    """A new memory seeded from the status the last operator wrote, so a restart loses
    neither what was learnt nor the target in force: each class's correction is its
    status capacity per replica over its profile's (the status shows the corrected one),
    and the last target holds for the stabilization window from now (with the memory's
    scale-up stamp, which a new memory sets to now, no class shrinks within it). The demand
    history starts empty: it is measured again."""
    if previous is None:
        return state
    rules = AutoscaleSettings.from_spec(spec)
    seen = {c.name: c.observed for c in previous.classes}
    classes = dict(state.classes)
    for g in governed:
        cap = seen[g.name].capacity_rps if g.name in seen else None
        if cap is None or g.profile.capacity_rps <= 0 or g.name in classes:
            continue
        factor = min(rules.correction_ceiling,
                     max(rules.correction_floor, cap / g.profile.capacity_rps))
        classes[g.name] = ClassMemory(correction=factor)
    targets = state.targets
    last = previous.autoscaler.target_rps if previous.autoscaler is not None else None
    if not targets and last is not None and last > 0:
        targets = ((now, last),)
    return replace(state, classes=MappingProxyType(classes), targets=targets)


def observed_load(
    before: ObservedLoad, obs: ClassObservation | None, capacity_rps: float | None,
    min_requests: float,
) -> ObservedLoad:
    """The class's status line for this tick's observation; the old one while it did not
    move materially."""
    if obs is None:
        return before
    p99 = round(obs.p99_ms, 1) if obs.p99_ms is not None and obs.requests >= min_requests \
        else None
    new = ObservedLoad(
        rps=round(obs.rate_rps, 1), p99_ms=p99, refused_rps=round(obs.refused_rps, 1),
        queue_depth=round(obs.queue_depth, 1), pods_unknown=obs.pods_unknown,
        capacity_rps=None if capacity_rps is None else round(capacity_rps, 1),
    )
    return new if material(before, new) else before


def material(a: ObservedLoad, b: ObservedLoad) -> bool:
    def moved(x: float | None, y: float | None, floor: float) -> bool:
        if x is None or y is None:
            return (x is None) != (y is None)
        return abs(x - y) > max(floor, 0.1 * max(abs(x), abs(y)))

    return (
        moved(a.rps, b.rps, MATERIAL_RPS) or moved(a.p99_ms, b.p99_ms, 1.0)
        or moved(a.refused_rps, b.refused_rps, MATERIAL_RPS)
        or moved(a.queue_depth, b.queue_depth, 1.0) or a.pods_unknown != b.pods_unknown
        or moved(a.capacity_rps, b.capacity_rps, MATERIAL_RPS)
    )


def autoscaler_status(
    before: AutoscalerStatus | None, d: ScaleDecision | None, changed: bool, stamp: str,
    moved: bool,
) -> AutoscalerStatus | None:
    """The status's ``autoscaler``: rewritten when the replicas or the mode changed or a
    class's load moved materially, else kept (its numbers are from the last rewrite)."""
    if d is None:
        return before
    mode = d.mode.value
    if before is not None and not changed and not moved and before.mode == mode:
        return before
    return AutoscalerStatus(
        mode=mode,
        reason=d.reason[:1024],
        demand_rps=None if d.inputs.demand_now_rps is None else round(d.inputs.demand_now_rps, 1),
        target_rps=round(d.inputs.target_rps, 1),
        capacity_rps=round(d.capacity_rps, 1),
        last_scale_time=stamp if changed else (before.last_scale_time if before else None),
    )
