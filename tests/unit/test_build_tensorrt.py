"""TensorRT builder: everything around the TensorRT calls (which need an NVIDIA GPU).

What runs here: optimisation-profile shapes, calibration batching, capability checks, and the
clear error when ``tensorrt`` cannot be imported. What cannot run here: parsing, building,
calibrating and executing a plan (no GPU, no TensorRT wheel on this machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from infleet.api import Precision
from infleet.runtime.builders import get_builder
from infleet.runtime.builders.tensorrt import (
    CalibrationBatches,
    capability_problem,
    profile_shapes,
)
from infleet.runtime.errors import BackendUnavailable, BuildError, ShapeError
from infleet.runtime.hardware import target_for
from infleet.runtime.onnxmodel import ModelInfo, TensorInfo
from infleet.runtime.shapes import resolve
from infleet.scheduler.hardware import cpu_key, gpu_key

INFO = ModelInfo(
    path=Path("m.onnx"),
    inputs=(
        TensorInfo("input_ids", np.dtype(np.int64), ("batch", "seq")),
        TensorInfo("lut", np.dtype(np.float32), (16, 4)),
    ),
    outputs=(TensorInfo("y", np.dtype(np.float32), ("batch", 4)),),
    opset=17,
    op_types=frozenset({"Gather"}),
    int_input_bounds={},
)


def test_profile_covers_one_to_max_batch() -> None:
    shapes = profile_shapes(resolve(INFO, dims={"seq": 128}), max_batch=32)
    ids = shapes["input_ids"]
    assert ids.min == (1, 128) and ids.max == (32, 128)
    assert 1 <= ids.opt[0] <= 32 and ids.opt[1] == 128
    assert shapes["lut"].min == shapes["lut"].max == (16, 4)  # static inputs stay fixed


def test_profile_opt_batch_override_and_bounds() -> None:
    info = resolve(INFO, {"input_ids": (-1, 4)})
    assert profile_shapes(info, 8, opt_batch=8)["input_ids"].opt == (8, 4)
    with pytest.raises(BuildError, match="outside"):
        profile_shapes(info, 8, opt_batch=9)
    assert profile_shapes(info, 1)["input_ids"].opt == (1, 4)


def test_profile_needs_every_dynamic_dim() -> None:
    with pytest.raises(ShapeError, match="--dim seq=N"):
        profile_shapes(INFO, 8)


def test_calibration_batches_drop_the_short_tail() -> None:
    data = {"a": np.arange(10, dtype=np.float32).reshape(10, 1), "b": np.zeros((10, 2), np.int64)}
    batches = CalibrationBatches(data, batch_size=4, order=["b", "a"])
    got = list(batches)
    assert len(batches) == 2 and len(got) == 2
    assert [x.shape for x in got[0]] == [(4, 2), (4, 1)]  # in the engine's input order
    assert got[1][1][:, 0].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert all(x.flags.c_contiguous for batch in got for x in batch)


def test_calibration_batches_refuse_bad_data() -> None:
    with pytest.raises(BuildError, match="fewer than one batch"):
        CalibrationBatches({"a": np.zeros((3, 1))}, 4, ["a"])
    with pytest.raises(BuildError, match="disagree"):
        CalibrationBatches({"a": np.zeros((8, 1)), "b": np.zeros((9, 1))}, 4, ["a", "b"])
    with pytest.raises(BuildError, match="lacks inputs"):
        CalibrationBatches({"a": np.zeros((8, 1))}, 4, ["a", "b"])


def test_capabilities() -> None:
    t4 = target_for(gpu_key("amd64", "Tesla-T4", 15360, None))  # compute from the model
    h100 = target_for(gpu_key("amd64", "NVIDIA-H100-80GB-HBM3", 81559, (9, 0)))
    cpu = target_for(cpu_key("amd64", ["AVX2"]))
    assert capability_problem(Precision.FP8, t4) == "fp8 needs compute capability 8.9+, t4 has 7.5"
    assert capability_problem(Precision.INT8, t4) is None
    assert capability_problem(Precision.FP8, h100) is None
    assert capability_problem(Precision.FP32, cpu) == "TensorRT needs an NVIDIA GPU class"


def test_missing_tensorrt_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Injected fault: tensorrt made unimportable even on a machine that has it.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    builder = get_builder(__import__("infleet.api", fromlist=["Backend"]).Backend.TENSORRT)
    with pytest.raises(BackendUnavailable, match="tensorrt cannot be imported"):
        builder.version()
    # The operator check says "not checked" rather than guessing what the parser supports.
    with pytest.raises(BackendUnavailable, match="tensorrt cannot be imported"):
        builder.unsupported_ops(frozenset({("", "Conv")}))
