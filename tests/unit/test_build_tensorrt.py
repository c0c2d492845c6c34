"""TensorRT builder: everything around the TensorRT calls (which need an NVIDIA GPU).

What runs here: optimisation-profile shapes, calibration batching, capability checks, and the
clear error when ``tensorrt`` cannot be imported. What cannot run here: parsing, building,
calibrating and executing a plan (no GPU, no TensorRT wheel on this machine).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from infleet.api import Precision
from infleet.runtime.builders import get_builder, tensorrt_lib
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
from infleet.scheduler.tensorrt_impl import TensorRtImpl, choose

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
    # Injected fault: both TensorRT libraries made unimportable even on a machine that has them.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    monkeypatch.delenv("INFLEET_TENSORRT_IMPL", raising=False)
    builder = get_builder(__import__("infleet.api", fromlist=["Backend"]).Backend.TENSORRT)
    with pytest.raises(BackendUnavailable, match="neither tensorrt nor tensorrt_rtx_bindings"):
        builder.version()
    # The operator check says "not checked" rather than guessing what the parser supports.
    with pytest.raises(BackendUnavailable, match="neither tensorrt nor tensorrt_rtx_bindings"):
        builder.unsupported_ops(frozenset({("", "Conv")}))
    # Forced to one library that is missing: that library is named.
    monkeypatch.setenv("INFLEET_TENSORRT_IMPL", "tensorrt-rtx")
    with pytest.raises(BackendUnavailable, match="tensorrt_rtx_bindings cannot be imported"):
        builder.version()
    monkeypatch.setenv("INFLEET_TENSORRT_IMPL", "tensorrt-9")
    with pytest.raises(BackendUnavailable, match="is not one of tensorrt, tensorrt-rtx"):
        builder.version()


def test_rtx_refuses_int8_calibration_and_keeps_the_rest() -> None:
    l4 = target_for(gpu_key("amd64", "NVIDIA-L4", 23034, (8, 9)))
    rtx = TensorRtImpl.RTX
    assert capability_problem(Precision.INT8, l4, rtx) == (
        "TensorRT-RTX has no INT8 calibration (strongly typed: give a model with Q/DQ nodes)"
    )
    assert capability_problem(Precision.FP16, l4, rtx) is None
    assert capability_problem(Precision.FP8, l4, rtx) is None
    assert capability_problem(Precision.INT8, l4) is None  # full TensorRT calibrates


def test_the_builder_picks_the_library_by_the_policys_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFLEET_TENSORRT_IMPL", raising=False)
    choice = tensorrt_lib.select((9, 0))
    have = tensorrt_lib.installed()
    assert choice == choose(have, (9, 0))  # the same function the scheduler plans with
    monkeypatch.setenv("INFLEET_TENSORRT_IMPL", "tensorrt-rtx")
    forced = tensorrt_lib.select((9, 0))
    assert forced.impl == TensorRtImpl.RTX and "INFLEET_TENSORRT_IMPL" in forced.reason


def test_rtx_compute_targets_by_name() -> None:
    # The enum's members as TensorRT-RTX 1.7 has them (read from its bindings).
    members = ("CURRENT", "NONE", "SM75", "SM80", "SM86", "SM89", "SM120", "SM121")
    fake = SimpleNamespace(ComputeCapability=SimpleNamespace(**{m: m for m in members}))
    assert tensorrt_lib.compute_target(fake, (8, 9)) == "SM89"
    assert tensorrt_lib.compute_target(fake, (12, 0)) == "SM120"
    assert tensorrt_lib.compute_target(fake, None) == "CURRENT"
    assert tensorrt_lib.compute_target(fake, (9, 0)) is None  # no SM90 target: RTX's defaults
    assert tensorrt_lib.compute_target(SimpleNamespace(), (8, 9)) is None  # full TensorRT
