"""The builder interface every backend implements, and the types it trades in."""

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
    tuning_seconds: float = 0.0
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes for backends that compile static shapes; empty = builder's default."""
    int8_method: str = "auto"
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltEngine:
    """What a builder wrote into its output directory."""

    engine_file: str
    options: Mapping[str, str]
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes compiled in; empty = any batch from 1 to max_batch."""
    notes: tuple[str, ...] = ()


class Runner(Protocol):
    """A loaded engine that runs one batch."""

    batch_sizes: tuple[int, ...]
    """Batch sizes it accepts; empty = any up to max_batch_size."""
    emulated: bool
    """True when it runs under an emulator (cross-built engine): outputs count, timings do not."""

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...


class EngineBuilder(Protocol):
    backend: Backend

    def version(self) -> str:
        """The backend library's version; raises BackendUnavailable when it is missing."""
        ...

    def batch_sizes(self, job: BuildJob) -> tuple[int, ...]:
        """The batch sizes the engine is compiled for (they enter the engine key); empty when
        it takes any batch up to ``job.max_batch``."""
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

    def load(self, engine_dir: Path, manifest: EngineManifest, threads: int) -> Runner:
        """Load an engine written by `build` (what the server does too)."""
        ...


def run_any_batch(runner: Runner, feeds: Feeds, max_batch: int) -> list[np.ndarray]:
    """Run rows of any count through a runner, in chunks it accepts, padding the last one.

    Static-shape engines (TVM) accept only their compiled batch sizes; the server pads the
    same way, so the accuracy gate and the profile measure what serving will do.
    """
    rows = len(next(iter(feeds.values())))
    sizes = sorted(runner.batch_sizes) or [max_batch]
    outs: list[list[np.ndarray]] = []
    start = 0
    while start < rows:
        take = min(rows - start, sizes[-1])
        size = next(s for s in sizes if s >= take) if runner.batch_sizes else take
        chunk = {k: _pad(v[start : start + take], size) for k, v in feeds.items()}
        result = runner.run(chunk)
        outs.append([r[:take] for r in result])
        start += take
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    pad = np.repeat(a[-1:], size - len(a), axis=0)
    return np.concatenate([a, pad])


def pick_batch_sizes(max_batch: int, requested: Sequence[int] = ()) -> tuple[int, ...]:
    """Compiled batch sizes: the requested ones, else 1 and max_batch (padding covers the rest)."""
    sizes = {s for s in requested if 1 <= s <= max_batch} or {1, max_batch}
    return tuple(sorted(sizes | {max_batch}))


def op_label(domain: str, op_type: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}:{op_type}"
