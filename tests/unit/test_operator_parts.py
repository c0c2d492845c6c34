"""The operator's pure parts: build outcomes, records, the subset diff, the test inference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infleet.api.engine import BuildFailure
from infleet.operator import engines
from infleet.operator.diff import contains, needs_apply
from infleet.operator.engines import EngineResult, Outcome
from infleet.operator.probe import check_answer, request_for

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
COMPLETE = [{"type": "Complete", "status": "True"}]
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
           "message": "Job has reached the specified backoff limit"}]
SUMMARY = ('{"engine_key":"k","backend":"onnxruntime","precision":"fp32",'
           '"node_class":"x86","profile":[]}')


def test_a_completed_job_with_a_summary_succeeds() -> None:
    result = engines.job_result(COMPLETE, SUMMARY, 0, NOW)
    assert result is not None and result.outcome is Outcome.SUCCEEDED
    assert result.summary is not None and result.summary.engine_key == "k"


def test_a_running_job_has_no_result() -> None:
    assert engines.job_result([], None, None, NOW) is None


def test_a_build_failure_message_is_kept_with_its_retry_verdict() -> None:
    failure = BuildFailure(error="sha256 mismatch for x: expected a, got b",
                           reason="ChecksumMismatch", retryable=False)
    result = engines.job_result(FAILED, failure.model_dump_json(), 1, NOW)
    assert result is not None and result.outcome is Outcome.FAILED
    assert result.message.startswith("sha256 mismatch") and not result.retryable
    unreachable = BuildFailure(error="cannot reach", reason="SourceUnreachable", retryable=True)
    again = engines.job_result(FAILED, unreachable.model_dump_json(), 1, NOW)
    assert again is not None and again.retryable


def test_a_crash_before_the_build_could_report_shows_the_log_tail() -> None:
    result = engines.job_result(FAILED, "Traceback...\nKeyError: 'x'\n", 1, NOW)
    assert result is not None and "BackoffLimitExceeded" in result.message
    assert "KeyError: 'x'" in result.message and not result.retryable
    killed = engines.job_result(FAILED, None, 137, NOW)
    assert killed is not None and killed.retryable and "exit code 137" in killed.message


def test_a_completed_job_without_a_summary_is_not_taken_for_an_engine() -> None:
    result = engines.job_result(COMPLETE, None, 0, NOW)
    assert result is not None and result.outcome is Outcome.FAILED
    assert "no readable summary" in result.message


@pytest.mark.parametrize("result", [
    EngineResult(Outcome.FAILED, message="m", retryable=True, attempts=3,
                 finished_at="2026-12-01T11:00:00Z"),
    engines.job_result(COMPLETE, SUMMARY, 0, NOW),
])
def test_records_round_trip(result: EngineResult | None) -> None:
    assert result is not None
    manifest = engines.record_manifest("ns", "k" * 32, "x86", result)
    assert engines.parse_record(manifest["data"]) == result


def test_an_unreadable_record_is_none() -> None:
    assert engines.parse_record({"outcome": "Succeeded", "summary": "{"}) is None
    assert engines.parse_record({"outcome": "maybe"}) is None


def test_retries_back_off_and_permanent_failures_never_retry() -> None:
    def failed(attempts: int, retryable: bool = True) -> EngineResult:
        return EngineResult(Outcome.FAILED, retryable=retryable, attempts=attempts,
                            finished_at="2026-12-01T12:00:00Z")

    assert not engines.retry_due(failed(1), NOW + timedelta(seconds=59))
    assert engines.retry_due(failed(1), NOW + timedelta(seconds=61))
    assert not engines.retry_due(failed(3), NOW + timedelta(seconds=200))  # 240 s for #3
    assert engines.retry_due(failed(3), NOW + timedelta(seconds=241))
    assert engines.retry_due(failed(30), NOW + timedelta(minutes=31))  # capped at 30 min
    assert not engines.retry_due(failed(1, retryable=False), NOW + timedelta(days=9))


def test_contains_is_a_subset_test_that_sees_drift() -> None:
    desired = {"spec": {"replicas": 2, "template": {"containers": [{"name": "a",
                                                                    "resources": {"cpu": "1"}}]}}}
    observed = {"spec": {"replicas": 2, "paused": False, "template": {"containers": [
        {"name": "a", "imagePullPolicy": "IfNotPresent", "resources": {"cpu": "1000m"}}]}}}
    assert contains(observed, desired)  # defaults added, quantity spelled differently
    drifted = {"spec": {**observed["spec"], "replicas": 5}}
    assert not contains(drifted, desired)
    longer = {"spec": {**observed["spec"], "template": {"containers": [{}, {}]}}}
    assert not contains(longer, desired)
    assert needs_apply({"kind": "X", "metadata": {"name": "n"}}, None)
    assert not needs_apply({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}},
                           {"metadata": {"name": "n", "uid": "u"}})


def test_the_test_inference_is_shaped_from_the_model_metadata() -> None:
    metadata = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2]},
                           {"name": "ok", "datatype": "BOOL", "shape": [-1]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}
    request = request_for(metadata)
    assert request["inputs"][0] == {"name": "x", "shape": [1, 3, 2], "datatype": "FP32",
                                    "data": [0] * 6}
    assert request["inputs"][1]["data"] == [False]
    good = {"outputs": [{"name": "y", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}
    assert check_answer(metadata, good) is None
    assert "missing" in (check_answer(metadata, {"outputs": []}) or "")
    short = {"outputs": [{"name": "y", "shape": [1, 4], "data": [0.1]}]}
    assert "1 elements for shape [1, 4]" in (check_answer(metadata, short) or "")
    nan = {"outputs": [{"name": "y", "shape": [1, 4], "data": [0.1, float("nan"), 0, 0]}]}
    assert "NaN" in (check_answer(metadata, nan) or "")


def test_events_of_a_reconcile_are_batched_per_reason_within_the_size_limit() -> None:
    from infleet.operator.planner import Event
    from infleet.operator.status import batch_events

    events = [Event("Normal", "ClassPlaced", "a: onnxruntime"),
              Event("Normal", "ClassExcluded", "b: not allowed"),
              Event("Normal", "ClassPlaced", "c: tvm"),
              Event("Warning", "BuildFailed", "d: no"),
              Event("Normal", "ClassExcluded", "e: no room")]
    out = batch_events(events)
    assert [(e.type, e.reason, e.message) for e in out] == [
        ("Normal", "ClassPlaced", "a: onnxruntime; c: tvm"),
        ("Normal", "ClassExcluded", "b: not allowed; e: no room"),
        ("Warning", "BuildFailed", "d: no"),
    ]
    # past the limit a reason's messages go out in several Events, none cut
    long = [Event("Normal", "Scaled", f"class-{i}: 0 -> 1 replicas") for i in range(100)]
    parts = batch_events(long, limit=200)
    assert len(parts) > 1 and all(len(e.message) <= 200 for e in parts)
    assert "; ".join(e.message for e in parts) == "; ".join(e.message for e in long)
    assert batch_events([]) == []


def test_a_watched_child_is_kept_without_status_and_managed_fields() -> None:
    from infleet.operator.diff import needs_apply
    from infleet.operator.observed import kept

    desired = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "s", "labels": {"a": "b"}}, "spec": {"ports": [{"port": 80}]}}
    body = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "labels": {"a": "b"}, "resourceVersion": "7",
                         "managedFields": [{"manager": "infleet", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
            "status": {"loadBalancer": {}}}
    small = kept(body)
    assert "status" not in small and "managedFields" not in small["metadata"]
    assert small["metadata"]["resourceVersion"] == "7" and small["spec"] == body["spec"]
    assert "managedFields" in body["metadata"]  # the watched object itself is left alone
    assert needs_apply(desired, small) == needs_apply(desired, body) is False
