"""ONNX Runtime's CUDA path on a real NVIDIA GPU: build (FP16 kept, gated against the FP32 CPU
reference, profiled on the GPU), then the server's engine loaded with ``--device gpu``.

CI has no GPU: there these tests are skipped, and they are not CI coverage. They run where
onnxruntime-gpu sees a GPU (`pytest -m gpu tests/gpu`); hack/device/gpu.sh and
bench/gpu_onnxruntime.py are the end-to-end check that ran on an H100.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from infleet.api import Backend, Precision  # noqa: E402
from infleet.runtime.build import BuildRequest, build  # noqa: E402
from infleet.runtime.hardware import host_key  # noqa: E402
from infleet.runtime.manifest import MANIFEST_FILE, EngineManifest  # noqa: E402
from infleet.runtime.server.engines import EngineOptions, load_engine  # noqa: E402
from infleet.runtime.zoo import synthetic  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers()
        or shutil.which("nvidia-smi") is None,
        reason="needs onnxruntime-gpu and an NVIDIA GPU (CI has none)",
    ),
]


def test_fp16_engine_built_gated_profiled_and_served_on_cuda(tmp_path: Path) -> None:
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    hardware = host_key()  # the GPU the driver shows, as GFD would label it
    assert hardware.is_gpu and hardware.compute is not None, hardware
    summary = build(
        BuildRequest(
            model_uri=f"file://{model}",
            hardware=hardware,
            node_class="nvidia-gpu",
            store=tmp_path / "store",
            backends=(Backend.ONNXRUNTIME,),
            ladder=(Precision.FP16, Precision.FP32),
            max_deviation=0.01,
            model_name="cnn",
            profile_seconds=0.2,
        )
    )
    assert summary.precision == Precision.FP16
    assert summary.accuracy[0].passed
    engine_dir = tmp_path / "store" / "engines" / summary.engine_key
    manifest = EngineManifest.model_validate_json((engine_dir / MANIFEST_FILE).read_bytes())
    assert manifest.options["providers_used"].startswith("CUDAExecutionProvider")
    assert [p.batch_size for p in summary.profile] == [1, 2, 4, 8]

    engine = load_engine(manifest, engine_dir, EngineOptions(device="gpu"))
    try:
        assert "CUDAExecutionProvider" in engine.description
        assert engine.warm_batch_sizes == (1, 8)  # 3 rows run padded to 8
        x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
        name = manifest.inputs[0].name
        got = next(iter(engine.run({name: x}).values()))
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        want = ref.run(None, {name: x})[0]
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
    finally:
        engine.close()


@pytest.mark.parametrize("mode", ["iobinding", "graph"])
def test_bound_and_graph_sessions_answer_each_new_batch_correctly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # IOBinding reuses device buffers and a CUDA graph replays a captured kernel sequence: a
    # bug there answers a new batch with the previous batch's outputs, so every run below
    # sends different data (and different row counts, padded to the warm sizes) and checks it.
    monkeypatch.setenv("INFLEET_ORT_CUDA_BINDING", mode)
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    summary = build(
        BuildRequest(
            model_uri=f"file://{model}",
            hardware=host_key(),
            node_class="nvidia-gpu",
            store=tmp_path / "store",
            backends=(Backend.ONNXRUNTIME,),
            ladder=(Precision.FP32,),
            max_deviation=0.01,
            model_name="cnn",
            profile_seconds=0.1,
        )
    )
    engine_dir = tmp_path / "store" / "engines" / summary.engine_key
    manifest = EngineManifest.model_validate_json((engine_dir / MANIFEST_FILE).read_bytes())
    engine = load_engine(manifest, engine_dir, EngineOptions(device="gpu"))
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = manifest.inputs[0].name
    rng = np.random.default_rng(1)
    try:
        assert mode in engine.description, engine.description
        previous = None
        for rows in (1, 8, 3, 1, 8, 5):
            x = rng.standard_normal((rows, 3, 32, 32)).astype(np.float32)
            got = next(iter(engine.run({name: x}).values()))
            want = ref.run(None, {name: x})[0]
            assert got.shape == want.shape
            # cuDNN's TF32 convolutions differ from the CPU by ~1e-3; a stale answer by ~1.
            np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
            if previous is not None and previous.shape == got.shape:
                assert np.abs(got - previous).max() > 0.1  # not the last batch's answer
            previous = got
    finally:
        engine.close()
