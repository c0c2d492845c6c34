"""The build summary's size limit and the tuning child's failure reporting."""

from __future__ import annotations

import sys

from infleet.api import Backend, LatencyPoint, Precision, RungResult
from infleet.runtime.builders.tvm import run_child
from infleet.runtime.manifest import BuildSummary, EngineKey


def _summary(notes: int, points: int) -> BuildSummary:
    key = EngineKey(
        model_sha256="c" * 64,
        backend=Backend.TVM,
        backend_version="0.27",
        precision=Precision.FP32,
        hardware_fingerprint="aarch64-x",
        builder_version="t",
    )
    return BuildSummary(
        engine_key=key.digest(),
        key=key,
        backend=Backend.TVM,
        precision=Precision.FP32,
        cache_hit=False,
        model_sha256="c" * 64,
        node_class="arm64",
        accuracy=[RungResult(precision=Precision.FP32, deviation=0.0, passed=True, message="ok")],
        profile=[
            LatencyPoint(batch_size=b, p50_ms=1.0, p99_ms=2.0, throughput_ips=float(b))
            for b in range(1, points + 1)
        ],
        notes=[f"note {i}: " + "x" * 200 for i in range(notes)],
    )


def test_small_summary_is_kept_whole() -> None:
    s = _summary(notes=2, points=4)
    assert BuildSummary.model_validate_json(s.to_message()) == s


def test_large_summary_is_trimmed_to_4_kib_keeping_key_and_verdict() -> None:
    s = _summary(notes=40, points=200)
    text = s.to_message()
    assert len(text.encode()) <= 4096
    back = BuildSummary.model_validate_json(text)
    assert back.engine_key == s.engine_key and back.accuracy == s.accuracy
    assert back.profile[0].batch_size == 1  # batch 1 (the SLO check) survives trimming


def test_child_crash_is_reported_not_raised() -> None:
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    assert run_child(crash, timeout_s=30).reason == "child process killed by SIGSEGV"


def test_child_timeout_is_reported() -> None:
    reason = run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1.0).reason
    assert reason == "time budget of 1s"


def test_child_error_exit_names_its_last_line() -> None:
    fail = [sys.executable, "-c", "import sys; print('first'); sys.exit('tuner: no tasks')"]
    assert run_child(fail, 30).reason == "exit code 1: tuner: no tasks"


def test_child_success() -> None:
    assert run_child([sys.executable, "-c", "pass"], 30).reason is None


def test_child_report_is_its_last_json_line() -> None:
    report = [sys.executable, "-c", "print('{\"tasks\": 3, \"tuned\": 1}'); print('done')"]
    assert run_child(report, 30).report == {"tasks": 3, "tuned": 1}
