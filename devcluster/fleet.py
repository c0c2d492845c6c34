"""Fleet profiles (data files in ``profiles/``) and their rendering into Node objects.

Pure: :func:`render_nodes` turns a profile and the facts of this machine into the Node manifests
the cluster creates. Each class says who runs its pods (``executor``):

- ``kwok``: simulated. The nodes carry ``kwok.x-k8s.io/node: fake`` so kwok heartbeats them and
  runs their pods' lifecycle on paper; nothing runs.
- ``local``: real. The local executor owns the nodes and runs their pods as processes of this
  machine, so their CPU labels and allocatable resources come from this machine, never from
  the profile.
- ``qemu``: real, emulated. The local executor owns the nodes and runs their pods' aarch64
  programs under qemu-user (:mod:`infleet.devcluster.emulation`), emulating the core
  ``qemuCpu``; the labels are that core's (from the profile), the allocatable resources this
  machine's (the processes share its cores).

Every node says which it is: ``dev.infleet.dev/simulated`` is ``"true"`` on kwok's nodes and
``"false"`` on the others; ``dev.infleet.dev/emulated`` is ``"true"`` on the qemu classes' and
``"false"`` on the others.

``nominalProfile``: latency points (batch size, p50, p99, throughput), illustrative,
model-independent figures of the profile's author, not measurements. A simulated engine build
reports them (:mod:`infleet.devcluster.stages`), since nothing is built or measured there; an
emulated class carries them on its nodes (annotation ``dev.infleet.dev/nominal-profile``) and
the operator plans its capacity from them, since latency measured under emulation is not the
hardware's.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infleet.devcluster.errors import FleetProfileError

# The scheduler's labels: simulated nodes never share a class (or an engine) with real ones,
# emulated nodes never share a class (their speed) with native ones.
from infleet.scheduler.hardware import CPUINFO_TO_NFD, EMULATED_LABEL, SIMULATED_LABEL
from infleet.scheduler.inventory import NOMINAL_PROFILE_ANNOTATION

PROFILES = Path(__file__).resolve().parent / "profiles"

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
# Not part of any class derivation: lets the harness find the nodes of a profile class.
FLEET_CLASS_LABEL = "dev.infleet.dev/fleet-class"
# On an emulated class's nodes: how their pods run, in words (for `kubectl describe node`).
EMULATION_ANNOTATION = "dev.infleet.dev/emulation"


class Executor(StrEnum):
    KWOK = "kwok"
    """Simulated: kwok runs the pods' lifecycle on paper."""
    LOCAL = "local"
    """Real: the local executor runs the pods as processes of this machine."""
    QEMU = "qemu"
    """Real, emulated: the local executor runs the pods' aarch64 programs under qemu-user."""


class GpuSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    product: str
    family: str
    count: int = Field(gt=0)
    memoryMiB: int = Field(gt=0)
    computeMajor: int = Field(ge=1)
    computeMinor: int = Field(ge=0)


class NominalPoint(BaseModel):
    """One latency point a simulated build reports (names as in ``LatencyPoint``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int = Field(ge=1)
    p50_ms: float = Field(gt=0)
    p99_ms: float = Field(gt=0)
    throughput_ips: float = Field(gt=0)

    @model_validator(mode="after")
    def _p99_not_below_p50(self) -> NominalPoint:
        if self.p99_ms < self.p50_ms:
            raise ValueError(f"p99_ms {self.p99_ms} is below p50_ms {self.p50_ms}")
        return self


class NodeClassSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    count: int = Field(gt=0, le=10000)
    arch: Literal["amd64", "arm64"]
    instanceType: str
    executor: Executor = Executor.KWOK
    cpu: str | None = None  # None: the local class reads this machine
    memory: str | None = None
    pods: int = 110
    cpuid: tuple[str, ...] = ()
    gpu: GpuSpec | None = None
    nominalProfile: tuple[NominalPoint, ...] = ()
    qemuCpu: str | None = Field(default=None, pattern=r"^[a-z0-9][-a-z0-9.]*$", max_length=40)
    """The core qemu emulates for an ``executor: qemu`` class (``qemu-aarch64-static -cpu
    help`` lists them); it should be the one ``cpuid`` describes."""

    @model_validator(mode="after")
    def _executor_rules(self) -> NodeClassSpec:
        if self.nominalProfile and self.executor is Executor.LOCAL:
            raise ValueError(f"class {self.name}: nominalProfile is for simulated (kwok) and "
                             "emulated (qemu) classes; the local class builds and measures for "
                             "real")
        if self.executor is Executor.QEMU:
            if self.arch != "arm64" or self.gpu is not None:
                raise ValueError(f"class {self.name}: executor qemu runs arm64 CPU nodes only "
                                 "(qemu-aarch64)")
            if not self.qemuCpu:
                raise ValueError(f"class {self.name}: executor qemu needs qemuCpu, the core "
                                 "its cpuid labels describe")
            if not self.nominalProfile:
                raise ValueError(f"class {self.name}: executor qemu needs nominalProfile: "
                                 "latency under emulation is not the hardware's, so the "
                                 "operator plans the class from these figures")
        elif self.qemuCpu:
            raise ValueError(f"class {self.name}: qemuCpu is for executor qemu only")
        batches = [p.batch_size for p in self.nominalProfile]
        if batches != sorted(set(batches)):
            raise ValueError(f"class {self.name}: nominalProfile batch sizes must increase")
        return self

    @property
    def runs_here(self) -> bool:
        """Its pods run on this machine (the local executor owns its nodes)."""
        return self.executor is not Executor.KWOK


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    classes: tuple[NodeClassSpec, ...] = Field(min_length=1)

    def node_count(self) -> int:
        return sum(c.count for c in self.classes)

    def local_nodes(self) -> list[str]:
        """The nodes whose pods run on this machine (the local and emulated classes')."""
        return [node_name(c, i) for c in self.classes if c.runs_here for i in range(c.count)]

    def emulated_nodes(self) -> dict[str, str]:
        """Node -> the core qemu emulates there, for the emulated classes."""
        return {
            node_name(c, i): c.qemuCpu or "" for c in self.classes
            if c.executor is Executor.QEMU for i in range(c.count)
        }


@dataclass(frozen=True)
class HostFacts:
    """What the local class reports: this machine's CPU features and size."""

    arch: str
    cpuid: tuple[str, ...]
    cpus: int
    memory_bytes: int

    @staticmethod
    def detect() -> HostFacts:
        flags: set[str] = set()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            for line in cpuinfo.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
                    break
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return HostFacts(
            arch=arch,
            cpuid=tuple(sorted(CPUINFO_TO_NFD[f] for f in flags if f in CPUINFO_TO_NFD)),
            cpus=os.cpu_count() or 1,
            memory_bytes=memory,
        )


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``dev``, ``large``) or by path to a YAML file of the same shape."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES / f"{name_or_path}.yaml"
        if not path.exists():
            raise FleetProfileError(
                f"unknown fleet profile {name_or_path!r}; known: {', '.join(available_profiles())}"
            )
    try:
        return Profile.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise FleetProfileError(f"fleet profile {path.name} is invalid: {e}") from e


def node_name(cls: NodeClassSpec, index: int) -> str:
    return f"{cls.name}-{index}"


def render_nodes(profile: Profile, host: HostFacts) -> list[dict[str, Any]]:
    """The Node manifests of a profile (status included: kwok and the executor keep it)."""
    nodes: list[dict[str, Any]] = []
    for cls in profile.classes:
        for index in range(cls.count):
            nodes.append(render_node(cls, index, host))
    return nodes


def render_node(cls: NodeClassSpec, index: int, host: HostFacts) -> dict[str, Any]:
    local = cls.executor is Executor.LOCAL
    emulated = cls.executor is Executor.QEMU
    name = node_name(cls, index)
    # The local class is this machine; an emulated one is the core it emulates, on this
    # machine's cores.
    arch = host.arch if local else cls.arch
    cpuid = host.cpuid if local else cls.cpuid
    labels = {
        "kubernetes.io/arch": arch,
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "node.kubernetes.io/instance-type": cls.instanceType,
        FLEET_CLASS_LABEL: cls.name,
        SIMULATED_LABEL: "false" if cls.runs_here else "true",
        EMULATED_LABEL: "true" if emulated else "false",
        **{f"feature.node.kubernetes.io/cpu-cpuid.{flag}": "true" for flag in cpuid},
    }
    allocatable = {
        "cpu": str(host.cpus) if cls.runs_here or cls.cpu is None else cls.cpu,
        "memory": (str(host.memory_bytes) if cls.runs_here or cls.memory is None
                   else cls.memory),
        "pods": str(cls.pods),
        "ephemeral-storage": "100Gi",
    }
    taints: list[dict[str, str]] = []
    if cls.gpu is not None:
        labels.update({
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": cls.gpu.product,
            "nvidia.com/gpu.family": cls.gpu.family,
            "nvidia.com/gpu.count": str(cls.gpu.count),
            "nvidia.com/gpu.memory": str(cls.gpu.memoryMiB),
            "nvidia.com/gpu.compute.major": str(cls.gpu.computeMajor),
            "nvidia.com/gpu.compute.minor": str(cls.gpu.computeMinor),
        })
        allocatable[GPU_RESOURCE] = str(cls.gpu.count)
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    if not cls.runs_here:
        annotations[KWOK_ANNOTATION] = "fake"
    if emulated:
        annotations[EMULATION_ANNOTATION] = (
            f"pods run under qemu-aarch64-static -cpu {cls.qemuCpu} on an {host.arch} host; "
            "engine build pods cross-compile on the host and gate the engine under qemu")
        annotations[NOMINAL_PROFILE_ANNOTATION] = json.dumps(
            [p.model_dump() for p in cls.nominalProfile], separators=(",", ":"))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": dict(allocatable),
            "allocatable": dict(allocatable),
            "nodeInfo": {
                "architecture": arch,
                "operatingSystem": "linux",
                "kubeletVersion": "infleet-local" if cls.runs_here else "fake",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "",
                "kernelVersion": "",
                "osImage": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }
