"""TVM: a Relax module compiled and exported with ``export_library`` (the ARM engine).

The builder (``infleet.runtime.builders.tvm``) compiles with ``tvm.compile(mod, target)``
and writes one shared library; here ``tvm.runtime.load_module`` reads it back and a Relax
``VirtualMachine`` runs it. The manifest's options say how to call it:

- ``entry``: the function name; when it holds ``{batch}`` (``main_b{batch}``) the library
  has one static-shape function per batch size in ``manifest.batch_sizes``, and a batch is
  padded up to the next compiled size (and split when above the largest), its outputs cut
  back to the real rows. Without ``{batch}`` the one function takes any batch.
- ``input_order``: the positional order of the inputs (default: the manifest's order).
- ``target``: the TVM target (a JSON target dict or a string); CUDA targets run on GPU 0.

A multi-output function returns a (possibly nested) tuple, matched to the manifest's outputs
by position.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server.engines.base import EngineOptions, run_padded
from infleet.runtime.server.errors import BackendUnavailable, ConfigError, EngineError


class TvmEngine:
    text_strings = False

    def __init__(self, manifest: EngineManifest, engine_path: Path, options: EngineOptions):
        try:
            import tvm

            # The runtime's VM (``relax.VirtualMachine`` is this class): importing
            # ``tvm.relax`` registers the compiler's operators, which fails where only the
            # runtime library is installed (the arm64 root, a runtime-only image).
            from tvm.runtime.vm import VirtualMachine
        except ImportError as e:
            raise BackendUnavailable("tvm is not installed (pip install 'infleet[tvm]')") from e
        if any(s.datatype == "BYTES" for s in (*manifest.inputs, *manifest.outputs)):
            raise ConfigError(f"{engine_path.name}: TVM engines cannot take BYTES tensors")
        target = manifest.options.get("target", "llvm")
        gpu = _target_kind(target) == "cuda" or options.device == "gpu"
        self._device = tvm.cuda(0) if gpu else tvm.cpu(0)
        if gpu and not self._device.exist:
            raise BackendUnavailable(f"{engine_path.name} targets {target!r} but no CUDA device")
        try:
            library = tvm.runtime.load_module(str(engine_path))
            self._vm = VirtualMachine(library, self._device)
            entry = manifest.options.get("entry", "main")
            if "{batch}" in entry:
                sizes = sorted(manifest.batch_sizes or [manifest.max_batch_size])
                self._entries = {b: self._vm[entry.format(batch=b)] for b in sizes}
            else:
                self._entries = {0: self._vm[entry]}  # 0: any batch size
        except Exception as e:  # TVM raises its own error types
            raise EngineError(f"tvm cannot load {engine_path.name}: {e}") from e
        self._tensor = tvm.runtime.tensor
        self.inputs = tuple(manifest.inputs)
        self.outputs = tuple(manifest.outputs)
        order = manifest.options.get("input_order")
        self._order = order.split(",") if order else [s.name for s in self.inputs]
        if sorted(self._order) != sorted(s.name for s in self.inputs):
            raise ConfigError(
                f"{engine_path.name}: input_order {self._order} does not match the inputs"
            )
        threads = _configure_threads(tvm, options.threads)
        self.description = (
            f"tvm {tvm.__version__} ({_target_kind(target)}, {self._device}, {threads} threads)"
        )
        self.warm_batch_sizes = tuple(sorted(b for b in self._entries if b))
        # A VM keeps per-invocation state; serialise calls (the batcher runs one batch per
        # engine at a time unless told otherwise, so this lock is normally uncontended).
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if 0 in self._entries:
            return self._call(self._entries[0], inputs)
        return run_padded(self._run_compiled, inputs, self.warm_batch_sizes)

    def _run_compiled(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._call(self._entries[len(next(iter(inputs.values())))], inputs)

    def _call(self, fn: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._tensor(np.ascontiguousarray(inputs[n]), self._device) for n in self._order]
        with self._lock:
            values = _flatten(fn(*args))
        if len(values) != len(self.outputs):
            raise EngineError(
                f"the TVM entry returned {len(values)} outputs, the manifest lists "
                f"{len(self.outputs)}"
            )
        return {s.name: v for s, v in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        self._entries.clear()
        del self._vm


def _configure_threads(tvm: Any, threads: int) -> int:
    """Sizes TVM's thread pool: ``threads`` (the server's choice, from the container's CPU
    limit), else the CPUs this process may run on. TVM's own default is the host's core count,
    which in a container limited to 2 CPUs of a 64-core node runs 64 threads on 2 CPUs: each
    parallel loop then waits for threads the kernel has not scheduled."""
    from infleet.runtime.hardware import cpu_limit_threads

    n = threads or cpu_limit_threads()
    # (mode 1 = "big cores", i.e. every core on a homogeneous CPU; then the thread count)
    tvm.get_global_func("runtime.config_threadpool")(1, n)
    return n


def _flatten(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [a for r in result for a in _flatten(r)]


def _target_kind(target: str) -> str:
    """ "llvm"/"cuda"/...: the builder writes JSON target dicts, older engines plain strings."""
    if target.lstrip().startswith("{"):
        try:
            return str(json.loads(target).get("kind", "llvm"))
        except (ValueError, AttributeError):
            return "llvm"
    return target.split()[0] if target.strip() else "llvm"


def load(manifest: EngineManifest, engine_path: Path, options: EngineOptions) -> TvmEngine:
    return TvmEngine(manifest, engine_path, options)
