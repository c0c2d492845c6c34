"""Fleet profiles render into the Node objects real clusters carry (pure, no cluster)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from infleet.devcluster import fleet, tools
from infleet.devcluster.errors import FleetProfileError, ToolsMissingError
from infleet.scheduler.classes import derive_classes
from infleet.scheduler.inventory import nodes_from_objects

HOST = fleet.HostFacts(arch="amd64", cpuid=("AVX2", "FMA3"), cpus=6, memory_bytes=8 * 1024**3)


def classes_of(nodes: list[dict]) -> Counter[str]:
    return Counter(n["metadata"]["labels"][fleet.FLEET_CLASS_LABEL] for n in nodes)


def test_dev_profile_has_every_kind_of_hardware() -> None:
    profile = fleet.load_profile("dev")
    nodes = fleet.render_nodes(profile, HOST)
    counts = classes_of(nodes)
    assert counts["nvidia-h100"] == 2 and counts["nvidia-t4"] == 2
    assert counts["x86-avx512-vnni"] == 3 and counts["x86"] == 2
    assert counts["arm64-neoverse-v1"] == 2 and counts["x86-local"] >= 1
    assert counts["arm64-qemu"] == 1
    assert len({n["metadata"]["name"] for n in nodes}) == len(nodes) == profile.node_count()


def test_large_profile_is_large() -> None:
    profile = fleet.load_profile("large")
    assert profile.node_count() >= 2000
    assert len(profile.classes) >= 10


def test_gpu_node_carries_gfd_labels_allocatable_and_taint() -> None:
    nodes = fleet.render_nodes(fleet.load_profile("dev"), HOST)
    h100 = next(n for n in nodes if n["metadata"]["name"] == "nvidia-h100-0")
    labels = h100["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.compute.major"] == "9"
    assert labels["nvidia.com/gpu.compute.minor"] == "0"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["kubernetes.io/arch"] == "amd64"
    assert labels["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    assert labels["feature.node.kubernetes.io/cpu-cpuid.AMXINT8"] == "true"
    assert h100["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert h100["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert h100["metadata"]["annotations"][fleet.KWOK_ANNOTATION] == "fake"


def test_cpu_nodes_have_no_gpu_and_no_taint() -> None:
    nodes = fleet.render_nodes(fleet.load_profile("dev"), HOST)
    for node in nodes:
        if "nvidia.com/gpu.product" in node["metadata"]["labels"]:
            continue
        assert "nvidia.com/gpu" not in node["status"]["allocatable"]
        assert not node["spec"].get("taints")
    arm = next(n for n in nodes if n["metadata"]["name"] == "arm64-neoverse-v1-0")
    assert arm["metadata"]["labels"]["kubernetes.io/arch"] == "arm64"
    assert arm["metadata"]["labels"]["feature.node.kubernetes.io/cpu-cpuid.SVE"] == "true"


def test_local_class_reports_this_machine_and_is_not_kwoks() -> None:
    nodes = fleet.render_nodes(fleet.load_profile("dev"), HOST)
    local = next(n for n in nodes if n["metadata"]["name"] == "x86-local-0")
    assert fleet.KWOK_ANNOTATION not in local["metadata"]["annotations"]
    labels = local["metadata"]["labels"]
    assert labels["feature.node.kubernetes.io/cpu-cpuid.AVX2"] == "true"
    assert "feature.node.kubernetes.io/cpu-cpuid.AVX512F" not in labels
    assert local["status"]["allocatable"]["cpu"] == "6"
    assert local["status"]["allocatable"]["memory"] == str(8 * 1024**3)
    assert labels[fleet.SIMULATED_LABEL] == "false" and labels[fleet.EMULATED_LABEL] == "false"
    # The local executor runs the local class's nodes and the emulated class's.
    assert fleet.load_profile("dev").local_nodes() == [
        "x86-local-0", "x86-local-1", "arm64-qemu-0"]


def test_emulated_class_is_real_arm64_with_its_cores_labels_and_nominal_figures() -> None:
    profile = fleet.load_profile("dev")
    nodes = fleet.render_nodes(profile, HOST)
    node = next(n for n in nodes if n["metadata"]["name"] == "arm64-qemu-0")
    labels, annotations = node["metadata"]["labels"], node["metadata"]["annotations"]
    assert fleet.KWOK_ANNOTATION not in annotations  # the executor runs it, not kwok
    assert labels["kubernetes.io/arch"] == "arm64"  # the emulated core's, not this machine's
    assert labels[fleet.SIMULATED_LABEL] == "false" and labels[fleet.EMULATED_LABEL] == "true"
    # Neoverse N1's flags (what qemu's neoverse-n1 reports), none of this host's
    assert labels["feature.node.kubernetes.io/cpu-cpuid.ASIMDDP"] == "true"
    assert "feature.node.kubernetes.io/cpu-cpuid.SVE" not in labels
    assert "feature.node.kubernetes.io/cpu-cpuid.AVX2" not in labels
    assert node["status"]["allocatable"]["cpu"] == "6"  # this machine's cores
    assert "qemu-aarch64-static -cpu neoverse-n1" in annotations[fleet.EMULATION_ANNOTATION]
    points = json.loads(annotations[fleet.NOMINAL_PROFILE_ANNOTATION])
    spec = next(c for c in profile.classes if c.name == "arm64-qemu")
    assert points == [p.model_dump() for p in spec.nominalProfile]
    assert profile.emulated_nodes() == {"arm64-qemu-0": "neoverse-n1"}
    # The scheduler reads it back as an emulated arm64-asimddp class with those figures.
    (cls,) = [c for c in derive_classes(nodes_from_objects(nodes)) if c.key.emulated]
    assert cls.name == "arm64-asimddp-infleet-qemu" and not cls.key.simulated
    assert [p.batch_size for p in cls.nominal_profile] == [1, 4, 16]


@pytest.mark.parametrize(("extra", "message"), [
    ("arch: amd64, qemuCpu: max, nominalProfile: [{batch_size: 1, p50_ms: 1, p99_ms: 2, "
     "throughput_ips: 9}]", "runs arm64 CPU nodes only"),
    ("arch: arm64, nominalProfile: [{batch_size: 1, p50_ms: 1, p99_ms: 2, throughput_ips: 9}]",
     "needs qemuCpu"),
    ("arch: arm64, qemuCpu: neoverse-n1", "needs nominalProfile"),
])
def test_emulated_classes_need_arm64_a_core_and_nominal_figures(tmp_path, extra, message) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nclasses:\n- {name: e, count: 1, instanceType: t, executor: qemu, "
                   f"{extra}}}\n")
    with pytest.raises(FleetProfileError, match=message):
        fleet.load_profile(str(bad))


def test_host_facts_read_this_machine() -> None:
    host = fleet.HostFacts.detect()
    assert host.cpus >= 1 and host.memory_bytes > 0
    assert host.arch in ("amd64", "arm64")


def test_unknown_and_invalid_profiles_are_refused(tmp_path) -> None:
    with pytest.raises(FleetProfileError, match=r"unknown fleet profile 'tiny'.*dev"):
        fleet.load_profile("tiny")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nclasses:\n- {name: x, count: 0, arch: amd64, instanceType: t}\n")
    with pytest.raises(FleetProfileError, match=r"bad\.yaml is invalid"):
        fleet.load_profile(str(bad))


def test_tools_cache_is_keyed_by_pinned_versions(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("INFLEET_CACHE_DIR", str(tmp_path))
    assert tools.bin_dir() == tmp_path / "bin" / tools.versions_hash()
    assert tools.versions()["kubernetes"].startswith("v1.")
    with pytest.raises(ToolsMissingError, match="infleet dev tools"):
        tools.locate()
    monkeypatch.delenv("INFLEET_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tools.cache_root() == tmp_path / "xdg" / "infleet"


def test_every_staging_module_is_replaced_with_the_matching_tag() -> None:
    # A staging module left at v0.0.0 breaks the build in a way that is slow to diagnose.
    text = (tools.GOTOOLS / "kube" / "go.mod").read_text()
    minor = tools.versions()["kubernetes"].split(".")[1]
    patch = tools.versions()["kubernetes"].split(".")[2]
    replaced = [line.split() for line in text.splitlines() if "=>" in line]
    assert len(replaced) >= 30
    for parts in replaced:
        left, right_version = parts[0], parts[-1]
        assert left.startswith("k8s.io/")
        assert right_version == f"v0.{minor}.{patch}", parts
