"""Whole plans: classes, policy and capacity together, and the `infleet plan` command."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.api import parse_spec
from infleet.cli import main
from infleet.scheduler.capacity import ClassProfile
from infleet.scheduler.classes import NodeClass, derive_classes
from infleet.scheduler.inventory import nodes_from_documents
from infleet.scheduler.plan import plan_deployment
from infleet.scheduler.policy import ModelFacts

ROOT = Path(__file__).resolve().parents[2]
CLOUD = ROOT / "tests" / "fixtures" / "inventories" / "cloud-mixed.yaml"
EXAMPLES = ROOT / "examples"


def cloud_classes() -> list[NodeClass]:
    return derive_classes(nodes_from_documents(list(yaml.safe_load_all(CLOUD.read_text()))))


CLASSES = cloud_classes()
NAMES = [c.name for c in CLASSES]


def spec(**changes: Any) -> Any:
    raw: dict[str, Any] = {"model": {"uri": "file:///m.onnx"}, "slo": {"latencyP99Ms": 25},
                           "scaling": {"minReplicas": 1, "maxReplicas": 40}}
    raw.update(changes)
    return parse_spec(raw)


PROFILES = {
    "nvidia-h100": ClassProfile(3000, 1.2),
    "nvidia-a100": ClassProfile(1800, 1.8),
    "nvidia-l4": ClassProfile(900, 3.0),
    "nvidia-t4": ClassProfile(450, 4.5),
    "nvidia-gpu": ClassProfile(300, 6.0),
    "x86-amx": ClassProfile(260, 6.0),
    "x86-avx512vnni": ClassProfile(120, 11.0),
    "x86": ClassProfile(40, 30.0),  # batch-1 p99 above the 25 ms SLO
    "arm64": ClassProfile(60, 14.0),
}


def test_plan_on_the_cloud_fleet() -> None:
    plan = plan_deployment(CLASSES, spec(), name="resnet50", demand_rps=2000,
                           profiles=MappingProxyType(PROFILES))
    assert plan.feasible and plan.optimal
    assert plan.target_rps == pytest.approx(2400)
    assert plan.capacity_rps >= plan.target_rps
    assert sum(c.weight for c in plan.classes) == 100
    by = {c.name: c for c in plan.classes}
    assert by["x86"].replicas == 0
    assert by["x86"].unused_reason == "batch-1 p99 30 ms > SLO 25 ms"
    # Every replica sits in a class with room for it, and weights follow capacity.
    for c in plan.classes:
        assert c.replicas <= c.free_replicas
        assert (c.weight > 0) == (c.replicas > 0)
    statuses = plan.class_statuses()
    assert [s.name for s in statuses] == NAMES
    assert sum(s.desired_replicas for s in statuses) == plan.replicas


def test_unreachable_slo_is_infeasible_and_places_nothing() -> None:
    plan = plan_deployment(CLASSES, spec(slo={"latencyP99Ms": 1}), demand_rps=100,
                           profiles=MappingProxyType(PROFILES))
    assert not plan.feasible and plan.replicas == 0 and plan.cost_per_hour == 0
    assert plan.problems[0].startswith("no class can serve this deployment: ")
    assert "nvidia-h100-80gb-p5-48xlarge: batch-1 p99 1.2 ms > SLO 1 ms" in plan.problems[0]


def test_not_enough_free_capacity_is_explained() -> None:
    plan = plan_deployment(CLASSES, spec(classes={"allow": ["x86-amx"]}), demand_rps=10_000,
                           profiles=MappingProxyType(PROFILES))
    assert not plan.feasible and plan.replicas == 0
    assert "needs 12,000 rps" in plan.problems[0] and "free allocatable binds" in plan.problems[0]
    assert any("not in spec.classes.allow" in p for p in plan.problems[1:])


def test_pinned_replicas_and_max_throughput() -> None:
    plan = plan_deployment(CLASSES, spec(replicas=3), demand_rps=1,
                           profiles=MappingProxyType(PROFILES))
    assert plan.replicas == 3 and plan.min_replicas == plan.max_replicas == 3
    capped = plan_deployment(CLASSES, spec(slo={"latencyP99Ms": 25, "maxThroughputRps": 500}),
                             demand_rps=10_000, profiles=MappingProxyType(PROFILES))
    assert capped.feasible and capped.target_rps == 500
    assert any("capped at slo.maxThroughput=500" in n for n in capped.notes)


def test_without_profiles_classes_are_reported_but_not_placed() -> None:
    plan = plan_deployment(CLASSES, spec(), demand_rps=100)
    assert not plan.feasible
    assert all(c.unused_reason and "no latency profile" in c.unused_reason
               for c in plan.classes if not c.decision.excluded)


profile_st = st.builds(ClassProfile, st.floats(1, 5000), st.floats(0.5, 40))


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(st.sampled_from(NAMES), profile_st, min_size=1),
    st.lists(st.sampled_from(NAMES), max_size=4, unique=True),
    st.floats(0, 20_000),
    st.integers(0, 5),
    st.integers(5, 60),
    st.floats(0, 1),
    st.sampled_from([None, 10**8, 30 * 10**9, 200 * 10**9]),  # model sizes: some GPUs too small
)
def test_plan_properties(
    profiles: dict[str, ClassProfile],
    deny: list[str],
    demand: float,
    lo: int,
    hi: int,
    headroom: float,
    model_bytes: int | None,
) -> None:
    allow = [n for n in NAMES if n not in deny] or None
    s = spec(classes={"allow": allow} if allow else {},
             scaling={"minReplicas": lo, "maxReplicas": hi, "headroomFraction": headroom})
    plan = plan_deployment(CLASSES, s, demand_rps=demand, profiles=MappingProxyType(profiles),
                           model=ModelFacts(size_bytes=model_bytes))
    for c in plan.classes:
        if c.decision.excluded or c.unused_reason:
            assert c.replicas == 0 and c.weight == 0  # nothing on an excluded/unusable class
        assert c.replicas <= c.free_replicas
        if c.replicas:
            assert c.profile is not None and c.profile.latency_b1_ms <= 25
    if plan.feasible:
        assert plan.capacity_rps >= demand * (1 + headroom) * (1 - 1e-9) - 1e-9
        assert lo <= plan.replicas <= hi
        if plan.replicas:
            assert sum(c.weight for c in plan.classes) == 100
    else:
        assert plan.replicas == 0 and plan.problems


# --- the command --------------------------------------------------------------------------


def run_plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["plan", "-f", str(EXAMPLES / "deployment.yaml"), *args])
    return rc, capsys.readouterr().out


def test_command_table_on_the_example_inventory(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_plan(capsys, "--inventory", str(EXAMPLES / "inventory-dev.yaml"),
                       "--profiles", str(EXAMPLES / "profiles-dev.yaml"), "--demand", "1000")
    assert rc == 0
    assert "nvidia-h100-80gb-p5-48xlarge" in out and "PLAN: " in out and "(optimal)" in out
    assert "WHY" in out and "TensorRT: NVIDIA compute 9.0" in out


def test_command_json_on_kubectl_objects(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_plan(capsys, "--inventory", str(CLOUD), "--profiles",
                       str(EXAMPLES / "profiles-dev.yaml"), "--demand", "500", "-o", "json",
                       "--model-size", "100Mi")
    assert rc == 0
    doc = json.loads(out)
    assert doc["feasible"] and doc["deployment"] == "resnet50"
    assert doc["capacityRps"] >= 600
    h100 = next(c for c in doc["classes"] if c["name"].startswith("nvidia-h100"))
    assert h100["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert h100["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal",
                                    "value": "present", "effect": "NoSchedule"}]


def test_command_infeasible_exits_2_with_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_plan(capsys, "--inventory", str(EXAMPLES / "inventory-dev.yaml"),
                       "--profiles", str(EXAMPLES / "profiles-dev.yaml"), "--demand", "1e7",
                       "-o", "yaml")
    assert rc == 2
    doc = yaml.safe_load(out)
    assert not doc["feasible"] and doc["replicas"] == 0 and doc["problems"]


def test_command_reports_bad_inventory_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "nodes.yaml"
    bad.write_text("apiVersion: infleet.dev/v1alpha1\nkind: NodeInventory\nnodePools:\n"
                   "- {name: a, allocatable: {cpu: lots}}\n")
    rc = main(["plan", "-f", str(EXAMPLES / "deployment.yaml"), "--inventory", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "infleet plan: error: nodePools[a]: not a quantity: 'lots'" in err


def test_command_reports_an_unreachable_cluster_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }))
    rc = main(["plan", "-f", str(EXAMPLES / "deployment.yaml"), "--kubeconfig", str(kubeconfig)])
    assert rc == 1
    assert "infleet plan: error: cannot reach the API server https://127.0.0.1:1" in (
        capsys.readouterr().err
    )


def test_engine_profiles_in_status_are_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = yaml.safe_load((EXAMPLES / "deployment.yaml").read_text())
    obj["status"] = {"classes": [{
        "name": "nvidia-t4-16gb-g4dn-12xlarge",
        "engine": {"state": "Ready", "profile": [
            {"batchSize": 1, "p50Ms": 2.0, "p99Ms": 3.0, "throughputIps": 300},
            {"batchSize": 8, "p50Ms": 6.0, "p99Ms": 8.0, "throughputIps": 1100},
        ]},
    }]}
    manifest = tmp_path / "idep.yaml"
    manifest.write_text(yaml.safe_dump(obj))
    rc = main(["plan", "-f", str(manifest), "--inventory", str(EXAMPLES / "inventory-dev.yaml"),
               "--demand", "1000", "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    t4 = next(c for c in doc["classes"] if c["name"] == "nvidia-t4-16gb-g4dn-12xlarge")
    # 2 ms queue delay + 2 x 8 ms <= 25 ms: batch 8's throughput is the capacity at the SLO.
    assert t4["profile"] == {"capacityRps": 1100, "latencyBatch1Ms": 3.0,
                             "source": "engine profile"}
    assert t4["replicas"] == 2  # 1200 rps needed, minReplicas 2


def test_bad_profiles_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "profiles.yaml"
    bad.write_text("classes:\n  x86: {capacityRps: 10}\n")
    rc = main(["plan", "-f", str(EXAMPLES / "deployment.yaml"), "--inventory",
               str(EXAMPLES / "inventory-dev.yaml"), "--profiles", str(bad)])
    assert rc == 1
    assert "give either capacityRps and latencyBatch1Ms, or points" in capsys.readouterr().err


def test_readme_shows_the_current_output(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_plan(capsys, "--inventory", str(EXAMPLES / "inventory-dev.yaml"),
                       "--profiles", str(EXAMPLES / "profiles-dev.yaml"),
                       "--config", str(EXAMPLES / "operator-config.yaml"),
                       "--demand", "10000", "--model-size", "100Mi")
    assert rc == 0
    readme = (ROOT / "README.md").read_text()
    assert out.rstrip("\n") in readme, "README's `infleet plan` example is stale: paste:\n" + out


def test_command_excludes_a_class_whose_backend_cannot_run_an_operator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = pytest.importorskip("onnx")  # part of CI's install; never skips there
    from onnx import TensorProto, helper

    # An ONNX Runtime contrib op: ORT runs it, TVM's Relax importer has no converter for it.
    graph = helper.make_graph(
        [helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft")],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
    )
    model = tmp_path / "contrib.onnx"
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(model))

    rc, out = run_plan(capsys, "--inventory", str(EXAMPLES / "inventory-dev.yaml"),
                       "--profiles", str(EXAMPLES / "profiles-dev.yaml"), "--demand", "1000",
                       "--model-file", str(model), "-o", "json")
    assert rc == 0
    doc = json.loads(out)
    arm = next(c for c in doc["classes"] if c["name"].startswith("arm64"))
    assert arm["excluded"] == "TVM cannot run operators: com.microsoft:FusedMatMul"
    assert arm["replicas"] == 0
    x86 = [c for c in doc["classes"] if c["name"].startswith("x86")]
    assert x86 and all(c["backend"] == "onnxruntime" and not c["excluded"] for c in x86)
    if importlib.util.find_spec("tensorrt") is None:
        assert any(n.startswith("tensorrt operators not checked") for n in doc["notes"])


def test_command_refuses_a_missing_model_file(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", "-f", str(EXAMPLES / "deployment.yaml"), "--inventory",
               str(EXAMPLES / "inventory-dev.yaml"), "--model-file", "/nonexistent/m.onnx"])
    assert rc == 1
    assert "--model-file: /nonexistent/m.onnx is not a file" in capsys.readouterr().err


# --- measured profiles: the lent H200 and this development machine --------------------------

PROFILE_FIXTURES = ROOT / "tests" / "fixtures" / "profiles"


def _measured(name: str, slo_ms: float, max_batch: int) -> ClassProfile:
    from infleet.api import LatencyPoint
    from infleet.scheduler.capacity import profile_from_points

    raw = json.loads((PROFILE_FIXTURES / name).read_text())
    assert raw["measured"], f"{name} is not a measurement"
    points = [LatencyPoint.model_validate(p) for p in raw["points"]]
    profile = profile_from_points(points, slo_ms, 2.0, max_batch)
    assert profile is not None
    return profile


def _h200_node(name: str) -> dict[str, Any]:
    """A node of an H200 class, labelled as GPU Feature Discovery labels the lent machine
    (NVIDIA H200, compute 9.0, 143,771 MiB)."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "NVIDIA-H200",
        "nvidia.com/gpu.memory": "143771", "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.count": "8",
        "feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI": "true",
        "feature.node.kubernetes.io/cpu-cpuid.AVX512F": "true"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present",
                             "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "128", "memory": "1Ti", "nvidia.com/gpu": "8"},
                   "conditions": [{"type": "Ready", "status": "True"}]}}


def test_a_plan_on_profiles_measured_on_the_h200_and_on_x86() -> None:
    """The H200's FP16 engine (ORT CUDA, measured by `infleet build` on the lent H200) and
    x86's INT8 engine (measured here) on one fleet: the cheap CPU class carries a small
    demand alone; a demand past its room brings the H200 in, each replica of which holds
    the SLO at the H200's measured capacity."""
    slo = 25.0
    profiles = {
        "nvidia-h200": _measured("efficientnet-lite0-ort-cuda-fp16-h200.json", slo, 16),
        "x86-avx512vnni": _measured("efficientnet-lite0-ort-int8-x86.json", slo, 2),
    }
    gpu = profiles["nvidia-h200"]
    assert gpu.capacity_rps > 5000 and gpu.latency_b1_ms < 2  # batch 16: 6,268 items/s
    docs = [_h200_node("h200-a"), *yaml.safe_load(CLOUD.read_text())["items"]]
    classes = derive_classes(nodes_from_documents(docs))
    allow = {"classes": {"allow": ["nvidia-h200", "x86-avx512vnni"]}}
    small = plan_deployment(classes, spec(slo={"latencyP99Ms": slo}, **allow), demand_rps=100,
                            profiles=MappingProxyType(profiles))
    by = {c.name: c.replicas for c in small.classes}
    assert small.feasible and by["nvidia-h200-141gb"] == 0, by
    assert by["x86-avx512vnni-m6i-4xlarge"] >= 1, by
    big = plan_deployment(classes, spec(slo={"latencyP99Ms": slo}, **allow), demand_rps=20000,
                          profiles=MappingProxyType(profiles))
    h200 = next(c for c in big.classes if c.name == "nvidia-h200-141gb")
    assert big.feasible and h200.replicas >= 1
    assert big.capacity_rps >= big.target_rps == pytest.approx(24000)
    assert h200.replicas * gpu.capacity_rps <= big.capacity_rps
