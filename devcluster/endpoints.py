"""EndpointSlices for the local executor's pods (pure; the executor's endpoints controller
applies them).

The executor gives every pod a loopback address (``127.x.y.z``), and the API server refuses
loopback addresses in EndpointSlices of address type IPv4 (and in Endpoints), so the
controller manager's EndpointSlice controller cannot list these pods: its attempts fail, it
says so in its log and in ``FailedToUpdateEndpointSlices`` events on the Service, and keeps
serving the kwok pods. This module writes what it cannot: one slice per Service and port
mapping with address type ``FQDN``, whose addresses are the dotted pod addresses (valid domain
names for the API server; an IP literal for the Gateway, which dials them). Labels mark them as
the Service's (``kubernetes.io/service-name``) and as ours (``endpointslice.kubernetes.io/
managed-by``); the Service owns them, so they go with it. Conditions follow the pod: ready is
its Ready condition (or ``publishNotReadyAddresses``) and no deletion, serving ignores the
deletion, terminating is the deletion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MANAGED_BY = "local-executor.dev.infleet.dev"  # a label value: no slash
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SUFFIX = "infleet-local"


def selects(service: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether a Service's selector picks the pod (same namespace, labels superset)."""
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return False  # a Service without selector has its endpoints written by hand
    meta = pod.get("metadata") or {}
    if meta.get("namespace") != (service.get("metadata") or {}).get("namespace"):
        return False
    labels = meta.get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _target_port(port: Mapping[str, Any], pod: Mapping[str, Any]) -> int | None:
    """The pod's port for one Service port: a number, or a named container port."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    protocol = port.get("protocol", "TCP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cp in container.get("ports") or []:
            if cp.get("name") == target and cp.get("protocol", "TCP") == protocol:
                return int(cp["containerPort"])
    return None


def desired_slices(
    service: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The EndpointSlices of one Service for the local pods it selects (possibly none)."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    name, namespace = meta["name"], meta.get("namespace", "default")
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    groups: dict[tuple[tuple[str, int, str], ...], list[dict[str, Any]]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or status.get("phase") in ("Succeeded", "Failed") or not selects(service, pod):
            continue
        ports: list[tuple[str, int, str]] = []
        for port in spec.get("ports") or []:
            number = _target_port(port, pod)
            if number is not None:
                ports.append((port.get("name", ""), number, port.get("protocol", "TCP")))
        pmeta = pod["metadata"]
        deleting = bool(pmeta.get("deletionTimestamp"))
        ready = _ready(pod)
        groups.setdefault(tuple(ports), []).append({
            "addresses": [ip],
            "conditions": {"ready": (ready or publish_not_ready) and not deleting,
                           "serving": ready or publish_not_ready, "terminating": deleting},
            "nodeName": (pod.get("spec") or {}).get("nodeName", ""),
            "targetRef": {"kind": "Pod", "name": pmeta["name"], "namespace": namespace,
                          "uid": pmeta.get("uid", "")},
        })
    slices = []
    for index, (ports_key, endpoints) in enumerate(sorted(groups.items())):
        slice_name = f"{name}-{SUFFIX}" + (f"-{index}" if index else "")
        owner = {"apiVersion": "v1", "kind": "Service", "name": name,
                 "uid": meta.get("uid", ""), "controller": True, "blockOwnerDeletion": True}
        slices.append({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": namespace,
                         "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                         "ownerReferences": [owner]},
            "addressType": "FQDN",
            "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports_key],
        })
    return slices
