"""``InferenceDeployment.status``: what infleet observed and decided.

Written only by the operator, so these models tolerate fields they do not know (a newer
operator may have written them) instead of refusing them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from infleet.api.base import ApiModel
from infleet.api.spec import Backend, Precision


class StatusModel(ApiModel):
    model_config = ConfigDict(extra="ignore")


class Phase(StrEnum):
    """Overall state of a deployment."""

    PENDING = "Pending"
    BUILDING = "Building"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class EngineState(StrEnum):
    """Lifecycle of one class's engine."""

    PENDING = "Pending"
    BUILDING = "Building"
    READY = "Ready"
    FAILED = "Failed"


class Condition(StatusModel):
    """A Kubernetes-style condition (type, status, reason, message)."""

    type: str
    """Condition type, for example Ready or EnginesBuilt."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = ""
    """One CamelCase word for machines."""
    message: str = ""
    """A sentence for people."""
    last_transition_time: str | None = None
    """RFC 3339 time the status last changed."""
    observed_generation: int | None = None
    """The spec generation this condition describes."""


class JudgedOn(StrEnum):
    """What the accuracy gate compared an engine with the reference on."""

    REAL = "real"
    """The validation data given (spec.accuracy.validation, else its calibration data)."""
    SYNTHETIC = "synthetic"
    """Random inputs: they show an engine computes the same function as the model, not that
    it is accurate on the inputs it will serve."""


FP32_NOISE_MARGIN = 2.0
"""An FP32 rung over its budget still passes when, output by output, it deviates from the
reference by at most this many times what onnxruntime's own optimisation levels do (the
reference's noise floor): that is rounding, not a loss of precision."""


class RungResult(StatusModel):
    """The accuracy gate's verdict on one precision rung."""

    precision: Precision
    """Precision that was built."""
    deviation: float | None = None
    """Measured deviation from the FP32 reference, in the spec's metric."""
    passed: bool
    """Whether the rung met the accuracy budget."""
    message: str = ""
    """Why it failed or was skipped."""
    judged_on: JudgedOn | None = None
    """Whether the rung was judged on real validation data or on synthetic inputs (absent for
    rungs skipped before any comparison)."""
    noise: float | None = None
    """The deviation, in the metric, between the reference and onnxruntime's own other
    optimisation levels on the same inputs (measured when an FP32 rung was over its budget)."""

    def admits(self, limit: float) -> bool:
        """Whether this rung's measured deviation is acceptable under ``limit``: within it, or,
        for FP32, within FP32_NOISE_MARGIN times the reference's own noise."""
        if self.deviation is None:
            return False
        if self.deviation <= limit:
            return True
        return (
            self.precision == Precision.FP32
            and self.noise is not None
            and self.deviation <= FP32_NOISE_MARGIN * self.noise
        )


class LatencyPoint(StatusModel):
    """Measured latency at one batch size on the build node."""

    batch_size: Annotated[int, Field(ge=1)]
    """Batch size measured."""
    p50_ms: float
    """Median latency of one batch, in milliseconds."""
    p99_ms: float
    """99th-percentile latency of one batch, in milliseconds."""
    throughput_ips: float
    """Inferences (rows) per second at this batch size."""


class EngineStatus(StatusModel):
    """The engine built for one class."""

    key: str = ""
    """Content address of the engine in the store (known once the build kept a rung)."""
    build_key: str = ""
    """The build request (model, backend, ladder, budget, hardware, image): names the build
    Job and the engine record; deployments with equal build keys share one engine."""
    simulated: bool = False
    """No engine was built: a simulated class of the dev fleet answered for it."""
    emulated: bool = False
    """The engine was gated under an emulator (qemu-user): its outputs were checked, its
    profile is the emulator's speed, not the hardware's."""
    state: EngineState = EngineState.PENDING
    """Pending, Building, Ready or Failed."""
    backend: Backend | None = None
    """Backend of the engine that was kept."""
    precision: Precision | None = None
    """Precision of the engine that was kept."""
    accuracy: list[RungResult] = []
    """Every rung the builder tried, with its measured deviation."""
    profile: list[LatencyPoint] = []
    """Latency and throughput per batch size."""
    message: str = ""
    """What happened, for people."""


class ObservedLoad(StatusModel):
    """Live load measured on a class's serving pods over the autoscaler's last window."""

    rps: float = 0.0
    """Requests per second that wanted the engine (answered, refused or failed)."""
    p99_ms: float | None = None
    """Observed 99th-percentile latency in milliseconds; absent when too few requests."""
    refused_rps: float = 0.0
    """Requests per second refused (queue full, overloaded)."""
    queue_depth: float = 0.0
    """Requests queued over the class's pods at the end of the window."""
    pods_unknown: int = 0
    """Pods that did not answer the scrape (their load is extrapolated, never taken as 0)."""
    capacity_rps: float | None = None
    """Capacity of one replica at the SLO that the autoscaler uses: the engine profile's,
    corrected from what the class was seen to carry."""


class AutoscalerStatus(StatusModel):
    """The autoscaler's last decision and what it rests on."""

    mode: str = ""
    """hold, scale-up, panic, scale-down, bounds, no-metrics, infeasible or pinned."""
    reason: str = ""
    """One sentence: why these replicas."""
    demand_rps: float | None = None
    """Demand over the last window (all classes)."""
    target_rps: float | None = None
    """Capacity the autoscaler provisions for: smoothed demand plus headroom, the highest of
    the stabilization window."""
    capacity_rps: float | None = None
    """Capacity of the decided mix at the SLO."""
    last_scale_time: str | None = None
    """RFC 3339 time the autoscaler last changed the replicas."""


class ClassStatus(StatusModel):
    """One node class: what infleet chose there and how it is doing."""

    name: str
    """Node class name."""
    excluded: bool = False
    """The class cannot serve this model (the reason says why)."""
    simulated: bool = False
    """A simulated class (the dev fleet's kwok nodes): no process serves there, so it takes
    no traffic."""
    emulated: bool = False
    """An emulated class (the dev fleet's qemu-user arm64 nodes): real processes serve there
    and take traffic, but at the emulator's speed; its capacity is planned from the nodes'
    nominal figures and the autoscaler does not learn from its latency."""
    verified: bool = False
    """A test inference through this class's serving pods succeeded on the current engine."""
    nodes: int = 0
    """Ready, schedulable nodes in the class."""
    backend: Backend | None = None
    """Backend chosen for this class."""
    precision: Precision | None = None
    """Precision currently served."""
    reason: str = ""
    """Why this backend and precision (or why the class is excluded)."""
    engine: EngineStatus = EngineStatus()
    """Engine build state."""
    replicas: int = 0
    """Serving replicas that exist."""
    ready_replicas: int = 0
    """Serving replicas that are ready."""
    desired_replicas: int = 0
    """Replicas the planner wants (the autoscaler's decision, or the pinned spec.replicas)."""
    problem: str = ""
    """Why serving pods of this class do not start, read from their status (an init container
    that cannot fetch the engine from the store, a container that keeps crashing); empty when
    none is known."""
    weight: int = 0
    """Share of traffic routed to this class, in percent."""
    observed: ObservedLoad = ObservedLoad()
    """Live load."""


class InferenceDeploymentStatus(StatusModel):
    """Observed state of an InferenceDeployment."""

    observed_generation: int | None = None
    """The spec generation this status describes."""
    phase: Phase = Phase.PENDING
    """Pending, Building, Ready, Degraded or Failed."""
    conditions: list[Condition] = []
    """Ready, EnginesBuilt, SpecValid and friends."""
    endpoint: str | None = None
    """URL that serves the model (Open Inference Protocol)."""
    classes: list[ClassStatus] = []
    """Per node class."""
    classes_in_use: int = 0
    """Classes with at least one desired replica."""
    replicas: int = 0
    """Serving replicas over all classes (scale subresource)."""
    ready_replicas: int = 0
    """Ready serving replicas over all classes."""
    desired_replicas: int = 0
    """Replicas wanted over all classes."""
    autoscaler: AutoscalerStatus | None = None
    """The autoscaler's last decision (absent until its first, or while spec.replicas pins)."""
    p99_ms: float | None = None
    """Observed 99th-percentile latency over all classes, in milliseconds."""
    selector: str = ""
    """Label selector of the serving pods (scale subresource)."""
