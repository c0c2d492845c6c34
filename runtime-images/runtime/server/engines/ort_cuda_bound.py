"""Fixed-shape ONNX Runtime CUDA sessions run through IOBinding, optionally as CUDA graphs.

The levers issue 13 asked to measure on the served GPU path, opt in with
``INFLEET_ORT_CUDA_BINDING``:

- ``iobinding``: each session's inputs and outputs are device buffers bound once; a batch is
  copied into them (``update_inplace``) and its outputs read back, instead of ORT allocating,
  copying and freeing per run. A small pool of bindings per session lets several batches be in
  flight at once (``INFLEET_ORT_CUDA_BINDINGS``, default 4).
- ``graph``: the same, with ORT's CUDA graph capture (``enable_cuda_graph``): the first run is
  captured, later runs replay the whole kernel sequence with one launch. Graph replay needs the
  buffers to stay put, so there is one binding per session (one batch at a time per session).

Only for sessions whose every input and output shape is fixed once the batch is (the server's
two fixed-shape sessions); anything else runs the ordinary way.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infleet.runtime.manifest import TensorSpec
from infleet.runtime.server.datatypes import numpy_dtype

ENV = "INFLEET_ORT_CUDA_BINDING"
MODES = ("iobinding", "graph")


def mode() -> str | None:
    value = os.environ.get(ENV, "").strip()
    if value in ("", "0", "off"):
        return None
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r} is not one of off, {', '.join(MODES)}")
    return value


def pool_size(graph: bool) -> int:
    return 1 if graph else max(1, int(os.environ.get("INFLEET_ORT_CUDA_BINDINGS", "4")))


def fixed_shape(spec: TensorSpec, batch: int) -> list[int] | None:
    """The spec's shape at ``batch``; None when another dimension is open."""
    rest = list(spec.shape[1:])
    return None if any(d < 0 for d in rest) else [batch, *rest]


class _Binding:
    def __init__(
        self,
        ort: Any,
        session: Any,
        batch: int,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
    ) -> None:
        self.session = session
        self.binding = session.io_binding()
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        for specs, values, bind in (
            (inputs, self.inputs, self.binding.bind_ortvalue_input),
            (outputs, self.outputs, self.binding.bind_ortvalue_output),
        ):
            for spec in specs:
                shape = fixed_shape(spec, batch)
                assert shape is not None  # checked by BoundSession.possible
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, numpy_dtype(spec.datatype), "cuda", 0
                )
                bind(spec.name, value)
                values[spec.name] = value

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in self.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        self.session.run_with_iobinding(self.binding)
        return {name: value.numpy() for name, value in self.outputs.items()}


class BoundSession:
    """A pool of bindings over one fixed-shape CUDA session; ``run`` takes a free one."""

    def __init__(
        self,
        ort: Any,
        session: Any,
        batch: int,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        size: int,
    ) -> None:
        self._free: queue.SimpleQueue[_Binding] = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(_Binding(ort, session, batch, inputs, outputs))

    @staticmethod
    def possible(batch: int, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
        return all(fixed_shape(s, batch) is not None for s in (*inputs, *outputs)) and all(
            s.datatype != "BYTES" for s in (*inputs, *outputs)
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self._free.get()
        try:
            return binding.run(feeds)
        finally:
            self._free.put(binding)
