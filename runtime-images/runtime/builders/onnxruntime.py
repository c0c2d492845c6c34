"""ONNX Runtime engines: the graph optimised for the node and saved, optionally quantised.

The engine is an ONNX file that ORT has already optimised (level ALL, for the build node's
CPU or for the CUDA provider on GPU classes); loading it skips the optimiser. On GPU classes
FP16 is offered too (weights and activations converted, inputs and outputs kept FP32), and a
session that ORT silently moved to the CPU (CUDA/cuDNN libraries not loadable) is an error,
never a GPU engine gated and profiled on the CPU. INT8 uses onnxruntime.quantization after
the preparation in ``ort_quant`` (opset upgrade, pre-processing): static QDQ with calibration
data (convolutional models), or dynamic quantisation (transformer-style models made of
MatMul/Gemm, where activation ranges vary per input and static ranges cost accuracy).
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from infleet.api import Backend, Precision
from infleet.runtime.builders.base import BuildJob, BuiltEngine, Feeds, op_label
from infleet.runtime.builders.ort_quant import not_quantisable, quantise
from infleet.runtime.errors import BackendUnavailable, BuildError, ModelError, UnsupportedModel
from infleet.runtime.hardware import HardwareTarget

log = logging.getLogger(__name__)

ENGINE_FILE = "engine.onnx"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(
            "onnxruntime is not installed (pip install 'infleet[onnxruntime]')"
        ) from e
    return onnxruntime


def providers_for(target: HardwareTarget) -> list[str]:
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if target.gpu
        else ["CPUExecutionProvider"]
    )


# cuDNN's default exhaustive algorithm search benchmarks every Conv again for each new input
# shape, which a dynamic batcher meets at run time; the heuristic pick costs nothing per
# shape. (What made batches slow on an H100 was the shape changes themselves: see the
# server's ORT engine, which keeps each session's shape constant.)
CUDA_PROVIDER_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def _with_options(
    providers: list[str], extra: dict[str, str] | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    cuda = {**CUDA_PROVIDER_OPTIONS, **(extra or {})}
    return [(p, cuda) if p == "CUDAExecutionProvider" else p for p in providers]


def cuda_session(
    ort: Any, path: str, opts: Any, providers: list[str], cuda_options: dict[str, str] | None = None
) -> Any:
    """An InferenceSession that really runs on the first provider asked for.

    ORT does not fail when the CUDA provider cannot be created (libcudart/libcublas/libcudnn
    not loadable, no GPU visible): it logs a warning and builds a CPU session, which would
    then be gated and profiled as the GPU engine. Here that raises BackendUnavailable.
    """
    wants_cuda = providers[0] == "CUDAExecutionProvider"
    session = ort.InferenceSession(path, opts, providers=_with_options(providers, cuda_options))
    used = list(session.get_providers())
    if wants_cuda and (not used or used[0] != "CUDAExecutionProvider"):
        raise BackendUnavailable(
            "onnxruntime did not create the CUDA execution provider (it fell back to "
            f"{', '.join(used) or 'nothing'}): the CUDA and cuDNN libraries this "
            f"onnxruntime {ort.__version__} needs are not loadable, or no GPU is visible"
        )
    return session


def _default(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def int8_method(job: BuildJob) -> str:
    """static (QDQ, calibrated) for conv nets; dynamic for MatMul-only (transformer) graphs."""
    if job.int8_method != "auto":
        return job.int8_method
    ops = job.info.op_types
    if "Conv" not in ops and ops & {"MatMul", "Gemm"}:
        return "dynamic"
    return "static"


_KERNELS_SCRIPT = (
    "import json; from infleet.runtime.builders.onnxruntime import kernels_here; "
    "print(json.dumps(sorted(kernels_here())))"
)


@functools.cache
def cpu_kernels() -> frozenset[tuple[str, str]] | None:
    """(domain, op) of every CPU-provider kernel of this onnxruntime; None if it cannot say.

    The GPU build's ``get_all_opkernel_def`` walks the registries of every provider it was
    compiled with, TensorRT's included; where TensorRT's libraries are absent (they are on
    the H200 here) it crashed the process (SIGSEGV, onnxruntime-gpu 1.31.1). So with a GPU
    build the list is read in a child process, and a child that dies leaves the op check to
    the session load (which names the op) instead of killing the build.
    """
    ort = _ort()  # BackendUnavailable when missing
    if ort.get_available_providers() == ["CPUExecutionProvider"]:
        return kernels_here()
    return kernels_in_child()


def kernels_here() -> frozenset[tuple[str, str]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return frozenset(
        (d.domain or "", d.op_name)
        for d in state.get_all_opkernel_def()
        if d.provider == "CPUExecutionProvider"
    )


def kernels_in_child(python: str = sys.executable) -> frozenset[tuple[str, str]] | None:
    try:
        done = subprocess.run(
            [python, "-c", _KERNELS_SCRIPT],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not list onnxruntime's CPU kernels (%s); the session load checks ops", e)
        return None
    if done.returncode != 0:
        err = done.stderr.strip()[-200:]
        log.warning(
            "listing onnxruntime's CPU kernels failed (exit %s%s); the session load checks ops",
            done.returncode,
            f": {err}" if err else "",
        )
        return None
    return frozenset((d, o) for d, o in json.loads(done.stdout))


class OnnxRuntimeBuilder:
    backend = Backend.ONNXRUNTIME

    def version(self) -> str:
        return str(_ort().__version__)

    def batch_sizes(self, job: BuildJob) -> tuple[int, ...]:
        return ()  # ORT takes any batch

    def tuning(self, job: BuildJob) -> str:
        return ""

    def unsupported(self, precision: Precision, target: HardwareTarget) -> str | None:
        if not target.is_host():
            return (
                f"ONNX Runtime builds on the node it serves; target {target.arch} is not this host"
            )
        if precision == Precision.FP8 or (precision == Precision.FP16 and not target.gpu):
            return (
                f"{precision} is not offered by the ONNX Runtime builder "
                f"({'FP32, FP16' if target.gpu else 'FP32 and INT8'} only on this class)"
            )
        if target.gpu and "CUDAExecutionProvider" not in _ort().get_available_providers():
            return "this onnxruntime has no CUDA provider (install infleet[gpu])"
        if target.gpu and precision == Precision.INT8:
            return "INT8 on GPUs is TensorRT's job; the CUDA provider runs FP32"
        return None

    def unsupported_ops(self, ops: frozenset[tuple[str, str]]) -> tuple[str, ...]:
        # The CPU provider's kernels: on GPU classes the CUDA provider hands an op it lacks to
        # the CPU, so these are the ops ORT cannot run anywhere.
        kernels = cpu_kernels()
        if kernels is None:  # not knowable here: the session's own load reports such ops
            return ()
        return tuple(sorted(op_label(d, o) for d, o in ops if (_default(d), o) not in kernels))

    def build(self, job: BuildJob, precision: Precision, out_dir: Path) -> BuiltEngine:
        ort = _ort()
        options = {
            "providers": ",".join(providers_for(job.target)),
            "optimization": "all",
            "intra_op_threads": str(job.threads),  # the build pod's CPU limit; serve may differ
        }
        source = job.model_path
        notes: list[str] = []
        if precision == Precision.INT8:
            method = int8_method(job)
            source, notes = quantise(job, method)
            options["quantization"] = (
                f"{method} (QDQ, u8 activations, s8 per-channel weights)"
                if method == "static"
                else "dynamic (s8 per-channel weights, per-batch activation ranges)"
            )
        elif precision == Precision.FP16:
            source = self._fp16(job)
            options["conversion"] = "fp16 (onnxruntime.transformers.float16; FP32 inputs/outputs)"
        opts = ort.SessionOptions()
        opts.log_severity_level = (
            3  # the "hardware specific" warning is expected: keys carry the CPU
        )
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(out_dir / ENGINE_FILE)
        opts.intra_op_num_threads = job.threads
        try:
            session = cuda_session(ort, str(source), opts, providers_for(job.target))
        except BackendUnavailable:
            raise
        except Exception as e:
            if precision == Precision.INT8:
                raise not_quantisable("onnxruntime cannot load the graph it quantised", e) from e
            raise _wrap(e, "optimising the graph") from e
        finally:
            if source != job.model_path:
                source.unlink(missing_ok=True)
        options["providers_used"] = ",".join(session.get_providers())
        return BuiltEngine(engine_file=ENGINE_FILE, options=options, notes=tuple(notes))

    def _fp16(self, job: BuildJob) -> Path:
        return fp16_model(job)


def fp16_model(job: BuildJob) -> Path:
    """FP16 weights and compute (the CUDA provider's, TensorRT-RTX's strongly typed FP16);
    graph inputs/outputs stay FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = job.work_dir / "fp16.onnx"
    try:
        model = convert_float_to_float16(onnx.load(str(job.model_path)), keep_io_types=True)
        onnx.save(model, str(out))
    except Exception as e:
        raise _wrap(e, "FP16 conversion") from e
    return out


def reference_outputs(model_path: Path, feeds: Feeds, threads: int) -> list[np.ndarray]:
    """The FP32 reference every engine is compared with: the model itself on ORT's CPU provider,
    optimiser limited to basic, every output in the model's order."""
    return _run_at(model_path, feeds, threads, "basic")


def other_levels(model_path: Path, feeds: Feeds, threads: int) -> list[list[np.ndarray]]:
    """The model's outputs at ORT's other optimisation levels (none, all) on the CPU provider:
    how far these are from the reference is the noise floor of an FP32 comparison."""
    return [_run_at(model_path, feeds, threads, level) for level in ("disable", "all")]


def _run_at(model_path: Path, feeds: Feeds, threads: int, level: str) -> list[np.ndarray]:
    ort = _ort()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        return list(session.run(None, dict(feeds)))
    except Exception as e:
        raise _wrap(e, f"running the FP32 reference (optimisation {level})") from e


def _wrap(e: Exception, doing: str) -> BuildError:
    """onnxruntime's error as ours, chosen by its type (onnxruntime raises one class per status
    code), never by its text: NOT_IMPLEMENTED (no kernel for an op, type or attribute) is an
    unsupported model, an invalid graph a model error, anything else a failed build."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    text = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
    unsupported: tuple[type[BaseException], ...] = (
        NotImplementedError,
        *_state_types(state, "NotImplemented"),
    )
    invalid = _state_types(state, "InvalidGraph", "InvalidProtobuf", "NoModel")
    if isinstance(e, unsupported):
        return UnsupportedModel(f"onnxruntime, {doing}: unsupported: {text}")
    if isinstance(e, invalid):
        return ModelError(f"onnxruntime, {doing}: invalid model: {text}")
    return BuildError(f"onnxruntime, {doing}: {text}")


def _state_types(state: Any, *names: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
