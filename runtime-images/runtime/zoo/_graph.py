"""A small helper for writing ONNX graphs node by node."""

from __future__ import annotations

from typing import Any

import numpy as np

OPSET = 17


class GraphBuilder:
    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, value: Any, name: str | None = None) -> str:
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self._n += 1
        name = name or f"c{self._n}"
        self.inits.append(self.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}{self._n}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def flatten_batch(self, x: str) -> str:
        """``x`` reshaped to [batch, -1] through a Shape/Gather/Unsqueeze/Concat/Reshape subgraph,
        as ``torch.onnx.export`` writes ``x.view(x.size(0), -1)`` (not one Flatten node)."""
        batch = self.op("Gather", self.op("Shape", x), self.const(np.array(0, np.int64)), axis=0)
        shape = self.op(
            "Concat",
            self.op("Unsqueeze", batch, self.const(np.array([0], np.int64))),
            self.const(np.array([-1], np.int64)),
            axis=0,
        )
        return self.op("Reshape", x, shape)

    def model(self, name: str, inputs: list[Any], outputs: list[Any], opset: int = OPSET) -> Any:
        graph = self.helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", opset)])
        model.ir_version = 8  # readable by every onnxruntime >= 1.14
        return model
