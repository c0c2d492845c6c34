"""Small engines made on the spot, for tests, benchmarks and trying ``infleet serve``.

Nothing is downloaded: the ONNX graphs are written with ``onnx.helper`` from seeded random
weights, and ONNX Runtime serves an ``.onnx`` file directly (the manifest's ``engine_file``
is the model itself), so no build step is needed.

- :func:`small_cnn`: input ``input`` FP32 [N, 3, 48, 192] (a text-line crop), three 3x3
  convolutions (3->w1 stride 2, w1->w2 stride 2, w2->w3), ReLU after each, global average
  pooling and a w3->10 dense layer: output ``logits`` FP32 [N, 10]. Two sizes
  (``CNN_WIDTHS``): ``small`` (16/32/64, about 15 M multiply-adds per row, 0.18 ms at batch
  1 on 2 x86 cores) makes the server's own cost as visible as it gets; ``medium``
  (36/72/144, about 0.9 ms, 1,100 inferences/s) is the size the serving targets were set
  for (issue 6 measured "about 1,050 inferences/s at batch 1" for its small CNN).
- :func:`identity_model`: ``x`` -> ``y`` of one v2 datatype, shape [N, 3].
- :func:`slow_model`: ``x`` FP32 [N, 1] -> ``y`` = x, after a fixed chain of 512x512 matrix
  products that takes tens of milliseconds whatever the batch: for overload and drain tests.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from infleet.api import Backend, Precision
from infleet.runtime.manifest import MANIFEST_FILE, EngineKey, EngineManifest, TensorSpec

_ONNX_TYPES = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
    "BYTES": "STRING",
}
CNN_INPUT_SHAPE = (3, 48, 192)
CNN_WIDTHS: dict[str, tuple[int, int, int]] = {"small": (16, 32, 64), "medium": (36, 72, 144)}


def _save(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime in the supported range
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def small_cnn(path: Path, seed: int = 0, size: str = "small") -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> Any:
        fan_in = int(np.prod(shape[1:])) or 1
        w = rng.normal(0, (2.0 / fan_in) ** 0.5, size=shape).astype(np.float32)
        return numpy_helper.from_array(w, name)

    w1, w2, w3 = CNN_WIDTHS[size]
    inits = [
        weight("w1", w1, 3, 3, 3),
        weight("w2", w2, w1, 3, 3),
        weight("w3", w3, w2, 3, 3),
        weight("wf", w3, 10),
        numpy_helper.from_array(np.zeros(10, np.float32), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *CNN_INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _save(graph, path)


def identity_model(path: Path, datatype: str) -> Path:
    from onnx import TensorProto, helper

    elem = getattr(TensorProto, _ONNX_TYPES[datatype])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", elem, ["N", 3])],
        [helper.make_tensor_value_info("y", elem, ["N", 3])],
    )
    return _save(graph, path)


def slow_model(path: Path, products: int = 12) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    n = 512
    inits = [
        numpy_helper.from_array(np.full((n, n), 0.01, np.float32), "c"),
        numpy_helper.from_array((np.eye(n) * 0.5).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
    ]
    # the chain depends on x (through its sum), so it cannot be folded at load time
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Add", ["c", "s"], ["t0"]),
    ]
    for i in range(products):
        nodes.append(helper.make_node("MatMul", [f"t{i}", "w"], [f"t{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"t{products}"], ["r"], keepdims=0),
        helper.make_node("Mul", ["r", "zero"], ["z"]),
        helper.make_node("Add", ["x", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return _save(graph, path)


def write_manifest(
    directory: Path,
    engine_file: str,
    model_name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    backend: Backend = Backend.ONNXRUNTIME,
    max_batch_size: int = 8,
    batch_sizes: list[int] | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write ``manifest.json`` for an engine file already in ``directory``; returns its path."""
    digest = hashlib.sha256((directory / engine_file).read_bytes()).hexdigest()
    manifest = EngineManifest(
        key=EngineKey(
            model_sha256=digest,
            backend=backend,
            backend_version="sample",
            precision=Precision.FP32,
            hardware_fingerprint="any",
            builder_version="samples",
        ),
        engine_file=engine_file,
        model_name=model_name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        batch_sizes=batch_sizes or [],
        node_class="any",
        options=options or {},
        created_at=datetime.now(UTC).isoformat(),
        build_seconds=0.0,
    )
    path = directory / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2))
    return path


def cnn_engine(
    directory: Path, max_batch_size: int = 16, name: str = "cnn", size: str = "small"
) -> Path:
    small_cnn(directory / "model.onnx", size=size)
    return write_manifest(
        directory,
        "model.onnx",
        name,
        [TensorSpec(name="input", datatype="FP32", shape=[-1, *CNN_INPUT_SHAPE])],
        [TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])],
        max_batch_size=max_batch_size,
    )


def identity_engine(directory: Path, datatype: str, max_batch_size: int = 8) -> Path:
    identity_model(directory / "model.onnx", datatype)
    spec = dict(datatype=datatype, shape=[-1, 3])
    return write_manifest(
        directory,
        "model.onnx",
        f"identity_{datatype.lower()}",
        [TensorSpec(name="x", **spec)],
        [TensorSpec(name="y", **spec)],
        max_batch_size=max_batch_size,
    )


def slow_engine(directory: Path, products: int = 12, name: str = "slow") -> Path:
    slow_model(directory / "model.onnx", products)
    spec = dict(datatype="FP32", shape=[-1, 1])
    return write_manifest(
        directory,
        "model.onnx",
        name,
        [TensorSpec(name="x", **spec)],
        [TensorSpec(name="y", **spec)],
        max_batch_size=8,
    )
