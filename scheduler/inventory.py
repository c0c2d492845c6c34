"""The node inventory: what the scheduler knows about each node, read from plain objects.

Two sources give the same :class:`NodeInfo`: Kubernetes Node (and Pod) objects as plain
dicts (what ``kubectl get -o json`` or the API's raw response holds) and the compact
``NodeInventory`` file (``examples/inventory-dev.yaml``), where one pool entry stands for
many identical nodes. Both adapters are pure: the caller reads the files or the API.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infleet.api import LatencyPoint
from infleet.scheduler.errors import InventoryError

GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Latency points (JSON, ``LatencyPoint``'s snake_case fields) that the dev fleet puts on nodes
# whose speed cannot be measured where they run (its emulated arm64 class): the fleet author's
# nominal figures for the hardware the labels describe.
NOMINAL_PROFILE_ANNOTATION = "dev.infleet.dev/nominal-profile"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity (``500m``, ``16Gi``, ``1e3``, ``8``) as a Decimal."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    return _parse_text(value)


@functools.lru_cache(maxsize=4096)
def _parse_text(value: str) -> Decimal:
    # Cached: a fleet repeats a handful of quantity strings across thousands of nodes.
    m = _QUANTITY.match(value.strip())
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = m.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as e:
        raise ValueError(f"not a quantity: {value!r}") from e
    scale = Decimal(_BINARY[suffix]) if suffix in _BINARY else _DECIMAL[suffix]
    return base * scale


@dataclass(frozen=True, slots=True, order=True)
class Resources:
    """CPU in millicores, memory in bytes, whole NVIDIA GPUs."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
        )

    def minus(self, other: Resources) -> Resources:
        """What is left after ``other``, never below zero (over-committed nodes have none)."""
        return Resources(
            max(0, self.cpu_millis - other.cpu_millis),
            max(0, self.memory_bytes - other.memory_bytes),
            max(0, self.gpus - other.gpus),
        )

    def scaled(self, n: int) -> Resources:
        return Resources(self.cpu_millis * n, self.memory_bytes * n, self.gpus * n)

    def fits(self, request: Resources) -> int:
        """How many ``request``-sized pods fit into these resources."""
        counts = []
        if request.cpu_millis > 0:
            counts.append(self.cpu_millis // request.cpu_millis)
        if request.memory_bytes > 0:
            counts.append(self.memory_bytes // request.memory_bytes)
        if request.gpus > 0:
            counts.append(self.gpus // request.gpus)
        return min(counts) if counts else 0

    @staticmethod
    def from_quantities(raw: Mapping[str, Any]) -> Resources:
        """From a Kubernetes resource list (``{"cpu": "4", "memory": "16Gi", ...}``)."""
        cpu = raw.get("cpu")
        mem = raw.get("memory")
        gpu = raw.get(GPU_RESOURCE)
        return Resources(
            math.ceil(parse_quantity(cpu) * 1000) if cpu is not None else 0,
            math.ceil(parse_quantity(mem)) if mem is not None else 0,
            math.floor(parse_quantity(gpu)) if gpu is not None else 0,
        )


TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


@dataclass(frozen=True, slots=True, order=True)
class Taint:
    key: str
    value: str = ""
    effect: TaintEffect = "NoSchedule"

    def as_toleration(self) -> dict[str, str]:
        out = {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}
        if not self.value:
            out = {"key": self.key, "operator": "Exists", "effect": self.effect}
        return out


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as the scheduler sees it."""

    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    allocatable: Resources = Resources()
    requested: Resources = Resources()
    """Sum of the requests of the pods running on the node."""
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    ready: bool = True
    nominal_profile: tuple[LatencyPoint, ...] = ()
    """The node's nominal latency points (``NOMINAL_PROFILE_ANNOTATION``); empty when it has
    none, or none that reads as a profile."""

    @property
    def free(self) -> Resources:
        return self.allocatable.minus(self.requested)

    @property
    def hostname(self) -> str:
        return self.labels.get(HOSTNAME_LABEL, self.name)

    def with_requested(self, requested: Resources) -> NodeInfo:
        return NodeInfo(
            self.name,
            self.labels,
            self.allocatable,
            requested,
            self.taints,
            self.unschedulable,
            self.ready,
            self.nominal_profile,
        )


# --- Kubernetes objects ------------------------------------------------------------------


def _taints(raw: object, where: str) -> tuple[Taint, ...]:
    if not raw:
        return ()
    if not isinstance(raw, list):
        raise InventoryError(f"{where}: spec.taints must be a list")
    out = []
    for t in raw:
        effect = t.get("effect", "NoSchedule")
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise InventoryError(f"{where}: taint {t.get('key')!r} has unknown effect {effect!r}")
        out.append(Taint(str(t["key"]), str(t.get("value") or ""), effect))
    return tuple(out)


def node_from_object(obj: Mapping[str, Any]) -> NodeInfo:
    """A :class:`NodeInfo` from a v1 Node as a plain dict.

    A Node without a ``Ready`` condition is taken as ready: a live cluster always reports
    one, while hand-written inventories and kwok manifests usually omit ``status``.
    """
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise InventoryError("a Node object has no metadata.name")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    try:
        allocatable = Resources.from_quantities(
            status.get("allocatable") or status.get("capacity") or {}
        )
    except ValueError as e:
        raise InventoryError(f"node {name}: status.allocatable: {e}") from e
    ready = True
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    labels = dict(meta.get("labels") or {})
    if not all(isinstance(v, str) for v in labels.values()):  # YAML's unquoted numbers
        labels = {str(k): str(v) for k, v in labels.items()}
    return NodeInfo(
        name=str(name),
        labels=MappingProxyType(labels),
        allocatable=allocatable,
        taints=_taints(spec.get("taints"), f"node {name}"),
        unschedulable=bool(spec.get("unschedulable", False)),
        ready=ready,
        nominal_profile=nominal_profile(
            (meta.get("annotations") or {}).get(NOMINAL_PROFILE_ANNOTATION)
        ),
    )


def nominal_profile(raw: object) -> tuple[LatencyPoint, ...]:
    """Latency points from an annotation's JSON; empty for anything that is not a list of
    points with increasing batch sizes (an annotation is anyone's to write: it never fails the
    inventory, and a class without usable figures says so where they are needed)."""
    if not isinstance(raw, str) or not raw.strip():
        return ()
    return _nominal_profile(raw)


@functools.lru_cache(maxsize=256)
def _nominal_profile(raw: str) -> tuple[LatencyPoint, ...]:
    # Cached: every node of a class carries the same text.
    try:
        data = json.loads(raw)
        if not isinstance(data, list) or not data:
            return ()
        points = tuple(LatencyPoint.model_validate(p) for p in data)
    except (ValueError, ValidationError):
        return ()
    batches = [p.batch_size for p in points]
    if batches != sorted(set(batches)) or any(
        p.p50_ms <= 0 or p.p99_ms < p.p50_ms or p.throughput_ips <= 0 for p in points
    ):
        return ()
    return points


def _sum_requests(containers: Iterable[Mapping[str, Any]]) -> Resources:
    total = Resources()
    for c in containers:
        res = c.get("resources") or {}
        total = total + Resources.from_quantities(res.get("requests") or {})
    return total


def _max(a: Resources, b: Resources) -> Resources:
    return Resources(
        max(a.cpu_millis, b.cpu_millis), max(a.memory_bytes, b.memory_bytes), max(a.gpus, b.gpus)
    )


def pod_request(pod: Mapping[str, Any]) -> Resources:
    """What the kube-scheduler reserves for a pod: the larger of the app containers (plus
    restartable init "sidecar" containers) and any single init container, plus overhead."""
    spec = pod.get("spec") or {}
    init = spec.get("initContainers") or []
    sidecars = [c for c in init if c.get("restartPolicy") == "Always"]
    regular_init = [c for c in init if c.get("restartPolicy") != "Always"]
    app = _sum_requests(spec.get("containers") or []) + _sum_requests(sidecars)
    peak = app
    for c in regular_init:
        peak = _max(peak, _sum_requests([c]))
    return peak + Resources.from_quantities(spec.get("overhead") or {})


def requested_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, Resources]:
    """Requests of bound, non-terminated pods, summed per node name."""
    out: dict[str, Resources] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed"):
            continue
        try:
            req = pod_request(pod)
        except ValueError as e:
            name = (pod.get("metadata") or {}).get("name")
            raise InventoryError(f"pod {name}: {e}") from e
        out[node] = out.get(node, Resources()) + req
    return out


def nodes_from_objects(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]] = ()
) -> list[NodeInfo]:
    """Nodes with the requests of the pods bound to them (for free allocatable)."""
    used = requested_by_node(pods)
    out = []
    for obj in nodes:
        node = node_from_object(obj)
        if node.name in used:
            node = node.with_requested(used[node.name])
        out.append(node)
    return out


# --- the compact inventory file ----------------------------------------------------------

INVENTORY_KIND = "NodeInventory"


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TaintEntry(_File):
    key: str
    value: str = ""
    effect: TaintEffect = "NoSchedule"


class NodePool(_File):
    """``count`` identical nodes named ``<name>-0`` .. ``<name>-<count-1>``."""

    name: Annotated[str, Field(min_length=1)]
    count: Annotated[int, Field(ge=1, le=100_000)] = 1
    labels: dict[str, str] = {}
    allocatable: dict[str, str | int | float]
    used: dict[str, str | int | float] = {}
    """Requests already running on each node of the pool."""
    taints: list[TaintEntry] = []
    not_ready: Annotated[int, Field(ge=0, alias="notReady")] = 0
    """How many of the pool's nodes are NotReady (the last ones)."""
    unschedulable: Annotated[int, Field(ge=0)] = 0
    """How many of the pool's nodes are cordoned (the first ones)."""


class InventoryFile(_File):
    api_version: Annotated[Literal["infleet.dev/v1alpha1"], Field(alias="apiVersion")]
    kind: Literal["NodeInventory"]
    node_pools: Annotated[list[NodePool], Field(alias="nodePools")]


def _pool_nodes(pool: NodePool) -> list[NodeInfo]:
    where = f"nodePools[{pool.name}]"
    try:
        allocatable = Resources.from_quantities(pool.allocatable)
        used = Resources.from_quantities(pool.used)
    except ValueError as e:
        raise InventoryError(f"{where}: {e}") from e
    taints = tuple(Taint(t.key, t.value, t.effect) for t in pool.taints)
    out = []
    for i in range(pool.count):
        name = pool.name if pool.count == 1 else f"{pool.name}-{i}"
        labels = {HOSTNAME_LABEL: name, **pool.labels}
        out.append(
            NodeInfo(
                name=name,
                labels=MappingProxyType(labels),
                allocatable=allocatable,
                requested=used,
                taints=taints,
                unschedulable=i < pool.unschedulable,
                ready=i < pool.count - pool.not_ready,
            )
        )
    return out


def nodes_from_documents(docs: Sequence[object]) -> list[NodeInfo]:
    """Nodes from parsed YAML/JSON documents: NodeInventory files, Node and Pod objects, and
    ``List``/``NodeList``/``PodList`` wrappers (``kubectl get nodes,pods -A -o yaml``)."""
    nodes: list[Mapping[str, Any]] = []
    pods: list[Mapping[str, Any]] = []
    out: list[NodeInfo] = []

    def visit(doc: object, where: str) -> None:
        if doc is None:
            return
        if not isinstance(doc, Mapping):
            raise InventoryError(f"{where}: expected a mapping, got {type(doc).__name__}")
        kind = doc.get("kind")
        if kind == INVENTORY_KIND:
            try:
                parsed = InventoryFile.model_validate(doc)
            except ValidationError as e:
                first = e.errors(include_url=False)[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise InventoryError(f"{where}: {loc}: {first['msg']}") from e
            for pool in parsed.node_pools:
                out.extend(_pool_nodes(pool))
        elif kind == "Node":
            nodes.append(doc)
        elif kind == "Pod":
            pods.append(doc)
        elif kind in ("List", "NodeList", "PodList"):
            item_kind = {"NodeList": "Node", "PodList": "Pod"}.get(str(kind))
            for j, item in enumerate(doc.get("items") or []):
                if item_kind and isinstance(item, dict) and "kind" not in item:
                    item = {**item, "kind": item_kind}
                visit(item, f"{where}.items[{j}]")
        # Other kinds (Namespaces, Deployments in a kwok fleet manifest...) are not nodes.

    for i, doc in enumerate(docs):
        visit(doc, f"document {i}")
    out.extend(nodes_from_objects(nodes, pods))
    names = [n.name for n in out]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InventoryError(f"duplicate node names in inventory: {', '.join(dupes[:5])}")
    return out
