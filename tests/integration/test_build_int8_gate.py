"""INT8 on the opsets exporters write, and the accuracy gate on inputs that cannot judge.

`infleet build` as users run it, on models written here with onnx's helpers: conv+BN+relu
classifiers at opsets 11, 12, 13 and 17 (per-channel weights, so INT8 needs per-axis QDQ,
opset 13), and a detector whose sigmoid map is ~1e-7 everywhere on synthetic inputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from build_helpers import (
    assert_engine_matches,
    build_fails,
    built,
    engine_dir,
    images,
    ort_reference,
    stored_engines,
)

from infleet.api import AccuracyMetric
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("opset", [11, 12, 13, 17])
def test_int8_builds_at_every_exported_opset(opset: int, tmp_path: Path) -> None:
    model = synthetic.conv_bn_relu(tmp_path / f"cnn{opset}.onnx", opset)
    store = tmp_path / "store"
    s = built(model, store=store, ladder="int8,fp32", max_deviation=0.01).summary
    assert s["precision"] == "int8", s["accuracy"]
    (int8,) = s["accuracy"]
    assert int8["passed"] and "within budget 0.01" in int8["message"]
    assert int8["judged_on"] == "synthetic"
    upgraded = f"model upgraded from opset {opset} to 13"
    assert any(upgraded in n for n in s["notes"]) == (opset < 13), s["notes"]
    manifest = stored_engines(store)[("onnxruntime", "int8")]
    engine = onnx.load(str(engine_dir(store, manifest) / manifest.engine_file))
    ops = {n.op_type for n in engine.graph.node}
    assert ops & {"QLinearConv", "DequantizeLinear", "QuantizeLinear"}, ops  # really INT8
    feeds = images(8, seed=11)
    (ref,) = ort_reference(model, feeds)
    assert_engine_matches(store, manifest, feeds, ref, 0.01, AccuracyMetric.COSINE)


def test_int8_over_a_tight_budget_falls_back_to_fp32_and_says_why(tmp_path: Path) -> None:
    model = synthetic.conv_bn_relu(tmp_path / "cnn12.onnx", 12)
    s = built(model, store=tmp_path / "store", ladder="int8,fp32", max_deviation=1e-6).summary
    int8, fp32 = s["accuracy"]
    assert not int8["passed"] and "over budget 1e-06" in int8["message"]
    assert int8["deviation"] > 1e-6  # a measured loss, not a build failure
    assert fp32["passed"] and s["precision"] == "fp32"


def test_degenerate_synthetic_reference_is_named_and_fp32_never_fails_on_noise(
    tmp_path: Path,
) -> None:
    model = synthetic.faint_detector(tmp_path / "detector.onnx")
    r = built(model, store=tmp_path / "store", ladder="int8,fp32", max_deviation=1e-4)
    s = r.summary
    hint = "synthetic inputs give a degenerate reference for output heatmap"
    int8, fp32 = s["accuracy"]
    assert not int8["passed"] and int8["message"].startswith(f"not judged: {hint}")
    assert "give validation data" in int8["message"]
    # ORT's own optimisation levels differ by more than the budget on this reference; the
    # FP32 engine (ORT at level all) differs by about as much, and passes on that ground.
    assert fp32["passed"] and s["precision"] == "fp32"
    assert fp32["deviation"] > 1e-4 and fp32["noise"] is not None
    assert fp32["deviation"] <= 2 * fp32["noise"]
    assert "onnxruntime's own noise" in fp32["message"] and hint in fp32["message"]
    assert fp32["judged_on"] == "synthetic"
    assert any(n.startswith(hint) for n in s["notes"]) and hint in r.stderr


def test_real_validation_data_judge_the_degenerate_model(tmp_path: Path) -> None:
    model = synthetic.faint_detector(tmp_path / "detector.onnx")
    data = tmp_path / "pixels.npz"
    np.savez(data, pixels=synthetic.pixels(32, seed=3))
    s = built(
        model,
        store=tmp_path / "store",
        ladder="fp32",
        max_deviation=1e-4,
        validation=f"file://{data}",
    ).summary
    (fp32,) = s["accuracy"]
    assert fp32["passed"] and fp32["judged_on"] == "real" and fp32["deviation"] < 1e-6
    assert "noise" not in fp32 and "degenerate" not in fp32["message"]
    assert f"validation: 8 samples from file://{data}" in s["notes"]
    # Real calibration as well: INT8 is judged (and passes or fails on its own merit).
    s = built(
        model,
        store=tmp_path / "store",
        ladder="int8,fp32",
        max_deviation=0.01,
        calibration=f"file://{data}",
        validation=f"file://{data}",
    ).summary
    int8 = s["accuracy"][0]
    assert int8["judged_on"] == "real" and "not judged" not in int8["message"]
    assert int8["deviation"] is not None


def test_validation_data_is_checked_like_calibration_data(tmp_path: Path) -> None:
    model = synthetic.faint_detector(tmp_path / "detector.onnx")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=synthetic.pixels(4))
    r = build_fails(model, store=tmp_path / "s", validation=f"file://{wrong}")
    assert "no array named 'pixels' for the model input" in r.stderr
    good = tmp_path / "good.npz"
    np.savez(good, pixels=synthetic.pixels(4))
    actual = hashlib.sha256(good.read_bytes()).hexdigest()
    r = build_fails(
        model, store=tmp_path / "s", validation=f"file://{good}", validation_sha256="ab" * 32
    )
    assert f"sha256 mismatch for file://{good}" in r.stderr and actual in r.stderr


def test_a_model_that_cannot_be_quantised_says_why_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ORT says about an opset-12 model quantised as it is (the graph per-axis QDQ makes
    invalid there): the rung's reason is one line without ORT's prefix or file path."""
    import onnxruntime as ort
    from onnxruntime import quantization as q

    from infleet.runtime.builders.ort_quant import not_quantisable

    model = synthetic.conv_bn_relu(tmp_path / "cnn12.onnx", 12)
    pre, out = tmp_path / "pre.onnx", tmp_path / "int8.onnx"
    q.quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)

    class Reader(q.CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([images(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    q.quantize_static(
        str(pre), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True
    )
    with pytest.raises(Exception) as raw:
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert "[ONNXRuntimeError]" in str(raw.value) and str(out) in str(raw.value)
    reason = str(not_quantisable("onnxruntime cannot load the graph it quantised", raw.value))
    assert reason.startswith(
        "INT8 not possible: onnxruntime cannot load the graph it "
        "quantised (invalid graph: In Node, "
    )
    assert "\n" not in reason and str(out) not in reason and len(reason) < 300

    # A fault injected on purpose: onnx's version converter refusing the model (it does for
    # ops without an adapter), as the build meets it. INT8 fails with the reason, FP32 is kept.
    from onnx import version_converter

    def refuse(model: object, target: int) -> object:
        raise RuntimeError("No Adapter From Version $12 for Frobnicate\n  (C++ backtrace ...)")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    from infleet.api import Backend, Precision
    from infleet.runtime.build import BuildRequest, build
    from infleet.runtime.hardware import host_key

    s = build(
        BuildRequest(
            model_uri=f"file://{model}",
            hardware=host_key(),
            store=tmp_path / "store",
            backends=(Backend.ONNXRUNTIME,),
            ladder=(Precision.INT8, Precision.FP32),
            max_deviation=0.01,
            calibration_samples=8,
            validation_samples=4,
            threads=2,
            profile_seconds=0.02,
        )
    )
    int8, fp32 = s.accuracy
    assert int8.message == (
        "unsupported model: INT8 not possible: per-channel INT8 needs ONNX opset 13, and onnx's "
        "version converter could not upgrade this opset-12 model (No Adapter From Version $12 "
        "for Frobnicate)"
    )
    assert fp32.passed and s.precision == Precision.FP32
