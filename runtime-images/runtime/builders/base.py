"""The builder interface every backend implements, the types it trades in, and how a build
loads the engine it made: through the server's engines, so the accuracy gate and the profile
measure exactly the code that serves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from infleet.api import Backend, Precision
from infleet.runtime.hardware import HardwareTarget
from infleet.runtime.manifest import EngineManifest
from infleet.runtime.onnxmodel import ModelInfo
from infleet.runtime.server.engines.base import EngineRuntime

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BuildJob:
    """Everything a builder needs; the same job is handed to every rung and backend."""

    model_path: Path
    info: ModelInfo
    """The model with every open dimension other than the batch sized (shapes.resolve)."""
    target: HardwareTarget
    max_batch: int
    calibration: Feeds
    """Calibration samples (first axis = sample) for INT8/FP8."""
    threads: int
    work_dir: Path
    tuning_trials: int = 0
    """TVM MetaSchedule trials per task (function) still without records."""
    tuning_seconds: float = 0.0
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes for backends that compile static shapes; empty = builder's default."""
    int8_method: str = "auto"
    options: Mapping[str, str] = field(default_factory=dict)
    model_sha256: str = ""
    tuning_dir: Path | None = None
    """Where the store keeps tuning records (TVM's MetaSchedule databases), shared by builds;
    None: a build's records live and die with its work directory."""


@dataclass(frozen=True)
class BuiltEngine:
    """What a builder wrote into its output directory."""

    engine_file: str
    options: Mapping[str, str]
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes compiled in; empty = any batch from 1 to max_batch."""
    notes: tuple[str, ...] = ()


class EngineBuilder(Protocol):
    backend: Backend

    def version(self) -> str:
        """The backend library's version; raises BackendUnavailable when it is missing."""
        ...

    def batch_sizes(self, job: BuildJob) -> tuple[int, ...]:
        """The batch sizes the engine is compiled for (they enter the engine key); empty when
        it takes any batch up to ``job.max_batch``."""
        ...

    def tuning(self, job: BuildJob) -> str:
        """How this builder will tune the engine for ``job`` (it enters the engine key); empty
        when it does not tune."""
        ...

    def unsupported(self, precision: Precision, target: HardwareTarget) -> str | None:
        """Why this builder cannot build ``precision`` for ``target``; None when it can."""
        ...

    def unsupported_ops(self, ops: frozenset[tuple[str, str]]) -> tuple[str, ...]:
        """The operators among ``ops`` ((domain, op_type); "" is the default ONNX domain) that
        this backend cannot run, as ``op_type`` or ``domain:op_type``; raises
        BackendUnavailable when the library that knows is missing."""
        ...

    def build(self, job: BuildJob, precision: Precision, out_dir: Path) -> BuiltEngine: ...


@dataclass(frozen=True)
class LoadedEngine:
    engine: EngineRuntime
    emulated: bool
    """True for a cross-built engine run under an emulator: its outputs count, its timings
    do not."""


def load_built(
    engine_dir: Path, manifest: EngineManifest, target: HardwareTarget, threads: int
) -> LoadedEngine:
    """The engine a build made, loaded the way ``infleet serve`` loads it (on the GPU for GPU
    targets, on the CPU otherwise); an arm64 engine on an x86 build host runs under qemu."""
    from infleet.runtime.builders.qemu import QemuTvmEngine, needs_emulation
    from infleet.runtime.server.engines import EngineOptions, load_engine

    path = engine_dir / manifest.engine_file
    if needs_emulation(path):
        return LoadedEngine(QemuTvmEngine(path, manifest), emulated=True)
    options = EngineOptions(threads=threads, device="gpu" if target.gpu else "cpu")
    return LoadedEngine(load_engine(manifest, engine_dir, options), emulated=False)


def pick_batch_sizes(max_batch: int, requested: Sequence[int] = ()) -> tuple[int, ...]:
    """Compiled batch sizes: the requested ones, else 1 and max_batch (padding covers the rest)."""
    sizes = {s for s in requested if 1 <= s <= max_batch} or {1, max_batch}
    return tuple(sorted(sizes | {max_batch}))


def op_label(domain: str, op_type: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}:{op_type}"
