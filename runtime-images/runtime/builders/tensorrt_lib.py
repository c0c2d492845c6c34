"""The TensorRT library behind the builder and the server's engine: full TensorRT or TensorRT-RTX.

Both expose TensorRT 10's Python API under different module names (``tensorrt`` and
``tensorrt_rtx_bindings``). What differs and matters here:

- RTX builds strongly typed networks only: no FP16/INT8/FP8 builder flags and no INT8
  calibrator. FP16 comes from converting the ONNX model's weights and compute to FP16 first;
  INT8/FP8 only from Q/DQ nodes in the model.
- RTX builds ahead of time for the compute capabilities set on the builder config
  (``ComputeCapability.SM80`` ...) and compiles kernels just in time at load; it builds without
  a GPU (seen on a CPU-only machine) and refuses at load on a GPU it does not list.
- RTX's runtime says up front whether a serialized plan can run here
  (``Runtime.get_engine_validity``); a plan it refuses is reported as UnsupportedHardware with
  TensorRT's own words, never as a crash or a None engine further on.

Which library is used: ``INFLEET_TENSORRT_IMPL`` (``tensorrt`` or ``tensorrt-rtx``) when set,
else the first installed one that runs on the target (``scheduler.tensorrt_impl.choose``, the
same rule the scheduler's policy plans with).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from infleet.runtime.errors import BackendUnavailable, UnsupportedHardware
from infleet.scheduler.tensorrt_impl import (
    ALL_IMPLS,
    LABEL,
    MODULE,
    Choice,
    TensorRtImpl,
    choose,
)

ENV = "INFLEET_TENSORRT_IMPL"


def installed() -> tuple[TensorRtImpl, ...]:
    """The implementations whose Python module is installed (found, not imported)."""
    return tuple(i for i in ALL_IMPLS if importlib.util.find_spec(MODULE[i]) is not None)


def forced() -> TensorRtImpl | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    try:
        return TensorRtImpl(value)
    except ValueError:
        names = ", ".join(i.value for i in ALL_IMPLS)
        raise BackendUnavailable(f"{ENV}={value!r} is not one of {names}") from None


def select(compute: tuple[int, int] | None) -> Choice:
    """The implementation to build for a GPU of ``compute``: the forced one, else the policy's
    rule over what is installed."""
    impl = forced()
    if impl is not None:
        return Choice(impl, f"{LABEL[impl]} ({ENV})")
    return choose(installed(), compute)


def import_impl(impl: TensorRtImpl) -> Any:
    try:
        return importlib.import_module(MODULE[impl])
    except ImportError as e:
        raise BackendUnavailable(
            f"{MODULE[impl]} cannot be imported ({LABEL[impl]}): TensorRT engines are built on "
            "an NVIDIA node from the tensorrt image (pip install 'infleet[tensorrt]', or "
            f"tensorrt-rtx-cu13 for TensorRT-RTX, on a CUDA host) [{e}]"
        ) from e


def any_impl() -> tuple[TensorRtImpl, Any]:
    """The forced implementation, else the first installed one: for what needs no target
    (the version, the parser's operator list)."""
    impl = forced()
    if impl is not None:
        return impl, import_impl(impl)
    for impl in installed():
        try:
            return impl, import_impl(impl)
        except BackendUnavailable:
            continue
    raise BackendUnavailable(
        "neither tensorrt nor tensorrt_rtx_bindings can be imported: TensorRT engines are built "
        "on an NVIDIA node from the tensorrt image (pip install 'infleet[tensorrt]', or "
        "tensorrt-rtx-cu13 for TensorRT-RTX, on a CUDA host)"
    )


def version_of(impl: TensorRtImpl, trt: Any) -> str:
    # Full TensorRT keeps its bare version (engine keys stay as they were); RTX is named, so
    # an RTX plan never matches a full TensorRT key of the same number.
    return str(trt.__version__) if impl == TensorRtImpl.FULL else f"rtx-{trt.__version__}"


_LOGGERS: dict[str, Any] = {}


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that prints warnings and keeps the messages, so that an error can say
    what TensorRT said. One per library and process: TensorRT keeps the first logger it was
    given and ignores later ones (RTX warns so), so a second one would hear nothing."""
    name = str(trt.__name__)
    if name not in _LOGGERS:
        _LOGGERS[name] = _kept_logger(trt)
    return _LOGGERS[name]


def _kept_logger(trt: Any) -> Any:
    class Kept(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append(str(msg))
                if len(self.messages) > 1000:  # a long-lived server: keep the recent ones
                    del self.messages[:500]
                print(f"[TensorRT] {severity.name}: {msg}", flush=True)

    return Kept()


def compute_target(trt: Any, compute: tuple[int, int] | None) -> Any | None:
    """RTX's ComputeCapability member for ``compute``; None when RTX has no such target (then
    the plan is built for RTX's defaults and the validity check decides)."""
    enum = getattr(trt, "ComputeCapability", None)
    if enum is None:
        return None
    if compute is None:
        return enum.CURRENT
    return getattr(enum, f"SM{compute[0]}{compute[1]}", None)


def check_runs_here(trt: Any, impl: TensorRtImpl, plan: bytes, logger: Any, what: str) -> None:
    """UnsupportedHardware, with TensorRT's reason, when this machine's GPU cannot run ``plan``
    (RTX on a compute capability it does not list, a driver too old, ...). Full TensorRT 10
    has no up-front check; its deserialisation failing is reported by the caller."""
    runtime = trt.Runtime(logger)
    if not hasattr(runtime, "get_engine_validity"):
        return
    before = len(logger.messages)
    validity, diagnostics = runtime.get_engine_validity(plan)
    if validity == trt.EngineValidity.INVALID:
        # The verdict carries flags only; TensorRT words the reason when asked to deserialize
        # (on the H200 it returned None and logged "cannot run on this GPU, which has compute
        # capability 9.0. Supported compute capabilities: ..."), so ask, for the message.
        if runtime.deserialize_cuda_engine(plan) is not None:
            return
        said = "; ".join(logger.messages[before:]) or "no message"
        flags = [
            d.name
            for d in trt.EngineInvalidityDiagnostics.__members__.values()
            if int(diagnostics) & int(d.value)  # bit flags: 1, 2, 4, ...
        ]
        raise UnsupportedHardware(
            f"{LABEL[impl]} {trt.__version__} cannot run {what} on this machine's GPU "
            f"({', '.join(flags) or f'diagnostics {int(diagnostics)}'}): {said}"
        )
