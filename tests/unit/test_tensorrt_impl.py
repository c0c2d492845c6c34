"""Which TensorRT implementation a GPU class gets (full TensorRT, TensorRT-RTX, or neither and
the ONNX Runtime CUDA provider), as plain data through the policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.api import Backend, InferenceDeploymentSpec, parse_spec
from infleet.api import Precision as P
from infleet.scheduler.classes import NodeClass, derive_classes
from infleet.scheduler.inventory import nodes_from_documents
from infleet.scheduler.policy import ClusterPolicy, decide
from infleet.scheduler.tensorrt_impl import TensorRtImpl, choose, rtx_runs_on, runs_on

INVENTORY = Path(__file__).resolve().parents[1] / "fixtures" / "inventories" / "cloud-mixed.yaml"
CLASSES = {
    c.name: c
    for c in derive_classes(nodes_from_documents(list(yaml.safe_load_all(INVENTORY.read_text()))))
}
H100 = CLASSES["nvidia-h100-80gb-p5-48xlarge"]
A100 = CLASSES["nvidia-a100-40gb-p4d-24xlarge"]
L4 = CLASSES["nvidia-l4-24gb-g6-2xlarge"]
T4 = CLASSES["nvidia-t4-16gb-g4dn-xlarge"]
NOGFD = CLASSES["nvidia-gpu"]
BUDGET = {"accuracy": {"metric": "cosine", "maxDeviation": 0.01}}


def spec(**changes: Any) -> InferenceDeploymentSpec:
    raw: dict[str, Any] = {"model": {"uri": "file:///models/m.onnx"}, "slo": {"latencyP99Ms": 25}}
    raw.update(changes)
    return parse_spec(raw)


FULL, RTX = TensorRtImpl.FULL, TensorRtImpl.RTX
RTX_ONLY = ClusterPolicy(tensorrt_impls=(RTX,))
FULL_ONLY = ClusterPolicy(tensorrt_impls=(FULL,))
NONE = ClusterPolicy(tensorrt_impls=())


def with_compute(cls: NodeClass, compute: tuple[int, int]) -> NodeClass:
    return dataclasses.replace(cls, key=dataclasses.replace(cls.key, compute=compute))


@pytest.mark.parametrize(
    ("compute", "runs"),
    [
        ((7, 5), False),
        ((8, 0), True),
        ((8, 6), True),
        ((8, 7), False),  # Jetson Orin: not in RTX's list
        ((8, 9), True),
        ((9, 0), False),  # H100/H200: what the H200 refused
        ((10, 0), False),  # B200 (datacenter Blackwell) is not 12.x
        ((12, 0), True),
        ((12, 1), True),
        ((12, 3), True),  # ">12.0"
    ],
)
def test_rtx_compute_list(compute: tuple[int, int], runs: bool) -> None:
    assert rtx_runs_on(compute) is runs
    assert (runs_on(RTX, compute) is None) is runs
    assert runs_on(FULL, compute) is None  # full TensorRT runs on all of these


def test_choose_prefers_full_then_rtx_then_says_why_neither() -> None:
    assert choose((FULL, RTX), (8, 9)).impl == FULL
    assert choose((RTX,), (8, 9)) == choose((RTX,), (8, 9))
    rtx = choose((RTX,), (8, 9))
    assert rtx.impl == RTX and "full TensorRT not available" in rtx.reason
    none = choose((RTX,), (9, 0))
    assert none.impl is None
    assert "not 9.0" in none.reason and "full TensorRT not available" in none.reason
    old = choose((FULL, RTX), (6, 1))
    assert old.impl is None and "full TensorRT needs compute >= 7.0" in old.reason
    assert choose((), (8, 0)).impl is None
    assert choose((RTX,), None).impl == RTX  # unknown compute: may run, the build checks


def test_h100_with_both_gets_full_tensorrt() -> None:
    d = decide(H100, spec(**BUDGET))
    assert (d.backend, d.tensorrt_impl) == (Backend.TENSORRT, FULL)
    assert d.ladder == (P.FP8, P.INT8, P.FP16, P.FP32)
    assert d.reasons[0] == "TensorRT: NVIDIA compute 9.0, full TensorRT"


def test_h100_with_rtx_only_falls_back_to_ort_cuda_and_says_why() -> None:
    d = decide(H100, spec(**BUDGET), RTX_ONLY)
    assert (d.backend, d.tensorrt_impl, d.excluded) == (Backend.ONNXRUNTIME, None, False)
    assert d.ladder == (P.FP16, P.FP32)
    assert d.reasons[0].startswith("ONNX Runtime (CUDA): TensorRT-RTX runs on compute 8.0 8.6")
    assert "not 9.0" in d.reasons[0] and "full TensorRT not available" in d.reasons[0]


@pytest.mark.parametrize(
    ("cls", "ladder"),
    [(L4, (P.FP8, P.FP16, P.FP32)), (A100, (P.FP16, P.FP32))],
)
def test_rtx_classes_get_tensorrt_rtx_without_int8(cls: NodeClass, ladder: tuple[P, ...]) -> None:
    d = decide(cls, spec(**BUDGET), RTX_ONLY)
    assert (d.backend, d.tensorrt_impl, d.ladder) == (Backend.TENSORRT, RTX, ladder)
    assert "TensorRT-RTX, full TensorRT not available" in d.reasons[0]
    assert "no INT8 rung: TensorRT-RTX has no INT8 calibration (Q/DQ models only)" in d.reason


def test_blackwell_rtx_class_and_t4_with_rtx_only() -> None:
    rtx_pro = decide(with_compute(L4, (12, 0)), spec(**BUDGET), RTX_ONLY)
    assert (rtx_pro.backend, rtx_pro.tensorrt_impl) == (Backend.TENSORRT, RTX)
    t4 = decide(T4, spec(**BUDGET), RTX_ONLY)
    assert (t4.backend, t4.tensorrt_impl) == (Backend.ONNXRUNTIME, None)
    assert "not 7.5" in t4.reason


def test_neither_implementation_anywhere_means_ort_cuda_on_every_gpu_class() -> None:
    for cls in (H100, A100, L4, T4):
        d = decide(cls, spec(**BUDGET), NONE)
        assert d.backend == Backend.ONNXRUNTIME, cls.name
        assert "full TensorRT not available; TensorRT-RTX not available" in d.reasons[0]
    unknown = decide(NOGFD, spec(), NONE)
    assert unknown.backend == Backend.ONNXRUNTIME


def test_full_only_keeps_the_old_table() -> None:
    d = decide(A100, spec(**BUDGET), FULL_ONLY)
    assert (d.tensorrt_impl, d.ladder) == (FULL, (P.INT8, P.FP16, P.FP32))


def test_tensorrt_forced_where_no_implementation_runs_excludes_with_reason() -> None:
    forced = spec(
        **BUDGET, classes={"overrides": [{"class": "nvidia-h100", "backend": "tensorrt"}]}
    )
    d = decide(H100, forced, RTX_ONLY)
    assert d.excluded and d.backend == Backend.TENSORRT
    assert d.exclusion is not None and "TensorRT cannot run on this class" in d.exclusion
    assert "not 9.0" in d.exclusion
