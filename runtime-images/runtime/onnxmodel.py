"""Reading an ONNX model: validation, tensor specs, concrete shapes, synthetic inputs.

The ``onnx`` package is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infleet.runtime.errors import ModelError, ShapeError, UnsupportedModel
from infleet.runtime.manifest import Datatype, TensorSpec

Dim = int | str  # a fixed size, or the name of a dynamic dimension ("" when unnamed)

_OIP: dict[str, Datatype] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype[Any]
    dims: tuple[Dim, ...]

    @property
    def batched(self) -> bool:
        """Whether the first dimension is dynamic (the batch dimension)."""
        return bool(self.dims) and isinstance(self.dims[0], str)

    def spec(self) -> TensorSpec:
        shape = [d if isinstance(d, int) else -1 for d in self.dims]
        return TensorSpec(name=self.name, datatype=_OIP[self.dtype.name], shape=shape)

    def shape(self, batch: int) -> tuple[int, ...]:
        """Concrete shape: the dynamic first dimension is ``batch``; every other dimension
        must be sized already (``infleet.runtime.shapes.resolve``)."""
        out = []
        for i, d in enumerate(self.dims):
            if isinstance(d, int):
                out.append(d)
            elif i == 0:
                out.append(batch)
            else:
                raise ShapeError(
                    f"input {self.name!r} dimension {i} ({d or 'unnamed'}) has no size; "
                    f"give it with --input {self.name}=... or --dim {d or 'NAME'}=N"
                )
        return tuple(out)


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    opset: int
    op_types: frozenset[str]
    int_input_bounds: Mapping[str, int]
    """For integer inputs used as Gather indices (token ids): the table size they index."""

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when no input has a dynamic first dimension (exported at batch 1)."""
        if any(t.batched for t in self.inputs):
            return None
        return self.inputs[0].dims[0] if self.inputs and self.inputs[0].dims else 1  # type: ignore[return-value]


def load_model(path: Path) -> Any:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(str(path))
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError...
        raise ModelError(f"{path.name}: not a valid ONNX model: {_first_line(e)}") from e
    return model


def model_info(path: Path, model: Any | None = None) -> ModelInfo:
    import onnx

    model = model if model is not None else load_model(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}

    def info(vi: Any) -> TensorInfo:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedModel(f"{vi.name}: only tensor inputs and outputs are supported")
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception as e:
            raise UnsupportedModel(f"{vi.name}: unsupported element type {tt.elem_type}") from e
        if dtype.name not in _OIP:
            raise UnsupportedModel(f"{vi.name}: element type {dtype.name} cannot be served")
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "")
        return TensorInfo(vi.name, dtype, tuple(dims))

    inputs = tuple(info(vi) for vi in graph.input if vi.name not in initializers)
    outputs = tuple(info(vi) for vi in graph.output)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    tables = {i.name: tuple(i.dims) for i in graph.initializer}
    bounds: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            bounds[node.input[1]] = min(
                bounds.get(node.input[1], 1 << 62), tables[node.input[0]][axis]
            )
    return ModelInfo(
        path=path,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        op_types=frozenset(n.op_type for n in graph.node),
        int_input_bounds=bounds,
    )


def synthetic_inputs(info: ModelInfo, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Plausible random inputs: normal floats, valid token ids, all-ones masks.

    Used for INT8 calibration and validation when the user gives no data; the summary says so.
    """
    rng = np.random.default_rng(seed)
    batch = info.fixed_batch or samples
    out: dict[str, np.ndarray] = {}
    for t in info.inputs:
        shape = t.shape(batch)
        if t.dtype.kind == "f":
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
        elif t.dtype.kind == "b":
            out[t.name] = rng.integers(0, 2, shape).astype(t.dtype)
        elif "mask" in t.name.lower():
            out[t.name] = np.ones(shape, t.dtype)
        else:
            high = info.int_input_bounds.get(t.name, 2)
            out[t.name] = rng.integers(0, high, shape).astype(t.dtype)
    return out


def fix_shapes_and_fold(model: Any, shapes: Mapping[str, tuple[int, ...]], out_path: Path) -> Path:
    """Pin input shapes and fold constants (shape subgraphs) with ORT's basic optimiser.

    Real exported models compute reshape targets with Shape/Gather/Concat subgraphs; TVM's
    importer refuses many of them, but once the shapes are static they fold into constants.
    ORT's basic level only removes and folds; it never emits contrib ops.
    """
    import onnx
    import onnxruntime as ort

    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for vi in pinned.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, shapes[vi.name], strict=True):
                d.Clear()
                d.dim_value = size
    # Stale value_info (old symbolic shapes) would contradict the pinned ones.
    del pinned.graph.value_info[:]
    for vi in pinned.graph.output:
        vi.type.tensor_type.ClearField("shape")
    raw = out_path.with_suffix(".pinned.onnx")
    onnx.save(pinned, str(raw))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out_path)
    try:
        ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"cannot prepare the graph with static shapes: {_first_line(e)}") from e
    finally:
        raw.unlink(missing_ok=True)
    return out_path


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
