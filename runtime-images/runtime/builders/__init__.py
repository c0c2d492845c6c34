"""Engine builders, one module per backend, chosen through an explicit registry.

Backend modules import their library only when a builder method runs, so importing this
package costs nothing and a missing backend is reported by the builder that needs it.
"""

from __future__ import annotations

import importlib

from infleet.api import Backend
from infleet.runtime.builders.base import (
    BuildJob,
    BuiltEngine,
    EngineBuilder,
    LoadedEngine,
    load_built,
)
from infleet.runtime.errors import BackendUnavailable

# backend -> "module:class". Adding a backend means one module and one line here.
REGISTRY: dict[Backend, str] = {
    Backend.ONNXRUNTIME: "infleet.runtime.builders.onnxruntime:OnnxRuntimeBuilder",
    Backend.TVM: "infleet.runtime.builders.tvm:TvmBuilder",
    Backend.TENSORRT: "infleet.runtime.builders.tensorrt:TensorRtBuilder",
}


def get_builder(backend: Backend) -> EngineBuilder:
    try:
        module, cls = REGISTRY[backend].split(":")
    except KeyError as e:
        raise BackendUnavailable(f"no builder is registered for backend {backend}") from e
    builder: EngineBuilder = getattr(importlib.import_module(module), cls)()
    return builder


__all__ = [
    "REGISTRY",
    "BuildJob",
    "BuiltEngine",
    "EngineBuilder",
    "LoadedEngine",
    "get_builder",
    "load_built",
]
