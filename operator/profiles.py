"""The capacity per replica the planner counts on for a class, and what the status says about
it. Pure.

A class's capacity comes from its engine's latency profile, measured on the build node. Not
where that measurement cannot be the hardware's: the dev fleet's emulated classes (qemu-user
on an x86 host) are planned from the nominal figures their nodes carry
(``NodeClass.nominal_profile``), and a profile measured under emulation
(``BuildSummary.emulated``) is never used.
"""

from __future__ import annotations

from dataclasses import replace

from infleet.api import InferenceDeploymentSpec
from infleet.api.engine import BuildSummary
from infleet.scheduler.capacity import ClassProfile, profile_from_points
from infleet.scheduler.classes import NodeClass
from infleet.scheduler.inventory import NOMINAL_PROFILE_ANNOTATION


def class_profile(spec: InferenceDeploymentSpec, cls: NodeClass, summary: BuildSummary
                  ) -> ClassProfile | None:
    """The capacity per replica the planner counts on: the engine's measured profile, except
    where it cannot be the hardware's. An emulated class is planned from its nodes' nominal
    figures; a profile measured under emulation is never used (on a real class whose engine
    was cross-built, that leaves no profile until one is measured on the hardware)."""
    if cls.key.emulated:
        return nominal_profile(spec, cls)
    if summary.emulated or not summary.profile:
        return None
    return profile_from_points(
        summary.profile, spec.slo.latency_p99_ms, spec.batching.max_queue_delay_ms,
        spec.batching.max_batch_size,
    )


def nominal_profile(spec: InferenceDeploymentSpec, cls: NodeClass) -> ClassProfile | None:
    """Capacity at the SLO from the class's nominal points, labelled as such."""
    if not cls.nominal_profile:
        return None
    profile = profile_from_points(
        cls.nominal_profile, spec.slo.latency_p99_ms, spec.batching.max_queue_delay_ms,
        spec.batching.max_batch_size,
    )
    return replace(profile, source="nominal figures (emulated class)") if profile else None


def emulation_note(spec: InferenceDeploymentSpec, cls: NodeClass) -> str:
    """What an emulated class's status says about its capacity."""
    profile = nominal_profile(spec, cls)
    if profile is None:
        return ("no usable nominal figures on its nodes (annotation "
                f"{NOMINAL_PROFILE_ANNOTATION}), so no capacity to plan replicas with")
    return (f"capacity from its nodes' nominal figures ({profile.capacity_rps:.4g} rps per "
            f"replica at the SLO, batch-1 p99 {profile.latency_b1_ms:g} ms), not measured: "
            "latency under emulation is not the hardware's; the autoscaler keeps its replicas")
