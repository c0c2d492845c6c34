"""What a decision says: the mode, replicas and weight per class, the numbers it rests on,
and the sentence for status and Events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from infleet.scheduler.autoscale.settings import AutoscaleSettings, ClassInput, fmt
from infleet.scheduler.autoscale.state import AutoscaleState
from infleet.scheduler.capacity import traffic_weights


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



def class_scales(
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


def sentence(
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
        f"{head}: demand {fmt(inputs.demand_now_rps or 0.0)} rps (mean "
        f"{fmt(inputs.demand_stable_rps)} over {settings.stable_window_s:g} s), target "
        f"{fmt(inputs.target_rps)} rps with {settings.headroom:.0%} headroom (highest of "
        f"{settings.stabilization_s:g} s), capacity {fmt(inputs.capacity_before_rps)} rps"
    )
    if inputs.panic and inputs.backlog:
        text += f", backlog {fmt(inputs.backlog)} requests to clear in {settings.drain_s:g} s"
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

