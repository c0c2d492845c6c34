"""An emulated class in the reconcile plan, on plain data: the dev fleet's qemu-user arm64 nodes
serve for real, so they are probed and take traffic, but their capacity comes from their
nodes' nominal figures (never from a latency measured under emulation), the autoscaler leaves
them alone, and the status says all of it."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from test_operator_planner import CONFIG, CPU, NODES, _serving_state, converge, snap, spec
from test_operator_scaling import obs, replicas, tick

from infleet.api import LatencyPoint
from infleet.api.config import OperatorConfig
from infleet.api.engine import BuildSummary, EngineKey
from infleet.operator.engines import EngineResult, Outcome
from infleet.operator.planner import (
    EMULATED_PROBE_TIMEOUT_S,
    ProbeResult,
    Reconcile,
    Snapshot,
    plan,
)
from infleet.scheduler.capacity import profile_from_points, traffic_weights
from infleet.scheduler.classes import derive_classes
from infleet.scheduler.hardware import EMULATED_LABEL, SIMULATED_LABEL
from infleet.scheduler.inventory import NOMINAL_PROFILE_ANNOTATION, node_from_object
from infleet.scheduler.settings import cluster_policy

ARM = "arm64-asimddp-infleet-qemu"
NOMINAL = [{"batch_size": 1, "p50_ms": 11.4, "p99_ms": 17.1, "throughput_ips": 88},
           {"batch_size": 4, "p50_ms": 38.1, "p99_ms": 57.2, "throughput_ips": 105}]
# What the build measured under qemu: a second per batch of 4. Were it taken for the
# hardware's, the class would break a 50 ms SLO and get nothing.
EMULATED = [LatencyPoint(batch_size=4, p50_ms=990.0, p99_ms=1040.0, throughput_ips=4.0)]
NFD = "feature.node.kubernetes.io/cpu-cpuid."


def arm_node(annotation: str | None) -> Any:
    annotations = {NOMINAL_PROFILE_ANNOTATION: annotation} if annotation is not None else {}
    return node_from_object({
        "metadata": {"name": "arm64-qemu-0", "annotations": annotations, "labels": {
            "kubernetes.io/hostname": "arm64-qemu-0", "kubernetes.io/arch": "arm64",
            "node.kubernetes.io/instance-type": "infleet-qemu", NFD + "ASIMDDP": "true",
            NFD + "ASIMDHP": "true", SIMULATED_LABEL: "false", EMULATED_LABEL: "true"}},
        "status": {"allocatable": {"cpu": "2", "memory": "8Gi"}},
    })


# The emulated class priced below the CPU class, so the planner gives it replicas.
EMU_CONFIG = OperatorConfig.model_validate({
    **CONFIG.model_dump(by_alias=True, exclude_none=True),
    "classes": {CPU: {"costPerHour": 0.1}, ARM: {"costPerHour": 0.01}},
})
SPEC = spec(classes={"allow": [CPU, ARM]})


def base(annotation: str | None = json.dumps(NOMINAL)) -> Snapshot:
    classes = tuple(derive_classes([*NODES, arm_node(annotation)]))
    return snap(spec=SPEC, classes=classes, config=EMU_CONFIG, policy=cluster_policy(EMU_CONFIG))


def built(s: Snapshot) -> dict[str, EngineResult]:
    """Both classes' engines: ORT measured on the x86 node, TVM gated under qemu."""
    out = {}
    for c in plan(s).status.classes:
        if c.excluded:
            continue
        emulated = c.name == ARM
        key = EngineKey(model_sha256="a" * 64, backend="tvm" if emulated else "onnxruntime",
                        backend_version="1", precision="fp32", hardware_fingerprint="hw1-x",
                        builder_version="b")
        profile = EMULATED if emulated else [
            LatencyPoint(batch_size=1, p50_ms=2.0, p99_ms=3.0, throughput_ips=400.0),
            LatencyPoint(batch_size=8, p50_ms=8.0, p99_ms=10.0, throughput_ips=900.0)]
        sm = BuildSummary(engine_key=("a" if emulated else "e") * 32, key=key,
                          backend=key.backend, precision="fp32", node_class=c.name,
                          profile=profile, emulated=emulated)
        out[c.engine.build_key] = EngineResult(Outcome.SUCCEEDED, summary=sm,
                                               finished_at="2026-12-01T11:00:00Z")
    return out


def serving_both() -> tuple[Snapshot, Reconcile]:
    s = base()
    s, _ = converge(replace(s, records=built(s)))
    sets, pods = _serving_state(s, {CPU: 1, ARM: 1})
    s = replace(s, serving=sets, pods=pods)
    # A real process serves there: it is sent a test inference, with time for the emulator.
    targets = {t.node_class: t.timeout_s for t in plan(s).probes}
    assert targets == {CPU: None, ARM: EMULATED_PROBE_TIMEOUT_S}
    probes = {CPU: ProbeResult(True, "e" * 32, "ok", s.now),
              ARM: ProbeResult(True, "a" * 32, "ok", s.now)}
    return converge(replace(s, probes=probes))


def test_the_emulated_class_serves_with_nominal_capacity_and_says_so() -> None:
    _, r = serving_both()
    cls = {c.name: c for c in r.status.classes}
    arm = cls[ARM]
    assert arm.emulated and not arm.simulated and arm.verified
    assert arm.engine.emulated and arm.engine.profile == EMULATED  # recorded, marked emulated
    assert "qemu-user" in arm.reason and "nominal figures (88 rps per replica" in arm.reason
    assert "not measured" in arm.reason and "ONNX Runtime fallback is not tried" in arm.reason
    assert not cls[CPU].emulated and not cls[CPU].engine.emulated
    # Weights by Ready capacity: the CPU class's measured profile, the emulated class's
    # nominal one (88 rps at batch 1: batch 4's nominal p99 breaks the 50 ms SLO).
    nominal = profile_from_points([LatencyPoint.model_validate(p) for p in NOMINAL], 50, 2, 8)
    measured = profile_from_points(built(base())[cls[CPU].engine.build_key].summary.profile,
                                   50, 2, 8)
    assert nominal is not None and measured is not None and nominal.capacity_rps == 88
    assert (arm.weight, cls[CPU].weight) == traffic_weights(
        [nominal.capacity_rps, measured.capacity_rps])
    assert 0 < arm.weight < cls[CPU].weight
    available = next(c for c in r.status.conditions if c.type == "Available")
    assert available.status == "True" and f"emulated (qemu-user, nominal capacity): {ARM}" in \
        available.message


def test_the_autoscaler_leaves_the_emulated_class_alone() -> None:
    s, _ = serving_both()
    before = s.serving[ARM].replicas
    # The emulated class is far over the SLO (it runs under qemu); the native one is fine.
    r = tick(s, {CPU: obs(50.0, 5.0), ARM: obs(2.0, 900.0)})
    assert r.scale is not None and r.scale.decision is not None
    assert ARM not in r.scale.replicas and ARM not in r.scale.corrections
    assert r.scale.decision.mode.value != "panic"
    assert replicas(r).get(ARM, before) == before
    arm = next(c for c in r.status.classes if c.name == ARM)
    assert arm.observed.capacity_rps is None  # nothing learnt from its latency


def test_an_emulated_class_without_nominal_figures_gets_no_replicas_and_says_why() -> None:
    for annotation in (None, "not json", "[]", json.dumps([{"batch_size": 1}])):
        s = base(annotation)
        s, r = converge(replace(s, records=built(s)))
        arm = next(c for c in r.status.classes if c.name == ARM)
        assert not arm.excluded and arm.desired_replicas == 0, annotation
        assert "no usable nominal figures" in arm.reason, annotation


def test_the_engine_of_an_emulated_class_is_the_hardwares() -> None:
    """The engine's hardware fingerprint (hence the build key and the store's engine) leaves
    emulation out: a real arm64 node with the same labels gets the same engine."""
    arm = next(c for c in base().classes if c.name == ARM)
    assert arm.key.emulated and "emulated" not in arm.key.engine_fields()
    assert replace(arm.key, emulated=False).fingerprint() == arm.fingerprint
    assert arm.name != replace(arm.key, emulated=False, instance_type="c6g-xlarge").name
