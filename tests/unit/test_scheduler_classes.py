"""Node classes from realistic inventories, and the stability of their names."""

from __future__ import annotations

import random
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.scheduler.classes import NodeClass, derive_classes
from infleet.scheduler.hardware import (
    ARM_FEATURES,
    CPUID_PREFIX,
    X86_FEATURES,
    GpuModel,
    marketed_gb,
    normalize_gpu_product,
)
from infleet.scheduler.inventory import NodeInfo, Resources, Taint, nodes_from_documents

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "inventories"
GIB = 2**30


def load(path: Path) -> list[NodeInfo]:
    return nodes_from_documents(list(yaml.safe_load_all(path.read_text())))


def by_name(classes: list[NodeClass]) -> dict[str, NodeClass]:
    return {c.name: c for c in classes}


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ("A100-SXM4-40GB", GpuModel("a100", 40, None)),
        ("NVIDIA-A100-SXM4-80GB", GpuModel("a100", 80, None)),
        ("NVIDIA-A100-PCIE-40GB", GpuModel("a100", 40, None)),
        ("NVIDIA-H100-80GB-HBM3", GpuModel("h100", 80, None)),
        ("NVIDIA-H100-PCIe", GpuModel("h100", None, None)),
        ("NVIDIA-H100-NVL", GpuModel("h100", None, None)),
        ("NVIDIA-L4", GpuModel("l4", None, None)),
        ("Tesla-T4", GpuModel("t4", None, None)),
        ("Tesla-V100-SXM2-16GB", GpuModel("v100", 16, None)),
        ("NVIDIA-A10G", GpuModel("a10g", None, None)),
        ("NVIDIA-L40S", GpuModel("l40s", None, None)),
        ("NVIDIA GeForce RTX 4090", GpuModel("rtx-4090", None, None)),
        ("NVIDIA-RTX-A6000", GpuModel("rtx-a6000", None, None)),
        ("A100-SXM4-40GB-MIG-1g.5gb", GpuModel("a100", 40, "1g.5gb")),
        ("NVIDIA-GH200-480GB", GpuModel("gh200", 480, None)),
    ],
)
def test_gpu_product_spellings(product: str, expected: GpuModel) -> None:
    assert normalize_gpu_product(product) == expected


@pytest.mark.parametrize(
    ("mib", "gb"),
    [(15360, 16), (23034, 24), (40960, 40), (81559, 80), (81920, 80), (95830, 94),
     (97871, 96), (143771, 141), (46068, 48), (183359, 180)],
)
def test_gpu_memory_rounds_to_the_marketed_size(mib: int, gb: int) -> None:
    assert marketed_gb(mib) == gb


def test_cloud_fleet_table() -> None:
    classes = by_name(derive_classes(load(FIXTURES / "cloud-mixed.yaml")))
    # name: (members, usable, cordoned, NotReady, tainted, free GPUs)
    expected = {
        "nvidia-a100-40gb-p4d-24xlarge": (2, 2, 0, 0, 0, 10),
        "nvidia-h100-80gb-p5-48xlarge": (2, 1, 1, 0, 0, 8),
        "nvidia-l4-24gb-g6-2xlarge": (3, 2, 0, 1, 0, 2),
        "nvidia-t4-16gb-g4dn-xlarge": (2, 2, 0, 0, 0, 2),
        "nvidia-gpu": (1, 1, 0, 0, 0, 2),
        "x86-amx-m7i-4xlarge": (3, 2, 0, 0, 1, 0),
        "x86-avx512vnni-m6i-4xlarge": (2, 2, 0, 0, 0, 0),
        "x86": (1, 1, 0, 0, 0, 0),
        "arm64-sve-c7g-4xlarge": (2, 2, 0, 0, 0, 0),
        "arm64-asimddp": (2, 2, 0, 0, 0, 0),
    }
    assert set(classes) == set(expected)
    for name, (total, usable, cordoned, not_ready, tainted, gpus) in expected.items():
        c = classes[name]
        got = (len(c.nodes), c.usable_nodes, c.unschedulable_nodes, c.not_ready_nodes,
               c.tainted_nodes, c.free.gpus)
        assert got == (total, usable, cordoned, not_ready, tainted, gpus), name

    h100 = classes["nvidia-h100-80gb-p5-48xlarge"]
    assert h100.key.compute == (9, 0)
    assert h100.gpu_memory_bytes == 81559 * 2**20
    assert h100.tolerations == (Taint("nvidia.com/gpu", "present", "NoSchedule"),)
    # The trainer pod holds 6 of the first A100 node's 8 GPUs.
    assert classes["nvidia-a100-40gb-p4d-24xlarge"].free_per_node[0][0].gpus in (2, 8)
    # web-0's 12-CPU init container counts, the Succeeded pod does not.
    amx = classes["x86-amx-m7i-4xlarge"]
    assert amx.free.cpu_millis == 2 * 15890 - 12000
    assert amx.tolerations == ()  # `dedicated=batch` sits on one node only: not tolerated
    # CPU classes ignore the CPU flags of GPU nodes; GPU classes ignore CPU flags entirely.
    assert "ip-10-0-2-21" in h100.nodes
    assert classes["nvidia-gpu"].key.compute is None


def test_affinity_selects_exactly_each_class() -> None:
    nodes = load(FIXTURES / "cloud-mixed.yaml")
    for c in derive_classes(nodes):
        selected = {n.name for n in nodes if c.affinity.matches(n.labels)}
        assert selected == set(c.nodes), c.name
    # A GPU node without GFD labels looks like a CPU node to a selector: pinned out by name.
    x86 = by_name(derive_classes(nodes))["x86"]
    assert any(r.key == "kubernetes.io/hostname" and r.operator == "NotIn"
               for r in x86.affinity.requirements)


def test_fingerprint_ignores_the_instance_type() -> None:
    base = {"kubernetes.io/arch": "amd64", CPUID_PREFIX + "AVX512VNNI": "true",
            CPUID_PREFIX + "AVX512F": "true", CPUID_PREFIX + "AVX2": "true"}
    a = NodeInfo("a", MappingProxyType({**base, "node.kubernetes.io/instance-type": "m6i.large"}))
    b = NodeInfo("b", MappingProxyType({**base, "node.kubernetes.io/instance-type": "m6i.2xl"}))
    ca, cb = derive_classes([a, b])
    assert ca.name != cb.name and ca.fingerprint == cb.fingerprint


def test_nodes_without_discovery_labels_get_arch_classes() -> None:
    nodes = [
        NodeInfo("x", MappingProxyType({"kubernetes.io/arch": "amd64"}), Resources(4000, GIB)),
        NodeInfo("a", MappingProxyType({"kubernetes.io/arch": "arm64"}), Resources(4000, GIB)),
        NodeInfo("g", MappingProxyType({"kubernetes.io/arch": "amd64"}), Resources(4000, GIB, 4)),
        NodeInfo("ga", MappingProxyType({"kubernetes.io/arch": "arm64"}),
                 Resources(4000, GIB, 1)),
    ]
    assert [c.name for c in derive_classes(nodes)] == ["arm64", "nvidia-gpu", "nvidia-gpu-arm64",
                                                        "x86"]


@pytest.mark.parametrize(
    ("arch", "flags", "name"),
    [
        ("amd64", ["AMXINT8", "AMXBF16", "AVX512VNNI", "AVX512F", "AVX2", "AVXVNNI"], "x86-amx"),
        ("amd64", ["AVX512VNNI", "AVX512F", "AVX2"], "x86-avx512vnni"),
        ("amd64", ["AVXVNNI", "AVX2"], "x86-avxvnni"),
        ("amd64", ["AVX512F", "AVX2"], "x86-avx512"),
        ("amd64", ["AVX2"], "x86-avx2"),
        ("amd64", ["AMXINT8", "AVX512F", "AVX2"], "x86-amx-noavx512vnni"),
        ("arm64", ["SVE2", "SVE", "I8MM", "ASIMDDP", "ASIMDHP"], "arm64-sve2"),
        ("arm64", ["SVE", "I8MM", "ASIMDDP", "ASIMDHP", "BF16"], "arm64-sve"),
        ("arm64", ["SVE", "ASIMDDP", "ASIMDHP"], "arm64-sve-noi8mm"),
        ("arm64", ["ASIMDDP", "ASIMDHP"], "arm64-asimddp"),
        ("arm64", ["ASIMDDP"], "arm64-asimddp-noasimdhp"),
        ("arm64", ["ASIMD"], "arm64"),
    ],
)
def test_cpu_tier_names(arch: str, flags: list[str], name: str) -> None:
    labels = {"kubernetes.io/arch": arch, **{CPUID_PREFIX + f: "true" for f in flags}}
    (c,) = derive_classes([NodeInfo("n", MappingProxyType(labels))])
    assert c.name == name


def test_dev_inventory_example() -> None:
    classes = by_name(derive_classes(load(ROOT / "examples" / "inventory-dev.yaml")))
    assert set(classes) == {
        "nvidia-h100-80gb-p5-48xlarge",
        "nvidia-t4-16gb-g4dn-12xlarge",
        "x86-avx512vnni-c6i-8xlarge",
        "x86-avx2-c5a-4xlarge",
        "arm64-sve-c7g-4xlarge",
    }
    h100 = classes["nvidia-h100-80gb-p5-48xlarge"]
    assert h100.free.gpus == 4 and h100.replicas_that_fit(Resources(4000, 16 * GIB, 1)) == 4
    assert classes["x86-avx512vnni-c6i-8xlarge"].not_ready_nodes == 1
    assert classes["arm64-sve-c7g-4xlarge"].unschedulable_nodes == 1


# --- properties --------------------------------------------------------------------------

HARDWARE = [
    {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
     "nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.compute.major": "9",
     "nvidia.com/gpu.compute.minor": "0"},
    {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "A100-SXM4-40GB",
     "nvidia.com/gpu.memory": "40960"},
    {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
     "nvidia.com/gpu.memory": "40960"},
    {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "Tesla-T4"},
    {"kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "g6.xlarge",
     "nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.memory": "23034"},
    {"kubernetes.io/arch": "arm64", "nvidia.com/gpu.product": "NVIDIA-GH200-480GB",
     "nvidia.com/gpu.memory": "97871"},
    {"kubernetes.io/arch": "amd64"},
    {"kubernetes.io/arch": "arm64"},
]
GPU_ALLOC = {0: 8, 1: 8, 2: 8, 3: 1, 4: 1, 5: 1}

noise_key = st.sampled_from(
    ["topology.kubernetes.io/zone", "team", "example.com/pool", "nvidia.com/gfd.timestamp",
     "feature.node.kubernetes.io/kernel-version.full", CPUID_PREFIX + "AES",
     CPUID_PREFIX + "SHA512", CPUID_PREFIX + "FMA3", "nvidia.com/cuda.driver.major"]
)


@st.composite
def inventories(draw: st.DrawFn) -> list[NodeInfo]:
    nodes = []
    for i in range(draw(st.integers(1, 14))):
        hw = draw(st.integers(0, len(HARDWARE) - 1))
        labels = {**HARDWARE[hw], "kubernetes.io/hostname": f"n{i}"}  # every kubelet sets it
        arch = labels["kubernetes.io/arch"]
        flags = X86_FEATURES if arch == "amd64" else ARM_FEATURES
        for f in draw(st.lists(st.sampled_from(flags), max_size=4, unique=True)):
            labels[CPUID_PREFIX + f] = "true"
        if draw(st.booleans()):
            labels["node.kubernetes.io/instance-type"] = draw(st.sampled_from(["m7i.xl", "c7g.xl"]))
        gpus = GPU_ALLOC.get(hw, 0)
        if hw in (6, 7) and draw(st.booleans()):
            gpus = 2  # a GPU node without GFD labels
        nodes.append(NodeInfo(f"n{i}", MappingProxyType(labels), Resources(8000, 32 * GIB, gpus),
                              ready=draw(st.booleans()), unschedulable=draw(st.booleans())))
    return nodes


def _with_noise(node: NodeInfo, noise: dict[str, str]) -> NodeInfo:
    labels = {**noise, **node.labels}  # noise never overrides hardware labels
    return NodeInfo(node.name, MappingProxyType(labels), node.allocatable, node.requested,
                    node.taints, node.unschedulable, node.ready)


@settings(max_examples=150, deadline=None)
@given(inventories(), st.randoms(use_true_random=False),
       st.dictionaries(noise_key, st.sampled_from(["true", "x", "1", "us-east-1a"]), max_size=4))
def test_names_are_stable_under_node_order_and_label_noise(
    nodes: list[NodeInfo], rnd: random.Random, noise: dict[str, str]
) -> None:
    def summary(ns: list[NodeInfo]) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(c.name, c.fingerprint, c.nodes) for c in derive_classes(ns)]

    reference = summary(nodes)
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert summary(shuffled) == reference
    noisy = [_with_noise(n, noise) for n in nodes]
    assert summary(noisy) == reference
    # A class keeps its name when other nodes come and go.
    half = summary(nodes[: len(nodes) // 2 + 1])
    names = {name: fp for name, fp, _ in reference}
    for name, fp, _ in half:
        assert names[name] == fp


@settings(max_examples=150, deadline=None)
@given(inventories())
def test_classes_partition_the_nodes_and_affinity_is_exact(nodes: list[NodeInfo]) -> None:
    classes = derive_classes(nodes)
    members = [n for c in classes for n in c.nodes]
    assert sorted(members) == sorted(n.name for n in nodes)
    assert len({c.name for c in classes}) == len(classes)
    for c in classes:
        assert len(c.name) <= 63
        selected = {n.name for n in nodes if c.affinity.matches(n.labels)}
        assert selected == set(c.nodes), c.name
        assert c.usable_nodes + c.unschedulable_nodes + c.not_ready_nodes + c.tainted_nodes == len(
            c.nodes
        )
