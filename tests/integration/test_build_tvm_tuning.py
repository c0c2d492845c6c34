"""TVM tuning in `infleet build`, with a real MetaSchedule on a real (small) model and a tiny
trial budget: records stored in the engine store and reused by the next build of the class, a
crashed or timed-out tuner still yielding a served engine with the reason in the summary, and
a build killed mid-tuning leaving no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from build_helpers import build_args, build_command, built, run_stored, stored_manifests

from infleet import toolbox
from infleet.runtime.builders.tvm_tune import FAULT_ENV
from infleet.runtime.builders.tvm_tuning import RECORDS
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration

TUNED = {"backend": "tvm", "max_batch": 2, "tuning_trials": 2, "tuning_seconds": 600}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.small_cnn(tmp_path_factory.mktemp("models") / "cnn.onnx")


def databases(store: Path) -> list[Path]:
    return sorted((store / "tuning").glob("tvm-*"))


def notes(summary: dict) -> str:
    return " | ".join(summary["notes"])


def test_second_build_of_the_class_reuses_the_tuning_records(cnn: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = built(cnn, store=store, **TUNED).summary
    assert "tuned with MetaSchedule" in notes(first), notes(first)
    (db,) = databases(store)
    records = (db / RECORDS).read_text()
    assert records.strip(), "tuning wrote no records"
    (manifest,) = stored_manifests(store)
    assert manifest.options["tuning"] == "metaschedule"
    # The same class's engine built again (its engine and request records gone, as after a
    # store clean-up or a new builder version): the tuner finds every task in the store.
    shutil.rmtree(store / "engines")
    shutil.rmtree(store / "requests")
    second = built(cnn, store=store, **TUNED).summary
    assert "no new trials" in notes(second), notes(second)
    assert (db / RECORDS).read_text() == records  # not one trial more
    assert second["accuracy"][-1]["passed"]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("crash", "killed by SIGSEGV"), ("hang", "time budget of 10s")],
)
def test_a_failed_tuner_still_yields_the_untuned_engine(
    cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, reason: str
) -> None:
    # An injected fault (INFLEET_TVM_TUNE_FAULT): the tuner child crashes as the wheel once did,
    # or never finishes. The build still stores a verified engine and says why it is untuned.
    monkeypatch.setenv(FAULT_ENV, fault)
    store = tmp_path / "store"
    r = built(cnn, store=store, **{**TUNED, "tuning_seconds": 10})
    assert "untuned: MetaSchedule tuning failed" in notes(r.summary), notes(r.summary)
    assert reason in notes(r.summary)
    assert r.summary["accuracy"][-1]["passed"]
    (manifest,) = stored_manifests(store)
    assert manifest.options["tuning"] == "none"
    assert run_stored(store, manifest, {"image": _images()})[0].shape[0] == 3


def _images():
    import numpy as np

    return np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)


def test_a_build_killed_mid_tuning_leaves_no_process(cnn: Path, tmp_path: Path) -> None:
    """SIGTERM to the build's process group (what a time-out or a pod's stop sends) while the
    tuner and its MetaSchedule workers run: every one of them is gone afterwards."""
    store = tmp_path / "store"
    args = build_args(cnn, store=store, **{**TUNED, "tuning_trials": 64})
    log = tmp_path / "build.log"
    proc = toolbox.spawn(build_command(*args), log)
    try:
        _tuning(proc.pid)
        family = [proc.pid, *toolbox.descendants(proc.pid)]
        toolbox.signal_group(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        _wait_gone(family, "every process of the build to exit")
    finally:
        toolbox.stop_groups([proc.pid], 5, {proc.pid: proc})


def test_the_tuner_dies_with_a_build_killed_alone(cnn: Path, tmp_path: Path) -> None:
    """SIGKILL to the build process only (the OOM killer's way): the tuner learns it through
    PR_SET_PDEATHSIG and takes its workers with it."""
    store = tmp_path / "store"
    args = build_args(cnn, store=store, **{**TUNED, "tuning_trials": 64})
    proc = subprocess.Popen(
        build_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        tuner = _tuning(proc.pid)
        family = [tuner, *toolbox.descendants(tuner)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _wait_gone(family, "the tuner and its workers to exit")
    finally:
        toolbox.signal_group(proc.pid, signal.SIGKILL)


def _wait_gone(pids: list[int], what: str) -> None:
    toolbox.wait_until(
        lambda: not [p for p in pids if toolbox.alive(p)], 30, what,
        explain=lambda: _ps([p for p in pids if toolbox.alive(p)]),
    )


def _tuning(build_pid: int) -> int:
    """Wait until the build's tuner child and its MetaSchedule workers run; the tuner's pid."""
    tuner: int = toolbox.wait_until(
        lambda: _tuner_pid(build_pid), 300, "the tuner child to start", interval=0.5
    )
    toolbox.wait_until(
        lambda: len(toolbox.descendants(tuner)) > 0, 300, "MetaSchedule's workers", interval=0.5
    )
    return tuner


def _tuner_pid(build_pid: int) -> int | None:
    for pid in toolbox.descendants(build_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"infleet.runtime.builders.tvm_tune" in cmdline:
            return pid
    return None


def _ps(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return json.dumps(out) + f" at {time.monotonic():.0f}"
