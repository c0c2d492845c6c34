"""One hardware model: node labels -> scheduler class -> build target -> engine key, the host's
key for builds by hand, the container CPU limit, TVM target dicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from infleet.api import Backend
from infleet.runtime.build import BuildRequest
from infleet.runtime.builders.tvm import elf_machine, target_spec
from infleet.runtime.hardware import (
    Arch,
    HostGpu,
    cpu_limit_threads,
    host_arch,
    host_key,
    parse_gpu_query,
    target_for,
)
from infleet.runtime.onnxmodel import ModelInfo, TensorInfo
from infleet.scheduler import NodeInfo, Resources, derive_classes
from infleet.scheduler.classes import NodeClass
from infleet.scheduler.errors import HardwareError
from infleet.scheduler.hardware import Accelerator, HardwareKey

NFD = "feature.node.kubernetes.io/cpu-cpuid."


def _node(name: str, labels: dict[str, str], gpus: int = 0) -> NodeInfo:
    return NodeInfo(
        name=name,
        labels={"kubernetes.io/hostname": name, **labels},
        allocatable=Resources(cpu_millis=8000, memory_bytes=32 << 30, gpus=gpus),
    )


def _classes(*nodes: NodeInfo) -> dict[str, NodeClass]:
    return {c.name: c for c in derive_classes(nodes)}


def _from_job_args(c: NodeClass) -> HardwareKey:
    """What the build Job receives: the class's engine fields as a JSON argument."""
    return HardwareKey.from_engine_fields(json.loads(json.dumps(c.key.engine_fields())))


def _request(key: HardwareKey, node_class: str) -> BuildRequest:
    return BuildRequest(
        model_uri="file:///m.onnx",
        hardware=key,
        store=Path("/store"),
        backends=(Backend.ONNXRUNTIME,),
        node_class=node_class,
    )


INFO = ModelInfo(
    path=Path("m.onnx"),
    inputs=(TensorInfo("x", __import__("numpy").dtype("float32"), ("batch", 4)),),
    outputs=(),
    opset=17,
    op_types=frozenset(),
    int_input_bounds={},
)


def test_classes_differing_only_in_instance_type_share_the_engine_key() -> None:
    labels = {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true", NFD + "AVX512F": "true"}
    classes = _classes(
        _node("a", {**labels, "node.kubernetes.io/instance-type": "m5.xlarge"}),
        _node("b", {**labels, "node.kubernetes.io/instance-type": "c5.2xlarge"}),
    )
    assert sorted(classes) == ["x86-avx512-c5-2xlarge", "x86-avx512-m5-xlarge"]
    m5, c5 = classes["x86-avx512-m5-xlarge"], classes["x86-avx512-c5-2xlarge"]
    keys = [_from_job_args(m5), _from_job_args(c5)]
    assert keys[0] == keys[1]  # the Job's key carries no instance type
    assert keys[0].fingerprint() == m5.fingerprint == c5.fingerprint
    targets = [target_for(k) for k in keys]
    assert targets[0] == targets[1] and targets[0].cpu == "x86-64-v4"
    # The build request's digest (the store's requests/ cache) ignores the class name too.
    versions = {Backend.ONNXRUNTIME: "1.32.0"}
    digests = {
        _request(k, c.name).digest("a" * 64, INFO, versions, None)
        for k, c in zip(keys, (m5, c5), strict=True)
    }
    assert len(digests) == 1
    # ... but not the backend library's version: a new library builds anew.
    newer = _request(keys[0], m5.name).digest("a" * 64, INFO, {Backend.ONNXRUNTIME: "1.33"}, None)
    assert newer not in digests


def test_gpu_classes_differing_only_in_instance_type_share_a_fingerprint() -> None:
    gfd = {
        "kubernetes.io/arch": "amd64",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0",
    }
    classes = _classes(
        _node("g1", {**gfd, "node.kubernetes.io/instance-type": "p5.48xlarge"}, gpus=8),
        _node("g2", {**gfd, "node.kubernetes.io/instance-type": "a3-highgpu-8g"}, gpus=8),
    )
    assert len(classes) == 2 and len({c.fingerprint for c in classes.values()}) == 1
    (target,) = {target_for(_from_job_args(c)) for c in classes.values()}
    assert target.gpu == "h100" and target.compute_capability == (9, 0)
    assert target.arch == Arch.X86_64 and target.features == frozenset()


def test_arm64_sve_class_built_from_any_host_gets_the_features_its_tier_implies() -> None:
    # Graviton3-like labels; this test runs on x86, and nothing below reads the host.
    labels = {"kubernetes.io/arch": "arm64"} | {
        NFD + f: "true" for f in ("SVE", "I8MM", "ASIMDDP", "ASIMDHP", "ASIMD")
    }
    (cls,) = _classes(_node("g3", labels)).values()
    assert cls.name == "arm64-sve"
    target = target_for(_from_job_args(cls))
    assert target.arch == Arch.AARCH64 and not target.key.is_gpu
    assert target.features == {"asimd", "asimddp", "asimdhp", "sve", "i8mm"}
    assert target.cpu == "neoverse-v1"
    spec = target_spec(target, threads=4)
    assert spec["mtriple"] == "aarch64-linux-gnu" and spec["mcpu"] == "neoverse-v1"
    assert spec["mattr"] == ["+neon", "+dotprod", "+fullfp16", "+sve", "+i8mm"]


@pytest.mark.parametrize(
    ("flags", "name", "mcpu", "mattr"),
    [
        (
            ("ASIMDDP", "ASIMDHP"),
            "arm64-asimddp",
            "neoverse-n1",
            ["+neon", "+dotprod", "+fullfp16"],
        ),
        (
            ("SVE2", "SVE", "I8MM", "ASIMDDP", "ASIMDHP"),
            "arm64-sve2",
            "neoverse-n2",
            ["+neon", "+dotprod", "+fullfp16", "+sve", "+sve2", "+i8mm"],
        ),
        # A node without a flag its tier implies: -mcpu neoverse-v1 would turn I8MM on.
        (
            ("SVE", "ASIMDDP", "ASIMDHP"),
            "arm64-sve-noi8mm",
            "generic",
            ["+neon", "+dotprod", "+fullfp16", "+sve"],
        ),
        ((), "arm64", "generic", ["+neon"]),
    ],
)
def test_arm64_tiers_map_to_llvm_cpus(
    flags: tuple[str, ...], name: str, mcpu: str, mattr: list[str]
) -> None:
    labels = {"kubernetes.io/arch": "arm64"} | {NFD + f: "true" for f in flags}
    (cls,) = _classes(_node("n", labels)).values()
    assert cls.name == name
    spec = target_spec(target_for(_from_job_args(cls)), threads=2)
    assert (spec["mcpu"], spec["mattr"]) == (mcpu, mattr)


def test_x86_tiers_map_to_levels_and_vnni() -> None:
    amx = {"kubernetes.io/arch": "amd64"} | {
        NFD + f: "true" for f in ("AMXINT8", "AVX512VNNI", "AVX512F", "AVX2")
    }
    (cls,) = _classes(_node("spr", amx)).values()
    target = target_for(_from_job_args(cls))
    assert cls.name == "x86-amx" and {"amxint8", "avx512vnni", "avx512f"} <= target.features
    spec = target_spec(target, threads=2)
    assert spec["mcpu"] == "x86-64-v4" and "+avx512vnni" in spec["mattr"]
    (avx2,) = _classes(_node("old", {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true"})).values()
    spec = target_spec(target_for(_from_job_args(avx2)), threads=2)
    assert spec["mcpu"] == "x86-64-v3" and spec["mattr"] == ["+avx2", "+fma", "+f16c"]


def test_engine_fields_round_trip_for_every_kind_of_class() -> None:
    nodes = [
        _node("x", {"kubernetes.io/arch": "amd64", NFD + "AVX2": "true"}),
        _node("a", {"kubernetes.io/arch": "arm64", NFD + "ASIMDDP": "true"}),
        _node("t", {"nvidia.com/gpu.product": "Tesla-T4"}, gpus=1),
        _node("m", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}, gpus=1),
        _node("bare", {"kubernetes.io/arch": "amd64"}),
    ]
    for cls in derive_classes(nodes):
        assert _from_job_args(cls) == cls.key  # none of these has an instance type


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"accelerator": "cpu", "arch": "amd64", "colour": "blue"}, "unknown field"),
        ({"arch": "amd64"}, "accelerator must be a string .required"),
        ({"accelerator": "tpu", "arch": "amd64"}, "accelerator must be one of"),
        ({"accelerator": "cpu", "arch": "amd64", "cpu_tier": "sve"}, "not a tier of amd64"),
        (
            {"accelerator": "cpu", "arch": "amd64", "cpu_tier": "avx2", "cpu_features": ["SVE"]},
            "not flags of the avx2 tier",
        ),
        (
            {"accelerator": "cpu", "arch": "amd64", "cpu_tier": "avx512", "cpu_features": ["AVX2"]},
            "put an amd64 node in tier avx2",
        ),
        ({"accelerator": "nvidia", "arch": "amd64"}, "needs gpu_model"),
        ({"accelerator": "nvidia", "arch": "amd64", "gpu_model": "t4", "compute": [7]}, "compute"),
        ({"accelerator": "cpu", "arch": "amd64", "gpu_model": "t4"}, "a CPU key has no"),
    ],
)
def test_bad_engine_fields_are_refused_by_name(fields: dict[str, object], message: str) -> None:
    with pytest.raises(HardwareError, match=message):
        HardwareKey.from_engine_fields(fields)


# /proc/cpuinfo as each arch writes it: (the kernel's flags line, the tier and the NFD flags)
CPUINFO = {
    Arch.X86_64: (
        "amd64",
        "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 sha_ni\n",
        "avx512vnni",
        ("AVX512VNNI", "AVX512F", "AVX2"),
    ),
    Arch.AARCH64: (
        "arm64",
        "Features\t: fp asimd evtstrm aes asimddp asimdhp sve i8mm bf16\n",
        "sve",
        ("SVE", "I8MM", "ASIMDDP", "ASIMDHP"),
    ),
}


def _no_gpu() -> None:
    return None


def test_host_key_reads_cpuinfo_through_the_shared_table(tmp_path: Path) -> None:
    arch, text, tier, flags = CPUINFO[host_arch()]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + text)
    # cpuinfo spellings (avx512_vnni) become NFD names (AVX512VNNI): the scheduler's tier
    key = host_key(cpuinfo=cpuinfo, gpu=_no_gpu)
    assert (key.arch, key.cpu_tier, key.cpu_features) == (arch, tier, flags)


def test_host_key_overrides(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO[host_arch()][1])
    mixed = host_key("aarch64", ["asimddp", "ASIMDHP", "sve", "i8mm", "frob"], gpu=_no_gpu)
    assert (mixed.arch, mixed.cpu_tier) == ("arm64", "sve")
    assert mixed.cpu_features == ("SVE", "I8MM", "ASIMDDP", "ASIMDHP")
    foreign = "arm64" if host_arch() == Arch.X86_64 else "amd64"
    generic = host_key(foreign, cpuinfo=cpuinfo, gpu=_no_gpu)
    assert (generic.arch, generic.cpu_tier) == (foreign, "")  # never the host's flags
    gpu = host_key(compute_capability=(8, 9), cpuinfo=cpuinfo, gpu=_no_gpu)
    assert gpu.accelerator is Accelerator.NVIDIA and gpu.compute == (8, 9)
    assert gpu.gpu_model == "gpu"  # no driver to name it
    # CPU flags given by hand on a GPU host: a CPU key (the person asked for one)
    seen = HostGpu("NVIDIA L4", 23034, (8, 9))
    assert not host_key(cpu_features=["avx2"], gpu=lambda: seen).is_gpu


def test_host_key_of_a_gpu_host_is_the_key_gfd_labels_give() -> None:
    line = "NVIDIA H100 80GB HBM3, 81559, 9.0\n"
    seen = parse_gpu_query(line)
    assert seen == HostGpu("NVIDIA H100 80GB HBM3", 81559, (9, 0))
    key = host_key("amd64", gpu=lambda: seen)
    gfd = {
        "kubernetes.io/arch": "amd64",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0",
    }
    (cls,) = derive_classes([_node("g", gfd, gpus=8)])
    assert key == cls.key and key.fingerprint() == cls.fingerprint
    assert parse_gpu_query("") is None
    assert parse_gpu_query("Tesla T4, [N/A], [N/A]") == HostGpu("Tesla T4", None, None)


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_limit_threads(tmp_path, available=8) == 2  # 1.5 CPUs round up
    assert cpu_limit_threads(tmp_path, available=1) == 1  # never above the CPU set


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_limit_threads(tmp_path, available=6) == 6


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_limit_threads(tmp_path, available=4) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert cpu_limit_threads(tmp_path, available=4) == 4


def test_no_cgroup_files_means_the_cpu_set(tmp_path: Path) -> None:
    assert cpu_limit_threads(tmp_path, available=3) == 3


def test_elf_machine(tmp_path: Path) -> None:
    assert elf_machine(Path(sys.executable).resolve()) in (62, 183)
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf at all, no")
    assert elf_machine(junk) is None
