"""Helpers for the `infleet build` integration tests: models on disk, the CLI as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infleet.api import AccuracyMetric
from infleet.runtime.accuracy import deviation
from infleet.runtime.manifest import MANIFEST_FILE, EngineManifest

# Small budgets everywhere: these tests prove behaviour, bench/ measures speed. A keyword given
# to build()/build_args() overrides its entry here.
FAST: dict[str, int | float] = {
    "tuning_trials": 0,
    "profile_seconds": 0.05,
    "calibration_samples": 16,
    "validation_samples": 8,
    "threads": 2,
}

Flag = str | int | float | Path | Sequence[str]


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])


NFD = "feature.node.kubernetes.io/cpu-cpuid."


@dataclass(frozen=True)
class ClassArgs:
    """A node class as the operator hands it to the build Job: its name and its hardware."""

    name: str
    hardware: str
    """``HardwareKey.engine_fields()`` as JSON: the ``--hardware`` argument."""
    fingerprint: str


def node_class(labels: dict[str, str], gpus: int = 0) -> ClassArgs:
    """The class the scheduler derives for one node with these labels."""
    from infleet.scheduler import NodeInfo, Resources, derive_classes

    node = NodeInfo(
        name="n1",
        labels={"kubernetes.io/hostname": "n1", **labels},
        allocatable=Resources(cpu_millis=4000, memory_bytes=16 << 30, gpus=gpus),
    )
    (cls,) = derive_classes([node])
    return ClassArgs(cls.name, json.dumps(cls.key.engine_fields()), cls.fingerprint)


def cpu_class(arch: str, *flags: str, instance_type: str | None = None) -> ClassArgs:
    labels = {"kubernetes.io/arch": arch} | {NFD + f: "true" for f in flags}
    if instance_type is not None:
        labels["node.kubernetes.io/instance-type"] = instance_type
    return node_class(labels)


def build_args(
    model: Path | str,
    *,
    store: Path,
    cls: str = "x86-test",
    backend: str = "onnxruntime",
    ladder: str | None = None,
    **flags: Flag,
) -> list[str]:
    """`infleet build` arguments. A Path model becomes a file:// URI (a str is the URI as is);
    each keyword flag becomes `--kebab-case value` (a list repeats the flag), after FAST's."""
    uri = model if isinstance(model, str) else f"file://{model}"
    args = ["--model", uri, "--class", cls, "--backend", backend, "--store", str(store)]
    if ladder is not None:
        args += ["--precision-ladder", ladder]
    for name, value in {**FAST, **flags}.items():
        for v in value if isinstance(value, list | tuple) else [value]:
            args += ["--" + name.replace("_", "-"), str(v)]
    return args


def build_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "infleet", "build", *args]


def infleet_build(*args: str, termination_log: Path | None = None, timeout: float = 900) -> Result:
    """The real CLI in a subprocess, as users and the build Job run it."""
    cmd = build_command(*args)
    if termination_log is not None:
        cmd += ["--termination-log", str(termination_log)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def build(
    model: Path | str,
    *,
    store: Path,
    termination_log: Path | None = None,
    timeout: float = 900,
    **flags: Any,
) -> Result:
    """`infleet build` with build_args()'s keywords (cls, backend, ladder, max_batch=4, ...)."""
    return infleet_build(
        *build_args(model, store=store, **flags),
        termination_log=termination_log,
        timeout=timeout,
    )


def built(model: Path | str, *, store: Path, **flags: Any) -> Result:
    """build(), which must succeed."""
    r = build(model, store=store, **flags)
    assert r.rc == 0, r.stderr
    return r


def build_fails(model: Path | str, *, store: Path, **flags: Any) -> Result:
    """build(), which must fail with exit 1 and a message, not a traceback."""
    r = build(model, store=store, **flags)
    assert r.rc == 1, (r.rc, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def stored_manifests(store: Path) -> list[EngineManifest]:
    return [
        EngineManifest.model_validate_json((d / MANIFEST_FILE).read_bytes())
        for d in sorted((store / "engines").iterdir())
    ]


def stored_engines(store: Path) -> dict[tuple[str, str], EngineManifest]:
    """The store's engines by (backend, precision)."""
    return {(m.key.backend.value, m.key.precision.value): m for m in stored_manifests(store)}


def engine_dir(store: Path, manifest: EngineManifest) -> Path:
    return store / "engines" / manifest.key.digest()


def images(n: int, size: int = 32, seed: int = 7) -> dict[str, np.ndarray]:
    """Fresh inputs for the image models (not their validation set)."""
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 3, size, size)).astype(np.float32)}


def run_stored(
    store: Path, manifest: EngineManifest, feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """Load a stored engine the way the build's gate does (the server's engine; qemu for an
    arm64 one) and run it in batches the server would form."""
    from infleet.runtime.builders import load_built
    from infleet.runtime.hardware import host_key, target_for
    from infleet.runtime.server.engines.base import run_batches

    target = target_for(host_key(cpu_features=[]))  # a CPU target: the engines here are CPU's
    loaded = load_built(engine_dir(store, manifest), manifest, target, threads=2)
    try:
        if loaded.emulated:
            out = loaded.engine.run(feeds)
        else:
            out = run_batches(loaded.engine, feeds, manifest.max_batch_size)
    finally:
        loaded.engine.close()
    return [out[t.name] for t in manifest.outputs]


def ort_reference(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from infleet.runtime.builders.onnxruntime import reference_outputs

    return reference_outputs(model, feeds, threads=2)


def assert_engine_matches(
    store: Path,
    manifest: EngineManifest,
    feeds: dict[str, np.ndarray],
    ref: np.ndarray,
    tol: float,
    metric: AccuracyMetric = AccuracyMetric.MAX_ABS_ERROR,
) -> None:
    """The stored engine's (single) output on feeds is within tol of the reference's."""
    (got,) = run_stored(store, manifest, feeds)
    dev = deviation(metric, ref, got)
    key = f"{manifest.key.backend.value}/{manifest.key.precision.value}"
    assert dev < tol, f"{key}: {metric.value} {dev:.3g}, budget {tol}"
