"""Engines as the operator sees them: build keys, build outcomes and engine records. Pure.

The **build key** names one build request: everything the outcome of ``infleet build`` depends
on that the operator knows before building (the model's sha256 or, without one, its URI; the
backend, precision ladder and accuracy budget; batching and shape hints; the scheduler's
hardware fingerprint of the class; the runtime image; the builder version; the store). Equal
keys build interchangeable engines, so the key names the build Job (one Job per key: two
InferenceDeployments of one model on one class share it) and the **engine record**, a
ConfigMap that outlives the deployments and says what the store holds for that key: the
build's summary, or its failure. The record is the operator's index of the store: the operator
never mounts the store or reads object-store credentials, and a second deployment of the same
model finds its engine through the record without starting a Job.

The engine key proper (``BuildSummary.engine_key``, the store's content address) also depends
on which rung of the ladder passed, which only the build can know; it comes back in the summary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from infleet.api import Backend, EngineState, InferenceDeploymentSpec, Precision
from infleet.api.engine import BUILDER_VERSION, BuildFailure, BuildSummary
from infleet.operator import naming

# Retryable failures (an unreachable URI, a node that went away) are retried after a backoff
# that doubles per attempt; permanent ones (a checksum mismatch, an unsupported model) wait
# for a spec change.
RETRY_BASE_SECONDS = 60.0
RETRY_MAX_SECONDS = 1800.0


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """What a build request needs beyond the spec and the class decision."""

    image: str
    store: str
    tuning_trials: int = 0
    tuning_seconds: float = 0.0


def build_key(
    spec: InferenceDeploymentSpec,
    *,
    backend: Backend,
    ladder: tuple[Precision, ...],
    hardware_fingerprint: str,
    settings: BuildSettings,
) -> str:
    """The build key (32 hex digits) of one class's engine for ``spec``."""
    model = spec.model
    # The budget decides which rung is kept only when the ladder has rungs below FP32; an
    # FP32-only engine was gated once, and its recorded deviation is checked against the
    # budget in force (planner), so loosening or tightening a budget rebuilds only the
    # classes whose outcome it can change.
    reduced = any(p is not Precision.FP32 for p in ladder)
    fields: dict[str, Any] = {
        "model": f"sha256:{model.sha256}" if model.sha256 else f"uri:{model.uri}",
        "inputs": {i.name: list(i.shape) for i in spec.model.inputs},
        "backend": backend.value,
        "ladder": [p.value for p in ladder],
        "metric": spec.accuracy.metric.value,
        "budget": spec.accuracy.max_deviation if reduced else None,
        "calibration": _calibration(spec) if reduced else None,
        "maxBatch": spec.batching.max_batch_size,
        "hardware": hardware_fingerprint,
        "image": settings.image,
        "store": settings.store,
        "tuning": [settings.tuning_trials, settings.tuning_seconds],
        "builder": BUILDER_VERSION,
    }
    # The data every rung is judged on changes verdicts at FP32 too (a degenerate synthetic
    # reference, a real one): it enters every key. Only when there is some and the
    # calibration entry does not already hold it, so that keys of specs written before
    # validation data existed stay what they were.
    judged_on = _validation(spec)
    if judged_on is not None and (spec.accuracy.validation is not None or not reduced):
        fields["validation"] = judged_on
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _calibration(spec: InferenceDeploymentSpec) -> dict[str, Any] | None:
    calibration = spec.accuracy.calibration
    if calibration is None:
        return None
    fields = calibration.model_dump(mode="json")
    if fields["sha256"] is None:
        del fields["sha256"]  # keeps the keys of specs written before the field existed
    return fields


def _validation(spec: InferenceDeploymentSpec) -> dict[str, Any] | None:
    """The file the build judges every rung on (``infleet build``'s rule): the validation
    data, else the calibration file; None for synthetic inputs."""
    accuracy = spec.accuracy
    if accuracy.validation is not None:
        return accuracy.validation.model_dump(mode="json")
    if accuracy.calibration is not None and accuracy.calibration.uri:
        return {"uri": accuracy.calibration.uri, "sha256": accuracy.calibration.sha256}
    return None


class Outcome(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class EngineResult:
    """A finished build: its summary, or why it failed."""

    outcome: Outcome
    summary: BuildSummary | None = None
    message: str = ""
    retryable: bool = False
    attempts: int = 1
    finished_at: str = ""

    @property
    def simulated(self) -> bool:
        return self.summary is not None and self.summary.simulated


@dataclass(frozen=True, slots=True)
class BuildJobState:
    """What the operator observes of one build Job (and its pod's termination message)."""

    name: str
    owner_uid: str | None
    """The InferenceDeployment that created (and owns) the Job; None for an orphan."""
    active: bool
    result: EngineResult | None
    """Set once the Job finished."""


def parse_termination_message(message: str | None) -> BuildSummary | BuildFailure | None:
    """A build pod's termination message: its summary, its failure, or None when it is not
    ours (a crash before the build could write anything leaves the log tail there)."""
    if not message:
        return None
    try:
        raw = json.loads(message)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    try:
        if "error" in raw:
            return BuildFailure.model_validate(raw)
        return BuildSummary.model_validate(raw)
    except ValidationError:
        return None


def job_result(
    conditions: list[Mapping[str, Any]],
    termination_message: str | None,
    exit_code: int | None,
    now: datetime,
) -> EngineResult | None:
    """The result of a finished Job from its conditions and its pod's termination message;
    None while it runs."""
    done = {c.get("type"): c for c in conditions if c.get("status") == "True"}
    stamp = _stamp(now)
    parsed = parse_termination_message(termination_message)
    if "Complete" in done or "SuccessCriteriaMet" in done:
        if isinstance(parsed, BuildSummary):
            return EngineResult(Outcome.SUCCEEDED, summary=parsed, finished_at=stamp)
        return EngineResult(
            Outcome.FAILED,
            message="the build Job completed but its pod left no readable summary in its "
            "termination message",
            retryable=True,
            finished_at=stamp,
        )
    failed = done.get("Failed") or done.get("FailureTarget")
    if failed is None:
        return None
    if isinstance(parsed, BuildFailure):
        return EngineResult(
            Outcome.FAILED, message=parsed.error, retryable=parsed.retryable, finished_at=stamp
        )
    reason = str(failed.get("reason") or "Failed")
    detail = str(failed.get("message") or "")
    text = f"build Job failed ({reason}{': ' + detail if detail else ''})"
    if termination_message:
        tail = termination_message.strip().splitlines()[-3:]
        text += "; last output: " + " | ".join(line.strip() for line in tail)[:600]
    elif exit_code is not None:
        text += f"; exit code {exit_code}"
    # A deadline or a lost node may pass on a second try; a build that exits by itself with
    # an error it did not explain is a bug to look at, not to repeat.
    retryable = reason in ("DeadlineExceeded", "PodFailurePolicy") or exit_code in (137, 143)
    return EngineResult(Outcome.FAILED, message=text, retryable=retryable, finished_at=stamp)


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_due(result: EngineResult, now: datetime) -> bool:
    """Whether a failed build may be tried again."""
    if result.outcome is not Outcome.FAILED or not result.retryable:
        return False
    try:
        finished = datetime.strptime(result.finished_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return True
    delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, result.attempts - 1))
    return now >= finished + timedelta(seconds=delay)


# --- engine records ----------------------------------------------------------------------


def record_manifest(
    namespace: str, key: str, node_class: str, result: EngineResult
) -> dict[str, Any]:
    """The ConfigMap that records a finished build (not owned: it outlives deployments)."""
    data = {
        "outcome": result.outcome.value,
        "attempts": str(result.attempts),
        "finishedAt": result.finished_at,
    }
    if result.summary is not None:
        data["summary"] = result.summary.model_dump_json(exclude_none=True)
    else:
        data["message"] = result.message
        data["retryable"] = "true" if result.retryable else "false"
    labels = naming.labels(None, naming.COMPONENT_BUILD, node_class)
    labels[naming.BUILD_KEY_LABEL] = key
    labels[naming.RECORD_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": naming.record_name(key), "namespace": namespace, "labels": labels},
        "data": data,
    }


def parse_record(data: Mapping[str, str]) -> EngineResult | None:
    """An engine record's result; None when it is unreadable (then it is rebuilt)."""
    try:
        outcome = Outcome(data.get("outcome", ""))
        attempts = int(data.get("attempts", "1"))
    except ValueError:
        return None
    finished = data.get("finishedAt", "")
    if outcome is Outcome.SUCCEEDED:
        try:
            summary = BuildSummary.model_validate_json(data.get("summary", ""))
        except ValidationError:
            return None
        return EngineResult(outcome, summary=summary, attempts=attempts, finished_at=finished)
    return EngineResult(
        outcome,
        message=data.get("message", ""),
        retryable=data.get("retryable") == "true",
        attempts=attempts,
        finished_at=finished,
    )


def engine_state(result: EngineResult | None, building: bool) -> EngineState:
    if result is None:
        return EngineState.BUILDING if building else EngineState.PENDING
    return EngineState.READY if result.outcome is Outcome.SUCCEEDED else EngineState.FAILED
