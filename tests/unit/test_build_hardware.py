"""Targets from node classes, fingerprints, the container CPU limit, TVM target strings."""

from __future__ import annotations

from pathlib import Path

from infleet.runtime.builders.tvm import elf_machine, target_spec
from infleet.runtime.hardware import Arch, cpu_limit_threads, host_arch, target_for_class


def test_arm_class_gets_its_cpu_features() -> None:
    t = target_for_class("arm64-neoverse-n1", features=None)
    if host_arch() != Arch.AARCH64:
        assert t.arch == Arch.AARCH64 and t.cpu == "neoverse-n1"
        assert "asimddp" in t.features and "sve" not in t.features


def test_explicit_features_and_fingerprint() -> None:
    a = target_for_class("x86-avx512", Arch.X86_64, frozenset({"avx2", "avx512f"}))
    b = target_for_class("x86-avx512", Arch.X86_64, frozenset({"avx2", "avx512f", "sse2"}))
    c = target_for_class("x86-avx512", Arch.X86_64, frozenset({"avx2"}))
    assert a.fingerprint() == b.fingerprint()  # irrelevant flags do not split the cache
    assert a.fingerprint() != c.fingerprint()
    assert a.fingerprint().startswith("x86_64-")


def test_gpu_class_fingerprint_includes_compute_capability() -> None:
    h100 = target_for_class("nvidia-h100-80gb", Arch.X86_64, frozenset(), (9, 0))
    a10 = target_for_class("nvidia-h100-80gb", Arch.X86_64, frozenset(), (8, 6))
    assert h100.gpu == "nvidia-h100-80gb" and h100.fingerprint() != a10.fingerprint()


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_limit_threads(tmp_path) == min(2, len(__import__("os").sched_getaffinity(0)))


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    import os

    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_limit_threads(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_limit_threads(tmp_path) == 1


def test_tvm_target_for_arm64() -> None:
    t = target_for_class(
        "arm64-neoverse-n1", Arch.AARCH64, frozenset({"asimd", "asimddp", "asimdhp"})
    )
    spec = target_spec(t, threads=4)
    assert spec["mtriple"] == "aarch64-linux-gnu"
    assert spec["mattr"] == ["+neon", "+dotprod", "+fullfp16"]
    sve = target_for_class("arm64-graviton3", Arch.AARCH64, frozenset({"asimd", "sve", "i8mm"}))
    assert "+sve" in target_spec(sve, 4)["mattr"] and target_spec(sve, 4)["mcpu"] == "generic"


def test_tvm_target_for_x86() -> None:
    t = target_for_class(
        "x86-avx512", Arch.X86_64, frozenset({"avx2", "fma", "avx512f", "avx512vnni"})
    )
    spec = target_spec(t, threads=2)
    assert spec["mcpu"] == "x86-64-v4" and "+avx512vnni" in spec["mattr"]
    plain = target_for_class("x86", Arch.X86_64, frozenset({"avx2", "fma"}))
    assert target_spec(plain, 2)["mcpu"] == "x86-64-v3"


def test_elf_machine(tmp_path: Path) -> None:
    import sys

    assert elf_machine(Path(sys.executable).resolve()) in (62, 183)
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf at all, no")
    assert elf_machine(junk) is None
