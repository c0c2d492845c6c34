"""TensorRT: a serialized plan (TensorRT 10 named-tensor API) on an NVIDIA GPU.

The plan is full TensorRT's or TensorRT-RTX's, as the manifest's ``tensorrt_impl`` option says
(full TensorRT for manifests that predate the option). Those libraries and cuda-python only
install on machines with the NVIDIA stack, so this module is written against the documented
API and is loaded only behind :func:`capability`, which says in one line what is missing.
Host buffers are copied to device buffers that are grown on demand and reused across batches;
every batch sets the input shapes (dynamic batch comes from the builder's optimisation
profile) and reads the output shapes back.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from infleet.runtime import errors as runtime_errors
from infleet.runtime.builders import tensorrt_lib as lib
from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server.datatypes import numpy_dtype
from infleet.runtime.server.engines.base import EngineOptions, check_names
from infleet.runtime.server.engines.cuda import check, cudart
from infleet.runtime.server.errors import BackendUnavailable, ConfigError, EngineError
from infleet.scheduler.tensorrt_impl import LABEL, MODULE, TensorRtImpl


def impl_of(manifest: EngineManifest) -> TensorRtImpl:
    value = manifest.options.get("tensorrt_impl", TensorRtImpl.FULL.value)
    try:
        return TensorRtImpl(value)
    except ValueError:
        raise ConfigError(
            f"the manifest names an unknown TensorRT implementation {value!r}"
        ) from None


def capability(impl: TensorRtImpl = TensorRtImpl.FULL) -> str | None:
    """None when ``impl``'s plans can run here, else the reason they cannot."""
    for module, extra in ((MODULE[impl], "tensorrt"), ("cuda", "tensorrt")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'infleet[{extra}]')"
    err, count = cudart().cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return "no CUDA device is visible"
    return None


class TensorRtEngine:
    text_strings = False

    def __init__(self, manifest: EngineManifest, engine_path: Path, options: EngineOptions):
        impl = impl_of(manifest)
        reason = capability(impl)
        if reason is not None:
            raise BackendUnavailable(f"cannot run the TensorRT engine {engine_path.name}: {reason}")
        if options.device == "cpu":
            raise ConfigError("a TensorRT engine needs a GPU; --device cpu is not possible")
        trt = lib.import_impl(impl)

        self._trt = trt
        self._cudart = cudart()
        self._logger = lib.make_logger(trt)
        plan = engine_path.read_bytes()
        try:
            # RTX says up front when this GPU cannot run the plan (compute capability it does
            # not list, old driver): a clear refusal instead of a None engine further on.
            lib.check_runs_here(trt, impl, plan, self._logger, engine_path.name)
        except runtime_errors.UnsupportedHardware as e:
            raise BackendUnavailable(str(e)) from e
        runtime = trt.Runtime(self._logger)
        before = len(self._logger.messages)
        self._engine = runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            said = "; ".join(self._logger.messages[before:]) or "no message"
            raise EngineError(
                f"{LABEL[impl]} {trt.__version__} cannot deserialize {engine_path.name} "
                f"(built with another version or for another GPU?): {said}"
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
        self.description = f"{impl.value} {trt.__version__}"
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
