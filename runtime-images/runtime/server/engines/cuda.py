"""The CUDA runtime calls infleet makes itself (device buffers, copies, streams), for the
TensorRT engine and the TensorRT builder's INT8 calibrator alike. cuda-python only installs on
machines with the NVIDIA stack; nothing here is imported elsewhere."""

from __future__ import annotations

from typing import Any

from infleet.runtime.errors import BackendUnavailable
from infleet.runtime.server.errors import EngineError


def cudart() -> Any:
    """cuda-python's runtime module (either layout), or BackendUnavailable saying so."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as e:
            raise BackendUnavailable(
                "cuda-python is not installed (pip install 'infleet[tensorrt]')"
            ) from e
    return runtime


def check(result: Any, what: str = "CUDA call") -> Any:
    """The value(s) of a cuda-python call, whose first element is the error code; EngineError
    with CUDA's own description when it failed."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        described = cudart().cudaGetErrorString(err)
        text = described[1] if isinstance(described, tuple) else described
        raise EngineError(f"{what} failed: {text!r} (CUDA error {int(err)})")
    return rest[0] if len(rest) == 1 else rest
