"""Node classes: nodes grouped by the hardware that matters for an engine.

:func:`derive_classes` is pure and deterministic: the same nodes in any order, with any
labels that do not describe hardware, give the same classes with the same names.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from infleet.api import LatencyPoint
from infleet.scheduler.affinity import NodeAffinity, Requirement
from infleet.scheduler.hardware import (
    ARCH_LABEL,
    CPUID_PREFIX,
    EMULATED_LABEL,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    INSTANCE_TYPE_LABEL,
    SIMULATED_LABEL,
    HardwareKey,
    hardware_key,
    key_label_signature,
    relevant_features,
)
from infleet.scheduler.inventory import HOSTNAME_LABEL, NodeInfo, Resources, Taint

# Taints the node lifecycle controller manages; they mirror state counted separately
# (NotReady, cordoned) and must never be tolerated on purpose.
LIFECYCLE_TAINT_PREFIX = "node.kubernetes.io/"


@dataclass(frozen=True, slots=True)
class NodeClass:
    """One class and what the cluster offers in it."""

    name: str
    key: HardwareKey
    fingerprint: str
    nodes: tuple[str, ...]
    """Every member node's name, sorted (usable or not)."""
    usable_nodes: int
    """Ready, schedulable nodes that carry no taint beyond ``tolerations``."""
    unschedulable_nodes: int
    """Cordoned nodes (counted whether Ready or not)."""
    not_ready_nodes: int
    """Schedulable nodes that are not Ready."""
    tainted_nodes: int
    """Ready, schedulable nodes with a taint the class does not tolerate."""
    allocatable: Resources
    """Sum over usable nodes."""
    free: Resources
    """Sum over usable nodes of allocatable minus the requests of running pods."""
    free_per_node: tuple[tuple[Resources, int], ...]
    """Distinct free resources of usable nodes, with how many nodes have them."""
    max_allocatable: Resources
    """Largest allocatable of a single usable node, per resource (what one pod could get)."""
    gpus_per_node: tuple[int, ...]
    """Distinct allocatable GPU counts over member nodes."""
    gpu_memory_bytes: int
    """Smallest per-GPU memory over member nodes; 0 when unknown or a CPU class."""
    tolerations: tuple[Taint, ...]
    """NoSchedule/NoExecute taints every member node carries: the class's own gating taints."""
    affinity: NodeAffinity
    """Selects exactly the member nodes of this inventory (nodes are told apart by their
    ``kubernetes.io/hostname`` label where hardware labels cannot; every kubelet sets it)."""
    nominal_profile: tuple[LatencyPoint, ...] = ()
    """Nominal latency points the member nodes carry (the dev fleet's emulated classes, whose
    speed cannot be measured where they run); when members differ, the slowest at batch 1."""

    def with_reserved(self, request: Resources) -> NodeClass:
        """This class with room for one ``request``-sized pod set aside on the node with the
        most free room that can take it (a build Job the class waits for must not be crowded
        out by the serving replicas planned around it). Unchanged when no node can."""
        fits = [(free, count) for free, count in self.free_per_node if free.fits(request) > 0]
        if not fits:
            return self
        best = max(fits, key=lambda fc: (fc[0].cpu_millis, fc[0].memory_bytes, fc[0].gpus))[0]
        hist: Counter[Resources] = Counter(dict(self.free_per_node))
        hist[best] -= 1
        hist[best.minus(request)] += 1
        return replace(
            self,
            free=self.free.minus(request),
            free_per_node=tuple(sorted((f, n) for f, n in hist.items() if n > 0)),
        )

    def replicas_that_fit(self, request: Resources) -> int:
        """Pods of size ``request`` that fit in the free resources, node by node."""
        cpu, mem, gpu = request.cpu_millis, request.memory_bytes, request.gpus
        if cpu <= 0 and mem <= 0 and gpu <= 0:
            return 0
        big = 1 << 62
        total = 0
        for free, count in self.free_per_node:
            fit = free.cpu_millis // cpu if cpu > 0 else big
            if mem > 0:
                fit = min(fit, free.memory_bytes // mem)
            if gpu > 0:
                fit = min(fit, free.gpus // gpu)
            total += fit * count
        return total


def _blocking(taints: Iterable[Taint]) -> frozenset[Taint]:
    return frozenset(
        t
        for t in taints
        if t.effect != "PreferNoSchedule" and not t.key.startswith(LIFECYCLE_TAINT_PREFIX)
    )


def _selector_keys(key: HardwareKey, simulated_fleet: bool, emulated_fleet: bool) -> list[str]:
    keys = [ARCH_LABEL, INSTANCE_TYPE_LABEL]
    if simulated_fleet:  # only an inventory with simulated nodes needs telling them apart
        keys.append(SIMULATED_LABEL)
    if emulated_fleet:  # likewise emulated ones
        keys.append(EMULATED_LABEL)
    if key.is_gpu:
        keys += [GPU_PRODUCT_LABEL, GPU_MEMORY_LABEL]
    else:
        keys += [GPU_PRODUCT_LABEL]
        keys += [CPUID_PREFIX + f for f in relevant_features(key.arch)]
    return keys


def _requirement(key: str, values: Sequence[str | None], is_flag: bool) -> Requirement | None:
    seen = sorted({v for v in values if v is not None})
    if is_flag:
        # NFD writes "true"; NotIn matches nodes without the label too.
        present = {v.lower() == "true" for v in values if v is not None}
        if any(v is None for v in values):
            present.add(False)
        if present == {True}:
            return Requirement(key, "In", ("true",))
        if present == {False}:
            return Requirement(key, "NotIn", ("true",))
        return None
    if all(v is not None for v in values):
        return Requirement(key, "In", tuple(seen))
    if not seen:
        return Requirement(key, "DoesNotExist")
    return None  # mixed presence: verification below adds what is needed


def _affinity(
    key: HardwareKey,
    members: Sequence[NodeInfo],
    groups: Mapping[tuple[object, ...], tuple[HardwareKey, list[NodeInfo]]],
) -> NodeAffinity:
    reqs: list[Requirement] = []
    simulated_fleet = any(k.simulated for k, _ in groups.values())
    emulated_fleet = any(k.emulated for k, _ in groups.values())
    for label in _selector_keys(key, simulated_fleet, emulated_fleet):
        req = _requirement(
            label, [n.labels.get(label) for n in members],
            label.startswith(CPUID_PREFIX) or label in (SIMULATED_LABEL, EMULATED_LABEL),
        )
        if req is not None:
            reqs.append(req)
    affinity = NodeAffinity(tuple(reqs))
    # Prove exactness on this inventory. Nodes with equal key signatures carry equal values
    # of every label an affinity reads, so one node stands for its group. Intruders (GPU
    # nodes without GFD labels look like CPU nodes to a label selector) are pinned out by
    # hostname; stragglers would be pinned in.
    intruders: list[str] = []
    missed = False
    for group_key, nodes in groups.values():
        if affinity.matches(nodes[0].labels):
            if group_key != key:
                intruders += [n.hostname for n in nodes]
        elif group_key == key:
            missed = True
    if missed:
        # Cannot happen with the In lists above; kept so the promise holds whatever changes.
        hosts = tuple(sorted({n.hostname for n in members}))
        return NodeAffinity((Requirement(HOSTNAME_LABEL, "In", hosts),))
    if intruders:
        reqs.append(Requirement(HOSTNAME_LABEL, "NotIn", tuple(sorted(set(intruders)))))
    return NodeAffinity(tuple(reqs))


def _unique_names(keys: Iterable[HardwareKey]) -> dict[HardwareKey, str]:
    """Names from keys; a (pathological) collision gets a hash suffix on every party to it,
    decided by the keys alone, so the outcome does not depend on node order."""
    by_name: dict[str, list[HardwareKey]] = {}
    for k in keys:
        by_name.setdefault(k.name(), []).append(k)
    out: dict[HardwareKey, str] = {}
    for name, ks in by_name.items():
        if len(ks) == 1:
            out[ks[0]] = name
            continue
        for k in ks:
            digest = hashlib.sha256(repr(k).encode()).hexdigest()[:6]
            out[k] = f"{name[:56]}-{digest}"
    return out


def derive_classes(nodes: Iterable[NodeInfo]) -> list[NodeClass]:
    """Group nodes into classes, sorted by name."""
    groups: dict[tuple[object, ...], tuple[HardwareKey, list[NodeInfo]]] = {}
    members: dict[HardwareKey, list[NodeInfo]] = {}
    for node in nodes:
        sig = key_label_signature(node)
        group = groups.get(sig)
        if group is None:
            group = groups[sig] = (hardware_key(node), [])
        group[1].append(node)
    for key, group_nodes in groups.values():
        members.setdefault(key, []).extend(group_nodes)

    names = _unique_names(members)
    out = []
    for key, nodes_in in members.items():
        nodes_in.sort(key=lambda n: n.name)
        out.append(_summarise(names[key], key, nodes_in, groups))
    out.sort(key=lambda c: c.name)
    return out


def _summarise(
    name: str,
    key: HardwareKey,
    nodes: list[NodeInfo],
    groups: Mapping[tuple[object, ...], tuple[HardwareKey, list[NodeInfo]]],
) -> NodeClass:
    tolerated = frozenset.intersection(*(_blocking(n.taints) for n in nodes))
    usable: list[NodeInfo] = []
    unschedulable = not_ready = tainted = 0
    for n in nodes:
        if n.unschedulable:
            unschedulable += 1
        elif not n.ready:
            not_ready += 1
        elif _blocking(n.taints) - tolerated:
            tainted += 1
        else:
            usable.append(n)
    allocatable = free = Resources()
    free_hist: Counter[Resources] = Counter()
    max_cpu = max_mem = max_gpu = 0
    for n in usable:
        allocatable = allocatable + n.allocatable
        f = n.free
        free = free + f
        free_hist[f] += 1
        max_cpu = max(max_cpu, n.allocatable.cpu_millis)
        max_mem = max(max_mem, n.allocatable.memory_bytes)
        max_gpu = max(max_gpu, n.allocatable.gpus)
    gpu_mem = 0
    if key.is_gpu:
        mibs = [n.labels.get(GPU_MEMORY_LABEL, "") for n in nodes]
        parsed = [int(m) for m in mibs if m.strip().isdigit()]
        if parsed:
            gpu_mem = min(parsed) * 2**20
        elif key.gpu_memory_gb:
            gpu_mem = key.gpu_memory_gb * 10**9
    return NodeClass(
        name=name,
        key=key,
        fingerprint=key.fingerprint(),
        nodes=tuple(n.name for n in nodes),
        usable_nodes=len(usable),
        unschedulable_nodes=unschedulable,
        not_ready_nodes=not_ready,
        tainted_nodes=tainted,
        allocatable=allocatable,
        free=free,
        free_per_node=tuple(sorted(free_hist.items())),
        max_allocatable=Resources(max_cpu, max_mem, max_gpu),
        gpus_per_node=tuple(sorted({n.allocatable.gpus for n in nodes})),
        gpu_memory_bytes=gpu_mem,
        tolerations=tuple(sorted(tolerated)),
        affinity=_affinity(key, nodes, groups),
        nominal_profile=_nominal(nodes),
    )


def _nominal(nodes: Sequence[NodeInfo]) -> tuple[LatencyPoint, ...]:
    """The members' nominal points; the slowest at batch 1 when they differ (the figures
    plan capacity: the lower one is the one every member can be trusted to reach)."""
    given = {n.nominal_profile for n in nodes if n.nominal_profile}
    if not given:
        return ()
    return min(given, key=lambda points: (points[0].throughput_ips, repr(points)))
