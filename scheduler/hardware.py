"""What a node's labels say about its hardware, reduced to what matters for an engine.

The result is a :class:`HardwareKey`: nodes with equal keys form one node class. Its name is a
pure function of the key (never of the other nodes), so a class keeps its name when nodes
come and go, and the name is injective: two different keys never share a name.

Reduction rules, and why:

* GPU nodes (GPU Feature Discovery labels, or allocatable ``nvidia.com/gpu``): GPU model,
  memory (rounded to the marketed size), compute capability, MIG profile, arch. The node's
  CPU features are ignored: the engine runs on the GPU. The GPU count is *not* part of the
  key: a replica uses one GPU whichever node size it lands on, and free capacity is counted
  node by node, so 4- and 8-GPU nodes of one model are one class.
* CPU nodes: arch plus the Node Feature Discovery flags that change the backend, the
  precision ladder or the compile target (``X86_FEATURES``, ``ARM_FEATURES``). The class is
  the best tier the node reaches (``x86-amx``, ``arm64-asimddp``...); flags the tier implies on
  shipping CPUs but the node lacks add a ``-no<flag>`` suffix (``arm64-sve-noi8mm``), flags
  beyond the tier are ignored (the engine is built for the tier's flags).
* ``node.kubernetes.io/instance-type`` is appended when present, as the issue asks: it keys
  cloud prices, and it separates CPU generations that NFD flags alone do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from infleet.scheduler.errors import HardwareError
from infleet.scheduler.inventory import NodeInfo

ARCH_LABEL = "kubernetes.io/arch"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
GPU_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
CPUID_PREFIX = "feature.node.kubernetes.io/cpu-cpuid."
# Set by infleet's dev fleet on its kwok nodes: hardware that exists on paper only. An engine
# "built" there is no engine, so simulated nodes never share a class (or an engine) with real
# nodes of the same labels.
SIMULATED_LABEL = "dev.infleet.dev/simulated"
# Set by infleet's dev fleet on nodes whose pods run for real but under an emulator (qemu-user
# on an x86 host): real processes, real answers, the emulator's speed. Their engines are the
# hardware's (the fingerprint leaves the flag out, so a real node of the same labels shares
# them); their speed is not, so they never share a class with real nodes either, and the
# planner takes their capacity from nominal figures (inventory.NOMINAL_PROFILE_ANNOTATION).
EMULATED_LABEL = "dev.infleet.dev/emulated"

# Flags that matter, most significant first (the order of name suffixes).
X86_FEATURES = ("AMXINT8", "AVX512VNNI", "AVXVNNI", "AVX512F", "AVX2")
ARM_FEATURES = ("SVE2", "SVE", "I8MM", "ASIMDDP", "ASIMDHP")

# (tier, headline flag, flags that tier implies on shipping server CPUs). Sapphire Rapids and
# later have all of AMX's set; Ice Lake and Zen 4 the VNNI set; Graviton3 the SVE set;
# Graviton2 and Ampere Altra (Neoverse N1) the ASIMDDP set.
X86_TIERS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("amx", "AMXINT8", frozenset({"AMXINT8", "AVX512VNNI", "AVX512F", "AVX2"})),
    ("avx512vnni", "AVX512VNNI", frozenset({"AVX512VNNI", "AVX512F", "AVX2"})),
    ("avxvnni", "AVXVNNI", frozenset({"AVXVNNI", "AVX2"})),
    ("avx512", "AVX512F", frozenset({"AVX512F", "AVX2"})),
    ("avx2", "AVX2", frozenset({"AVX2"})),
)
ARM_TIERS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("sve2", "SVE2", frozenset({"SVE2", "SVE", "I8MM", "ASIMDDP", "ASIMDHP"})),
    ("sve", "SVE", frozenset({"SVE", "I8MM", "ASIMDDP", "ASIMDHP"})),
    ("asimddp", "ASIMDDP", frozenset({"ASIMDDP", "ASIMDHP"})),
)

# /proc/cpuinfo flag -> Node Feature Discovery cpuid name, for the flags infleet looks at. The one
# table for every place that reads a machine instead of its labels: the dev cluster's local node
# (it labels itself as NFD would) and `infleet build` on a host without --hardware.
CPUINFO_TO_NFD = {
    "avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "avx512f": "AVX512F", "avx512bw": "AVX512BW",
    "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16", "avx_vnni": "AVXVNNI",
    "amx_int8": "AMXINT8", "amx_bf16": "AMXBF16", "amx_tile": "AMXTILE",
    "avx512_fp16": "AVX512FP16",
    "asimd": "ASIMD", "asimddp": "ASIMDDP", "asimdhp": "ASIMDHP", "sve": "SVE", "sve2": "SVE2",
    "i8mm": "I8MM", "bf16": "BF16",
}  # fmt: skip
_NFD_NAMES = frozenset(CPUINFO_TO_NFD.values())


def nfd_flag(flag: str) -> str | None:
    """The NFD name of a CPU flag spelt as /proc/cpuinfo (``avx512_vnni``) or as NFD
    (``AVX512VNNI``, any case); None for a flag the table does not know."""
    text = flag.strip()
    if text in CPUINFO_TO_NFD:
        return CPUINFO_TO_NFD[text]
    return text.upper() if text.upper() in _NFD_NAMES else None


# Compute capability by normalised model, for nodes whose GFD omits the compute labels.
KNOWN_COMPUTE: dict[str, tuple[int, int]] = {
    "k80": (3, 7),
    "p4": (6, 1),
    "p40": (6, 1),
    "p100": (6, 0),
    "v100": (7, 0),
    "t4": (7, 5),
    "a100": (8, 0),
    "a30": (8, 0),
    "a10": (8, 6),
    "a10g": (8, 6),
    "a40": (8, 6),
    "rtx-a6000": (8, 6),
    "l4": (8, 9),
    "l40": (8, 9),
    "l40s": (8, 9),
    "rtx-4090": (8, 9),
    "h100": (9, 0),
    "h200": (9, 0),
    "h20": (9, 0),
    "gh200": (9, 0),
    "b200": (10, 0),
    "gb200": (10, 0),
}

# Marketed memory sizes in GB; a label in MiB rounds up to the nearest one (T4 reports
# 15360 MiB and is sold as 16 GB, H100 81559 MiB as 80 GB, L4 23034 MiB as 24 GB).
MARKETED_GB = (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 144, 180, 192)

_VENDOR_TOKENS = {"NVIDIA", "TESLA", "GEFORCE", "QUADRO"}
# Form factor and memory technology: they do not change the engine.
_DROPPED_TOKENS = re.compile(r"^(SXM\d*|PCIE|HBM\d*E?|NVL|NVLINK|MAX-?Q)$")
_GB_TOKEN = re.compile(r"^(\d+)GB$")
_NOT_DNS = re.compile(r"[^a-z0-9]+")


class Accelerator(StrEnum):
    NVIDIA = "nvidia"
    CPU = "cpu"


@dataclass(frozen=True, slots=True)
class GpuModel:
    """A GPU product string reduced to model, memory and MIG profile."""

    model: str
    """Lower-case model such as ``h100``, ``a10g``, ``rtx-a6000``; ``gpu`` when unknown."""
    memory_gb: int | None
    mig: str | None
    """MIG profile such as ``1g.5gb`` under GFD's ``single`` strategy."""


def _dns(text: str) -> str:
    return _NOT_DNS.sub("-", text.lower()).strip("-")


def normalize_gpu_product(product: str) -> GpuModel:
    """``A100-SXM4-40GB``, ``NVIDIA-H100-80GB-HBM3``, ``Tesla-T4``, ``NVIDIA-L4`` and
    ``NVIDIA-A100-SXM4-40GB-MIG-1g.5gb`` alike: vendor prefixes and form factors dropped."""
    text = product.strip().replace(" ", "-").replace("_", "-")
    mig = None
    upper = text.upper()
    if "-MIG-" in upper:
        cut = upper.index("-MIG-")
        mig = text[cut + 5 :].lower() or None
        text = text[:cut]
    memory_gb = None
    model_tokens = []
    for token in text.upper().split("-"):
        if not token or token in _VENDOR_TOKENS or _DROPPED_TOKENS.match(token):
            continue
        gb = _GB_TOKEN.match(token)
        if gb:
            memory_gb = int(gb.group(1))
            continue
        model_tokens.append(token)
    model = _dns("-".join(model_tokens)) or "gpu"
    return GpuModel(model, memory_gb, mig)


def marketed_gb(memory_mib: int) -> int:
    gib = memory_mib / 1024
    for size in MARKETED_GB:
        if size >= gib * 0.995:
            return size if size <= gib * 1.15 else round(gib)
    return round(gib)


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    raw = labels.get(key)
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def normalize_arch(raw: str | None) -> str:
    if raw is None:
        return "amd64"  # the Kubernetes default; every kubelet sets the label in practice
    raw = raw.lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(raw, raw)


@dataclass(frozen=True, slots=True, order=True)
class HardwareKey:
    """Everything that puts two nodes in one class. Plain, ordered, hashable."""

    accelerator: Accelerator
    arch: str
    gpu_model: str = ""
    gpu_memory_gb: int = 0
    """0 when unknown."""
    compute: tuple[int, int] | None = None
    mig: str = ""
    cpu_tier: str = ""
    cpu_features: tuple[str, ...] = ()
    """The tier's implied flags the node has, in X86_FEATURES/ARM_FEATURES order; flags
    beyond the tier do not change the engine and are ignored."""
    instance_type: str = ""
    simulated: bool = False
    """A node of the dev fleet that kwok simulates (``SIMULATED_LABEL``)."""
    emulated: bool = False
    """A node of the dev fleet whose pods run under an emulator (``EMULATED_LABEL``). Not part
    of :meth:`engine_fields`: the engine is the hardware's, only its speed is not."""

    @property
    def is_gpu(self) -> bool:
        return self.accelerator is Accelerator.NVIDIA

    def engine_fields(self) -> dict[str, object]:
        """What an engine depends on: the key without the instance type."""
        fields: dict[str, object] = {
            "accelerator": self.accelerator.value,
            "arch": self.arch,
            "gpu_model": self.gpu_model,
            "gpu_memory_gb": self.gpu_memory_gb,
            "compute": list(self.compute) if self.compute else None,
            "mig": self.mig,
            "cpu_tier": self.cpu_tier,
            "cpu_features": list(self.cpu_features),
        }
        if self.simulated:  # only then, so real classes keep their fingerprints
            fields["simulated"] = True
        return fields

    @classmethod
    def from_engine_fields(cls, fields: Mapping[str, object]) -> HardwareKey:
        """The key back from :meth:`engine_fields` (JSON-decoded), as a build Job receives it;
        raises HardwareError naming the field that does not describe a key the scheduler can
        derive. The instance type is not part of the fields: the key has none."""
        key = cls._from_fields(fields)
        simulated = fields.get("simulated", False)
        if not isinstance(simulated, bool):
            raise HardwareError("hardware: simulated must be true or false")
        return dataclasses.replace(key, simulated=True) if simulated else key

    @classmethod
    def _from_fields(cls, fields: Mapping[str, object]) -> HardwareKey:
        unknown = sorted(set(fields) - set(_FIELD_NAMES))
        if unknown:
            raise HardwareError(
                f"hardware: unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELD_NAMES)}"
            )
        try:
            accelerator = Accelerator(_field(fields, "accelerator", str))
        except ValueError as e:
            raise HardwareError(
                f"hardware: accelerator must be one of {[a.value for a in Accelerator]}"
            ) from e
        arch = normalize_arch(_field(fields, "arch", str))
        compute_raw = fields.get("compute")
        compute: tuple[int, int] | None = None
        if compute_raw is not None:
            if (
                not isinstance(compute_raw, list | tuple)
                or len(compute_raw) != 2
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in compute_raw)
            ):
                raise HardwareError("hardware: compute must be [major, minor] or null")
            compute = (compute_raw[0], compute_raw[1])
        memory = fields.get("gpu_memory_gb", 0)
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 0:
            raise HardwareError("hardware: gpu_memory_gb must be a whole number >= 0")
        raw_features = fields.get("cpu_features", [])
        if not isinstance(raw_features, list | tuple) or not all(
            isinstance(f, str) for f in raw_features
        ):
            raise HardwareError("hardware: cpu_features must be a list of NFD flag names")
        gpu_model = _field(fields, "gpu_model", str, "")
        mig = _field(fields, "mig", str, "")
        tier = _field(fields, "cpu_tier", str, "")
        if accelerator is Accelerator.NVIDIA:
            if tier or raw_features:
                raise HardwareError("hardware: a GPU key has no cpu_tier or cpu_features")
            if not gpu_model:
                raise HardwareError("hardware: a GPU key needs gpu_model")
            return cls(Accelerator.NVIDIA, arch, gpu_model, memory, compute, mig)
        if gpu_model or memory or compute is not None or mig:
            raise HardwareError(
                "hardware: a CPU key has no gpu_model, gpu_memory_gb, compute or mig"
            )
        implied = _tier_implies(arch, tier)
        if implied is None:
            known = [t for t, _, _ in _tiers(arch)]
            raise HardwareError(
                f"hardware: cpu_tier {tier!r} is not a tier of {arch} (known: {known or 'none'})"
            )
        beyond = sorted(set(raw_features) - implied)
        if beyond:
            raise HardwareError(
                f"hardware: cpu_features {beyond} are not flags of the {tier or 'base'} tier "
                f"of {arch} ({sorted(implied) or 'none'})"
            )
        key = cpu_key(arch, raw_features)
        if key.cpu_tier != tier:
            raise HardwareError(
                f"hardware: cpu_features {sorted(raw_features)} put an {arch} node in tier "
                f"{key.cpu_tier or 'none'}, not {tier!r}"
            )
        return key

    def fingerprint(self) -> str:
        """Hardware fingerprint for the engine key: equal for classes that can share an
        engine (classes that differ only in instance type share one)."""
        canonical = json.dumps(self.engine_fields(), sort_keys=True, separators=(",", ":"))
        return "hw1-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def name(self) -> str:
        """Stable readable class name, a DNS label of at most 63 characters."""
        if self.is_gpu:
            parts = ["nvidia", self.gpu_model]
            if self.gpu_memory_gb and not self.mig:
                parts.append(f"{self.gpu_memory_gb}gb")
            if self.mig:
                parts += ["mig", self.mig]
            if self.compute is not None and KNOWN_COMPUTE.get(self.gpu_model) != self.compute:
                parts.append(f"cc{self.compute[0]}{self.compute[1]}")
            if self.arch != "amd64":
                parts.append(self.arch)
        else:
            parts = ["x86" if self.arch == "amd64" else self.arch]
            parts += self._cpu_name_parts()
        if self.instance_type:
            parts.append(self.instance_type)
        name = _dns("-".join(parts))
        if len(name) > 63:
            digest = hashlib.sha256(repr(self).encode()).hexdigest()[:8]
            name = name[:54].rstrip("-") + "-" + digest
        return name

    def _cpu_name_parts(self) -> list[str]:
        tiers = X86_TIERS if self.arch == "amd64" else ARM_TIERS
        order = X86_FEATURES if self.arch == "amd64" else ARM_FEATURES
        for tier, _, implied in tiers:
            if tier == self.cpu_tier:
                present = set(self.cpu_features)
                return [tier] + ["no" + f.lower() for f in order if f in implied - present]
        return []


_FIELD_NAMES = (
    "accelerator",
    "arch",
    "gpu_model",
    "gpu_memory_gb",
    "compute",
    "mig",
    "cpu_tier",
    "cpu_features",
    "simulated",
)


def _field(
    fields: Mapping[str, object], name: str, kind: type[str], default: str | None = None
) -> str:
    value = fields.get(name, default)
    if not isinstance(value, kind):
        raise HardwareError(
            f"hardware: {name} must be a string" + ("" if default is not None else " (required)")
        )
    return value


def _tiers(arch: str) -> tuple[tuple[str, str, frozenset[str]], ...]:
    return X86_TIERS if arch == "amd64" else ARM_TIERS if arch == "arm64" else ()


def _tier_implies(arch: str, tier: str) -> frozenset[str] | None:
    """The flags ``tier`` implies on ``arch`` (empty for no tier), None for an unknown tier."""
    if not tier:
        return frozenset()
    return next((implied for t, _, implied in _tiers(arch) if t == tier), None)


def tier_implies(key: HardwareKey) -> frozenset[str]:
    """The flags the key's CPU tier implies on shipping CPUs (empty for GPU keys and no tier)."""
    return _tier_implies(key.arch, key.cpu_tier) or frozenset()


def _cpu_tier(arch: str, present: frozenset[str]) -> tuple[str, frozenset[str]]:
    """The best tier whose headline flag the node has, and the flags that tier implies."""
    tiers = _tiers(arch)
    for tier, headline, implied in tiers:
        if headline in present:
            return tier, implied
    return "", frozenset()


def relevant_features(arch: str) -> tuple[str, ...]:
    return X86_FEATURES if arch == "amd64" else ARM_FEATURES if arch == "arm64" else ()


def is_gpu_node(node: NodeInfo) -> bool:
    labels = node.labels
    return (
        node.allocatable.gpus > 0
        or GPU_PRODUCT_LABEL in labels
        or labels.get(GPU_PRESENT_LABEL, "").lower() == "true"
    )


def hardware_key(node: NodeInfo) -> HardwareKey:
    """The class key of one node, from its labels and allocatable resources only."""
    labels = node.labels
    arch = normalize_arch(labels.get(ARCH_LABEL))
    instance = _dns(labels.get(INSTANCE_TYPE_LABEL, ""))
    simulated = labels.get(SIMULATED_LABEL, "").lower() == "true"
    emulated = labels.get(EMULATED_LABEL, "").lower() == "true"
    if is_gpu_node(node):
        major = _int_label(labels, GPU_MAJOR_LABEL)
        minor = _int_label(labels, GPU_MINOR_LABEL)
        key = gpu_key(
            arch,
            labels.get(GPU_PRODUCT_LABEL),
            _int_label(labels, GPU_MEMORY_LABEL),
            (major, minor or 0) if major is not None else None,
            instance,
        )
    else:
        present = [
            f for f in relevant_features(arch) if labels.get(CPUID_PREFIX + f, "").lower() == "true"
        ]
        key = cpu_key(arch, present, instance)
    if simulated or emulated:
        key = dataclasses.replace(key, simulated=simulated, emulated=emulated)
    return key


def gpu_key(
    arch: str,
    product: str | None,
    memory_mib: int | None,
    compute: tuple[int, int] | None,
    instance_type: str = "",
) -> HardwareKey:
    """The key of an NVIDIA node from what GPU Feature Discovery reports (product string,
    memory in MiB, compute capability), or what a build host reads from its driver."""
    gpu = normalize_gpu_product(product) if product else GpuModel("gpu", None, None)
    if gpu.mig:
        memory_gb = 0  # the MIG profile names the slice's memory
    elif memory_mib:
        memory_gb = marketed_gb(memory_mib)
    else:
        memory_gb = gpu.memory_gb or 0
    return HardwareKey(
        accelerator=Accelerator.NVIDIA,
        arch=arch,
        gpu_model=gpu.model,
        gpu_memory_gb=memory_gb,
        compute=compute if compute is not None else KNOWN_COMPUTE.get(gpu.model),
        mig=_dns(gpu.mig or ""),
        instance_type=instance_type,
    )


def cpu_key(arch: str, flags: Iterable[str], instance_type: str = "") -> HardwareKey:
    """The key of a CPU node with these NFD flags (others are ignored): its tier and the tier's
    flags it has."""
    order = relevant_features(arch)
    present = frozenset(f for f in order if f in set(flags))
    tier, implied = _cpu_tier(arch, present)
    return HardwareKey(
        accelerator=Accelerator.CPU,
        arch=arch,
        cpu_tier=tier,
        cpu_features=tuple(f for f in order if f in present and f in implied),
        instance_type=instance_type,
    )


def key_label_signature(node: NodeInfo) -> tuple[object, ...]:
    """The inputs of :func:`hardware_key`: nodes with equal signatures have equal keys, so
    class derivation computes each key once per distinct signature, not once per node. It
    also holds every label a class's node affinity reads (classes.py relies on that)."""
    labels = node.labels
    return (
        labels.get(ARCH_LABEL),
        labels.get(INSTANCE_TYPE_LABEL),
        labels.get(GPU_PRODUCT_LABEL),
        labels.get(GPU_MEMORY_LABEL),
        labels.get(GPU_MAJOR_LABEL),
        labels.get(GPU_MINOR_LABEL),
        labels.get(GPU_PRESENT_LABEL),
        labels.get(SIMULATED_LABEL),
        labels.get(EMULATED_LABEL),
        node.allocatable.gpus > 0,
        tuple(labels.get(CPUID_PREFIX + f) for f in X86_FEATURES + ARM_FEATURES),
    )
