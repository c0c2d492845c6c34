"""ONNX Runtime: the CPU engine on x86/ARM, and the CUDA execution provider when present."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from infleet.runtime import errors as runtime_errors
from infleet.runtime.builders.onnxruntime import cuda_session
from infleet.runtime.manifest import EngineManifest, TensorSpec
from infleet.runtime.server.engines.base import EngineOptions, check_names, run_padded
from infleet.runtime.server.engines.ort_cuda_bound import BoundSession, pool_size
from infleet.runtime.server.engines.ort_cuda_bound import mode as bound_mode
from infleet.runtime.server.errors import BackendUnavailable, ConfigError, EngineError

# ORT's "tensor(float)" style names -> v2 datatypes, to check the manifest against the model
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxRuntimeEngine:
    text_strings = True  # ORT string tensors take Python str

    def __init__(self, manifest: EngineManifest, engine_path: Path, options: EngineOptions):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(
                "onnxruntime is not installed (pip install 'infleet[onnxruntime]')"
            ) from e
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            so.intra_op_num_threads = options.threads
        if not options.spin:
            # Idle intra-op threads otherwise busy-wait for the next batch, taking the cores
            # the event loop needs to decode the requests that would form that batch.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if options.device in ("auto", "gpu") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif options.device == "gpu":
            raise BackendUnavailable(
                "--device gpu: onnxruntime has no CUDAExecutionProvider here "
                "(install infleet[gpu] on a machine with an NVIDIA GPU)"
            )
        try:
            # The builder's session: same CUDA provider options, and a session that ORT quietly
            # moved to the CPU is refused rather than served as the GPU engine.
            self._session = cuda_session(ort, str(engine_path), so, providers)
        except runtime_errors.BackendUnavailable as e:
            raise BackendUnavailable(f"--device {options.device}: {e}") from e
        except Exception as e:  # ORT raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load {engine_path.name}: {e}") from e
        self.inputs = tuple(manifest.inputs)
        self.outputs = tuple(manifest.outputs)
        check_names(
            "inputs", self.inputs, [i.name for i in self._session.get_inputs()], engine_path
        )
        check_names(
            "outputs", self.outputs, [o.name for o in self._session.get_outputs()], engine_path
        )
        for specs, real in (
            (self.inputs, self._session.get_inputs()),
            (self.outputs, self._session.get_outputs()),
        ):
            _check_types(specs, {t.name: t.type for t in real}, engine_path)
            _check_shapes(specs, {t.name: t.shape for t in real}, engine_path)
        self._output_names = [o.name for o in self.outputs]
        device = self._session.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} ({device})"
        # On the CUDA provider a session is fast only while its input shape stays the same: ORT
        # re-plans every Conv when the shape changes (on an H100, the sample CNN took 0.18 ms
        # at batch 1 and 0.36 ms at batch 16 with a constant shape, 2-3 ms per run when batch
        # sizes alternated, as a dynamic batcher makes them). So the GPU engine keeps two
        # sessions of constant shape: one for single rows (lowest latency at low load) and
        # one that every larger batch is padded to. The price is the weights twice in GPU
        # memory. On the CPU shapes change cheaply and padding would only add work.
        batchable = all(s.shape and s.shape[0] == -1 for s in (*self.inputs, *self.outputs))
        largest = manifest.max_batch_size
        self._sessions = {largest: self._session}
        self.warm_batch_sizes: tuple[int, ...] = ()
        self._bound: dict[int, BoundSession] = {}
        if device == "CUDAExecutionProvider" and batchable and largest > 1:
            self._sessions[1] = cuda_session(ort, str(engine_path), so, providers)
            self.warm_batch_sizes = (1, largest)
            self._bind(ort, str(engine_path), so, providers)

    def _bind(self, ort: Any, path: str, so: Any, providers: list[str]) -> None:
        """IOBinding (and CUDA graphs) for the fixed-shape sessions, when asked for."""
        try:
            how = bound_mode()
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if how is None:
            return
        graph = how == "graph"
        for batch in self.warm_batch_sizes:
            if not BoundSession.possible(batch, self.inputs, self.outputs):
                continue
            session = self._sessions[batch]
            if graph:  # capture needs its own session, created with the option
                session = cuda_session(ort, path, so, providers, {"enable_cuda_graph": "1"})
                self._sessions[batch] = session
            self._bound[batch] = BoundSession(
                ort, session, batch, self.inputs, self.outputs, pool_size(graph)
            )
        self.description += f", {how}"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.warm_batch_sizes:
            return run_padded(self._run_fixed, inputs, self.warm_batch_sizes)
        return self._run(self._session, inputs)

    def _run_fixed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(inputs.values())))
        bound = self._bound.get(batch)
        if bound is not None:
            return bound.run(inputs)
        return self._run(self._sessions[batch], inputs)

    def _run(self, session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._bound.clear()
        self._sessions.clear()
        del self._session


def _check_types(specs: tuple[TensorSpec, ...], actual: dict[str, str], path: Path) -> None:
    for spec in specs:
        real = _ORT_TYPES.get(actual[spec.name])
        if real != spec.datatype:
            raise EngineError(
                f"{path.name}: tensor {spec.name!r} is {actual[spec.name]} in the model but "
                f"{spec.datatype} in the manifest"
            )


def _check_shapes(
    specs: tuple[TensorSpec, ...], actual: dict[str, list[int | str | None]], path: Path
) -> None:
    """Fixed dimensions must agree; the model's symbolic ones ("N", None) accept anything."""
    for spec in specs:
        real = actual[spec.name]
        clash = len(real) != len(spec.shape) or any(
            isinstance(r, int) and r >= 0 and d not in (-1, r)
            for r, d in zip(real, spec.shape, strict=False)
        )
        if clash:
            raise EngineError(
                f"{path.name}: tensor {spec.name!r} has shape {real} in the model but "
                f"{spec.shape} in the manifest"
            )


def load(manifest: EngineManifest, engine_path: Path, options: EngineOptions) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(manifest, engine_path, options)
