"""What the engine is built for: the target node class's architecture and features.

The build usually runs on a node of the class it builds for, but TVM cross-compiles arm64
engines on x86 hosts, so the target is described on its own and never assumed to be the host.
Features use NFD's CPU flag names in lower case (avx2, avx512f, avx512vnni, amxint8 on x86;
asimd, asimddp, sve, i8mm on arm64). Pure functions, apart from `host_target`.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Arch(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"


# Flags that change which kernels a backend emits; anything else does not enter the key.
RELEVANT_FEATURES = frozenset(
    {
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
        "avxvnni",
        "amxint8",
        "amxbf16",
        "amxtile",
        "asimd",
        "asimddp",
        "asimdhp",
        "fphp",
        "sve",
        "sve2",
        "i8mm",
        "bf16",
    }
)

# /proc/cpuinfo spells some flags differently from NFD.
_CPUINFO_ALIASES = {
    "avx512_vnni": "avx512vnni",
    "avx_vnni": "avxvnni",
    "amx_int8": "amxint8",
    "amx_bf16": "amxbf16",
    "amx_tile": "amxtile",
    "avx512_bf16": "avx512bf16",
}


@dataclass(frozen=True)
class HardwareTarget:
    node_class: str
    arch: Arch
    features: frozenset[str]
    cpu: str | None = None
    """LLVM CPU name when the class names one (neoverse-n1, x86-64-v3); None = generic."""
    gpu: str | None = None
    """GPU product for GPU classes (fingerprinted; TensorRT plans are GPU-specific)."""
    compute_capability: tuple[int, int] | None = None
    """CUDA compute capability of GPU classes (FP8 needs >= 8.9, INT8/FP16 >= 7.0)."""

    def fingerprint(self) -> str:
        """Stable hash of what the engine depends on: arch, cpu, relevant features, GPU."""
        feats = ",".join(sorted(self.features & RELEVANT_FEATURES))
        cc = ".".join(map(str, self.compute_capability or ()))
        text = f"{self.arch}|{self.cpu or ''}|{feats}|{self.gpu or ''}|{cc}"
        return f"{self.arch}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def is_host(self) -> bool:
        return self.arch == host_arch()


def host_arch() -> Arch:
    machine = platform.machine().lower()
    return Arch.AARCH64 if machine in ("aarch64", "arm64") else Arch.X86_64


def host_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(_CPUINFO_ALIASES.get(f, f) for f in value.split())
    return frozenset()


_ARM_CPUS = {
    "neoverse-n1": {"asimd", "asimddp", "fphp", "asimdhp"},
    "neoverse-n2": {"asimd", "asimddp", "fphp", "asimdhp", "sve", "sve2", "i8mm", "bf16"},
    "neoverse-v1": {"asimd", "asimddp", "fphp", "asimdhp", "sve", "i8mm", "bf16"},
    "neoverse-v2": {"asimd", "asimddp", "fphp", "asimdhp", "sve", "sve2", "i8mm", "bf16"},
    "cortex-a72": {"asimd"},
}


def target_for_class(
    node_class: str,
    arch: Arch | None = None,
    features: frozenset[str] | None = None,
    compute_capability: tuple[int, int] | None = None,
) -> HardwareTarget:
    """Derive the target from a class name (as the scheduler names classes) plus overrides.

    A class on the host's architecture without explicit features takes the host's features:
    the build Job runs on a node of its class. A foreign class (arm64 from an x86 host) takes
    the features its name implies, for example ``arm64-neoverse-n1`` -> dotprod and fp16.
    """
    tokens = node_class.lower().split("-")
    if arch is None:
        arch = Arch.AARCH64 if tokens[0] in ("arm64", "aarch64", "arm") else Arch.X86_64
    gpu = node_class if tokens[0] == "nvidia" else None
    cpu = next((c for c in _ARM_CPUS if c in node_class.lower()), None)
    if features is None:
        if arch == host_arch():
            features = host_features()
        elif cpu is not None:
            features = frozenset(_ARM_CPUS[cpu])
        else:
            implied = {"asimd"} if arch == Arch.AARCH64 else {"avx2", "fma"}
            features = frozenset(implied | {t for t in tokens if t in RELEVANT_FEATURES})
    return HardwareTarget(
        node_class,
        arch,
        frozenset(features),
        cpu=cpu,
        gpu=gpu,
        compute_capability=compute_capability,
    )


def cpu_limit_threads(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Threads worth using: the container's CPU limit (cgroup v2 or v1), else the CPU set.

    ``os.cpu_count()`` reports the node's cores, not the pod's quota: an ORT session with 64
    threads in a 2-CPU pod is throttled into long stalls, which shows up as p99 latency.
    """
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
