"""`infleet build` end to end on this CPU, with synthetic graphs: ONNX Runtime FP32/INT8 and
TVM FP32 engines built, stored and run against the reference; the ladder, the cache, two
concurrent builders, and the failures a user can cause."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from build_helpers import FAST, infleet_build, ort_reference, run_stored, stored_manifests

from infleet.api import AccuracyMetric
from infleet.runtime.accuracy import deviation
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "cnn": synthetic.small_cnn(d / "cnn.onnx"),
        "mlp": synthetic.mlp(d / "mlp.onnx"),
        "mixed": synthetic.mixed_dtypes(d / "mixed.onnx"),
        "unsupported": synthetic.unsupported_op(d / "unsupported.onnx"),
    }


def _images(n: int, seed: int = 7) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)}


def test_ort_int8_and_fp32_engines_match_the_reference(
    models: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    uri = f"file://{models['cnn']}"
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
        "0.02",
        "--max-batch",
        "4",
        *FAST,
    )
    assert r.rc == 0, r.stderr
    s = r.summary
    assert s["precision"] == "int8" and s["backend"] == "onnxruntime" and not s["cache_hit"]
    assert [p["batch_size"] for p in s["profile"]] == [1, 2, 4]
    assert all(p["p50_ms"] > 0 and p["throughput_ips"] > 0 for p in s["profile"])
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
        "fp32",
        "--max-batch",
        "4",
        *FAST,
    )
    assert r.rc == 0, r.stderr
    manifests = {m.key.precision.value: m for m in stored_manifests(store)}
    assert set(manifests) == {"int8", "fp32"}
    feeds = _images(6)  # fresh inputs, not the validation set; 6 rows cross the max batch
    (ref,) = ort_reference(models["cnn"], feeds)
    (fp32,) = run_stored(store, manifests["fp32"], feeds)
    (int8,) = run_stored(store, manifests["int8"], feeds)
    # Tolerances: FP32 engine = the reference up to kernel rounding; INT8 within its budget.
    assert deviation(AccuracyMetric.MAX_ABS_ERROR, ref, fp32) < 1e-4
    assert deviation(AccuracyMetric.COSINE, ref, int8) < 0.02
    assert manifests["int8"].options["quantization"].startswith("static")


def test_tvm_fp32_engines_match_the_reference(models: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    for name, extra in (
        ("cnn", []),
        ("mixed", ["--metric", "max-abs-error", "--max-deviation", "1e-2"]),
    ):
        r = infleet_build(
            "--model",
            f"file://{models[name]}",
            "--class",
            "x86-test",
            "--backend",
            "tvm",
            "--store",
            str(store),
            "--max-batch",
            "4",
            *extra,
            *FAST,
        )
        assert r.rc == 0, r.stderr
        assert r.summary["backend"] == "tvm" and r.summary["precision"] == "fp32"
    by_model = {m.key.model_sha256: m for m in stored_manifests(store)}
    cnn = by_model[hashlib.sha256(models["cnn"].read_bytes()).hexdigest()]
    assert cnn.batch_sizes == [1, 4] and cnn.options["entry"] == "main_b{batch}"
    feeds = _images(3)  # padded up to the compiled batch of 4
    (ref,) = ort_reference(models["cnn"], feeds)
    (got,) = run_stored(store, cnn, feeds)
    assert deviation(AccuracyMetric.MAX_ABS_ERROR, ref, got) < 1e-4
    mixed = by_model[hashlib.sha256(models["mixed"].read_bytes()).hexdigest()]
    rng = np.random.default_rng(3)
    feeds = {
        "ids": rng.integers(0, 100, (5, 8)).astype(np.int32),
        "scale": rng.uniform(0.5, 2, (5, 1)).astype(np.float16),
    }
    ref_scores, ref_label = ort_reference(models["mixed"], feeds)
    scores, label = run_stored(store, mixed, feeds)
    assert scores.dtype == np.float16 and label.dtype == np.int64
    assert deviation(AccuracyMetric.MAX_ABS_ERROR, ref_scores, scores) < 1e-2
    np.testing.assert_array_equal(ref_label, label)


def test_ladder_falls_back_when_the_budget_is_too_tight(
    models: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "termination-log"
    r = infleet_build(
        "--model",
        f"file://{models['cnn']}",
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(tmp_path / "store"),
        "--precision-ladder",
        "int8,fp32",
        "--max-deviation",
        "1e-4",
        *FAST,
        termination_log=log,
    )
    assert r.rc == 0, r.stderr
    s = r.summary
    assert s["precision"] == "fp32"
    int8, fp32 = s["accuracy"]
    assert int8["precision"] == "int8" and not int8["passed"] and int8["deviation"] > 1e-4
    assert f"{int8['deviation']:.3g}" in int8["message"] and "over budget 0.0001" in int8["message"]
    assert fp32["passed"] and fp32["deviation"] <= 1e-4
    assert json.loads(log.read_text()) == s and len(log.read_bytes()) <= 4096
    assert "FAIL" in r.stderr and "PASS" in r.stderr  # progress for people


def test_int8_is_never_tried_without_a_budget(models: dict[str, Path], tmp_path: Path) -> None:
    r = infleet_build(
        "--model",
        f"file://{models['mlp']}",
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(tmp_path / "store"),
        "--precision-ladder",
        "int8,fp32",
        *FAST,
    )
    assert r.rc == 0, r.stderr
    int8 = r.summary["accuracy"][0]
    assert int8["deviation"] is None if "deviation" in int8 else True
    assert "only with accuracy.maxDeviation" in int8["message"]


def test_second_build_is_a_cache_hit(models: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "--model",
        f"file://{models['mlp']}",
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(tmp_path / "store"),
        *FAST,
    ]
    first = infleet_build(*args)
    second = infleet_build(*args)
    assert first.rc == second.rc == 0, first.stderr + second.stderr
    assert not first.summary["cache_hit"] and second.summary["cache_hit"]
    assert first.summary["engine_key"] == second.summary["engine_key"]
    assert len(list((tmp_path / "store" / "engines").iterdir())) == 1
    assert "cache hit" in second.stderr


def test_two_concurrent_builders_produce_one_engine(
    models: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "infleet",
        "build",
        "--model",
        f"file://{models['cnn']}",
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(store),
        *FAST,
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    summaries = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert summaries[0]["engine_key"] == summaries[1]["engine_key"]
    assert sorted(s["cache_hit"] for s in summaries) == [False, True]
    assert [d.name for d in (store / "engines").iterdir()] == [summaries[0]["engine_key"]]
    assert [d.name for d in (store / "staging").iterdir()] == []


def test_bad_model_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not protobuf at all \xff\xfe")
    log = tmp_path / "log"
    r = infleet_build(
        "--model",
        f"file://{bad}",
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(tmp_path / "store"),
        *FAST,
        termination_log=log,
    )
    assert r.rc == 1
    assert "not a valid ONNX model" in r.stderr and "Traceback" not in r.stderr
    assert "not a valid ONNX model" in json.loads(log.read_text())["error"]


def test_wrong_checksum_fails_with_both_digests(models: dict[str, Path], tmp_path: Path) -> None:
    actual = hashlib.sha256(models["mlp"].read_bytes()).hexdigest()
    wrong = "ab" * 32
    r = infleet_build(
        "--model",
        f"file://{models['mlp']}",
        "--sha256",
        wrong,
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(tmp_path / "store"),
        *FAST,
    )
    assert r.rc == 1
    assert wrong in r.stderr and actual in r.stderr


def test_unreachable_uri_fails_clearly(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = infleet_build(
        "--model",
        f"http://127.0.0.1:{port}/model.onnx",
        "--class",
        "x86-test",
        "--backend",
        "onnxruntime",
        "--store",
        str(tmp_path / "store"),
        "--fetch-retries",
        "1",
        "--fetch-timeout",
        "2",
        *FAST,
    )
    assert r.rc == 1
    assert f"127.0.0.1:{port}" in r.stderr and "after 2 attempts" in r.stderr


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_unsupported_op_fails_clearly(
    models: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    r = infleet_build(
        "--model",
        f"file://{models['unsupported']}",
        "--class",
        "x86-test",
        "--backend",
        backend,
        "--store",
        str(tmp_path / "store"),
        *FAST,
    )
    assert r.rc == 1
    assert "Frobnicate" in r.stderr and "Traceback" not in r.stderr


def test_missing_backend_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    r = infleet_build(
        "--model",
        f"file://{models['mlp']}",
        "--class",
        "nvidia-h100",
        "--backend",
        "tensorrt",
        "--store",
        str(tmp_path / "store"),
        *FAST,
    )
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert r.rc == 1 and "tensorrt cannot be imported" in r.stderr
    else:  # on a TensorRT machine without a GPU class match the build still has to be clean
        assert r.rc in (0, 1) and "Traceback" not in r.stderr


def test_tvm_tuning_is_bounded_in_time_and_never_fails_the_build(
    models: dict[str, Path], tmp_path: Path
) -> None:
    # A budget far below what MetaSchedule needs: the child is stopped at the bound, and the
    # engine is still built (with what was measured, or untuned) and the reason recorded.
    args = [a for a in FAST if a not in ("--tuning-trials", "0")]
    r = infleet_build(
        "--model",
        f"file://{models['mlp']}",
        "--class",
        "x86-test",
        "--backend",
        "tvm",
        "--store",
        str(tmp_path / "store"),
        "--max-batch",
        "2",
        *args,
        "--tuning-trials",
        "64",
        "--tuning-seconds",
        "3",
    )
    assert r.rc == 0, r.stderr
    notes = " ".join(r.summary["notes"])
    assert "time budget of 3s" in notes, notes
    assert r.summary["accuracy"][-1]["passed"]


def test_engines_load_in_the_server(models: dict[str, Path], tmp_path: Path) -> None:
    """The manifest contract: what `infleet build` stores, `infleet serve` loads and runs."""
    from infleet.runtime.server.engines.base import EngineOptions, load_engine

    store = tmp_path / "store"
    for backend in ("onnxruntime", "tvm"):
        r = infleet_build(
            "--model",
            f"file://{models['cnn']}",
            "--class",
            "x86-test",
            "--backend",
            backend,
            "--store",
            str(store),
            "--max-batch",
            "4",
            *FAST,
        )
        assert r.rc == 0, r.stderr
    feeds = _images(3)
    (ref,) = ort_reference(models["cnn"], feeds)
    for manifest in stored_manifests(store):
        engine = load_engine(
            manifest, store / "engines" / manifest.key.digest(), EngineOptions(threads=2)
        )
        try:
            got = engine.run(feeds)["logits"]
        finally:
            engine.close()
        assert deviation(AccuracyMetric.MAX_ABS_ERROR, ref, got) < 1e-4, manifest.key.backend
