"""TensorRT: a serialized plan (TensorRT 10 named-tensor API) on an NVIDIA GPU.

tensorrt and cuda-python only install on machines with the NVIDIA stack, so this module is
written against the documented API and is loaded only behind :func:`capability`, which says
in one line what is missing. Host buffers are copied to device buffers that are grown on
demand and reused across batches; every batch sets the input shapes (dynamic batch comes
from the builder's optimisation profile) and reads the output shapes back.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server.datatypes import numpy_dtype
from infleet.runtime.server.engines.base import EngineOptions, check_names
from infleet.runtime.server.engines.cuda import check, cudart
from infleet.runtime.server.errors import BackendUnavailable, ConfigError, EngineError


def capability() -> str | None:
    """None when TensorRT can run here, else the reason it cannot."""
    for module, extra in (("tensorrt", "tensorrt"), ("cuda", "tensorrt")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'infleet[{extra}]')"
    err, count = cudart().cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return "no CUDA device is visible"
    return None


class TensorRtEngine:
    text_strings = False

    def __init__(self, manifest: EngineManifest, engine_path: Path, options: EngineOptions):
        reason = capability()
        if reason is not None:
            raise BackendUnavailable(f"cannot run the TensorRT engine {engine_path.name}: {reason}")
        if options.device == "cpu":
            raise ConfigError("a TensorRT engine needs a GPU; --device cpu is not possible")
        import tensorrt as trt

        self._trt = trt
        self._cudart = cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"TensorRT {trt.__version__} cannot deserialize {engine_path.name} "
                "(built with another TensorRT version or for another GPU?)"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = tuple(manifest.inputs)
        self.outputs = tuple(manifest.outputs)
        check_names("inputs", self.inputs, [n for n in names if is_input[n]], engine_path)
        check_names("outputs", self.outputs, [n for n in names if not is_input[n]], engine_path)
        self._stream = check(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity)
        self._lock = threading.Lock()  # one execution context: one batch at a time
        self.description = f"tensorrt {trt.__version__}"
        # An engine built with one optimisation profile: TensorRT picks tactics at build time.
        self.warm_batch_sizes: tuple[int, ...] = ()

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(name, (0, 0))
        if capacity < nbytes:
            if pointer:
                check(self._cudart.cudaFree(pointer))
            pointer = check(self._cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = self._cudart
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            for spec in self.inputs:
                host = np.ascontiguousarray(inputs[spec.name])
                self._context.set_input_shape(spec.name, host.shape)
                pointer = self._device_buffer(spec.name, host.nbytes)
                check(rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, h2d, self._stream))
                self._context.set_tensor_address(spec.name, pointer)
            results: dict[str, np.ndarray] = {}
            for spec in self.outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                host = np.empty(shape, dtype=numpy_dtype(spec.datatype))
                pointer = self._device_buffer(spec.name, host.nbytes)
                self._context.set_tensor_address(spec.name, pointer)
                results[spec.name] = host
            if not self._context.execute_async_v3(self._stream):
                raise EngineError("TensorRT execution failed")
            for spec in self.outputs:
                host = results[spec.name]
                pointer, _ = self._buffers[spec.name]
                check(rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, d2h, self._stream))
            check(rt.cudaStreamSynchronize(self._stream))
        return results

    def close(self) -> None:
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        del self._context, self._engine


def load(manifest: EngineManifest, engine_path: Path, options: EngineOptions) -> TensorRtEngine:
    return TensorRtEngine(manifest, engine_path, options)
