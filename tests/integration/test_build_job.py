"""`infleet build` with the command line the operator gives a build Job: every flag at once, the
model and calibration data on a volume claim (pvc://), the class's hardware key as JSON, the
summary or the failure read back from the termination message."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from build_helpers import NFD, ClassArgs, build_command, node_class

from infleet.api.engine import BuildFailure, BuildSummary
from infleet.devcluster.fleet import HostFacts
from infleet.runtime.manifest import MANIFEST_FILE, EngineManifest
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration


def _host_class(instance_type: str) -> ClassArgs:
    """This machine's class as the dev cluster's local node labels it (NFD-style)."""
    host = HostFacts.detect()
    labels = {"kubernetes.io/arch": host.arch, "node.kubernetes.io/instance-type": instance_type}
    return node_class(labels | {NFD + flag: "true" for flag in host.cpuid})


@pytest.fixture(scope="module")
def pvc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pvc")
    ocr = root / "models" / "ocr"
    ocr.mkdir(parents=True)
    synthetic.open_spatial_cnn(ocr / "cls.onnx")
    crops = np.random.default_rng(0).random((24, 3, 48, 192)).astype(np.float32)
    np.savez(ocr / "calib.npz", x=crops)
    return root


def _job_args(pvc: Path, store: Path, log: Path, cls: ClassArgs, sha256: str) -> list[str]:
    """What the operator puts in the Job's container args (a list, never a shell string)."""
    return [
        "--model", "pvc://models/ocr/cls.onnx",
        "--sha256", sha256,
        "--class", cls.name,
        "--hardware", cls.hardware,
        "--backend", "onnxruntime",
        "--precision-ladder", "int8,fp32",
        "--metric", "cosine",
        "--max-deviation", "0.05",
        "--max-batch", "4",
        "--name", "text-direction",
        "--input", "x=-1,3,48,192",
        "--calibration", "pvc://models/ocr/calib.npz",
        "--calibration-samples", "24",
        "--tuning-trials", "0",
        "--tuning-seconds", "0",
        "--store", str(store),
        "--pvc-root", str(pvc),
        "--termination-log", str(log),
    ]  # fmt: skip


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(build_command(*args), capture_output=True, text=True, timeout=600)


def test_the_operators_command_line(pvc: Path, tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "termination-log"
    sha = hashlib.sha256((pvc / "models/ocr/cls.onnx").read_bytes()).hexdigest()
    m7a = _host_class("m7a.xlarge")
    r = _run(_job_args(pvc, store, log, m7a, sha))
    assert r.returncode == 0, r.stderr
    summary = BuildSummary.model_validate_json(log.read_text())
    assert json.loads(r.stdout.strip().splitlines()[-1]) == json.loads(log.read_text())
    assert summary.node_class == m7a.name and summary.model_sha256 == sha
    assert summary.key is not None and summary.key.hardware_fingerprint == m7a.fingerprint
    assert summary.key.input_shapes == {"x": [-1, 3, 48, 192]}
    assert summary.key.max_batch_size == 4
    assert summary.precision == "int8" and summary.accuracy[0].deviation is not None
    assert "24 samples from pvc://models/ocr/calib.npz" in summary.notes[0]
    assert [p.batch_size for p in summary.profile] == [1, 2, 4]
    manifest = EngineManifest.model_validate_json(
        (store / "engines" / summary.engine_key / MANIFEST_FILE).read_bytes()
    )
    assert manifest.model_name == "text-direction" and manifest.inputs[0].shape[2:] == [48, 192]
    # A class that differs only in instance type: the same engine, found without building.
    c7a = _host_class("c7a.2xlarge")
    assert c7a.name != m7a.name and c7a.hardware == m7a.hardware
    again = _run(_job_args(pvc, store, log, c7a, sha))
    assert again.returncode == 0, again.stderr
    second = BuildSummary.model_validate_json(log.read_text())
    assert second.cache_hit and second.engine_key == summary.engine_key
    assert second.node_class == c7a.name
    assert len(list((store / "engines").iterdir())) == 1


@pytest.mark.parametrize(
    ("change", "reason", "retryable", "text"),
    [
        ({"--sha256": "ab" * 32}, "ChecksumMismatch", False, "sha256 mismatch"),
        ({"--model": "pvc://models/ocr/gone.onnx"}, "SourceUnreachable", True, "no such file"),
        ({"--hardware": '{"accelerator": "cpu"}'}, "HardwareError", False, "arch must be"),
        ({"--input": "x=-1,3,48"}, "ShapeError", False, "has 4 dimensions"),
    ],
)
def test_failures_reach_the_termination_message(
    pvc: Path,
    tmp_path: Path,
    change: dict[str, str],
    reason: str,
    retryable: bool,
    text: str,
) -> None:
    log = tmp_path / "termination-log"
    sha = hashlib.sha256((pvc / "models/ocr/cls.onnx").read_bytes()).hexdigest()
    args = _job_args(pvc, tmp_path / "store", log, _host_class("m7a.xlarge"), sha)
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    r = _run(args)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    failure = BuildFailure.model_validate_json(log.read_text())
    assert (failure.reason, failure.retryable) == (reason, retryable)
    assert text in failure.error
    (line,) = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert line == f"infleet build: error: {failure.error}"
