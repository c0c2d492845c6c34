"""Per-class profiles (capacity per replica at the SLO, batch-1 latency) from plain data.

Two sources: a ``ClassProfiles`` file (``examples/profiles-dev.yaml``) that states them per
class selector, directly or as measured latency points, and the engine profiles an operator
wrote into an InferenceDeployment's ``status.classes[].engine.profile``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infleet.api import InferenceDeploymentSpec, InferenceDeploymentStatus, LatencyPoint
from infleet.scheduler.capacity import ClassProfile, profile_from_points
from infleet.scheduler.errors import ProfileError


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ProfileEntry(_File):
    capacity_rps: Annotated[float | None, Field(ge=0, alias="capacityRps")] = None
    latency_batch1_ms: Annotated[float | None, Field(gt=0, alias="latencyBatch1Ms")] = None
    points: list[LatencyPoint] | None = None
    """Measured latency per batch size, as an engine build reports it."""

    @model_validator(mode="after")
    def _one_form(self) -> ProfileEntry:
        direct = self.capacity_rps is not None and self.latency_batch1_ms is not None
        if direct == (self.points is not None):
            raise ValueError("give either capacityRps and latencyBatch1Ms, or points")
        return self


class ProfilesFile(_File):
    api_version: Annotated[
        Literal["infleet.dev/v1alpha1"], Field(alias="apiVersion")
    ] = "infleet.dev/v1alpha1"
    kind: Literal["ClassProfiles"] = "ClassProfiles"
    classes: dict[str, ProfileEntry]
    """Keyed by class selector: a class name or a dash-bounded prefix of one."""


def _resolve(entry: ProfileEntry, spec: InferenceDeploymentSpec, source: str) -> ClassProfile:
    if entry.points is not None:
        prof = profile_from_points(
            entry.points,
            spec.slo.latency_p99_ms,
            spec.batching.max_queue_delay_ms,
            spec.batching.max_batch_size,
        )
        if prof is None:
            raise ProfileError(f"{source}: no latency point within maxBatchSize")
        return ClassProfile(prof.capacity_rps, prof.latency_b1_ms, source)
    assert entry.capacity_rps is not None and entry.latency_batch1_ms is not None
    return ClassProfile(entry.capacity_rps, entry.latency_batch1_ms, source)


def profiles_from_data(
    raw: object, spec: InferenceDeploymentSpec, source: str = "profiles file"
) -> dict[str, ClassProfile]:
    """Profiles from a parsed ``ClassProfiles`` document."""
    try:
        parsed = ProfilesFile.model_validate(raw)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"{source}: {loc}: {first['msg']}") from e
    return {sel: _resolve(entry, spec, source) for sel, entry in parsed.classes.items()}


def profiles_from_status(
    status: Mapping[str, Any], spec: InferenceDeploymentSpec
) -> dict[str, ClassProfile]:
    """Profiles of the engines an operator built, from an object's ``status``."""
    try:
        parsed = InferenceDeploymentStatus.model_validate(status)
    except ValidationError as e:
        raise ProfileError(f"status: {e.errors(include_url=False)[0]['msg']}") from e
    out = {}
    for c in parsed.classes:
        if c.engine.profile:
            prof = profile_from_points(
                c.engine.profile,
                spec.slo.latency_p99_ms,
                spec.batching.max_queue_delay_ms,
                spec.batching.max_batch_size,
            )
            if prof is not None:
                out[c.name] = prof
    return out
