# ruff: noqa: E501  (INVALID below is a table: one case a line reads better than wrapped)
"""Invalid specs are refused with a message that names the offending field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from infleet.api import AccuracyMetric, Backend, Precision, SpecError, parse_spec

VALID: dict[str, Any] = {
    "model": {"uri": "https://models.example.com/resnet50.onnx", "sha256": "a" * 64},
    "slo": {"latencyP99Ms": 25},
    "accuracy": {"metric": "top1", "maxDeviation": 0.01},
    "classes": {
        "allow": ["nvidia-h100-80gb", "x86-avx512vnni"],
        "overrides": [{"class": "x86-avx512vnni", "backend": "onnxruntime", "precision": "fp32"}],
    },
    "batching": {"maxBatchSize": 32, "maxQueueDelayMs": 2},
    "scaling": {"minReplicas": 1, "maxReplicas": 20, "scaleDownStabilizationSeconds": 300},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """VALID with ``path`` (dotted; ``-`` deletes) set to ``value``."""
    spec = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node: Any = spec
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value == "-":
        del node[leaf]
    elif isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return spec


def test_valid_spec_parses_with_defaults() -> None:
    spec = parse_spec({"model": {"uri": "file:///m.onnx"}, "slo": {"latencyP99Ms": 10}})
    assert spec.batching.max_batch_size == 32
    assert spec.scaling.min_replicas == 1
    assert spec.accuracy.metric is AccuracyMetric.COSINE
    assert spec.accuracy.max_deviation is None
    full = parse_spec(VALID)
    assert full.classes.overrides[0].backend is Backend.ONNXRUNTIME
    assert full.classes.overrides[0].precision is Precision.FP32


INVALID = [
    # (description, spec, field path the message must name, words the message must hold)
    ("latency is text", with_change("slo.latencyP99Ms", "fast"), "spec.slo.latencyP99Ms", "number"),
    ("negative latency", with_change("slo.latencyP99Ms", -5), "spec.slo.latencyP99Ms", "greater than 0"),
    ("zero latency", with_change("slo.latencyP99Ms", 0), "spec.slo.latencyP99Ms", "greater than 0"),
    ("latency missing", with_change("slo.latencyP99Ms", "-"), "spec.slo.latencyP99Ms", "required"),
    ("model missing", with_change("model", "-"), "spec.model", "required"),
    ("min > max replicas", with_change("scaling.minReplicas", 30), "spec.scaling", "maxReplicas must be greater"),
    ("negative min replicas", with_change("scaling.minReplicas", -1), "spec.scaling.minReplicas", "greater than or equal to 0"),
    ("replicas as float", with_change("scaling.maxReplicas", 2.5), "spec.scaling.maxReplicas", "integer"),
    ("unknown backend", with_change("classes.overrides.0.backend", "pytorch"), "spec.classes.overrides[0].backend", "tensorrt"),
    ("unknown precision", with_change("classes.overrides.0.precision", "int4"), "spec.classes.overrides[0].precision", "fp32"),
    ("short checksum", with_change("model.sha256", "abc123"), "spec.model.sha256", "pattern"),
    ("upper-case checksum", with_change("model.sha256", "A" * 64), "spec.model.sha256", "pattern"),
    ("unsupported URI scheme", with_change("model.uri", "ftp://host/m.onnx"), "spec.model.uri", "pattern"),
    ("unknown top-level field", with_change("replicaCount", 3), "spec.replicaCount", "unknown field"),
    ("unknown nested field", with_change("slo.latencyP95Ms", 3), "spec.slo.latencyP95Ms", "unknown field"),
    ("snake_case field", with_change("batching.max_batch_size", 8), "spec.batching.max_batch_size", "unknown field"),
    ("unknown metric", with_change("accuracy.metric", "f1"), "spec.accuracy.metric", "top1"),
    ("negative deviation", with_change("accuracy.maxDeviation", -0.1), "spec.accuracy.maxDeviation", "greater than or equal to 0"),
    ("top1 deviation above 1", with_change("accuracy.maxDeviation", 5), "spec.accuracy", "maxDeviation for metric top1"),
    ("batch size zero", with_change("batching.maxBatchSize", 0), "spec.batching.maxBatchSize", "greater than or equal to 1"),
    ("queue delay too long", with_change("batching.maxQueueDelayMs", 5000), "spec.batching.maxQueueDelayMs", "less than or equal to 1000"),
    ("override sets nothing", with_change("classes.overrides.0", {"class": "x86-avx512vnni"}), "spec.classes.overrides[0]", "must set backend, precision or both"),
    ("override of a class not allowed", with_change("classes.allow", ["nvidia-h100-80gb"]), "spec.classes", "must select a class that classes.allow allows"),
    ("class name not a DNS label", with_change("classes.allow", ["Nvidia_H100"]), "spec.classes.allow[0]", "pattern"),
    ("fp8 on onnxruntime", with_change("classes.overrides.0.precision", "fp8"), "spec.classes.overrides[0]", "fp8 needs backend tensorrt"),
    ("duplicate override", with_change("classes.overrides", [{"class": "x86-avx512vnni", "precision": "fp32"}] * 2), "spec.classes", "only once"),
    ("pinned replicas above max", with_change("replicas", 50), "spec", "replicas must lie between"),
    ("calibration checksum without a file", with_change("accuracy.calibration", {"sha256": "a" * 64}), "spec.accuracy.calibration", "give accuracy.calibration.uri"),
    ("validation without a file", with_change("accuracy.validation", {"samples": 8}), "spec.accuracy.validation.uri", "required"),
    ("validation checksum short", with_change("accuracy.validation", {"uri": "s3://d/v.npz", "sha256": "ab"}), "spec.accuracy.validation.sha256", "pattern"),
    ("validation URI scheme", with_change("accuracy.validation", {"uri": "ftp://d/v.npz"}), "spec.accuracy.validation.uri", "pattern"),
    ("spec not an object", with_change("slo", [25]), "spec.slo", "valid dictionary"),
]


@pytest.mark.parametrize(
    ("spec", "path", "words"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_spec_names_the_field(spec: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    lines = info.value.problems
    matching = [line for line in lines if line.split(": ", 1)[0] == path]
    assert matching, f"no problem reported at {path}: {lines}"
    assert any(words in line for line in matching), f"{words!r} not in {matching}"


def test_all_problems_reported_at_once() -> None:
    spec = with_change("slo.latencyP99Ms", -1)
    spec["batching"]["maxBatchSize"] = 0
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    paths = {line.split(": ", 1)[0] for line in info.value.problems}
    assert paths == {"spec.slo.latencyP99Ms", "spec.batching.maxBatchSize"}
    assert str(info.value).startswith("invalid InferenceDeployment: ")
