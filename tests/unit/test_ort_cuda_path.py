"""The ONNX Runtime builder's CUDA path where there is no GPU, with the real onnxruntime: FP16
offered on GPU classes only, and a session that ORT silently moved to the CPU refused instead
of gated and profiled as a GPU engine (asked for the CUDA provider it cannot create, ORT warns
and builds a CPU session; this machine's CPU-only onnxruntime does exactly that). The path
itself ran on an H100 with bench/gpu_onnxruntime.py; tests/gpu has the test that needs the GPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from infleet.api import Precision  # noqa: E402
from infleet.runtime.builders import onnxruntime as ortb  # noqa: E402
from infleet.runtime.errors import BackendUnavailable  # noqa: E402
from infleet.runtime.hardware import target_for  # noqa: E402
from infleet.runtime.zoo import synthetic  # noqa: E402
from infleet.scheduler.hardware import cpu_key, gpu_key  # noqa: E402

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
GPU = target_for(gpu_key("amd64", "NVIDIA-H100-80GB-HBM3", 81559, (9, 0)))
CPU = target_for(cpu_key("amd64" if GPU.is_host() else "arm64", ["AVX2", "ASIMDDP"]))

needs_cpu_only_ort = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime has a CUDA provider: tests/gpu covers it",
)


def _with_providers(available: list[str]) -> SimpleNamespace:
    """The real onnxruntime, but reporting other available providers: the one fault injected
    here, to reach the branch a CUDA build of onnxruntime takes."""
    return SimpleNamespace(
        __version__=ort.__version__,
        get_available_providers=lambda: available,
        InferenceSession=ort.InferenceSession,
    )


def test_precisions_offered_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ortb, "_ort", lambda: _with_providers(CUDA))
    builder = ortb.OnnxRuntimeBuilder()
    assert builder.unsupported(Precision.FP16, GPU) is None
    assert builder.unsupported(Precision.FP32, GPU) is None
    assert "not offered" in (builder.unsupported(Precision.FP16, CPU) or "")
    assert "not offered" in (builder.unsupported(Precision.FP8, GPU) or "")
    assert "TensorRT" in (builder.unsupported(Precision.INT8, GPU) or "")
    assert builder.unsupported(Precision.INT8, CPU) is None


@needs_cpu_only_ort
def test_gpu_class_without_cuda_provider_is_unsupported() -> None:
    reason = ortb.OnnxRuntimeBuilder().unsupported(Precision.FP32, GPU)
    assert reason is not None and "no CUDA provider" in reason


@needs_cpu_only_ort
def test_silent_cpu_fallback_is_an_error(tmp_path: Path) -> None:
    model = str(synthetic.mlp(tmp_path / "mlp.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ORT's own warning about the missing provider
        with pytest.raises(BackendUnavailable, match="fell back to CPUExecutionProvider"):
            ortb.cuda_session(ort, model, ort.SessionOptions(), CUDA)
    # Asked for the CPU only, the same call gives the CPU session.
    cpu = ortb.cuda_session(ort, model, ort.SessionOptions(), ["CPUExecutionProvider"])
    assert cpu.get_providers() == ["CPUExecutionProvider"]


@needs_cpu_only_ort
def test_build_refuses_a_gpu_engine_built_on_the_cpu(tmp_path: Path) -> None:
    model = synthetic.mlp(tmp_path / "mlp.onnx")
    job = SimpleNamespace(model_path=model, target=GPU, threads=1, work_dir=tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BackendUnavailable, match="CUDA"):
            ortb.OnnxRuntimeBuilder().build(job, Precision.FP32, out)  # type: ignore[arg-type]


def test_cpu_build_records_the_providers_used(tmp_path: Path) -> None:
    model = synthetic.mlp(tmp_path / "mlp.onnx")
    job = SimpleNamespace(model_path=model, target=CPU, threads=1, work_dir=tmp_path)
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
