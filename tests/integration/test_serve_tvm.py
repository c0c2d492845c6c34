"""The TVM engine runtime on libraries compiled here with tvm.relax, in both layouts:
one dynamic-batch ``main``, and the builder's static ``main_b{batch}`` functions (padding and
splitting batches); then served over HTTP."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from serve_harness import ServerProcess, json_input

from infleet.api import Backend
from infleet.runtime.manifest import EngineManifest, TensorSpec
from infleet.runtime.server import samples
from infleet.runtime.server.engines import EngineOptions, load_engine

pytestmark = pytest.mark.integration

tvm = pytest.importorskip("tvm")  # the tvm extra is part of CI's install; this never skips there

C = np.array([1.0, 2.0, 3.0, 4.0], np.float32)


def onnx_model(batch: int | str):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "c"], ["y"]),
            helper.make_node("Mul", ["x", "two"], ["z"]),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 4]),
        ],
        [
            numpy_helper.from_array(C, "c"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def compile_library(path, static_sizes: tuple[int, ...] = ()) -> None:
    from tvm.relax.frontend.onnx import from_onnx

    if not static_sizes:
        mod = from_onnx(onnx_model("N"))
    else:  # the builder's layout: one static function per batch size in one library
        functions = {}
        for b in static_sizes:
            name = f"main_b{b}"
            functions[name] = from_onnx(onnx_model(b))["main"].with_attr("global_symbol", name)
        mod = tvm.IRModule(functions)
    tvm.compile(mod, target="llvm").export_library(str(path))


def manifest(directory, options: dict[str, str], batch_sizes=None) -> EngineManifest:
    spec = {"datatype": "FP32", "shape": [-1, 4]}
    path = samples.write_manifest(
        directory,
        "engine.so",
        "tvm_model",
        [TensorSpec(name="x", **spec)],
        [TensorSpec(name="y", **spec), TensorSpec(name="z", **spec)],
        backend=Backend.TVM,
        max_batch_size=8,
        batch_sizes=batch_sizes,
        options=options,
    )
    return EngineManifest.model_validate_json(path.read_text())


@pytest.fixture(scope="module")
def static_engine_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tvm_static")
    compile_library(directory / "engine.so", static_sizes=(1, 4))
    # what infleet.runtime.builders.tvm writes for such a library
    options = {"entry": "main_b{batch}", "input_order": "x", "target": '{"kind": "llvm"}'}
    manifest(directory, options, batch_sizes=[1, 4])
    return directory


def check(engine, rows: int) -> None:
    x = np.random.default_rng(rows).random((rows, 4), dtype=np.float32)
    out = engine.run({"x": x})
    np.testing.assert_allclose(out["y"], x + C, rtol=1e-6)
    np.testing.assert_allclose(out["z"], x * 2, rtol=1e-6)


def test_dynamic_batch_library(tmp_path) -> None:
    compile_library(tmp_path / "engine.so")
    engine = load_engine(manifest(tmp_path, {}), tmp_path, EngineOptions())
    for rows in (1, 3, 8):
        check(engine, rows)
    engine.close()


def test_static_batch_library_pads_and_splits(static_engine_dir) -> None:
    m = EngineManifest.model_validate_json((static_engine_dir / "manifest.json").read_text())
    engine = load_engine(m, static_engine_dir, EngineOptions())
    assert "llvm" in engine.description
    for rows in (1, 2, 4, 6, 9):  # exact, padded, exact, split+padded, split
        check(engine, rows)
    engine.close()


def test_tvm_engine_served_over_http(static_engine_dir, tmp_path) -> None:
    server = ServerProcess(["--engine-dir", str(static_engine_dir)], tmp_path / "serve.log")
    try:
        server.wait_ready()
        meta = httpx.get(f"{server.url}/v2/models/tvm_model").json()
        assert meta["platform"] == "tvm" and [o["name"] for o in meta["outputs"]] == ["y", "z"]
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        response = httpx.post(
            f"{server.url}/v2/models/tvm_model/infer",
            json={"inputs": [json_input("x", x, "FP32")], "outputs": [{"name": "z"}]},
        )
        assert response.status_code == 200, response.text
        (z,) = response.json()["outputs"]
        assert z["name"] == "z" and z["data"] == (x * 2).ravel().tolist()
    finally:
        assert server.stop() == 0, server.log()
