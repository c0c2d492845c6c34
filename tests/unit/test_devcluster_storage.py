"""The dev cluster's volumes without a cluster: the provisioner's plan, the executor's claim
folders and read-only mounts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infleet.devcluster import mounts, podspec, volumes

ROOT = Path("/claims")


def claim(name: str, uid: str, **spec) -> dict:
    body = {"storageClassName": "infleet-local", "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}}}
    body.update(spec)
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid}, "spec": body}


def pv_for(c: dict) -> dict:
    return volumes.persistent_volume(c, ROOT)


def test_a_pending_claim_gets_a_volume_bound_to_it_in_its_folder() -> None:
    c = claim("infleet-engines", "u1")
    plan = volumes.plan([c], [], ROOT)
    (pv,) = plan.create
    assert pv["metadata"]["name"] == "pvc-u1"
    assert pv["metadata"]["annotations"] == {
        "pv.kubernetes.io/provisioned-by": volumes.PROVISIONER}
    spec = pv["spec"]
    assert spec["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "namespace": "ns", "name": "infleet-engines", "uid": "u1"}
    assert spec["accessModes"] == ["ReadWriteMany"] and spec["capacity"] == {"storage": "1Gi"}
    assert spec["persistentVolumeReclaimPolicy"] == "Delete"
    assert "nodeAffinity" not in spec  # pods on every node, kwok's too, may use it
    # The folder the executor gives pods for this claim: both sides use podspec.claim_dir.
    assert spec["hostPath"]["path"] == str(podspec.claim_dir(ROOT, "ns", "infleet-engines"))
    assert plan.reclaim == () and plan.refuse == ()


def test_bound_other_class_and_provisioned_claims_get_nothing() -> None:
    bound = claim("a", "u1", volumeName="pvc-x")
    other = claim("b", "u2", storageClassName="fast")
    done = claim("c", "u3")
    plan = volumes.plan([bound, other, done], [pv_for(done)], ROOT)
    assert plan == volumes.VolumePlan()


def test_a_volume_whose_claim_is_gone_is_reclaimed_before_a_new_claim_of_the_same_name() -> None:
    old = claim("store", "old")
    new = claim("store", "new")
    plan = volumes.plan([new], [pv_for(old)], ROOT)
    assert plan.reclaim == (volumes.Reclaim("pvc-old", ROOT / "ns" / "store"),)
    assert [pv["metadata"]["name"] for pv in plan.create] == ["pvc-new"]


def test_deleting_claims_keep_their_volume_and_foreign_or_retained_volumes_stay() -> None:
    deleting = claim("a", "u1")
    deleting["metadata"]["deletionTimestamp"] = "now"  # still used by a pod (pvc-protection)
    foreign = {"metadata": {"name": "hand-made"}, "spec": {"claimRef": {"uid": "gone"}}}
    retained = pv_for(claim("r", "gone-too"))
    retained["spec"]["persistentVolumeReclaimPolicy"] = "Retain"
    plan = volumes.plan([deleting], [pv_for(deleting), foreign, retained], ROOT)
    assert plan == volumes.VolumePlan()


@pytest.mark.parametrize(("spec", "message"), [
    ({"volumeMode": "Block"}, "Filesystem volumes only"),
    ({"selector": {"matchLabels": {"a": "b"}}}, "with a selector"),
    ({"dataSource": {"kind": "PersistentVolumeClaim", "name": "x"}}, "dataSource"),
    ({"resources": {}}, "requests no storage size"),
])
def test_claims_the_provisioner_cannot_serve_are_refused_with_a_reason(spec, message) -> None:
    plan = volumes.plan([claim("x", "u1", **spec)], [], ROOT)
    (refusal,) = plan.refuse
    assert message in refusal.message and refusal.claim == "x" and not plan.create


def test_storage_class_is_the_default_and_binds_at_once() -> None:
    sc = volumes.storage_class()
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["volumeBindingMode"] == "Immediate" and sc["reclaimPolicy"] == "Delete"


def _env(tmp: Path) -> podspec.Environment:
    return podspec.Environment(pod_ip="127.1.0.1", host_ip="127.0.0.1", api_host="127.0.0.1",
                               api_port=6443, base_path="/usr/bin", pods_root=tmp / "pods",
                               claims_root=tmp / "claims")


def test_claim_mounts_map_to_the_claim_folder_and_carry_read_only(tmp_path: Path) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "volumes": [{"name": "rw", "persistentVolumeClaim": {"claimName": "store"}},
                        {"name": "ro", "persistentVolumeClaim": {"claimName": "models",
                                                                 "readOnly": True}}],
            "containers": [{"name": "c", "command": ["cat", "/mnt/pvc/models/m.onnx"],
                            "volumeMounts": [
                                {"name": "rw", "mountPath": "/store"},
                                {"name": "rw", "mountPath": "/view", "readOnly": True},
                                {"name": "ro", "mountPath": "/mnt/pvc/models"}]}],
        },
    }
    (c,) = podspec.plan_pod(pod, _env(tmp_path)).containers
    by_path = {m.mount_path: m for m in c.mounts}
    assert by_path["/store"].local_path == tmp_path / "claims" / "ns" / "store"
    assert not by_path["/store"].read_only
    assert by_path["/view"].read_only  # the mount's readOnly
    assert by_path["/mnt/pvc/models"].read_only  # the claim volume's readOnly
    assert c.argv == ("cat", str(tmp_path / "claims" / "ns" / "models" / "m.onnx"))


def test_read_only_bind_is_enforced_for_the_child_only_where_supported(tmp_path: Path) -> None:
    folder = tmp_path / "claim"
    folder.mkdir()
    script = ("import sys\ntry:\n    open(sys.argv[1] + '/x', 'w').write('x')\n"
              "except OSError as e:\n    print(e.errno)\nelse:\n    print('wrote')\n")
    if not mounts.supported():
        with pytest.raises(OSError):  # the probe's answer is the function's behaviour here
            mounts.make_read_only((str(folder),))
        return
    out = subprocess.run(  # the pod runner does exactly this
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True,
        preexec_fn=lambda: mounts.make_read_only((str(folder),)),
    ).stdout.strip()
    assert out == "30"  # EROFS in the child
    (folder / "y").write_text("y")  # this process still writes there
    assert not (folder / "x").exists()
