"""Which backends cannot run a model's operators, known before any engine is built.

`infleet plan` asks this for a model it can read (a ``file://`` URI, or ``--model-file``), so
a class whose backend cannot run the model is excluded with the operators named. Each backend
answers through its builder: ONNX Runtime from its kernel registry, TVM from its Relax
importer's table, TensorRT from its ONNX parser. A backend whose library is not installed
here is reported as not checked, never as supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infleet.api import Backend
from infleet.runtime.errors import BackendUnavailable, ModelError


@dataclass(frozen=True)
class OpSupport:
    unsupported: dict[Backend, tuple[str, ...]] = field(default_factory=dict)
    """Per checked backend, the model's operators it cannot run (empty: it runs them all)."""
    unchecked: dict[Backend, str] = field(default_factory=dict)
    """Backends that could not be asked here, and why."""


def model_ops(path: Path) -> frozenset[tuple[str, str]]:
    """Every (domain, op_type) the model runs: subgraphs (If/Loop/Scan bodies) included, and a
    call of one of the model's own functions (which exporters such as torch.onnx's dynamo
    emit in domains of their own) counted as the operators of its body, which backends inline."""
    try:
        import onnx
    except ImportError as e:
        raise BackendUnavailable(
            "onnx is not installed (pip install 'infleet[onnxruntime]')"
        ) from e
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model: {e}") from e
    functions = {(f.domain, f.name): f for f in model.functions}
    ops: set[tuple[str, str]] = set()
    inlined: set[tuple[str, str]] = set()

    def walk(nodes: Any) -> None:
        for node in nodes:
            called = (node.domain or "", node.op_type)
            if called in functions:
                if called not in inlined:  # a function's body is walked once
                    inlined.add(called)
                    walk(functions[called].node)
            else:
                ops.add(called)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        walk(sub.node)

    walk(model.graph.node)
    return frozenset(ops)


def check(path: Path, backends: tuple[Backend, ...] = tuple(Backend)) -> OpSupport:
    from infleet.runtime.builders import get_builder

    ops = model_ops(path)
    result = OpSupport()
    for backend in backends:
        try:
            result.unsupported[backend] = get_builder(backend).unsupported_ops(ops)
        except BackendUnavailable as e:
            result.unchecked[backend] = str(e)
    return result
