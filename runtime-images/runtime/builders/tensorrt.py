"""TensorRT engines: the ONNX parser, FP16 / INT8 (entropy calibration) / FP8, one optimisation
profile for the dynamic batch, a timing cache, and a serialized plan. The gate and the profile
run the plan through the server's engine (``server/engines/tensorrt_engine.py``), and the
calibrator's CUDA calls go through the server's helpers (``server/engines/cuda.py``).

Written against the TensorRT 10 Python API, which full TensorRT and TensorRT-RTX share
(``tensorrt_lib`` says which one builds and how they differ). The pure parts (profile shapes,
calibration batching, capability checks) are separate functions, tested without a GPU; the
calls into the library and CUDA run only on an NVIDIA build node. When neither library can be
imported the builder says so (BackendUnavailable); a plan the build node's GPU cannot run is
UnsupportedHardware with TensorRT's own reason; it never falls back to another backend silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infleet.api import Backend, Precision
from infleet.runtime.builders import tensorrt_lib as lib
from infleet.runtime.builders.base import BuildJob, BuiltEngine, Feeds, op_label
from infleet.runtime.errors import (
    BackendUnavailable,
    BuildError,
    UnsupportedHardware,
    UnsupportedModel,
)
from infleet.runtime.hardware import HardwareTarget
from infleet.runtime.onnxmodel import ModelInfo
from infleet.scheduler.tensorrt_impl import LABEL, TensorRtImpl

log = logging.getLogger(__name__)

ENGINE_FILE = "engine.plan"
WORKSPACE_BYTES = 4 << 30
MIN_COMPUTE = {
    Precision.FP32: (7, 0),
    Precision.FP16: (7, 0),
    Precision.INT8: (7, 0),
    Precision.FP8: (8, 9),
}


@dataclass(frozen=True)
class ProfileShapes:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_shapes(
    info: ModelInfo, max_batch: int, opt_batch: int | None = None
) -> dict[str, ProfileShapes]:
    """min/opt/max shapes per input for one optimisation profile over the batch dimension.

    opt is where TensorRT picks its tactics: by default the middle power of two, the batch a
    dynamic batcher forms most under load (max_batch itself is rarer, 1 is latency-bound).
    """
    if opt_batch is None:
        opt_batch = 1 << (max(max_batch, 1).bit_length() - 1) // 2 if max_batch > 1 else 1
        opt_batch = min(max(opt_batch, 1), max_batch)
    if not 1 <= opt_batch <= max_batch:
        raise BuildError(f"tensorrt: opt batch {opt_batch} is outside 1..{max_batch}")
    shapes = {}
    for t in info.inputs:
        if t.batched:
            shapes[t.name] = ProfileShapes(t.shape(1), t.shape(opt_batch), t.shape(max_batch))
        else:
            fixed = t.shape(1)
            shapes[t.name] = ProfileShapes(fixed, fixed, fixed)
    return shapes


class CalibrationBatches:
    """Cuts calibration samples into equal batches for TensorRT's calibrator.

    TensorRT asks for a fixed batch size up front; a short final batch would change the input
    shape mid-calibration, so it is dropped (at least one full batch is required).
    """

    def __init__(self, data: Feeds, batch_size: int, order: list[str]) -> None:
        rows = {len(v) for v in data.values()}
        if len(rows) != 1:
            raise BuildError(
                f"tensorrt: calibration inputs disagree on sample count: {sorted(rows)}"
            )
        self.rows = rows.pop()
        if self.rows < batch_size:
            raise BuildError(
                f"tensorrt: {self.rows} calibration samples, fewer than one batch of {batch_size}"
            )
        missing = [n for n in order if n not in data]
        if missing:
            raise BuildError(f"tensorrt: calibration data lacks inputs {missing}")
        self.batch_size = batch_size
        self.order = order
        self.data = data

    def __len__(self) -> int:
        return self.rows // self.batch_size

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        for i in range(len(self)):
            s = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield [np.ascontiguousarray(self.data[n][s]) for n in self.order]


def make_calibrator(trt: Any, batches: CalibrationBatches, cache_file: Path) -> Any:
    """An IInt8EntropyCalibrator2 that copies each batch into device buffers."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration; "
            "give a model with Q/DQ nodes"
        )
    from infleet.runtime.server.engines.cuda import check, cudart

    rt = cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._it = iter(batches)
            self._buffers: list[int] = []

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            arrays = next(self._it, None)
            if arrays is None:
                return None
            if not self._buffers:
                for a in arrays:
                    self._buffers.append(int(check(rt.cudaMalloc(a.nbytes), "cudaMalloc")))
            for ptr, a in zip(self._buffers, arrays, strict=True):
                h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
                check(rt.cudaMemcpy(ptr, a.ctypes.data, a.nbytes, h2d), "cudaMemcpy")
            return list(self._buffers)

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()


def capability_problem(
    precision: Precision, target: HardwareTarget, impl: TensorRtImpl = TensorRtImpl.FULL
) -> str | None:
    """Why ``precision`` cannot be built for ``target``'s GPU with ``impl``; None when it can."""
    if not target.gpu:
        return "TensorRT needs an NVIDIA GPU class"
    need = MIN_COMPUTE[precision]
    have = target.compute_capability
    if have is not None and have < need:
        return (
            f"{precision} needs compute capability {need[0]}.{need[1]}+, "
            f"{target.gpu} has {have[0]}.{have[1]}"
        )
    if impl == TensorRtImpl.RTX and precision == Precision.INT8:
        return "TensorRT-RTX has no INT8 calibration (strongly typed: give a model with Q/DQ nodes)"
    return None


def has_fp8_qdq(info_ops: frozenset[str], model: Any) -> bool:
    """FP8 in TensorRT is explicit quantisation only: the ONNX graph must carry FP8 Q/DQ."""
    if "QuantizeLinear" not in info_ops:
        return False
    fp8 = {17, 18, 19, 20}  # onnx FLOAT8E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ
    return any(i.data_type in fp8 for i in model.graph.initializer)


def _impl_for(target: HardwareTarget) -> TensorRtImpl:
    choice = lib.select(target.compute_capability)
    if choice.impl is None:
        raise UnsupportedHardware(
            f"no TensorRT implementation runs on {target.gpu}: {choice.reason}"
        )
    return choice.impl


class TensorRtBuilder:
    backend = Backend.TENSORRT

    def version(self) -> str:
        impl, trt = lib.any_impl()
        return lib.version_of(impl, trt)

    def batch_sizes(self, job: BuildJob) -> tuple[int, ...]:
        return ()  # one optimisation profile: any batch from 1 to max_batch

    def tuning(self, job: BuildJob) -> str:
        return ""

    def unsupported(self, precision: Precision, target: HardwareTarget) -> str | None:
        impl = lib.select(target.compute_capability).impl or TensorRtImpl.FULL
        return capability_problem(precision, target, impl)

    def unsupported_ops(self, ops: frozenset[tuple[str, str]]) -> tuple[str, ...]:
        _, trt = lib.any_impl()
        logger = trt.Logger(trt.Logger.WARNING)
        parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
        # The parser knows the default domain (and its plugins' ops) by op type alone.
        return tuple(sorted(op_label(d, o) for d, o in ops if not parser.supports_operator(o)))

    def build(self, job: BuildJob, precision: Precision, out_dir: Path) -> BuiltEngine:
        impl = _impl_for(job.target)
        trt = lib.import_impl(impl)
        rtx = impl == TensorRtImpl.RTX
        logger = lib.make_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        notes: list[str] = []
        model_path = job.model_path
        if rtx and precision == Precision.FP16:
            # Strongly typed: the network's types are the model's, so FP16 is a converted model.
            from infleet.runtime.builders.onnxruntime import fp16_model

            model_path = fp16_model(job)
            notes.append(
                "tensorrt-rtx: FP16 from the model converted to FP16 (FP32 inputs/outputs)"
            )
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UnsupportedModel(f"tensorrt: the ONNX parser refused the model: {errors[:600]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        shapes = profile_shapes(job.info, job.max_batch)
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            profile.set_shape(name, s.min, s.opt, s.max)
        config.add_optimization_profile(profile)
        target_cc = "default"
        if rtx:
            cc = lib.compute_target(trt, job.target.compute_capability)
            if cc is not None:
                config.num_compute_capabilities = 1
                config.set_compute_capability(cc, 0)
                target_cc = cc.name
        if rtx:
            if precision == Precision.INT8:
                raise UnsupportedHardware(capability_problem(precision, job.target, impl) or "")
        elif precision in (Precision.FP16, Precision.INT8, Precision.FP8):
            # Layers without a low-precision kernel stay FP32; FP16 is the fallback below INT8.
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == Precision.INT8:
            config.set_flag(trt.BuilderFlag.INT8)
            batches = CalibrationBatches(
                job.calibration, min(8, job.max_batch), [t.name for t in job.info.inputs]
            )
            config.int8_calibrator = make_calibrator(
                trt, batches, job.work_dir / "calibration.cache"
            )
            calib_profile = builder.create_optimization_profile()
            for name, s in shapes.items():
                fixed = (
                    (batches.batch_size, *s.opt[1:])
                    if job.info.inputs and s.min != s.max
                    else s.opt
                )
                calib_profile.set_shape(name, fixed, fixed, fixed)
            config.set_calibration_profile(calib_profile)
            notes.append(
                f"tensorrt: INT8 entropy calibration over "
                f"{len(batches) * batches.batch_size} samples"
            )
        if precision == Precision.FP8:
            from infleet.runtime.onnxmodel import load_model

            if not has_fp8_qdq(job.info.op_types, load_model(job.model_path)):
                raise UnsupportedModel(
                    "tensorrt: FP8 needs a model with FP8 Q/DQ nodes (explicit quantisation)"
                )
            if not rtx:  # RTX takes FP8 from the Q/DQ nodes alone
                config.set_flag(trt.BuilderFlag.FP8)
        cache_file = (
            job.work_dir.parent / f"timing-{impl.value}-{job.target.key.fingerprint()}.cache"
        )
        if not rtx:  # RTX: timing-cache calls are deprecated no-ops (it tunes at load)
            saved = cache_file.read_bytes() if cache_file.is_file() else b""
            config.set_timing_cache(config.create_timing_cache(saved), ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            said = "; ".join(logger.messages[-5:]) or "see its log above"
            raise BuildError(f"{LABEL[impl]}: the builder returned no engine ({said})")
        data = bytes(plan)
        (out_dir / ENGINE_FILE).write_bytes(data)
        if not rtx:
            cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
        # The gate runs the plan on this machine's GPU next: a plan it cannot run (RTX on a
        # compute capability it does not list) is the build's capability error, said here.
        lib.check_runs_here(trt, impl, data, logger, f"the {len(data)}-byte plan for {target_cc}")
        options = {
            "profile": ";".join(f"{n}:{s.min}/{s.opt}/{s.max}" for n, s in shapes.items()),
            "tensorrt_flags": precision.value,
            "tensorrt_impl": impl.value,
            "tensorrt_compute_target": target_cc,
            "timing_cache": "" if rtx else cache_file.name,
        }
        notes.append(
            f"{LABEL[impl]} {trt.__version__}: {lib.select(job.target.compute_capability).reason}"
        )
        return BuiltEngine(ENGINE_FILE, options, (), tuple(notes))
