"""Class derivation on the local cluster's fleet profiles (infleet.devcluster's data files)."""

from __future__ import annotations

import pytest

from infleet.api import Backend, parse_spec
from infleet.devcluster import fleet
from infleet.scheduler.classes import derive_classes
from infleet.scheduler.inventory import nodes_from_objects
from infleet.scheduler.policy import decide

# A fixed "this machine" for the profiles' local class, so the test does not depend on the CPU.
HOST = fleet.HostFacts(arch="amd64", cpuid=("AVX2",), cpus=2, memory_bytes=8 * 2**30)
SPEC = parse_spec({"model": {"uri": "file:///m.onnx"}, "slo": {"latencyP99Ms": 25},
                   "accuracy": {"maxDeviation": 0.01}})
EMULATED_SPEC = parse_spec({"model": {"uri": "file:///m.onnx"}, "slo": {"latencyP99Ms": 25},
                            "accuracy": {"maxDeviation": 0.01}, "classes": {"allow": ["arm64"]}})


@pytest.mark.parametrize("profile", fleet.available_profiles())
def test_each_fleet_class_is_one_node_class(profile: str) -> None:
    objs = fleet.render_nodes(fleet.load_profile(profile), HOST)
    nodes = nodes_from_objects(objs)
    classes = derive_classes(nodes)
    fleet_class = {n.name: n.labels[fleet.FLEET_CLASS_LABEL] for n in nodes}
    by_fleet = {}
    for c in classes:
        owners = {fleet_class[n] for n in c.nodes}
        assert len(owners) == 1, f"{c.name} mixes fleet classes {owners}"
        by_fleet[owners.pop()] = c
    assert len(by_fleet) == len(classes) == len(set(fleet_class.values()))
    for fleet_name, c in by_fleet.items():
        # An emulated class serves only deployments that name it (its allow-list entry).
        d = decide(c, EMULATED_SPEC if c.key.emulated else SPEC)
        assert not d.excluded, (c.name, d.reasons)
        if fleet_name.startswith("nvidia-"):
            model = fleet_name.removeprefix("nvidia-")
            assert c.name.startswith(f"nvidia-{model}-") and d.backend == Backend.TENSORRT
        elif fleet_name.startswith("arm64"):
            assert c.name.startswith("arm64-") and d.backend == Backend.TVM
        else:
            assert c.name.startswith("x86") and d.backend == Backend.ONNXRUNTIME
        assert {n.name for n in nodes if c.affinity.matches(n.labels)} == set(c.nodes)


def test_dev_profile_names() -> None:
    nodes = nodes_from_objects(fleet.render_nodes(fleet.load_profile("dev"), HOST))
    names = {c.name for c in derive_classes(nodes)}
    assert {
        "nvidia-h100-80gb-p5-48xlarge",
        "nvidia-t4-16gb-g4dn-12xlarge",
        "x86-avx512vnni-c6i-8xlarge",
        "x86-avx2-c5a-4xlarge",
        "x86-avx2-infleet-local",
    } <= names
    arm = sorted(n for n in names if n.startswith("arm64"))
    assert arm == ["arm64-asimddp-infleet-qemu", "arm64-sve-c7g-4xlarge"]


def test_the_emulated_class_waits_to_be_named_and_never_gets_onnxruntime() -> None:
    nodes = nodes_from_objects(fleet.render_nodes(fleet.load_profile("dev"), HOST))
    (emulated,) = [c for c in derive_classes(nodes) if c.key.emulated]
    unnamed = decide(emulated, SPEC)
    assert unnamed.excluded and "spec.classes.allow selects it" in unnamed.reason
    named = decide(emulated, EMULATED_SPEC)
    assert named.backend == Backend.TVM and "qemu-user" in named.reason
    assert "ONNX Runtime fallback is not tried" in named.reason
    ort = parse_spec({"model": {"uri": "file:///m.onnx"}, "slo": {"latencyP99Ms": 25},
                      "classes": {"allow": [emulated.name], "overrides": [
                          {"class": emulated.name, "backend": "onnxruntime"}]}})
    refused = decide(emulated, ort)
    assert refused.excluded and "crashes under qemu-user" in refused.reason
    assert "real arm64 hardware" in refused.reason
