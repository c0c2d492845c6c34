"""Per-input shapes through the real `infleet build` and `infleet serve`, on a locally built model
shaped like PaddleOCR's text-direction classifier as paddle2onnx exports it: input ``x`` of
shape ``[N, 3, ?, ?]``, both open dimensions named ``?`` (so ``--dim ?=48`` cannot say 48x192).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from build_helpers import build_fails, built, engine_dir, ort_reference, stored_manifests
from serve_harness import ServerProcess, json_input

from infleet.runtime.manifest import MANIFEST_FILE
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration

CROP = [-1, 3, 48, 192]  # what PaddleOCR's classifier reads


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.open_spatial_cnn(tmp_path_factory.mktemp("m") / "text_direction.onnx")


def _crops(n: int, width: int = 192, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 48, width)).astype(np.float32)


def test_open_dims_without_sizes_fail_naming_each(model: Path, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    r = build_fails(model, store=tmp_path / "store", termination_log=log)
    failure = json.loads(log.read_text())
    assert failure["reason"] == "ShapeError" and failure["retryable"] is False
    for text in (failure["error"], r.stderr):
        assert "input 'x' dimension 2 ('?'); input 'x' dimension 3 ('?')" in text
        assert "--input x=-1,3,N,N" in text
    assert r.stderr.count("error:") == 1  # one line for people, no traceback


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_a_48x192_engine_is_built_and_served(model: Path, tmp_path: Path, backend: str) -> None:
    store = tmp_path / "store"
    r = built(model, store=store, backend=backend, input="x=-1,3,48,192", max_batch=4)
    key = r.summary["key"]
    assert key["input_shapes"] == {"x": CROP} and key["max_batch_size"] == 4
    (manifest,) = stored_manifests(store)
    assert [(t.name, t.shape) for t in manifest.inputs] == [("x", CROP)]
    crops = _crops(3)
    (ref,) = ort_reference(model, {"x": crops})
    server = ServerProcess(
        ["--manifest", str(engine_dir(store, manifest) / MANIFEST_FILE), "--threads", "2"],
        tmp_path / "serve.log",
    )
    try:
        server.wait_ready()
        url = f"{server.url}/v2/models/{manifest.model_name}/infer"
        ok = httpx.post(url, json={"inputs": [json_input("x", crops, "FP32")]}, timeout=30)
        assert ok.status_code == 200, ok.text
        (out,) = ok.json()["outputs"]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, ref, atol=1e-5)
        # The manifest's fixed dims reach the server: a 48x48 crop is the client's mistake.
        square = httpx.post(
            url, json={"inputs": [json_input("x", _crops(1, width=48), "FP32")]}, timeout=30
        )
        assert square.status_code == 400 and "[-1, 3, 48, 192]" in square.text
    finally:
        server.stop()


def test_other_shapes_are_other_engines(model: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    wide = built(model, store=store, input="x=-1,3,48,320").summary
    crop = built(model, store=store, input="x=-1,3,48,192").summary
    assert wide["engine_key"] != crop["engine_key"] and not crop["cache_hit"]
    assert {m.key.input_shapes["x"][3] for m in stored_manifests(store)} == {192, 320}
    # --dim ?=48 still works, and means what it always meant: every '?' is 48.
    square = built(model, store=store, dim="?=48").summary
    assert square["key"]["input_shapes"] == {"x": [-1, 3, 48, 48]}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"input": "x=-1,3,48"}, "has 4 dimensions ([N, 3, ?, ?]), not 3"),
        ({"input": "x=-1,4,48,192"}, "dimension 1 of 'x' is fixed at 3 by the model"),
        (
            {"input": "image=-1,3,48,192"},
            "the model has no such input (its inputs: x [N, 3, ?, ?])",
        ),
        ({"input": "x=-1,3,-1,192"}, "-1 marks the batch dimension, which is the first"),
        ({"input": ["x=-1,3,48,192", "x=-1,3,48,96"]}, "given twice"),
        ({"dim": "seq=16"}, "no open dimension of that name (named open dimensions: ?)"),
    ],
)
def test_shapes_that_do_not_fit_the_model_are_refused(
    model: Path, tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    log = tmp_path / "termination-log"
    r = build_fails(model, store=tmp_path / "store", termination_log=log, **flags)
    assert message in r.stderr
    assert json.loads(log.read_text())["reason"] == "ShapeError"
