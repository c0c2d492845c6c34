"""The committed CRD is current, structural, and its CEL rules agree with their Python twins."""

from __future__ import annotations

import copy
import json
import typing
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
from kubernetes.client import ApiClient, V1CustomResourceDefinition

from infleet.api import InferenceDeploymentSpec, SpecError, parse_spec
from infleet.api.base import ApiModel, CelRule
from infleet.api.render import CRD_FILE, render_crd, render_yaml


def test_committed_crd_matches_models() -> None:
    assert CRD_FILE.read_text() == render_yaml(), "crds/ is stale: run `infleet crds`"


def _walk_schema(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk_schema(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk_schema(node["items"], f"{path}[]")


def test_schema_is_structural() -> None:
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = list(_walk_schema(schema, ""))
    assert len(nodes) > 40
    for path, node in nodes:
        assert "type" in node, f"{path} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
            assert forbidden not in node, f"{path} carries {forbidden}"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties + additionalProperties"
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            pytest.fail(f"{path}: exclusiveMinimum must be a boolean in OpenAPI v3.0")
        if "default" in node and node["type"] == "object":
            assert node["default"] == {}, f"{path}: object defaults are empty objects"


def test_crd_deserializes_as_a_kubernetes_object() -> None:
    text = json.dumps(render_crd())
    crd = ApiClient().deserialize(text, "V1CustomResourceDefinition", "application/json")
    assert isinstance(crd, V1CustomResourceDefinition)
    version = crd.spec.versions[0]
    assert crd.spec.names.short_names == ["idep"]
    assert version.subresources.scale.spec_replicas_path == ".spec.replicas"
    assert version.subresources.status == {}
    assert [c.name for c in version.additional_printer_columns] == [
        "Phase",
        "Available",
        "Classes",
        "Ready",
        "Replicas",
        "P99ms",
        "Endpoint",
        "Age",
    ]


# --- CEL rules: evaluated with a real CEL interpreter on the wire form ---------------------


def _model_types(annotation: Any) -> Iterator[type[ApiModel]]:
    if isinstance(annotation, type) and issubclass(annotation, ApiModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _model_types(arg)


def _rule_sites(
    cls: type[ApiModel], node: Any, path: str
) -> Iterator[tuple[CelRule, dict[str, Any], str]]:
    """Every (rule, object it applies to, path) in a wire-form spec, as the API server sees it."""
    for rule in cls.cel_rules:
        yield rule, node, path
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if key not in node:
            continue
        for sub in _model_types(field.annotation):
            value = node[key]
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                yield from _rule_sites(
                    sub, item, f"{path}.{key}" + (f"[{i}]" if value is items else "")
                )


def _cel_holds(rule: CelRule, node: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule.rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(node)}))


BASE: dict[str, Any] = {
    "model": {"uri": "s3://bucket/m.onnx"},
    "slo": {"latencyP99Ms": 20},
    "accuracy": {"metric": "cosine"},
    "classes": {"overrides": []},
    "batching": {"maxBatchSize": 32, "maxQueueDelayMs": 2},
    "scaling": {
        "minReplicas": 1,
        "maxReplicas": 20,
        "headroomFraction": 0.2,
        "scaleDownStabilizationSeconds": 300,
    },
}


def _variant(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for p in parents:
            node = node[p]
        node[leaf] = value
    return spec


VARIANTS = {
    "defaults": _variant(),
    "min above max": _variant(scaling__minReplicas=25),
    "min equals max": _variant(scaling__minReplicas=20),
    "pinned replicas inside": _variant(replicas=5),
    "pinned replicas above": _variant(replicas=21),
    "pinned replicas below": _variant(replicas=0),
    "top1 budget fine": _variant(accuracy={"metric": "top1", "maxDeviation": 0.5}),
    "top1 budget too big": _variant(accuracy={"metric": "top1", "maxDeviation": 1.5}),
    "cosine budget too big": _variant(accuracy={"metric": "cosine", "maxDeviation": 3.0}),
    "abs error budget big": _variant(accuracy={"metric": "max-abs-error", "maxDeviation": 3.0}),
    "empty override": _variant(classes={"overrides": [{"class": "a"}]}),
    "fp8 on tensorrt": _variant(
        classes={"overrides": [{"class": "a", "backend": "tensorrt", "precision": "fp8"}]}
    ),
    "fp8 on tvm": _variant(
        classes={"overrides": [{"class": "a", "backend": "tvm", "precision": "fp8"}]}
    ),
    "fp8 alone": _variant(classes={"overrides": [{"class": "a", "precision": "fp8"}]}),
    "duplicate override": _variant(
        classes={
            "overrides": [{"class": "a", "precision": "fp16"}, {"class": "a", "backend": "tvm"}]
        }
    ),
    "override outside allow": _variant(
        classes={"allow": ["b"], "overrides": [{"class": "a", "precision": "fp16"}]}
    ),
    "override narrower than allow": _variant(
        classes={"allow": ["b"], "overrides": [{"class": "b-80gb", "precision": "fp16"}]}
    ),
    "override broader than allow": _variant(
        classes={"allow": ["b-80gb"], "overrides": [{"class": "b", "precision": "fp16"}]}
    ),
    "override on a lookalike": _variant(
        classes={"allow": ["b-80"], "overrides": [{"class": "b-80gb", "precision": "fp16"}]}
    ),
    "input shapes": _variant(model={"uri": "s3://m/x.onnx", "inputs": [
        {"name": "x", "shape": [-1, 3, 48, 192]}, {"name": "mask", "shape": [1, 128]}]}),
    "input shape with a zero": _variant(model={"uri": "s3://m/x.onnx", "inputs": [
        {"name": "x", "shape": [-1, 0, 48]}]}),
    "input shape batch not first": _variant(model={"uri": "s3://m/x.onnx", "inputs": [
        {"name": "x", "shape": [3, -1]}]}),
    "input shape two batches": _variant(model={"uri": "s3://m/x.onnx", "inputs": [
        {"name": "x", "shape": [-1, -1]}]}),
    "input given twice": _variant(model={"uri": "s3://m/x.onnx", "inputs": [
        {"name": "x", "shape": [-1, 3]}, {"name": "x", "shape": [-1, 4]}]}),
    "calibration with checksum": _variant(accuracy={"metric": "cosine", "calibration": {
        "uri": "s3://d/cal.npz", "sha256": "a" * 64}}),
    "calibration checksum without a file": _variant(accuracy={"metric": "cosine",
        "calibration": {"sha256": "a" * 64, "samples": 32}}),
    "validation data": _variant(accuracy={"metric": "cosine", "validation": {
        "uri": "pvc://data/val.npz", "sha256": "b" * 64, "samples": 32}}),
    "override inside allow": _variant(
        classes={"allow": ["a", "b"], "overrides": [{"class": "a", "precision": "fp16"}]}
    ),
}


@pytest.mark.parametrize("spec", list(VARIANTS.values()), ids=list(VARIANTS))
def test_cel_rules_agree_with_python(spec: dict[str, Any]) -> None:
    failing = [
        (rule, path)
        for rule, node, path in _rule_sites(InferenceDeploymentSpec, spec, "spec")
        if not _cel_holds(rule, node)
    ]
    if not failing:
        parse_spec(spec)  # the Python twins accept what CEL accepts
        return
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    for rule, _path in failing:
        assert any(rule.message in p for p in info.value.problems), (rule.message, info.value)


def test_every_rule_is_exercised_both_ways() -> None:
    outcomes: dict[str, set[bool]] = {}
    for spec in VARIANTS.values():
        for rule, node, _ in _rule_sites(InferenceDeploymentSpec, spec, "spec"):
            outcomes.setdefault(rule.rule, set()).add(_cel_holds(rule, node))
    all_rules = {
        r.rule
        for cls in ApiModel.__subclasses__()
        for r in cls.cel_rules
        if cls.__module__ == "infleet.api.spec"
    }
    assert all_rules <= outcomes.keys(), all_rules - outcomes.keys()
    assert all(v == {True, False} for v in outcomes.values()), outcomes
