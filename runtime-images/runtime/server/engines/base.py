"""The engine-runtime interface every backend implements, and the registry that loads one."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np

from infleet.api import Backend
from infleet.runtime.manifest import EngineManifest, TensorSpec
from infleet.runtime.server.errors import ConfigError


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Runtime knobs that are the server's choice, not the build's."""

    threads: int = 0
    """Intra-op threads (0: the backend's default, usually one per core)."""
    device: str = "auto"
    """"auto" (the accelerator when present), "cpu" or "gpu"."""
    spin: bool = False
    """Let idle backend threads busy-wait (lower latency on dedicated cores, but they compete
    with the server's event loop for the CPU)."""


class EngineRuntime(Protocol):
    """A loaded engine. ``run`` is called from worker threads, never on the event loop."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    text_strings: bool
    """BYTES inputs must be given as ``str`` (UTF-8) rather than ``bytes``."""
    description: str
    """Backend and device, for logs and metadata."""
    warm_batch_sizes: tuple[int, ...]
    """Batch sizes to run once before the model turns ready, because this engine's first run
    of a new shape is slow (CUDA kernels chosen and compiled per shape); empty: one batch of
    the largest size is enough."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by name."""
        ...

    def close(self) -> None: ...


class EngineLoader(Protocol):
    def load(
        self, manifest: EngineManifest, engine_path: Path, options: EngineOptions
    ) -> EngineRuntime: ...


# backend -> module with ``load(manifest, engine_path, options)``; imported on first use
REGISTRY: dict[Backend, str] = {
    Backend.ONNXRUNTIME: "infleet.runtime.server.engines.onnxruntime_engine",
    Backend.TVM: "infleet.runtime.server.engines.tvm_engine",
    Backend.TENSORRT: "infleet.runtime.server.engines.tensorrt_engine",
}


def load_engine(
    manifest: EngineManifest, manifest_dir: Path, options: EngineOptions
) -> EngineRuntime:
    engine_path = (manifest_dir / manifest.engine_file).resolve()
    if not engine_path.is_file():
        raise ConfigError(f"engine file {engine_path} named by the manifest does not exist")
    module = cast(EngineLoader, importlib.import_module(REGISTRY[manifest.key.backend]))
    return module.load(manifest, engine_path, options)


def check_names(
    what: str, declared: tuple[TensorSpec, ...], actual: list[str], engine_path: Path
) -> None:
    """The manifest must describe the engine it names; a mismatch is a broken build."""
    if sorted(s.name for s in declared) != sorted(actual):
        raise ConfigError(
            f"{engine_path.name}: the manifest's {what} {[s.name for s in declared]} do not "
            f"match the engine's {actual}"
        )


def run_batches(
    engine: EngineRuntime, inputs: Mapping[str, np.ndarray], max_batch: int
) -> dict[str, np.ndarray]:
    """Rows of any count through ``engine`` in consecutive batches of at most ``max_batch``, as
    the server's batcher hands them over (the build's gate and profile use this); an engine
    with an input that has no batch dimension takes them whole, as the server does."""
    rows = len(next(iter(inputs.values())))
    batched = all(s.shape and s.shape[0] == -1 for s in engine.inputs)
    if not batched or rows <= max_batch:
        return engine.run(inputs)
    parts = [
        engine.run({n: a[i : i + max_batch] for n, a in inputs.items()})
        for i in range(0, rows, max_batch)
    ]
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}


def run_padded(
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    inputs: Mapping[str, np.ndarray],
    sizes: Sequence[int],
) -> dict[str, np.ndarray]:
    """Run a batch on an engine that takes only the batch sizes in ``sizes`` (ascending): padded
    up to the next size with copies of the last row, whose outputs are dropped, and run in
    slices above the largest."""
    rows = len(next(iter(inputs.values())))
    largest = sizes[-1]
    if rows > largest:
        parts = [
            run_padded(run, {n: a[i : i + largest] for n, a in inputs.items()}, sizes)
            for i in range(0, rows, largest)
        ]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
    size = next(b for b in sizes if b >= rows)
    if size == rows:
        return run(inputs)
    padded = {n: _pad(n, a, size) for n, a in inputs.items()}
    out = run(padded)
    # The buffers are reused by the next batch: an output that is a view of one (an engine
    # that hands an input back) is copied out first.
    return {
        n: a[:rows].copy() if any(np.may_share_memory(a, b) for b in padded.values()) else a[:rows]
        for n, a in out.items()
    }


_PAD_BUFFERS = 8
_pad_local = threading.local()


def _pad(name: str, a: np.ndarray, size: int) -> np.ndarray:
    """``a`` in the first rows of a ``size``-row buffer kept by this thread for that shape.

    A fresh padded array per batch cost more than the GPU's run: for EfficientNet-Lite0 at
    batch 16 (9.6 MB) a padded batch of 2-8 rows took 3.5 ms against 2.5 ms unpadded on the
    H200 (2.7 ms with this buffer), the difference being allocation (page faults) and
    copies. The buffer is reused: its
    tail rows are copies of a real row (the last row at first, rows of earlier batches
    later), always valid inputs, and their outputs are dropped. One buffer set per thread, as
    batches may run concurrently; a few shapes per thread, the oldest dropped first.
    """
    buffers: dict[tuple[object, ...], np.ndarray] = _pad_local.__dict__.setdefault("buffers", {})
    key = (name, size, a.dtype.str, a.shape[1:])
    buf = buffers.pop(key, None)
    rows = len(a)
    if buf is None:
        buf = np.empty((size, *a.shape[1:]), a.dtype)
        buf[rows:] = a[-1]
    buffers[key] = buf  # most recently used last
    while len(buffers) > _PAD_BUFFERS:
        del buffers[next(iter(buffers))]
    buf[:rows] = a
    return buf
