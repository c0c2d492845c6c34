"""Backend and precision per class: the default table, overrides, gates and exclusions."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from infleet.api import Backend, InferenceDeploymentSpec, parse_spec
from infleet.api import Precision as P
from infleet.api.spec import selector_matches
from infleet.scheduler.classes import NodeClass, derive_classes
from infleet.scheduler.inventory import Resources, nodes_from_documents
from infleet.scheduler.policy import (
    ClassDefaults,
    ClusterPolicy,
    ModelFacts,
    decide,
)

ROOT = Path(__file__).resolve().parents[2]
GB = 10**9


def classes() -> dict[str, NodeClass]:
    text = (ROOT / "tests" / "fixtures" / "inventories" / "cloud-mixed.yaml").read_text()
    return {c.name: c for c in derive_classes(nodes_from_documents(list(yaml.safe_load_all(text))))}


CLASSES = classes()
H100 = CLASSES["nvidia-h100-80gb-p5-48xlarge"]
A100 = CLASSES["nvidia-a100-40gb-p4d-24xlarge"]
L4 = CLASSES["nvidia-l4-24gb-g6-2xlarge"]
T4 = CLASSES["nvidia-t4-16gb-g4dn-xlarge"]
NOGFD = CLASSES["nvidia-gpu"]
AMX = CLASSES["x86-amx-m7i-4xlarge"]
ICL = CLASSES["x86-avx512vnni-m6i-4xlarge"]
X86 = CLASSES["x86"]
G3 = CLASSES["arm64-sve-c7g-4xlarge"]
ALTRA = CLASSES["arm64-asimddp"]


def spec(**changes: Any) -> InferenceDeploymentSpec:
    raw: dict[str, Any] = {"model": {"uri": "file:///models/m.onnx"}, "slo": {"latencyP99Ms": 25}}
    raw.update(changes)
    return parse_spec(raw)


BUDGET = {"accuracy": {"metric": "cosine", "maxDeviation": 0.01}}


@pytest.mark.parametrize(
    ("cls", "backend", "with_budget", "without_budget", "reason"),
    [
        (H100, Backend.TENSORRT, (P.FP8, P.INT8, P.FP16, P.FP32), (P.FP16, P.FP32),
         "TensorRT: NVIDIA compute 9.0"),
        (L4, Backend.TENSORRT, (P.FP8, P.INT8, P.FP16, P.FP32), (P.FP16, P.FP32),
         "TensorRT: NVIDIA compute 8.9"),
        (A100, Backend.TENSORRT, (P.INT8, P.FP16, P.FP32), (P.FP16, P.FP32),
         "TensorRT: NVIDIA compute 8.0"),
        (T4, Backend.TENSORRT, (P.INT8, P.FP16, P.FP32), (P.FP16, P.FP32),
         "TensorRT: NVIDIA compute 7.5"),
        (NOGFD, Backend.TENSORRT, (P.FP16, P.FP32), (P.FP16, P.FP32), "compute capability unknown"),
        (AMX, Backend.ONNXRUNTIME, (P.INT8, P.FP32), (P.FP32,), "ONNX Runtime: x86 with AMXINT8"),
        (ICL, Backend.ONNXRUNTIME, (P.INT8, P.FP32), (P.FP32,), "x86 with AVX512VNNI"),
        (X86, Backend.ONNXRUNTIME, (P.FP32,), (P.FP32,), "x86 without VNNI/AMX"),
        (G3, Backend.TVM, (P.FP16, P.FP32), (P.FP16, P.FP32), "TVM: arm64 with FP16"),
        (ALTRA, Backend.TVM, (P.FP16, P.FP32), (P.FP16, P.FP32), "TVM: arm64 with FP16"),
    ],
)
def test_default_table(
    cls: NodeClass,
    backend: Backend,
    with_budget: tuple[P, ...],
    without_budget: tuple[P, ...],
    reason: str,
) -> None:
    d = decide(cls, spec(**BUDGET))
    assert (d.backend, d.ladder, d.excluded) == (backend, with_budget, False)
    assert reason in d.reasons[0]
    d = decide(cls, spec())
    assert (d.backend, d.ladder) == (backend, without_budget)
    if P.INT8 in with_budget:
        assert "INT8 skipped: no accuracy budget (spec.accuracy.maxDeviation)" in d.reasons


def test_fp8_needs_ada_or_hopper_and_fp16_has_a_default_gate() -> None:
    d = decide(T4, spec(**BUDGET, classes={"overrides": [{"class": "nvidia-t4", "precision":
                                                          "fp8"}]}))
    assert d.exclusion == "no precision left: FP8 skipped: needs compute >= 8.9 (this class: 7.5)"
    d = decide(H100, spec())
    assert "FP16 gated at default cosine <= 0.001" in d.reasons


def test_pinned_int8_without_a_budget_is_refused_not_silently_built() -> None:
    d = decide(AMX, spec(classes={"overrides": [{"class": "x86-amx", "precision": "int8"}]}))
    assert d.excluded
    assert d.exclusion == (
        "no precision left: INT8 skipped: no accuracy budget (spec.accuracy.maxDeviation)"
    )


def test_deployment_override_beats_cluster_override_beats_default() -> None:
    cluster = ClusterPolicy(class_defaults=MappingProxyType({
        "arm64": ClassDefaults(backend=Backend.ONNXRUNTIME, cost_per_hour=0.5),
        "arm64-sve": ClassDefaults(precision_ladder=(P.FP32,)),
    }))
    d = decide(G3, spec(), cluster)
    # The most specific selector (arm64-sve) wins: the ladder is overridden, not the backend.
    assert d.backend == Backend.TVM and d.ladder == (P.FP32,)
    assert "ladder FP32: operator config classes.arm64-sve" in d.reasons
    d = decide(ALTRA, spec(), cluster)
    assert d.backend == Backend.ONNXRUNTIME and d.ladder == (P.FP32,)
    assert d.cost_per_hour == 0.5 and not d.cost_estimated
    d = decide(ALTRA, spec(classes={"overrides": [{"class": "arm64-asimddp", "backend": "tvm"}]}),
               cluster)
    assert d.backend == Backend.TVM and d.ladder == (P.FP16, P.FP32)
    assert "TVM: spec.classes.overrides[arm64-asimddp]" in d.reasons


@pytest.mark.parametrize(
    ("cls", "backend", "message"),
    [
        (AMX, "tensorrt", "TensorRT needs an NVIDIA GPU"),
        (H100, "tvm", "infleet's TVM builder targets CPUs"),
    ],
)
def test_impossible_backends_exclude_the_class(cls: NodeClass, backend: str, message: str) -> None:
    d = decide(cls, spec(classes={"overrides": [{"class": cls.name, "backend": backend}]}))
    assert d.excluded and d.exclusion is not None and message in d.exclusion
    assert d.reasons[-1].startswith("excluded: ")


def test_onnxruntime_on_a_gpu_uses_cuda_precisions() -> None:
    d = decide(A100, spec(**BUDGET, classes={"overrides": [{"class": "nvidia-a100",
                                                            "backend": "onnxruntime"}]}))
    assert d.backend == Backend.ONNXRUNTIME and d.ladder == (P.FP16, P.FP32)


def test_gpu_memory_drops_rungs_then_excludes() -> None:
    # 30 GB of FP32 weights: FP32 does not fit a 24 GB L4 or a 16 GB T4, FP16 (15 GB) fits L4.
    model = ModelFacts(size_bytes=30 * GB)
    d = decide(L4, spec(), model=model)
    assert d.ladder == (P.FP16,)
    assert any(r.startswith("FP32 skipped: 27.9 GiB weights + 1.5 GiB workspace exceed 22.5 GiB")
               for r in d.reasons)
    d = decide(T4, spec(), model=model)
    assert d.exclusion is not None and d.exclusion.startswith("no precision left: ")
    assert "FP32 skipped: 27.9 GiB weights + 1.5 GiB workspace exceed 15.0 GiB" in d.exclusion
    d = decide(H100, spec(), model=model)
    assert d.ladder == (P.FP16, P.FP32)


def test_unsupported_operators_exclude_with_their_names() -> None:
    model = ModelFacts(unsupported_ops=MappingProxyType({Backend.TVM: ("NonMaxSuppression",)}))
    d = decide(G3, spec(), model=model)
    assert d.exclusion == "TVM cannot run operators: NonMaxSuppression"
    assert not decide(AMX, spec(), model=model).excluded


def test_allow_list_uses_dash_bounded_prefixes() -> None:
    s = spec(classes={"allow": ["nvidia-h100", "x86-amx"]})
    assert not decide(H100, s).excluded
    assert not decide(AMX, s).excluded
    assert decide(A100, s).exclusion == "not in spec.classes.allow"
    assert selector_matches("x86", "x86-amx") and not selector_matches("x86-a", "x86-amx")


def test_replica_memory_grows_with_the_model_and_must_fit_a_node() -> None:
    d = decide(X86, spec(), model=ModelFacts(size_bytes=20 * GB))
    # plain-x86-1 offers 32 GiB; the replica needs 2 x 20 GB + 0.5 GiB.
    assert d.replica.memory_bytes == 40 * GB + 2**29
    gpu = decide(L4, spec(), model=ModelFacts(size_bytes=20 * GB))
    assert gpu.replica.memory_bytes == 20 * GB + 2**29  # the FP32 engine, once
    assert d.excluded and "the largest node offers 8 CPU, 32.0 GiB" in (d.exclusion or "")


def test_estimated_cost_follows_the_gpu_model() -> None:
    h100 = decide(H100, spec())
    t4 = decide(T4, spec())
    assert h100.cost_estimated and t4.cost_estimated
    assert h100.cost_per_hour > 10 * t4.cost_per_hour


def test_operator_config_sets_replica_size_and_cost() -> None:
    from infleet.api.config import OperatorConfig
    from infleet.scheduler.settings import cluster_policy

    config = OperatorConfig.model_validate({
        "cpuReplica": {"cpu": "1", "memory": "2Gi"},
        "classes": {
            "nvidia-t4": {"costPerHour": 0.5, "replica": {"cpu": "3", "memory": "6Gi"}},
            "x86": {"precisionLadder": ["fp32"]},
        },
    })
    policy = cluster_policy(config)
    t4 = decide(T4, spec(), policy)
    assert t4.replica == Resources(3000, 6 * 2**30, 1) and t4.cost_per_hour == 0.5
    amx = decide(AMX, spec(**BUDGET), policy)
    assert amx.replica == Resources(1000, 2 * 2**30, 0)
    assert amx.ladder == (P.FP32,) and "ladder FP32: operator config classes.x86" in amx.reasons
