"""Volumes of the dev cluster: the default StorageClass ``infleet-local`` and the plan of its
dynamic provisioner (pure; the executor's provisioner thread does the I/O).

Each PersistentVolumeClaim of the class gets a PersistentVolume of its own, bound to it through
``claimRef`` (the controller manager's PV controller completes the binding), backed by the
executor's claims folder ``<executor workdir>/claims/<namespace>/<claim>``: the folder the local
executor gives a pod for that claim (:func:`infleet.devcluster.podspec.claim_dir`). A
``hostPath`` volume without node affinity, so pods on every node, kwok's included, schedule.
Binding is Immediate, access modes are the claim's (ReadWriteMany included), and reclaim is
Delete: once the claim is gone, its folder and its PV are removed. Refused, with an Event on
the claim: block volumes, claims with a ``selector`` and claims with a ``dataSource``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infleet.devcluster.podspec import claim_dir

STORAGE_CLASS = "infleet-local"
PROVISIONER = "dev.infleet.dev/local-executor"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": False,
    }


@dataclass(frozen=True)
class Reclaim:
    pv: str
    folder: Path


@dataclass(frozen=True)
class Refusal:
    namespace: str
    claim: str
    uid: str
    message: str


@dataclass(frozen=True)
class VolumePlan:
    """What to do, in this order: reclaim (a claim of the same name may follow), create."""

    reclaim: tuple[Reclaim, ...] = ()
    create: tuple[dict[str, Any], ...] = ()
    refuse: tuple[Refusal, ...] = ()


def _ours(pv: Mapping[str, Any]) -> bool:
    annotations = (pv.get("metadata") or {}).get("annotations") or {}
    return annotations.get(PROVISIONED_BY) == PROVISIONER


def _refusal(spec: Mapping[str, Any]) -> str:
    if spec.get("volumeMode") == "Block":
        return "the dev cluster provisions Filesystem volumes only (volumeMode Block asked)"
    if spec.get("selector"):
        return "a claim with a selector is not provisioned (it must match an existing PV)"
    if spec.get("dataSource") or spec.get("dataSourceRef"):
        return "the dev cluster cannot fill a volume from a dataSource"
    if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
        return "the claim requests no storage size (spec.resources.requests.storage)"
    return ""


def persistent_volume(claim: Mapping[str, Any], claims_root: Path) -> dict[str, Any]:
    meta = claim["metadata"]
    spec = claim.get("spec") or {}
    namespace = meta.get("namespace", "default")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": namespace, "name": meta["name"], "uid": meta["uid"]},
            "hostPath": {"path": str(claim_dir(claims_root, namespace, meta["name"])),
                         "type": "DirectoryOrCreate"},
        },
    }


def plan(
    claims: Iterable[Mapping[str, Any]], volumes: Iterable[Mapping[str, Any]], claims_root: Path
) -> VolumePlan:
    """Volumes to create for pending claims of the class, and ours whose claim is gone.

    ``volumes`` must be listed before ``claims``: a claim a PV names existed before the PV (it
    is created only for a claim seen), so a claim missing from the later list is really gone.
    """
    live = {m["uid"] for c in claims if not (m := c["metadata"]).get("deletionTimestamp")}
    live_or_deleting = {c["metadata"]["uid"] for c in claims}
    ours = [v for v in volumes if _ours(v)]
    provisioned = {((v.get("spec") or {}).get("claimRef") or {}).get("uid") for v in ours}
    reclaim = []
    for pv in ours:
        spec = pv.get("spec") or {}
        ref = spec.get("claimRef") or {}
        if ref.get("uid") in live_or_deleting or (pv.get("metadata") or {}).get(
                "deletionTimestamp"):
            continue
        if spec.get("persistentVolumeReclaimPolicy", "Delete") != "Delete":
            continue  # Retain: the PV and its folder stay for whoever changed the policy
        folder = Path(((spec.get("hostPath") or {}).get("path")) or "")
        reclaim.append(Reclaim(pv["metadata"]["name"], folder))
    create, refuse = [], []
    for claim in claims:
        meta, spec = claim["metadata"], claim.get("spec") or {}
        if (spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName")
                or meta["uid"] not in live or meta["uid"] in provisioned):
            continue
        problem = _refusal(spec)
        if problem:
            refuse.append(Refusal(meta.get("namespace", "default"), meta["name"], meta["uid"],
                                  problem))
        else:
            create.append(persistent_volume(claim, claims_root))
    return VolumePlan(tuple(reclaim), tuple(create), tuple(refuse))
