"""Volumes on the dev cluster are real: a claim of the default StorageClass binds at once to a
volume backed by the executor's claim folder, real pods share it, read-only mounts are honoured
where the executor says it can, pods on simulated nodes schedule with it, and deleting the
claim removes its volume and folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from support.cluster import Kube, pod_summary, wait_for_pod_phase, wait_until

from infleet.devcluster import mounts

pytestmark = pytest.mark.integration

LOCAL = {"nodeSelector": {"dev.infleet.dev/fleet-class": "x86-local"}}
READER = """\
import pathlib, sys
root = pathlib.Path(sys.argv[1])
text = (root / "engine.txt").read_text()
try:
    (root / "scribble").write_text("x")
    outcome = "wrote"
except OSError as e:
    outcome = f"errno {e.errno}"
pathlib.Path(sys.argv[2]).write_text(f"{text}|{outcome}")
"""


def _claim(name: str, **spec: object) -> dict:
    return {"metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Gi"}}, **spec}}


def _pod(name: str, command: list[str], mount: dict, read_only: bool = False) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            **LOCAL,
            "restartPolicy": "Never",
            "volumes": [{"name": "store",
                         "persistentVolumeClaim": {"claimName": "infleet-engines",
                                                   "readOnly": read_only}}],
            "containers": [{"name": "c", "image": "x", "command": command,
                            "volumeMounts": [{"name": "store", **mount}]}],
        },
    }


def _bound(kube: Kube, namespace: str, name: str) -> object:
    return wait_until(
        lambda: (c := kube.core.read_namespaced_persistent_volume_claim(name, namespace))
        .status.phase == "Bound" and c,
        60, f"claim {namespace}/{name} to bind",
        lambda: str(kube.core.read_namespaced_persistent_volume_claim(name, namespace).status))


def test_claim_binds_and_real_pods_share_it_read_only_where_enforced(
    kube: Kube, namespace: str
) -> None:
    from kubernetes import client

    sc = client.StorageV1Api(kube.api).read_storage_class("infleet-local")
    assert sc.metadata.annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc.volume_binding_mode == "Immediate" and sc.reclaim_policy == "Delete"
    kube.core.create_namespaced_persistent_volume_claim(namespace, _claim("infleet-engines"))
    claim = _bound(kube, namespace, "infleet-engines")
    assert claim.spec.storage_class_name == "infleet-local"  # the default class, not named
    pv = kube.core.read_persistent_volume(claim.spec.volume_name)
    assert pv.spec.claim_ref.uid == claim.metadata.uid
    assert pv.spec.access_modes == ["ReadWriteMany"]
    folder = Path(pv.spec.host_path.path)
    assert folder.parts[-3:] == ("claims", namespace, "infleet-engines") and folder.is_dir()

    kube.core.create_namespaced_pod(namespace, _pod(
        "writer", ["python", "-c", "import sys; open(sys.argv[1], 'w').write('engine v1')",
                   "/store/engine.txt"], {"mountPath": "/store"}))
    writer = wait_for_pod_phase(kube, namespace, "writer", ("Succeeded", "Failed"))
    assert writer.status.phase == "Succeeded", pod_summary(kube, namespace, "writer")
    assert (folder / "engine.txt").read_text() == "engine v1"  # the volume's folder

    # The build Job's mount of a pvc:// model: read-only at /mnt/pvc/<claim>.
    kube.core.create_namespaced_pod(namespace, _pod(
        "reader", ["python", "-c", READER, "/mnt/pvc/infleet-engines", "/dev/termination-log"],
        {"mountPath": "/mnt/pvc/infleet-engines"}, read_only=True))
    reader = wait_for_pod_phase(kube, namespace, "reader", ("Succeeded", "Failed"))
    assert reader.status.phase == "Succeeded", pod_summary(kube, namespace, "reader")
    message = reader.status.container_statuses[0].state.terminated.message
    node = kube.core.read_node(reader.spec.node_name)
    enforced = node.metadata.annotations[mounts.ANNOTATION]
    if enforced == "enforced":
        assert message == "engine v1|errno 30", message  # EROFS
        assert not (folder / "scribble").exists()
    else:  # the executor says it cannot; then the write goes through, as it says
        assert enforced == "not-enforced" and message == "engine v1|wrote", message


def test_pods_on_simulated_nodes_schedule_with_a_claim(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_persistent_volume_claim(namespace, _claim("infleet-engines"))
    _bound(kube, namespace, "infleet-engines")
    pod = _pod("sim", ["serve"], {"mountPath": "/store", "readOnly": True})
    pod["spec"]["nodeSelector"] = {"dev.infleet.dev/fleet-class": "x86"}  # a kwok class
    pod["spec"]["restartPolicy"] = "Always"
    kube.core.create_namespaced_pod(namespace, pod)
    running = wait_for_pod_phase(kube, namespace, "sim", ("Running",))
    assert running.spec.node_name.startswith("x86-")


def test_deleting_the_claim_removes_its_volume_and_folder(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_persistent_volume_claim(namespace, _claim("scratch"))
    claim = _bound(kube, namespace, "scratch")
    pv_name = claim.spec.volume_name
    folder = Path(kube.core.read_persistent_volume(pv_name).spec.host_path.path)
    (folder / "left-over").write_text("x")
    kube.core.delete_namespaced_persistent_volume_claim("scratch", namespace)

    def pv_gone() -> bool:
        try:
            kube.core.read_persistent_volume(pv_name)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until(pv_gone, 60, f"volume {pv_name} to be reclaimed",
               lambda: str(kube.core.read_persistent_volume(pv_name).status))
    assert not folder.exists()


def test_a_block_claim_is_refused_with_an_event(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_persistent_volume_claim(
        namespace, _claim("raw", volumeMode="Block"))

    def refusal() -> str | None:
        events = kube.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=raw,reason=ProvisioningFailed").items
        return events[0].message if events else None

    message = wait_until(refusal, 60, "a ProvisioningFailed event on the block claim")
    assert "Filesystem volumes only" in message
    claim = kube.core.read_namespaced_persistent_volume_claim("raw", namespace)
    assert claim.status.phase == "Pending" and not claim.spec.volume_name
