"""The ONNX Runtime builder's CUDA path, without a GPU: FP16 offered on GPU classes only, and a
session that ORT silently moved to the CPU refused instead of gated and profiled as a GPU
engine (ORT logs a warning and builds a CPU session when the CUDA provider cannot be
created). The path itself ran on an H100 with bench/gpu_onnxruntime.py; tests/gpu has the
test that needs the GPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from infleet.api import Precision  # noqa: E402
from infleet.runtime.builders import onnxruntime as ortb  # noqa: E402
from infleet.runtime.errors import BackendUnavailable  # noqa: E402
from infleet.runtime.hardware import target_for_class  # noqa: E402
from infleet.runtime.zoo import synthetic  # noqa: E402


class _Session:
    def __init__(self, used: list[str]) -> None:
        self._used = used

    def get_providers(self) -> list[str]:
        return self._used


def _fake_ort(available: list[str], used: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        __version__="1.31.1",
        get_available_providers=lambda: available,
        InferenceSession=lambda path, opts, providers: _Session(used),
    )


CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_fp16_offered_on_gpu_classes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ortb, "_ort", lambda: _fake_ort(CUDA, CUDA))
    builder = ortb.OnnxRuntimeBuilder()
    gpu = target_for_class("nvidia-h100", compute_capability=(9, 0))
    cpu = target_for_class("x86_64")
    assert builder.unsupported(Precision.FP16, gpu) is None
    assert builder.unsupported(Precision.FP32, gpu) is None
    assert "not offered" in (builder.unsupported(Precision.FP16, cpu) or "")
    assert "not offered" in (builder.unsupported(Precision.FP8, gpu) or "")
    assert "TensorRT" in (builder.unsupported(Precision.INT8, gpu) or "")


def test_gpu_class_without_cuda_provider_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ortb, "_ort", lambda: _fake_ort(["CPUExecutionProvider"], []))
    reason = ortb.OnnxRuntimeBuilder().unsupported(Precision.FP32, target_for_class("nvidia-h100"))
    assert reason is not None and "CUDA" in reason


def test_silent_cpu_fallback_is_an_error() -> None:
    fell_back = _fake_ort(CUDA, ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable, match="fell back to CPUExecutionProvider"):
        ortb.cuda_session(fell_back, "m.onnx", None, CUDA)


def test_cuda_session_and_cpu_sessions_pass() -> None:
    assert ortb.cuda_session(_fake_ort(CUDA, CUDA), "m.onnx", None, CUDA).get_providers() == CUDA
    cpu = ["CPUExecutionProvider"]
    assert ortb.cuda_session(_fake_ort(cpu, cpu), "m.onnx", None, cpu).get_providers() == cpu


def test_build_refuses_a_gpu_engine_built_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _fake_ort(CUDA, ["CPUExecutionProvider"])
    fake.SessionOptions = lambda: SimpleNamespace()
    fake.GraphOptimizationLevel = SimpleNamespace(ORT_ENABLE_ALL=99)
    monkeypatch.setattr(ortb, "_ort", lambda: fake)
    model = synthetic.mlp(tmp_path / "mlp.onnx")
    job = SimpleNamespace(
        model_path=model, target=target_for_class("nvidia-h100"), threads=1, work_dir=tmp_path
    )
    with pytest.raises(BackendUnavailable, match="CUDA"):
        ortb.OnnxRuntimeBuilder().build(job, Precision.FP32, tmp_path)  # type: ignore[arg-type]


def test_cpu_build_records_the_providers_used(tmp_path: Path) -> None:
    model = synthetic.mlp(tmp_path / "mlp.onnx")
    job = SimpleNamespace(
        model_path=model, target=target_for_class("x86_64"), threads=1, work_dir=tmp_path
    )
    out = tmp_path / "out"
    out.mkdir()
    built = ortb.OnnxRuntimeBuilder().build(job, Precision.FP32, out)  # type: ignore[arg-type]
    assert built.options["providers_used"] == "CPUExecutionProvider"
    assert (out / built.engine_file).is_file()


def test_fp16_conversion_keeps_fp32_inputs_and_outputs(tmp_path: Path) -> None:
    model = synthetic.mlp(tmp_path / "mlp.onnx")
    job = SimpleNamespace(model_path=model, work_dir=tmp_path)
    fp16 = onnx.load(str(ortb.OnnxRuntimeBuilder()._fp16(job)))  # type: ignore[arg-type]
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert all(t.type.tensor_type.elem_type == f32 for t in fp16.graph.input)
    assert all(t.type.tensor_type.elem_type == f32 for t in fp16.graph.output)
    weights = [i for i in fp16.graph.initializer if i.data_type in (f32, f16)]
    assert weights and all(i.data_type == f16 for i in weights)
    assert np.isfinite(onnx.numpy_helper.to_array(weights[0])).all()
