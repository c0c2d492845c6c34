"""What the engine is built for: the build target derived from the scheduler's hardware key.

There is one hardware model: :class:`infleet.scheduler.hardware.HardwareKey`. The operator
passes a class's key to the build Job (``infleet build --hardware``, its ``engine_fields()``);
a person running ``infleet build`` by hand gets the key of the host (:func:`host_key`), read
the way Node Feature Discovery and GPU Feature Discovery would label it. The engine key's
hardware fingerprint is the key's, so the operator can compute it before any Job runs.

:func:`target_for` turns a key into what the compilers need: arch, CPU feature names (lower
case, as the builders and LLVM spell them), the LLVM ``-mcpu`` of an arm64 tier, the GPU model
and compute capability. TVM cross-compiles arm64 engines on x86 hosts, so the target is never
assumed to be the host. Pure functions, apart from `host_key` and `cpu_limit_threads`.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from infleet.runtime.errors import UnsupportedHardware
from infleet.scheduler.hardware import (
    Accelerator,
    HardwareKey,
    cpu_key,
    gpu_key,
    nfd_flag,
    normalize_arch,
    tier_implies,
)


class Arch(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"


_ARCH = {"amd64": Arch.X86_64, "arm64": Arch.AARCH64}

# NFD flag of the key -> the target features it turns on. AVX2 stands for x86-64-v3 (AVX2, FMA,
# F16C) and AVX512F for x86-64-v4 (F, BW, DQ, CD, VL): every shipping CPU with the headline flag
# has the rest. NEON (asimd) is the arm64 baseline and always on.
_TARGET_FEATURES: dict[str, frozenset[str]] = {
    "AVX2": frozenset({"avx2", "fma", "f16c"}),
    "AVX512F": frozenset({"avx512f", "avx512bw", "avx512dq", "avx512cd", "avx512vl"}),
    "AVX512VNNI": frozenset({"avx512vnni"}),
    "AVXVNNI": frozenset({"avxvnni"}),
    "AMXINT8": frozenset({"amxint8", "amxtile"}),
    "ASIMDDP": frozenset({"asimddp"}),
    "ASIMDHP": frozenset({"asimdhp"}),
    "SVE": frozenset({"sve"}),
    "SVE2": frozenset({"sve2"}),
    "I8MM": frozenset({"i8mm"}),
}
_BASELINE = {Arch.X86_64: frozenset[str](), Arch.AARCH64: frozenset({"asimd"})}

# LLVM -mcpu per arm64 tier: the Neoverse core that defines the tier (Graviton2/Ampere Altra,
# Graviton3, Graviton4-class N2). Used only when the node has every flag its tier implies:
# -mcpu turns the core's features on, and a node without one of them (``arm64-sve-noi8mm``)
# must not get it, so such keys compile for generic with their own flags.
ARM_TIER_CPU = {"asimddp": "neoverse-n1", "sve": "neoverse-v1", "sve2": "neoverse-n2"}
# x86-64 micro-architecture levels by headline flag (the flags the level needs).
_X86_LEVELS = (("AVX512F", "x86-64-v4"), ("AVX2", "x86-64-v3"))


@dataclass(frozen=True)
class HardwareTarget:
    """What the builders compile for, derived from one :class:`HardwareKey`."""

    key: HardwareKey
    arch: Arch
    features: frozenset[str]
    """Target CPU features in lower case (avx2, avx512vnni, asimddp, sve...)."""
    cpu: str | None = None
    """LLVM -mcpu (neoverse-n1, x86-64-v3); None = generic for the arch."""
    gpu: str | None = None
    """GPU model of GPU keys (``h100``, ``t4``); None for CPU targets."""
    compute_capability: tuple[int, int] | None = None
    """CUDA compute capability of GPU targets (FP8 needs >= 8.9, INT8/FP16 >= 7.0)."""

    def is_host(self) -> bool:
        return self.arch == host_arch()

    def describe(self) -> str:
        """One line for progress output."""
        if self.gpu is not None:
            cc = ".".join(map(str, self.compute_capability)) if self.compute_capability else "?"
            return f"nvidia {self.gpu} (compute {cc}, {self.arch})"
        tier = self.key.cpu_tier or "base"
        return (
            f"{self.arch} tier {tier} [{','.join(sorted(self.features)) or 'no extra flags'}], "
            f"mcpu {self.cpu or 'generic'}"
        )


def target_for(key: HardwareKey) -> HardwareTarget:
    """The build target of a class key (pure)."""
    arch = _ARCH.get(key.arch)
    if arch is None:
        raise UnsupportedHardware(
            f"no builder targets arch {key.arch!r} (amd64 and arm64 are supported)"
        )
    if key.accelerator is Accelerator.NVIDIA:
        return HardwareTarget(
            key, arch, frozenset(), gpu=key.gpu_model, compute_capability=key.compute
        )
    features = set(_BASELINE[arch])
    for flag in key.cpu_features:
        features |= _TARGET_FEATURES.get(flag, frozenset())
    cpu: str | None = None
    if arch is Arch.AARCH64:
        complete = tier_implies(key) <= set(key.cpu_features)
        cpu = ARM_TIER_CPU.get(key.cpu_tier) if complete else None
    else:
        cpu = next((level for flag, level in _X86_LEVELS if flag in key.cpu_features), None)
    return HardwareTarget(key, arch, frozenset(features), cpu=cpu)


def host_arch() -> Arch:
    machine = platform.machine().lower()
    return Arch.AARCH64 if machine in ("aarch64", "arm64") else Arch.X86_64


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The host's CPU flags as NFD names (flags the shared table does not know are left out)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return nfd_flags(value.split())
    return frozenset()


def nfd_flags(flags: Iterable[str]) -> frozenset[str]:
    """CPU flags spelt as /proc/cpuinfo or NFD, as NFD names; unknown ones are left out (they
    change no engine)."""
    return frozenset(n for f in flags if (n := nfd_flag(f)) is not None)


@dataclass(frozen=True)
class HostGpu:
    product: str
    memory_mib: int | None
    compute: tuple[int, int] | None


def probe_gpu(timeout_s: float = 10.0) -> HostGpu | None:
    """The first NVIDIA GPU the driver reports (``nvidia-smi``), None without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_gpu_query(out)


def parse_gpu_query(text: str) -> HostGpu | None:
    """The first line of ``nvidia-smi --query-gpu=name,memory.total,compute_cap`` (CSV)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    name, _, rest = lines[0].partition(",")
    memory, _, cc = rest.partition(",")
    major, _, minor = cc.strip().partition(".")
    return HostGpu(
        product=name.strip(),
        memory_mib=int(memory.strip()) if memory.strip().isdigit() else None,
        compute=(int(major), int(minor or 0)) if major.isdigit() and minor.isdigit() else None,
    )


def host_key(
    arch: str | None = None,
    cpu_features: Iterable[str] | None = None,
    compute_capability: tuple[int, int] | None = None,
    *,
    cpuinfo: Path = Path("/proc/cpuinfo"),
    gpu: Callable[[], HostGpu | None] = probe_gpu,
) -> HardwareKey:
    """The key of this host, as the scheduler would derive it from the labels NFD and GFD give
    it, with the optional overrides of a person building by hand.

    ``compute_capability`` given, or no CPU override and a GPU the driver shows, make an NVIDIA
    key (model and memory from the driver; ``gpu`` when there is none). Otherwise a CPU key: the
    host's flags, or ``cpu_features`` (cpuinfo or NFD spellings) when given, on ``arch``
    (default: the host's; another arch without features gets its generic target).
    """
    key_arch = normalize_arch(arch or platform.machine())
    on_host = _ARCH.get(key_arch) == host_arch()
    found = gpu() if on_host and (cpu_features is None or compute_capability) else None
    if found is not None or compute_capability is not None:
        return gpu_key(
            key_arch,
            found.product if found else None,
            found.memory_mib if found else None,
            compute_capability or (found.compute if found else None),
        )
    if cpu_features is not None:
        flags = nfd_flags(cpu_features)
    else:
        flags = host_cpu_flags(cpuinfo) if on_host else frozenset()
    return cpu_key(key_arch, flags)


def cpu_limit_threads(
    cgroup_root: Path = Path("/sys/fs/cgroup"), available: int | None = None
) -> int:
    """Threads worth using: the container's CPU limit (cgroup v2 or v1), capped by the CPUs
    this process may run on (``available``, default its affinity set).

    ``os.cpu_count()`` reports the node's cores, not the pod's quota: an ORT session with 64
    threads in a 2-CPU pod is throttled into long stalls, which shows up as p99 latency.
    """
    if available is None:
        try:
            available = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            available = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        return max(1, min(available, math.ceil(quota)))
    return max(1, available)


def _cgroup_quota(root: Path) -> float | None:
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            parts = v2.read_text().split()
            if parts[0] == "max":
                return None
            return int(parts[0]) / (int(parts[1]) if len(parts) > 1 else 100_000)
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.is_file():
            quota = int(v1.read_text())
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None
