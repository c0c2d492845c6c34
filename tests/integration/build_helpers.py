"""Helpers for the `infleet build` integration tests: models on disk, the CLI as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infleet.api import Backend
from infleet.runtime.builders import get_builder
from infleet.runtime.manifest import MANIFEST_FILE, EngineManifest

# Small budgets everywhere: these tests prove behaviour, bench/ measures speed.
FAST = [
    "--tuning-trials",
    "0",
    "--profile-seconds",
    "0.05",
    "--calibration-samples",
    "16",
    "--validation-samples",
    "8",
    "--threads",
    "2",
]


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])


def infleet_build(*args: str, termination_log: Path | None = None, timeout: float = 900) -> Result:
    cmd = [sys.executable, "-m", "infleet", "build", *args]
    if termination_log is not None:
        cmd += ["--termination-log", str(termination_log)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def stored_manifests(store: Path) -> list[EngineManifest]:
    return [
        EngineManifest.model_validate_json((d / MANIFEST_FILE).read_bytes())
        for d in sorted((store / "engines").iterdir())
    ]


def run_stored(
    store: Path, manifest: EngineManifest, feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """Load a stored engine the way the builder does and run it (padding to compiled sizes)."""
    from infleet.runtime.builders.base import run_any_batch

    builder = get_builder(Backend(manifest.key.backend))
    runner = builder.load(store / "engines" / manifest.key.digest(), manifest, threads=2)
    if runner.emulated:
        return runner.run(feeds)
    return run_any_batch(runner, feeds, manifest.max_batch_size)


def ort_reference(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from infleet.runtime.builders.onnxruntime import reference_runner

    return reference_runner(model, threads=2).run(feeds)
