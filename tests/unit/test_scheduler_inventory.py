"""Reading nodes: quantities, pod requests, Node objects and the NodeInventory file."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from infleet.scheduler.errors import InventoryError
from infleet.scheduler.inventory import (
    Resources,
    Taint,
    node_from_object,
    nodes_from_documents,
    parse_quantity,
    pod_request,
)

GI = 2**30


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Decimal("0.5")), ("2", Decimal(2)), ("1.5", Decimal("1.5")), ("16Gi", 16 * GI),
     ("512Mi", 512 * 2**20), ("1e3", 1000), ("4k", 4000), ("1G", 10**9), ("100n", Decimal("1e-7")),
     (8, 8)],
)
def test_quantities(text: str | int, value: Decimal | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["", "lots", "1.2.3", "5Xi", "Gi"])
def test_bad_quantities(bad: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(bad)


def test_pod_request_follows_the_kube_scheduler() -> None:
    pod: dict[str, Any] = {"spec": {
        "initContainers": [
            {"name": "big-init", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}},
            {"name": "sidecar", "restartPolicy": "Always",
             "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}},
        ],
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1", "memory": "2Gi",
                                                     "nvidia.com/gpu": "1"}}},
            {"name": "b", "resources": {"limits": {"cpu": "9"}}},
        ],
        "overhead": {"cpu": "100m"},
    }}
    # max(app + sidecars = 1.25 CPU / 2.125 Gi / 1 GPU, init 3 CPU / 1 Gi) + overhead
    assert pod_request(pod) == Resources(3100, 2 * GI + 128 * 2**20, 1)


def test_node_object() -> None:
    node = node_from_object({
        "kind": "Node",
        "metadata": {"name": "n1", "labels": {"kubernetes.io/arch": "arm64"}},
        "spec": {"unschedulable": True, "taints": [{"key": "k", "effect": "NoExecute"}]},
        "status": {"capacity": {"cpu": "4", "memory": "8Gi"},
                   "conditions": [{"type": "Ready", "status": "Unknown"}]},
    })
    assert node.allocatable == Resources(4000, 8 * GI, 0)  # capacity when allocatable is absent
    assert node.unschedulable and not node.ready
    assert node.taints == (Taint("k", "", "NoExecute"),)
    assert node.labels["kubernetes.io/arch"] == "arm64"
    assert node_from_object({"metadata": {"name": "bare"}}).ready  # no conditions: assumed ready


def test_inventory_pools_and_objects_mix() -> None:
    docs: list[object] = [
        {"apiVersion": "infleet.dev/v1alpha1", "kind": "NodeInventory", "nodePools": [
            {"name": "gpu", "count": 3, "labels": {"kubernetes.io/arch": "amd64"},
             "allocatable": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2},
             "used": {"nvidia.com/gpu": 1}, "notReady": 1, "unschedulable": 1},
        ]},
        {"kind": "NodeList", "items": [{"metadata": {"name": "x"},
                                        "status": {"allocatable": {"cpu": "2"}}}]},
        {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "x", "containers": [
            {"resources": {"requests": {"cpu": "500m"}}}]}, "status": {"phase": "Running"}},
        {"kind": "Namespace", "metadata": {"name": "ignored"}},
    ]
    nodes = {n.name: n for n in nodes_from_documents(docs)}
    assert set(nodes) == {"gpu-0", "gpu-1", "gpu-2", "x"}
    assert nodes["gpu-0"].unschedulable and not nodes["gpu-1"].unschedulable
    assert not nodes["gpu-2"].ready and nodes["gpu-0"].ready
    assert nodes["gpu-1"].free == Resources(8000, 32 * GI, 1)
    assert nodes["gpu-1"].labels["kubernetes.io/hostname"] == "gpu-1"
    assert nodes["x"].free == Resources(1500, 0, 0)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "Node", "metadata": {}}, "a Node object has no metadata.name"),
        ({"kind": "NodeInventory", "apiVersion": "infleet.dev/v1alpha1", "nodePools": [
            {"name": "a", "count": 0, "allocatable": {}}]}, "nodePools.0.count"),
        ({"kind": "Node", "metadata": {"name": "n"}, "spec": {"taints": [
            {"key": "k", "effect": "Sometimes"}]}}, "unknown effect 'Sometimes'"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_inventory_errors_name_the_problem(doc: object, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        nodes_from_documents([doc])


def test_duplicate_node_names_are_refused() -> None:
    node = {"kind": "Node", "metadata": {"name": "same"}}
    with pytest.raises(InventoryError, match="duplicate node names in inventory: same"):
        nodes_from_documents([node, node])
