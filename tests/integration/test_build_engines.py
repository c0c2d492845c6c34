"""`infleet build` end to end on this CPU, with synthetic graphs: ONNX Runtime FP32/INT8 and
TVM FP32 engines built, stored and run against the reference; the ladder, the cache, two
concurrent builders, and the failures a user can cause."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from build_helpers import (
    Result,
    assert_engine_matches,
    build,
    build_args,
    build_command,
    build_fails,
    built,
    engine_dir,
    images,
    ort_reference,
    run_stored,
    stored_engines,
    stored_manifests,
)

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


def test_ort_int8_and_fp32_engines_match_the_reference(
    models: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    r = built(models["cnn"], store=store, ladder="int8,fp32", max_deviation=0.02, max_batch=4)
    s = r.summary
    assert s["precision"] == "int8" and s["backend"] == "onnxruntime" and not s["cache_hit"]
    assert [p["batch_size"] for p in s["profile"]] == [1, 2, 4]
    assert all(p["p50_ms"] > 0 and p["throughput_ips"] > 0 for p in s["profile"])
    built(models["cnn"], store=store, ladder="fp32", max_batch=4)
    engines = stored_engines(store)
    assert set(engines) == {("onnxruntime", "int8"), ("onnxruntime", "fp32")}
    feeds = images(6)  # fresh inputs, not the validation set; 6 rows cross the max batch
    (ref,) = ort_reference(models["cnn"], feeds)
    # Tolerances: FP32 engine = the reference up to kernel rounding; INT8 within its budget.
    assert_engine_matches(store, engines[("onnxruntime", "fp32")], feeds, ref, 1e-4)
    int8 = engines[("onnxruntime", "int8")]
    assert_engine_matches(store, int8, feeds, ref, 0.02, AccuracyMetric.COSINE)
    assert int8.options["quantization"].startswith("static")


def test_tvm_fp32_engines_match_the_reference(models: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    for name, extra in (
        ("cnn", {}),
        ("mixed", {"metric": "max-abs-error", "max_deviation": 1e-2}),
    ):
        s = built(models[name], store=store, backend="tvm", max_batch=4, **extra).summary
        assert s["backend"] == "tvm" and s["precision"] == "fp32"
    by_model = {m.key.model_sha256: m for m in stored_manifests(store)}
    cnn = by_model[hashlib.sha256(models["cnn"].read_bytes()).hexdigest()]
    assert cnn.batch_sizes == [1, 4] and cnn.options["entry"] == "main_b{batch}"
    feeds = images(3)  # padded up to the compiled batch of 4
    (ref,) = ort_reference(models["cnn"], feeds)
    assert_engine_matches(store, cnn, feeds, ref, 1e-4)
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
    r = built(
        models["cnn"],
        store=tmp_path / "store",
        ladder="int8,fp32",
        max_deviation=1e-4,
        termination_log=log,
    )
    s = r.summary
    assert s["precision"] == "fp32"
    int8, fp32 = s["accuracy"]
    assert int8["precision"] == "int8" and not int8["passed"] and int8["deviation"] > 1e-4
    assert f"{int8['deviation']:.3g}" in int8["message"] and "over budget 0.0001" in int8["message"]
    assert fp32["passed"] and fp32["deviation"] <= 1e-4
    assert json.loads(log.read_text()) == s and len(log.read_bytes()) <= 4096
    assert "FAIL" in r.stderr and "PASS" in r.stderr  # progress for people


def test_int8_is_never_tried_without_a_budget(models: dict[str, Path], tmp_path: Path) -> None:
    r = built(models["mlp"], store=tmp_path / "store", ladder="int8,fp32")
    int8 = r.summary["accuracy"][0]
    assert int8["deviation"] is None if "deviation" in int8 else True
    assert "only with accuracy.maxDeviation" in int8["message"]


def test_second_build_is_a_cache_hit(models: dict[str, Path], tmp_path: Path) -> None:
    first = built(models["mlp"], store=tmp_path / "store")
    second = built(models["mlp"], store=tmp_path / "store")
    assert not first.summary["cache_hit"] and second.summary["cache_hit"]
    assert first.summary["engine_key"] == second.summary["engine_key"]
    assert len(list((tmp_path / "store" / "engines").iterdir())) == 1
    assert "cache hit" in second.stderr


def test_two_concurrent_builders_produce_one_engine(
    models: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    cmd = build_command(*build_args(models["cnn"], store=store))
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]  # communicate() sets returncode
    results = [Result(p.returncode, *out) for p, out in zip(procs, outs, strict=True)]
    assert [r.rc for r in results] == [0, 0], [r.stderr for r in results]
    summaries = [r.summary for r in results]
    assert summaries[0]["engine_key"] == summaries[1]["engine_key"]
    assert sorted(s["cache_hit"] for s in summaries) == [False, True]
    assert [d.name for d in (store / "engines").iterdir()] == [summaries[0]["engine_key"]]
    assert [d.name for d in (store / "staging").iterdir()] == []


def test_bad_model_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not protobuf at all \xff\xfe")
    log = tmp_path / "log"
    r = build_fails(bad, store=tmp_path / "store", termination_log=log)
    assert "not a valid ONNX model" in r.stderr
    failure = json.loads(log.read_text())
    assert "not a valid ONNX model" in failure["error"]
    assert (failure["reason"], failure["retryable"]) == ("ModelError", False)


def test_wrong_checksum_fails_with_both_digests(models: dict[str, Path], tmp_path: Path) -> None:
    actual = hashlib.sha256(models["mlp"].read_bytes()).hexdigest()
    wrong = "ab" * 32
    r = build_fails(models["mlp"], store=tmp_path / "store", sha256=wrong)
    assert wrong in r.stderr and actual in r.stderr


def test_unreachable_uri_fails_clearly(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = build_fails(
        f"http://127.0.0.1:{port}/model.onnx",
        store=tmp_path / "store",
        fetch_retries=1,
        fetch_timeout=2,
    )
    assert f"127.0.0.1:{port}" in r.stderr and "after 2 attempts" in r.stderr


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_unsupported_op_fails_clearly(
    models: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    log = tmp_path / "log"
    r = build_fails(
        models["unsupported"], store=tmp_path / "store", backend=backend, termination_log=log
    )
    # Known from the backend's own operator table before anything is built.
    assert f"{backend} cannot run the operators com.example:Frobnicate" in r.stderr
    assert json.loads(log.read_text())["reason"] == "UnsupportedModel"


def test_missing_backend_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "log"
    r = build(
        models["mlp"],
        store=tmp_path / "store",
        cls="nvidia-h100",
        backend="tensorrt",
        compute_capability="9.0",
        termination_log=log,
    )
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert r.rc == 1 and "tensorrt nor tensorrt_rtx_bindings can be imported" in r.stderr
        assert json.loads(log.read_text())["reason"] == "BackendUnavailable"
    else:  # on a TensorRT machine without a GPU class match the build still has to be clean
        assert r.rc in (0, 1) and "Traceback" not in r.stderr


def test_tvm_tuning_is_bounded_in_time_and_never_fails_the_build(
    models: dict[str, Path], tmp_path: Path
) -> None:
    # A budget far below what MetaSchedule needs: the child is stopped at the bound, and the
    # engine is still built (with what was measured, or untuned) and the reason recorded.
    r = built(
        models["mlp"],
        store=tmp_path / "store",
        backend="tvm",
        max_batch=2,
        tuning_trials=64,
        tuning_seconds=3,
    )
    notes = " ".join(r.summary["notes"])
    assert "time budget of 3s" in notes, notes
    assert r.summary["accuracy"][-1]["passed"]


def test_engines_load_in_the_server(models: dict[str, Path], tmp_path: Path) -> None:
    """The manifest contract: what `infleet build` stores, `infleet serve` loads and runs."""
    from infleet.runtime.server.engines.base import EngineOptions, load_engine

    store = tmp_path / "store"
    for backend in ("onnxruntime", "tvm"):
        built(models["cnn"], store=store, backend=backend, max_batch=4)
    feeds = images(3)
    (ref,) = ort_reference(models["cnn"], feeds)
    for manifest in stored_manifests(store):
        engine = load_engine(manifest, engine_dir(store, manifest), EngineOptions(threads=2))
        try:
            got = engine.run(feeds)["logits"]
        finally:
            engine.close()
        assert deviation(AccuracyMetric.MAX_ABS_ERROR, ref, got) < 1e-4, manifest.key.backend


def test_measured_choice_keeps_the_faster_backend_and_gives_both_numbers(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """TVM as the class's backend with ONNX Runtime as the alternative: both are built and
    profiled here, and the one kept is the one measured faster, with both throughputs named."""
    import re

    r = built(
        models["cnn"], store=tmp_path / "store", backend="tvm", alternative="onnxruntime",
        max_batch=4,
    )
    (note,) = [n for n in r.summary["notes"] if n.startswith("kept ")]
    m = re.match(
        r"kept (\w+): measured faster on this hardware, ([\d.]+)/s against (\w+) ([\d.]+)/s",
        note,
    )
    assert m, note
    kept, kept_ips, other, other_ips = m.group(1), float(m.group(2)), m.group(3), float(m.group(4))
    assert {kept, other} == {"tvm", "onnxruntime"} and r.summary["backend"] == kept
    assert kept_ips >= other_ips
