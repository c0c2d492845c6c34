"""TensorRT-RTX for real on an NVIDIA GPU: its ONNX parser, a network with a dynamic-batch
optimisation profile, serialization, and what happens on a GPU it does not list (the H200,
compute 9.0): the build reports a clean capability error (UnsupportedHardware, a BuildFailure
on the CLI), the server refuses the plan with TensorRT-RTX's own reason, nothing crashes. On a
GPU RTX lists (A100, L4, RTX 40/50) the same tests check that the plan builds, gates and serves.

CI has no GPU and no TensorRT-RTX: there these tests are skipped, and they are not CI coverage.
hack/device/gpu.sh carries the tensorrt-rtx-cu13 wheels to the lent H200 and runs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infleet.api import Backend, Precision
from infleet.runtime.build import BuildRequest, build
from infleet.runtime.errors import UnsupportedHardware
from infleet.runtime.hardware import host_key
from infleet.runtime.manifest import EngineManifest, TensorSpec
from infleet.runtime.server import samples
from infleet.runtime.server.engines import EngineOptions, load_engine
from infleet.runtime.server.errors import BackendUnavailable
from infleet.runtime.zoo import synthetic
from infleet.scheduler.hardware import gpu_key
from infleet.scheduler.tensorrt_impl import rtx_runs_on

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        importlib.util.find_spec("tensorrt_rtx_bindings") is None
        or importlib.util.find_spec("cuda") is None
        or shutil.which("nvidia-smi") is None,
        reason="needs tensorrt-rtx-cu13, cuda-python and an NVIDIA GPU (CI has none)",
    ),
]

L4 = gpu_key("amd64", "NVIDIA-L4", 23034, (8, 9))


@pytest.fixture(autouse=True)
def _library_chosen_by_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFLEET_TENSORRT_IMPL", raising=False)


def host_compute() -> tuple[int, int]:
    key = host_key()
    assert key.is_gpu and key.compute is not None, key
    return key.compute


def rtx_plan(model: Path, max_batch: int, target: str) -> tuple[bytes, tuple[int, ...]]:
    """Parse, build with one dynamic-batch profile (1 / 4 / max_batch) and serialize, straight
    through the library; returns the plan and the network's input shape."""
    import tensorrt_rtx_bindings as trt

    from infleet.runtime.builders.tensorrt_lib import make_logger

    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(model)), [
        parser.get_error(i) for i in range(parser.num_errors)
    ]
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    assert shape[0] == -1  # the batch stays open in the network
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    assert config.set_compute_capability(getattr(trt.ComputeCapability, target), 0)
    profile = builder.create_optimization_profile()
    rest = list(shape[1:])
    profile.set_shape(inp.name, [1, *rest], [4, *rest], [max_batch, *rest])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    return bytes(plan), shape


def test_parser_profile_and_serialization_then_validity_on_this_gpu(tmp_path: Path) -> None:
    import tensorrt_rtx_bindings as trt

    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    plan, shape = rtx_plan(model, 16, "SM89")
    assert len(plan) > 10_000 and shape[1:] == (3, 32, 32)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    validity, diagnostics = runtime.get_engine_validity(plan)
    if rtx_runs_on(host_compute()) and host_compute() == (8, 9):
        assert validity != trt.EngineValidity.INVALID
    else:  # an SM89 plan on another GPU: refused up front, with the reason as a flag
        assert validity == trt.EngineValidity.INVALID
        assert int(diagnostics) & int(trt.EngineInvalidityDiagnostics.UNSUPPORTED_CC)
        # and deserializing it anyway gives None, not a crash
        assert runtime.deserialize_cuda_engine(plan) is None


def test_build_for_an_rtx_class_on_this_gpu(tmp_path: Path) -> None:
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    request = BuildRequest(
        model_uri=f"file://{model}",
        hardware=L4,
        node_class="nvidia-l4",
        store=tmp_path / "store",
        backends=(Backend.TENSORRT,),
        ladder=(Precision.FP16, Precision.FP32),
        max_deviation=0.01,
        profile_seconds=0.2,
    )
    if host_compute() == (8, 9):  # an L4/L40S/RTX 40 build node: the plan gates and profiles
        summary = build(request)
        assert summary.backend == Backend.TENSORRT and summary.accuracy[0].passed
        return
    # Built ahead of time for SM89 (RTX needs no such GPU to build), then the gate cannot run it
    # here: the build says so, with RTX's own words, for each rung it built.
    with pytest.raises(UnsupportedHardware) as e:
        build(request)
    text = str(e.value)
    assert "no backend can run on this hardware" in text
    assert "TensorRT-RTX" in text and "-byte plan for SM89" in text and "UNSUPPORTED_CC" in text
    assert "tensorrt fp16: build failed" in text and "tensorrt fp32: build failed" in text


def test_build_for_this_gpu_picks_by_the_compute_list(tmp_path: Path) -> None:
    cc = host_compute()
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    request = BuildRequest(
        model_uri=f"file://{model}",
        hardware=host_key(),
        store=tmp_path / "store",
        backends=(Backend.TENSORRT,),
        ladder=(Precision.FP32,),
        profile_seconds=0.2,
    )
    if rtx_runs_on(cc) or importlib.util.find_spec("tensorrt") is not None:
        summary = build(request)
        assert summary.backend == Backend.TENSORRT
        return
    # The H200 (9.0) with TensorRT-RTX alone: refused before any build, saying why.
    with pytest.raises(UnsupportedHardware) as e:
        build(request)
    assert f"not {cc[0]}.{cc[1]}" in str(e.value)
    assert "full TensorRT not available" in str(e.value)


def test_forced_rtx_build_on_this_gpu_is_a_build_failure_not_a_crash(tmp_path: Path) -> None:
    """The issue's case: RTX asked for on a GPU it does not list. The plan is built for RTX's
    defaults, then the capability check refuses it: exit 1, BuildFailure UnsupportedHardware."""
    cc = host_compute()
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    term = tmp_path / "termination-log"
    cmd = [
        *(sys.executable, "-m", "infleet", "build", "--model", f"file://{model}"),
        *("--class", "nvidia-gpu", "--backend", "tensorrt", "--precision-ladder", "fp32"),
        *("--compute-capability", f"{cc[0]}.{cc[1]}", "--store", str(tmp_path / "store")),
        *("--termination-log", str(term), "--profile-seconds", "0.2"),
    ]
    env = {**os.environ, "INFLEET_TENSORRT_IMPL": "tensorrt-rtx"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if rtx_runs_on(cc):
        assert r.returncode == 0, r.stderr[-2000:]
        return
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    failure = json.loads(term.read_text())
    assert failure["reason"] == "UnsupportedHardware" and failure["retryable"] is False
    assert f"compute capability {cc[0]}.{cc[1]}" in failure["error"]  # RTX's own words
    assert "Traceback" not in r.stderr


def test_server_refuses_a_plan_this_gpu_cannot_run(tmp_path: Path) -> None:
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    plan, _ = rtx_plan(model, 8, "SM89")
    (tmp_path / "engine.plan").write_bytes(plan)
    x = TensorSpec(name="image", datatype="FP32", shape=[-1, 3, 32, 32])
    y = TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])
    path = samples.write_manifest(
        tmp_path,
        "engine.plan",
        "cnn",
        [x],
        [y],
        backend=Backend.TENSORRT,
        max_batch_size=8,
        options={"tensorrt_impl": "tensorrt-rtx"},
    )
    manifest = EngineManifest.model_validate_json(path.read_text())
    if host_compute() == (8, 9):
        engine = load_engine(manifest, tmp_path, EngineOptions(device="gpu"))
        try:
            out = engine.run({"image": np.zeros((3, 3, 32, 32), np.float32)})
            assert out["logits"].shape == (3, 10)
        finally:
            engine.close()
        return
    with pytest.raises(BackendUnavailable, match="UNSUPPORTED_CC"):
        load_engine(manifest, tmp_path, EngineOptions(device="gpu"))
