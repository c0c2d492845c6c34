"""Which TensorRT implementation can build and run engines for a GPU: the facts, no I/O.

Two libraries answer to TensorRT's Python API. Full TensorRT (``import tensorrt``) runs on every
compute capability it supports; TensorRT for RTX (``import tensorrt_rtx_bindings``, the
``tensorrt-rtx-cu13`` wheels on PyPI) builds small plans ahead of time and compiles kernels
just in time at load, but only for the compute capabilities it lists. Its 1.7 runtime said so
on an H200 (9.0), refusing a plan it had just built: "Supported compute capabilities: 8.0 8.6
8.9 12.0 12.1 >12.0" (A100/A30, A10/A40/RTX 30, L4/L40S/RTX 40, RTX/Blackwell 12.x). The
policy and the builder both decide with :func:`choose`, so the plan and the build agree.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum


class TensorRtImpl(StrEnum):
    FULL = "tensorrt"
    RTX = "tensorrt-rtx"


MODULE = {TensorRtImpl.FULL: "tensorrt", TensorRtImpl.RTX: "tensorrt_rtx_bindings"}
LABEL = {TensorRtImpl.FULL: "full TensorRT", TensorRtImpl.RTX: "TensorRT-RTX"}

FULL_MIN_COMPUTE = (7, 0)
RTX_COMPUTE: tuple[tuple[int, int], ...] = ((8, 0), (8, 6), (8, 9), (12, 0), (12, 1))
"""The compute capabilities TensorRT-RTX 1.7 lists, plus every later 12.x (">12.0")."""
ALL_IMPLS: tuple[TensorRtImpl, ...] = (TensorRtImpl.FULL, TensorRtImpl.RTX)
"""Preference order: full TensorRT first (INT8 calibration, every supported GPU)."""


def _cc(compute: tuple[int, int]) -> str:
    return f"{compute[0]}.{compute[1]}"


def rtx_runs_on(compute: tuple[int, int]) -> bool:
    return compute in RTX_COMPUTE or (compute[0] == 12 and compute >= (12, 0))


def runs_on(impl: TensorRtImpl, compute: tuple[int, int] | None) -> str | None:
    """Why ``impl`` cannot run on a GPU of ``compute``; None when it can (or may: unknown)."""
    if compute is None:
        return None
    if impl == TensorRtImpl.FULL:
        if compute < FULL_MIN_COMPUTE:
            return f"full TensorRT needs compute >= {_cc(FULL_MIN_COMPUTE)}"
        return None
    if not rtx_runs_on(compute):
        listed = " ".join(_cc(c) for c in RTX_COMPUTE)
        return f"TensorRT-RTX runs on compute {listed} and later 12.x, not {_cc(compute)}"
    return None


@dataclass(frozen=True, slots=True)
class Choice:
    impl: TensorRtImpl | None
    """The implementation to build with; None when neither runs on this GPU."""
    reason: str


def choose(available: Collection[TensorRtImpl], compute: tuple[int, int] | None) -> Choice:
    """The first of ``available`` (in :data:`ALL_IMPLS` order) that runs on ``compute``, with
    why the others were passed over; ``impl`` None, and why, when none does."""
    missing = [LABEL[i] for i in ALL_IMPLS if i not in available]
    passed: list[str] = []
    for impl in ALL_IMPLS:
        if impl not in available:
            continue
        problem = runs_on(impl, compute)
        if problem is None:
            notes = [LABEL[impl]]
            if impl == TensorRtImpl.RTX and missing:
                notes.append(f"{', '.join(missing)} not available")
            return Choice(impl, ", ".join(notes + passed))
        passed.append(problem)
    why = passed + [f"{m} not available" for m in missing]
    return Choice(None, "; ".join(why) if why else "no TensorRT implementation available")
