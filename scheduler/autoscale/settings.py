"""What the autoscaler is told each tick: the deployment's rules and each class as it is now."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from infleet.api import InferenceDeploymentSpec
from infleet.scheduler.capacity import ClassProfile
from infleet.scheduler.metrics import ClassObservation


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
    reserve: float = 3.0
    """Capacity held beyond the demand where it is cheap, as a fraction of the demand (3: a
    burst to four times the demand finds Ready capacity, as far as the cheap classes have
    room)."""
    reserve_cost_share: float = 0.1
    """A class is cheap when its cost per request is at most this share of the dearest
    usable class's (a class that is not cheaper than that is never held in reserve)."""
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
        if self.reserve < 0 or not 0 <= self.reserve_cost_share <= 1:
            raise ValueError("need reserve >= 0 and a reserve cost share in [0, 1]")

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

    def usable(self, slo_ms: float) -> bool:
        """Whether the class can serve this deployment at all: a profile with capacity at
        the SLO, and a single request (batch 1) on an idle replica within it."""
        return (self.profile is not None and self.profile.capacity_rps > 0
                and self.profile.latency_b1_ms <= slo_ms)

    def unusable_note(self, slo_ms: float) -> str:
        """Why :meth:`usable` says no (the class's note in the status)."""
        if self.profile is None:
            return "unused: no latency profile"
        if self.profile.latency_b1_ms > slo_ms:
            return (f"unused: batch-1 p99 {self.profile.latency_b1_ms:.3g} ms > SLO "
                    f"{slo_ms:g} ms")
        return f"unused: no batch size holds the {slo_ms:g} ms SLO under load"


def fmt(x: float) -> str:
    """A rate or count for a sentence: grouped digits from 100, three significant below."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
