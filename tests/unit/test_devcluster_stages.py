"""kwok's per-cluster Stage file and the fleet profile's nominal points (pure, no cluster)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from infleet.api.spec import Backend, Precision
from infleet.devcluster import fleet, stages
from infleet.devcluster.errors import FleetProfileError

HOST = fleet.HostFacts(arch="amd64", cpuid=("AVX2",), cpus=4, memory_bytes=8 * 1024**3)


def _stages(profile: str = "dev") -> dict[str, dict]:
    docs = yaml.safe_load_all(stages.render(fleet.load_profile(profile)))
    return {d["metadata"]["name"]: d for d in docs}


def _expressions(stage: dict) -> dict[str, tuple[str, list[str]]]:
    return {e["key"]: (e["operator"], e.get("values", []))
            for e in stage["spec"]["selector"]["matchExpressions"]}


def test_build_pods_end_through_the_simulated_stage_only() -> None:
    found = _stages()
    label = '.metadata.labels["app.kubernetes.io/component"]'
    assert _expressions(found["engine-build-simulated"])[label] == ("In", ["engine-build"])
    assert _expressions(found["engine-build-simulated"])[".status.phase"] == ("In", ["Running"])
    # kwok picks at random among matching stages: pod-complete must not match build pods.
    assert _expressions(found["pod-complete"])[label] == ("NotIn", ["engine-build"])


def test_the_stage_carries_each_simulated_class_nominal_points_and_the_api_enums() -> None:
    template = _stages()["engine-build-simulated"]["spec"]["next"]["statusTemplate"]
    assert "__" not in template  # every placeholder filled
    (embedded,) = re.findall(r"`([^`]*)` \| fromJson", template)
    profile = fleet.load_profile("dev")
    expected = {c.name: [p.model_dump() for p in c.nominalProfile]
                for c in profile.classes if c.executor is fleet.Executor.KWOK}
    assert json.loads(embedded) == expected
    assert "x86-local" not in json.loads(embedded)
    backends = " ".join(json.dumps(b.value) for b in Backend)
    precisions = " ".join(json.dumps(p.value) for p in Precision)
    assert f"(list {backends})" in template and f"(list {precisions})" in template


@pytest.mark.parametrize("name", ["dev", "large"])
def test_every_simulated_class_of_the_shipped_profiles_has_nominal_points(name: str) -> None:
    for cls in fleet.load_profile(name).classes:
        if cls.executor is fleet.Executor.KWOK:
            assert len(cls.nominalProfile) >= 2, cls.name
            assert all(p.p99_ms >= p.p50_ms for p in cls.nominalProfile)


def test_nodes_say_whether_they_are_simulated() -> None:
    nodes = fleet.render_nodes(fleet.load_profile("dev"), HOST)
    for node in nodes:
        labels = node["metadata"]["labels"]
        real = labels[fleet.FLEET_CLASS_LABEL] in ("x86-local", "arm64-qemu")
        assert labels[fleet.SIMULATED_LABEL] == ("false" if real else "true")
        assert (fleet.KWOK_ANNOTATION in node["metadata"]["annotations"]) is not real
        emulated = labels[fleet.FLEET_CLASS_LABEL] == "arm64-qemu"
        assert labels[fleet.EMULATED_LABEL] == ("true" if emulated else "false")


@pytest.mark.parametrize(("extra", "message"), [
    ("executor: local, nominalProfile: [{batch_size: 1, p50_ms: 1, p99_ms: 2, "
     "throughput_ips: 5}]", "nominalProfile is for simulated"),
    ("nominalProfile: [{batch_size: 8, p50_ms: 1, p99_ms: 2, throughput_ips: 5}, "
     "{batch_size: 1, p50_ms: 1, p99_ms: 2, throughput_ips: 5}]", "batch sizes must increase"),
    ("nominalProfile: [{batch_size: 1, p50_ms: 3, p99_ms: 2, throughput_ips: 5}]",
     "p99_ms 2.0 is below p50_ms 3.0"),
])
def test_bad_nominal_points_are_refused_by_name(tmp_path, extra: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nclasses:\n- {{name: c, count: 1, arch: amd64, instanceType: t, "
                    f"{extra}}}\n")
    with pytest.raises(FleetProfileError, match=message):
        fleet.load_profile(str(path))
