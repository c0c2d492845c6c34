"""SLO autoscaling: replicas per class from observed load, one pure decision per tick.

:func:`decide_scale` takes the classes (profile, cost, replicas, free room, the window's
:class:`~infleet.scheduler.metrics.ClassObservation`), the deployment's
:class:`AutoscaleSettings`, the :class:`AutoscaleState` of the last tick and the time, and
returns a :class:`ScaleDecision`: replicas and traffic weight per class, the inputs it used,
a sentence saying why, and the state to keep for the next tick (JSON-serialisable, so a
restarted operator resumes where it stopped). No I/O, no clock: ``now`` is an argument.

The rules, per tick:

1. *Capacity per replica at the SLO*: the engine profile's (:func:`profile_from_points`)
   times a per-class correction factor learnt from observation (:func:`corrected`): it
   falls when the class broke the SLO while carrying at least half its estimated capacity,
   rises when it held the SLO above it, and creeps back toward the profile when p99 stays
   under half the SLO under load; bounded to [``correction_floor``, ``correction_ceiling``]
   x profile, moved a fraction ``correction_step`` of the way per tick, never from a window
   with fewer than ``min_requests`` requests. It cannot run away: each move is toward a rate
   the class really carried, a lowered estimate adds replicas, which lowers the per-replica
   rate below the threshold that moved it, and the bounds hold whatever the inputs.
2. *Demand*: the requests that wanted the engine (success, refused, server errors) over
   the classes; a pod or class that did not answer is extrapolated from those that did
   (the router gives each the same load per unit of capacity), never taken as idle; when
   nothing answered, the decision holds. The target is ``(1 + headroom)`` x the mean over
   ``stable_window_s``, or x the latest window's demand when that needs more than the mix
   has (scale-up does not wait for the average to catch up).
3. *Panic*: when a class's p99 breaks the SLO at >= half its capacity, it refuses more
   than ``refused_budget`` of its requests, or its queue holds more than a full batch per
   pod and grows, the target becomes the latest demand plus the backlog cleared within
   ``drain_s``, and the breaching class is planned at what it carried, at once.
4. *Stabilization*: the target in force is the highest of every tick's target over the
   last ``stabilization_s``, so capacity falls only when the smoothed demand stayed lower
   that long; and no class shrinks within ``stabilization_s`` of the last scale-up.
5. *The mix*: scale-up adds the cheapest replicas that cover the shortfall (to the target
   plus ``scale_down_tolerance`` when that fits) on top of those running (the exact branch
   and bound, :func:`solve`, within min/max and each class's free room), and when those
   include a class that starts slower than others (a GPU pod), replicas of the faster
   classes bridge its start-up; scale-down moves to the cheapest
   mix for the stabilized target plus ``scale_down_tolerance``, when that is cheaper than
   the running mix. Traffic weights follow the ready capacity of the mix
   (:func:`traffic_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infleet.api import InferenceDeploymentSpec
from infleet.scheduler.capacity import (
    ClassProfile,
    Option,
    Solution,
    max_capacity,
    solve,
    traffic_weights,
)
from infleet.scheduler.errors import AutoscaleStateError
from infleet.scheduler.metrics import ClassObservation

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class AutoscaleSettings:
    """Per-deployment knobs (from the spec, :meth:`from_spec`) and the rules' constants."""

    slo_ms: float
    min_replicas: int = 1
    max_replicas: int = 20
    headroom: float = 0.2
    """Capacity above demand, as a fraction."""
    stabilization_s: float = 300.0
    """Capacity falls only when every target of this long was lower."""
    stable_window_s: float = 60.0
    """Demand is averaged over this window."""
    max_throughput_rps: float | None = None
    max_batch: int = 32
    """The server's largest batch: a queue above one batch per pod is a backlog."""
    drain_s: float = 10.0
    """In panic, capacity is added to clear the queued backlog within this time."""
    min_requests: float = 100.0
    """Requests a window needs before its p99 says anything (p99 of fewer is noise)."""
    scale_down_tolerance: float = 0.05
    """A band against flapping when the target sits at a replica boundary: scale-up
    provisions up to this much above the target (when it fits), scale-down only to a mix
    with this much capacity above it."""
    low_load: float = 0.5
    """Below this share of its estimated capacity, a class's p99 says nothing about it."""
    refused_budget: float = 0.005
    """Share of refused requests that counts as an SLO breach."""
    correction_step: float = 0.3
    correction_floor: float = 0.25
    correction_ceiling: float = 2.0

    def __post_init__(self) -> None:
        if self.slo_ms <= 0:
            raise ValueError("the SLO must be positive")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if self.headroom < 0 or self.stabilization_s < 0 or self.stable_window_s < 0:
            raise ValueError("headroom and windows must not be negative")
        if not 0 < self.correction_floor <= 1 <= self.correction_ceiling:
            raise ValueError("correction bounds must enclose 1")
        if not 0 < self.correction_step <= 1:
            raise ValueError("the correction step must lie in (0, 1]")

    @classmethod
    def from_spec(cls, spec: InferenceDeploymentSpec, **rules: Any) -> AutoscaleSettings:
        """The deployment's SLO, bounds and batching; a pinned ``spec.replicas`` fixes both
        bounds (the scale subresource wins). ``rules`` override the constants."""
        lo, hi = spec.scaling.min_replicas, spec.scaling.max_replicas
        if spec.replicas is not None:
            lo = hi = spec.replicas
        settings = cls(
            slo_ms=spec.slo.latency_p99_ms,
            min_replicas=lo,
            max_replicas=hi,
            headroom=spec.scaling.headroom_fraction,
            stabilization_s=float(spec.scaling.scale_down_stabilization_seconds),
            max_throughput_rps=spec.slo.max_throughput_rps,
            max_batch=spec.batching.max_batch_size,
        )
        return replace(settings, **rules) if rules else settings


@dataclass(frozen=True, slots=True)
class ClassInput:
    """One class as the autoscaler sees it this tick."""

    name: str
    profile: ClassProfile | None
    """Capacity at the SLO from the engine profile; None: the class cannot serve."""
    cost_per_hour: float
    replicas: int = 0
    """Replicas the class's Deployment asks for now."""
    ready_replicas: int = 0
    free_replicas: int = 0
    """Further replicas that fit in the class's free allocatable resources."""
    observed: ClassObservation | None = None
    """Load over the last window; None when no pod of the class answered (or none runs)."""
    startup_s: float = 0.0
    """How long a new replica takes to become Ready (as the operator saw it): a class that
    starts sooner bridges the start-up of a slower one."""

    def __post_init__(self) -> None:
        if min(self.replicas, self.ready_replicas, self.free_replicas) < 0:
            raise ValueError(f"{self.name}: replica counts must not be negative")
        if self.cost_per_hour < 0:
            raise ValueError(f"{self.name}: cost must not be negative")


@dataclass(frozen=True, slots=True)
class ClassMemory:
    """What the autoscaler remembers of a class between ticks."""

    correction: float = 1.0
    """Factor on the profile's capacity, learnt from observation."""
    queue_depth: float = 0.0
    """The queue at the last tick (to see it grow)."""


@dataclass(frozen=True, slots=True)
class AutoscaleState:
    """Everything that must survive between ticks; :meth:`to_json` / :meth:`from_json`."""

    demand: tuple[tuple[float, float], ...] = ()
    """(time, rps) samples within the stable window."""
    targets: tuple[tuple[float, float], ...] = ()
    """(time, target rps) within the stabilization window; only those that some later one
    does not exceed (their maximum is the first, so the window's maximum is kept exactly)."""
    classes: Mapping[str, ClassMemory] = field(default_factory=lambda: MappingProxyType({}))
    last_scale_up: float | None = None
    last_scale_down: float | None = None

    def to_json(self) -> str:
        return _StateWire(
            version=STATE_VERSION,
            demand=[list(p) for p in self.demand],
            targets=[list(p) for p in self.targets],
            classes={k: _ClassWire(correction=v.correction, queue_depth=v.queue_depth)
                     for k, v in self.classes.items()},
            last_scale_up=self.last_scale_up,
            last_scale_down=self.last_scale_down,
        ).model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> AutoscaleState:
        """The state :meth:`to_json` wrote; :class:`AutoscaleStateError` names what is wrong."""
        try:
            wire = _StateWire.model_validate_json(text)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"]) or "state"
            raise AutoscaleStateError(f"autoscaler state: {loc}: {first['msg']}") from e
        if wire.version != STATE_VERSION:
            raise AutoscaleStateError(
                f"autoscaler state version {wire.version}; this operator reads {STATE_VERSION}"
            )
        return cls(
            demand=tuple((p[0], p[1]) for p in wire.demand),
            targets=tuple((p[0], p[1]) for p in wire.targets),
            classes=MappingProxyType(
                {k: ClassMemory(v.correction, v.queue_depth) for k, v in wire.classes.items()}
            ),
            last_scale_up=wire.last_scale_up,
            last_scale_down=wire.last_scale_down,
        )


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Pair = Annotated[list[_Finite], Field(min_length=2, max_length=2)]


class _ClassWire(_Wire):
    correction: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    queue_depth: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class _StateWire(_Wire):
    version: int
    demand: Annotated[list[_Pair], Field(max_length=100_000)] = []
    targets: Annotated[list[_Pair], Field(max_length=100_000)] = []
    classes: dict[str, _ClassWire] = {}
    last_scale_up: _Finite | None = None
    last_scale_down: _Finite | None = None


class Mode(StrEnum):
    HOLD = "hold"
    SCALE_UP = "scale-up"
    PANIC = "panic"
    SCALE_DOWN = "scale-down"
    BOUNDS = "bounds"
    """The current mix breaks the bounds (min/max, free room, an unusable class): re-planned."""
    BLIND = "no-metrics"
    INFEASIBLE = "infeasible"


@dataclass(frozen=True, slots=True)
class ClassScale:
    """The decision for one class, with what it rests on (status.classes[])."""

    name: str
    replicas: int
    previous: int
    capacity_rps: float
    """Capacity per replica at the SLO used by this decision (corrected)."""
    profile_capacity_rps: float
    correction: float
    weight: int
    """Percent of traffic."""
    observed_rps: float | None
    p99_ms: float | None
    note: str = ""
    """Why the capacity estimate moved, or why the class is not used."""


@dataclass(frozen=True, slots=True)
class ScaleInputs:
    """The numbers behind a decision (for status, Events and the operator's metrics)."""

    demand_now_rps: float | None
    """Over the last window; None when nothing could be measured."""
    demand_stable_rps: float
    backlog: float
    """Requests queued over the classes."""
    target_now_rps: float
    """This tick's target: demand x (1 + headroom), plus the backlog in panic."""
    target_rps: float
    """The target in force: the highest of the stabilization window."""
    capacity_before_rps: float
    panic: tuple[str, ...]
    """Why this tick panicked, per class; empty when it did not."""


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    at: float
    mode: Mode
    reason: str
    """One sentence for status and Events."""
    classes: tuple[ClassScale, ...]
    capacity_rps: float
    cost_per_hour: float
    feasible: bool
    changed: bool
    """The mix differs from the replicas the classes had."""
    inputs: ScaleInputs
    state: AutoscaleState

    @property
    def replicas(self) -> Mapping[str, int]:
        return MappingProxyType({c.name: c.replicas for c in self.classes})

    @property
    def weights(self) -> Mapping[str, int]:
        return MappingProxyType({c.name: c.weight for c in self.classes})


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def corrected(
    memory: ClassMemory, cls: ClassInput, settings: AutoscaleSettings
) -> tuple[float, str, float | None]:
    """The class's new correction factor, a note when it moved, and (when the class broke
    the SLO under load) the per-replica rate it broke at."""
    prof = cls.profile
    obs = cls.observed
    k = memory.correction
    if prof is None or prof.capacity_rps <= 0 or obs is None or obs.pods == 0:
        return k, "", None
    base = prof.capacity_rps
    q = base * k
    per_pod = obs.rate_rps / obs.pods
    refused = obs.refused_rps / obs.rate_rps if obs.rate_rps > 0 else 0.0
    if obs.requests < settings.min_requests:
        return k, "", None
    breach_p99 = obs.p99_ms is not None and obs.p99_ms > settings.slo_ms
    breach = breach_p99 or refused > settings.refused_budget
    step = settings.correction_step
    lo, hi = settings.correction_floor, settings.correction_ceiling
    note = ""
    broke_at: float | None = None
    growing = (obs.queue_depth / max(1, obs.pods_known) > settings.max_batch
               and obs.queue_depth > memory.queue_depth)
    if (breach or growing) and per_pod >= settings.low_load * q:
        broke_at = per_pod
        if per_pod < q:
            # It broke below the estimate: capacity is under what it carried.
            k = min(k, (1 - step) * k + step * 0.95 * per_pod / base)
            note = f"capacity lowered: SLO broken at {_fmt(per_pod)} rps per replica"
    elif not breach and per_pod > q:
        k = max(k, (1 - step) * k + step * per_pod / base)
        note = f"capacity raised: SLO held at {_fmt(per_pod)} rps per replica"
    elif (
        not breach and k < 1 and per_pod >= settings.low_load * q and obs.p99_ms is not None
        and obs.p99_ms <= settings.slo_ms / 2
    ):
        k = min(1.0, k + step * (1 - k))
        note = "capacity recovering toward the profile: p99 under half the SLO under load"
    k = min(hi, max(lo, k))
    return k, note, broke_at


def _panic_reason(
    cls: ClassInput, q: float, memory: ClassMemory, settings: AutoscaleSettings
) -> str | None:
    obs = cls.observed
    if obs is None or obs.pods == 0:
        return None
    per_pod = obs.rate_rps / obs.pods
    if (
        obs.requests >= settings.min_requests and obs.p99_ms is not None
        and obs.p99_ms > settings.slo_ms and per_pod >= settings.low_load * q
    ):
        return (f"{cls.name}: p99 {obs.p99_ms:.3g} ms > SLO {settings.slo_ms:g} ms at "
                f"{per_pod / q:.0%} of capacity")
    if obs.rate_rps > 0 and obs.refused_rps / obs.rate_rps > settings.refused_budget:
        return f"{cls.name}: {obs.refused_rps / obs.rate_rps:.1%} of requests refused"
    depth = obs.queue_depth / max(1, obs.pods_known)
    if depth > settings.max_batch and obs.queue_depth > memory.queue_depth:
        return f"{cls.name}: queue {_fmt(obs.queue_depth)} and growing"
    return None


def _window(
    samples: tuple[tuple[float, float], ...], now: float, span: float
) -> tuple[tuple[float, float], ...]:
    return tuple(p for p in samples if now - p[0] < span and p[0] <= now)


def _push_max(
    samples: tuple[tuple[float, float], ...], now: float, value: float, span: float
) -> tuple[tuple[float, float], ...]:
    """A sliding-window maximum: drop the expired and those ``value`` outranks."""
    kept = [p for p in _window(samples, now, span) if p[1] > value]
    kept.append((now, value))
    return tuple(kept)


def _demand(
    classes: Sequence[ClassInput], caps: Sequence[float]
) -> tuple[float | None, float, str]:
    """Demand over the classes (rps), the backlog, and a note on what was extrapolated."""
    known_rate = known_cap = all_cap = backlog = 0.0
    missing: list[str] = []
    for cls, q in zip(classes, caps, strict=True):
        ready_cap = cls.ready_replicas * q
        if cls.ready_replicas == 0 and cls.observed is None:
            continue  # serves nothing, so carries nothing
        all_cap += ready_cap
        if cls.observed is None:
            missing.append(cls.name)
            continue
        known_rate += cls.observed.rate_rps
        known_cap += ready_cap
        backlog += cls.observed.queue_depth * cls.observed.pods / max(1, cls.observed.pods_known)
    if missing and known_cap <= 0:
        return None, 0.0, "no metrics from " + ", ".join(missing)
    if not missing:
        return known_rate, backlog, ""
    scale = all_cap / known_cap
    return (known_rate * scale, backlog * scale,
            f"{', '.join(missing)} did not answer: their load taken at the others' rate")


def decide_scale(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    state: AutoscaleState,
    now: float,
) -> ScaleDecision:
    """This tick's replicas and weights per class; see the module's docstring for the rules."""
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    memory = {c.name: state.classes.get(c.name, ClassMemory()) for c in classes}
    usable = [
        c.profile is not None and c.profile.capacity_rps > 0
        and c.profile.latency_b1_ms <= settings.slo_ms
        for c in classes
    ]
    # 1. capacity per replica
    factors: list[float] = []
    notes: list[str] = []
    caps: list[float] = []
    plan_caps: list[float] = []
    panics: list[str] = []
    for c, ok in zip(classes, usable, strict=True):
        k, note, broke_at = corrected(memory[c.name], c, settings)
        base = c.profile.capacity_rps if c.profile is not None and ok else 0.0
        q = base * k
        if not ok:
            note = _unusable(c, settings)
        why = _panic_reason(c, base * memory[c.name].correction, memory[c.name], settings)
        factors.append(k)
        notes.append(note)
        caps.append(q)
        # A class that cannot keep up under load is planned at what it carried, this very
        # tick (the correction factor follows more slowly).
        plan_caps.append(min(q, 0.95 * broke_at) if broke_at is not None and why else q)
        if why and ok:
            panics.append(why)
    new_memory = {
        c.name: ClassMemory(k, c.observed.queue_depth if c.observed else 0.0)
        for c, k in zip(classes, factors, strict=True)
    }
    current = [c.replicas for c in classes]
    cap_before = sum(n * q for n, q in zip(current, plan_caps, strict=True))

    # 2. demand
    demand_now, backlog, demand_note = _demand(classes, caps)
    if demand_now is None:
        return _blind(classes, settings, state, now, caps, factors, notes, new_memory,
                      demand_note, cap_before)
    demand = (*_window(state.demand, now, settings.stable_window_s), (now, demand_now))
    stable = sum(p[1] for p in demand) / len(demand)
    # 3. this tick's target (panic adds the backlog), 4. the stabilized one
    # Follow the latest window at once when it needs more than the mix has; otherwise the
    # smoothed demand, so that the noise of one short window never becomes capacity.
    grow = (1 + settings.headroom) * demand_now > cap_before
    load = max(stable, demand_now) if grow else stable
    if panics:
        load = max(stable, demand_now + backlog / settings.drain_s)
    target_now = load * (1 + settings.headroom)
    if settings.max_throughput_rps is not None:
        target_now = min(target_now, settings.max_throughput_rps)
    targets = _push_max(state.targets, now, target_now, settings.stabilization_s)
    target = targets[0][1]

    # 5. the mix
    rooms = [c.replicas + c.free_replicas if ok else 0
             for c, ok in zip(classes, usable, strict=True)]
    costs = [c.cost_per_hour for c in classes]
    within = (
        settings.min_replicas <= sum(current) <= settings.max_replicas
        and all(n <= r for n, r in zip(current, rooms, strict=True))
    )
    mode, chosen, why, feasible = _choose(
        classes, settings, state, now, current, rooms, plan_caps, costs, target, within,
        bool(panics),
    )
    if mode in (Mode.PANIC, Mode.SCALE_UP, Mode.INFEASIBLE):
        chosen, bridged = _bridge(classes, settings, current, chosen, rooms, plan_caps, costs)
        if bridged:
            why = (why + "; " if why else "") + bridged
    # a class that broke the SLO must not be counted at more than it carried, this tick
    capacity = sum(n * q for n, q in zip(chosen, plan_caps, strict=True))
    scaled_up = any(n > m for n, m in zip(chosen, current, strict=True))
    scaled_down = any(n < m for n, m in zip(chosen, current, strict=True))
    new_state = AutoscaleState(
        demand=demand,
        targets=targets,
        classes=MappingProxyType(new_memory),
        last_scale_up=now if scaled_up else state.last_scale_up,
        last_scale_down=now if scaled_down else state.last_scale_down,
    )
    inputs = ScaleInputs(
        demand_now_rps=demand_now,
        demand_stable_rps=stable,
        backlog=backlog,
        target_now_rps=target_now,
        target_rps=target,
        capacity_before_rps=cap_before,
        panic=tuple(panics),
    )
    reason = _sentence(mode, inputs, settings, why, demand_note, classes, chosen)
    return ScaleDecision(
        at=now,
        mode=mode,
        reason=reason,
        classes=_scales(classes, chosen, caps, factors, notes),
        capacity_rps=capacity,
        cost_per_hour=sum(n * p for n, p in zip(chosen, costs, strict=True)),
        feasible=feasible,
        changed=chosen != current,
        inputs=inputs,
        state=new_state,
    )


def _unusable(c: ClassInput, settings: AutoscaleSettings) -> str:
    if c.profile is None:
        return "unused: no latency profile"
    if c.profile.latency_b1_ms > settings.slo_ms:
        return (f"unused: batch-1 p99 {c.profile.latency_b1_ms:.3g} ms > SLO "
                f"{settings.slo_ms:g} ms")
    return f"unused: no batch size holds the {settings.slo_ms:g} ms SLO under load"


def _choose(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    state: AutoscaleState,
    now: float,
    current: list[int],
    rooms: list[int],
    caps: list[float],
    costs: list[float],
    target: float,
    within: bool,
    panic: bool,
) -> tuple[Mode, list[int], str, bool]:
    """(mode, replicas per class, what decided it, feasible)."""
    lo, hi = settings.min_replicas, settings.max_replicas
    options = [Option(c.name, q, p, r) for c, q, p, r in zip(classes, caps, costs, rooms,
                                                             strict=True)]
    cap_now = sum(n * q for n, q in zip(current, caps, strict=True))
    cost_now = sum(n * p for n, p in zip(current, costs, strict=True))
    eps = 1e-9 * max(1.0, target)
    if within and cap_now >= target - eps:
        recent_up = (state.last_scale_up is not None
                     and now - state.last_scale_up < settings.stabilization_s)
        if recent_up:
            return Mode.HOLD, current, "within the stabilization window of the last scale-up", True
        best = solve(options, target * (1 + settings.scale_down_tolerance), lo, hi)
        if best.feasible and best.cost_per_hour < cost_now - 1e-9 * max(1.0, cost_now):
            return Mode.SCALE_DOWN, list(best.replicas), f"{cost_now:.4g}/h -> " \
                f"{best.cost_per_hour:.4g}/h", True
        return Mode.HOLD, current, "", True
    if within:
        # Add the cheapest replicas covering the shortfall on top of those running: the
        # running ones keep serving while the new ones start.
        more = [Option(o.name, o.capacity_rps, o.cost_per_hour, r - n)
                for o, r, n in zip(options, rooms, current, strict=True)]
        placed = sum(current)
        # Up to the top of the scale-down band when it fits: noise within the band then
        # asks for no further scale-up, and scale-down uses the same band.
        for aim in (target * (1 + settings.scale_down_tolerance), target):
            add = solve(more, max(0.0, aim - cap_now), max(0, lo - placed), hi - placed)
            if add.feasible:
                chosen = [n + a for n, a in zip(current, add.replicas, strict=True)]
                return (Mode.PANIC if panic else Mode.SCALE_UP), chosen, "", True
    best = solve(options, target * (1 + settings.scale_down_tolerance), lo, hi)
    if not best.feasible:
        best = solve(options, target, lo, hi)
    if best.feasible:
        if within:  # scale-up on top did not fit: re-mix the whole fleet
            return (Mode.PANIC if panic else Mode.SCALE_UP), list(best.replicas), \
                "re-mixed: no room to add on top of the running replicas", True
        return Mode.BOUNDS, list(best.replicas), "the running mix broke the bounds", True
    return _best_effort(options, rooms, caps, lo, hi, best, current)


def _bridge(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    current: list[int],
    chosen: list[int],
    rooms: list[int],
    caps: list[float],
    costs: list[float],
) -> tuple[list[int], str]:
    """Replicas of classes that start sooner, to carry the load while the slower replicas
    the plan added start (a GPU pod takes far longer than a CPU pod). They cover what the
    slow replicas add, cheapest first, within room and maxReplicas; the scale-down rule
    removes them once the stabilization window has passed."""
    added = [n - m for n, m in zip(chosen, current, strict=True)]
    slow = [i for i, a in enumerate(added) if a > 0]
    if not slow:
        return chosen, ""
    latest = max(classes[i].startup_s for i in slow)
    gap = sum(added[i] * caps[i] for i in slow if classes[i].startup_s >= latest)
    fast = sorted(
        (i for i, c in enumerate(classes) if c.startup_s < latest and caps[i] > 0),
        key=lambda i: (costs[i] / caps[i], classes[i].startup_s),
    )
    out = list(chosen)
    budget = settings.max_replicas - sum(out)
    notes = []
    for i in fast:
        if gap <= 0 or budget <= 0:
            break
        take = min(rooms[i] - out[i], budget, math.ceil(gap / caps[i]))
        if take > 0:
            out[i] += take
            budget -= take
            gap -= take * caps[i]
            notes.append(f"{classes[i].name} +{take}")
    if not notes:
        return chosen, ""
    return out, ("bridging the start-up of the slower replicas with " + ", ".join(notes))


def _best_effort(
    options: Sequence[Option],
    rooms: list[int],
    caps: list[float],
    lo: int,
    hi: int,
    failed: Solution,
    current: list[int],
) -> tuple[Mode, list[int], str, bool]:
    """No mix covers the target: the cheapest mix of the most capacity the bounds allow
    (or, when even min cannot be placed, the current replicas, changed by nothing)."""
    why = "; ".join(failed.problems) or "no mix covers the target"
    reach = max_capacity(caps, rooms, hi)
    most = solve(options, reach * (1 - 1e-9), min(lo, sum(rooms)), hi)
    if most.feasible and sum(most.replicas) >= lo:
        return Mode.INFEASIBLE, list(most.replicas), why, False
    return Mode.INFEASIBLE, current, why, False


def _blind(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    state: AutoscaleState,
    now: float,
    caps: list[float],
    factors: list[float],
    notes: list[str],
    memory: dict[str, ClassMemory],
    why: str,
    cap_before: float,
) -> ScaleDecision:
    """Nothing measured: keep every replica (a failed scrape must never look like idle)."""
    current = [c.replicas for c in classes]
    keep = AutoscaleState(
        demand=_window(state.demand, now, settings.stable_window_s),
        targets=state.targets,
        classes=MappingProxyType(memory),
        last_scale_up=state.last_scale_up,
        last_scale_down=state.last_scale_down,
    )
    stable = sum(p[1] for p in keep.demand) / len(keep.demand) if keep.demand else 0.0
    target = state.targets[0][1] if state.targets else 0.0
    inputs = ScaleInputs(None, stable, 0.0, target, target, cap_before, ())
    return ScaleDecision(
        at=now,
        mode=Mode.BLIND,
        reason=f"holding {sum(current)} replicas: {why}; load unknown, not zero",
        classes=_scales(classes, current, caps, factors, notes),
        capacity_rps=cap_before,
        cost_per_hour=sum(n * c.cost_per_hour for n, c in zip(current, classes, strict=True)),
        feasible=True,
        changed=False,
        inputs=inputs,
        state=keep,
    )


def _scales(
    classes: Sequence[ClassInput],
    chosen: Sequence[int],
    caps: Sequence[float],
    factors: Sequence[float],
    notes: Sequence[str],
) -> tuple[ClassScale, ...]:
    # Route by ready capacity that stays; before any is ready, by the capacity ordered.
    ready = [min(c.ready_replicas, n) * q for c, n, q in zip(classes, chosen, caps, strict=True)]
    if not any(ready):
        ready = [n * q for n, q in zip(chosen, caps, strict=True)]
    weights = traffic_weights(ready)
    return tuple(
        ClassScale(
            name=c.name,
            replicas=n,
            previous=c.replicas,
            capacity_rps=q,
            profile_capacity_rps=c.profile.capacity_rps if c.profile else 0.0,
            correction=k,
            weight=w,
            observed_rps=c.observed.rate_rps if c.observed else None,
            p99_ms=c.observed.p99_ms if c.observed else None,
            note=note,
        )
        for c, n, q, k, w, note in zip(classes, chosen, caps, factors, weights, notes,
                                       strict=True)
    )


def _sentence(
    mode: Mode,
    inputs: ScaleInputs,
    settings: AutoscaleSettings,
    why: str,
    demand_note: str,
    classes: Sequence[ClassInput],
    chosen: Sequence[int],
) -> str:
    head = {
        Mode.HOLD: "holding",
        Mode.SCALE_UP: "scaling up",
        Mode.PANIC: "panic scale-up",
        Mode.SCALE_DOWN: "scaling down",
        Mode.BOUNDS: "re-planning",
        Mode.INFEASIBLE: "cannot cover the target",
        Mode.BLIND: "holding",
    }[mode]
    if inputs.panic:
        head += " (" + "; ".join(inputs.panic) + ")"
    text = (
        f"{head}: demand {_fmt(inputs.demand_now_rps or 0.0)} rps (mean "
        f"{_fmt(inputs.demand_stable_rps)} over {settings.stable_window_s:g} s), target "
        f"{_fmt(inputs.target_rps)} rps with {settings.headroom:.0%} headroom (highest of "
        f"{settings.stabilization_s:g} s), capacity {_fmt(inputs.capacity_before_rps)} rps"
    )
    if inputs.panic and inputs.backlog:
        text += f", backlog {_fmt(inputs.backlog)} requests to clear in {settings.drain_s:g} s"
    changes = ", ".join(
        f"{c.name} {c.replicas}->{n}" for c, n in zip(classes, chosen, strict=True)
        if n != c.replicas
    )
    if changes:
        text += f"; {changes}"
    if why:
        text += f" ({why})"
    if demand_note:
        text += f"; {demand_note}"
    return text


__all__ = [
    "AutoscaleSettings",
    "AutoscaleState",
    "ClassInput",
    "ClassMemory",
    "ClassScale",
    "Mode",
    "ScaleDecision",
    "ScaleInputs",
    "corrected",
    "decide_scale",
]
