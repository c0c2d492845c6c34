"""`helm install`, `upgrade` and `uninstall` of the chart on the local cluster's real API server.

What runs the operator pods here: the StatefulSet controller creates them (so Pod Security
`restricted` admits them in the release namespace); kwok marks those on its nodes Running. The
operator inside such a pod cannot reach the API server on this cluster: there is no Service
network (no kube-proxy, and `--endpoint-reconciler-type none` leaves the `kubernetes` Service
without endpoints), so the in-cluster address a pod gets is unroutable. That the operator works
with exactly the chart's ServiceAccount is proven in test_chart_rbac.py with a TokenRequest token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.chart import CHART, helm
from support.cluster import Kube, wait_until

pytestmark = pytest.mark.integration

FLEET_CLASS_LABEL = "dev.infleet.dev/fleet-class"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def _helm(kube: Kube, *args: str) -> str:
    return helm(*args, "--kubeconfig", str(kube.kubeconfig)).stdout


def _owned(kube: Kube, release: str, namespace: str) -> dict[str, list[str]]:
    selector = f"app.kubernetes.io/instance={release}"
    found = {
        "StatefulSet": kube.apps.list_namespaced_stateful_set(namespace, label_selector=selector),
        "ConfigMap": kube.core.list_namespaced_config_map(namespace, label_selector=selector),
        "ServiceAccount": kube.core.list_namespaced_service_account(
            namespace, label_selector=selector),
        "Service": kube.core.list_namespaced_service(namespace, label_selector=selector),
        "ClusterRole": kube.rbac.list_cluster_role(label_selector=selector),
        "ClusterRoleBinding": kube.rbac.list_cluster_role_binding(label_selector=selector),
    }
    out = {kind: [o.metadata.name for o in items.items] for kind, items in found.items()}
    peerings = kube.custom.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                      label_selector=selector)["items"]
    out["ClusterKopfPeering"] = [p["metadata"]["name"] for p in peerings]
    return {k: v for k, v in out.items() if v}


def test_install_upgrade_uninstall(kube: Kube, crd: Path, namespace: str) -> None:
    kube.core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    release = f"i-{namespace}"
    _helm(kube, "install", release, str(CHART), "-n", namespace,
          "--set", "peering.name=" + release,
          # onto a kwok class: on the real-executor node the pod would be a process of this
          # machine, which could reach the API server with whatever kubeconfig it inherits
          "--set-string", f"nodeSelector.{FLEET_CLASS_LABEL.replace('.', chr(92) + '.')}=x86")
    try:
        owned = _owned(kube, release, namespace)
        assert set(owned) == {"StatefulSet", "ConfigMap", "ServiceAccount", "Service",
                              "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}, owned
        assert len(owned["ClusterRole"]) == 2
        name = owned["StatefulSet"][0]

        # Both operator pods were admitted under `restricted` (the controller created them).
        def pods() -> list[str] | None:
            items = kube.core.list_namespaced_pod(
                namespace, label_selector=f"app.kubernetes.io/instance={release}").items
            return sorted(p.metadata.name for p in items) if len(items) == 2 else None

        assert wait_until(pods, 60, "two operator pods") == [f"{name}-0", f"{name}-1"]
        refused = [e.message for e in kube.core.list_namespaced_event(namespace).items
                   if e.reason == "FailedCreate"]
        assert refused == []

        # A changed value rolls the operator: the pod template (its config checksum) changes.
        before = kube.apps.read_namespaced_stateful_set(name, namespace)
        _helm(kube, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
              "--set", "config.reconcileIntervalSeconds=10")
        after = kube.apps.read_namespaced_stateful_set(name, namespace)
        key = "checksum/config"
        assert after.spec.template.metadata.annotations[key] != (
            before.spec.template.metadata.annotations[key])
        wait_until(lambda: kube.apps.read_namespaced_stateful_set(name, namespace)
                   .status.update_revision != before.status.update_revision, 30,
                   "a new StatefulSet revision")
        cm = kube.core.read_namespaced_config_map(f"{name}-config", namespace)
        assert "reconcileIntervalSeconds: 10" in cm.data["config.yaml"]
    finally:
        _helm(kube, "uninstall", release, "-n", namespace, "--wait", "--timeout", "60s")

    # Nothing of the release is left but the CRDs (Helm never deletes those).
    wait_until(lambda: not _owned(kube, release, namespace), 60, "the release's objects to go",
               lambda: str(_owned(kube, release, namespace)))
    from kubernetes import client

    names = {c.metadata.name for c in client.ApiextensionsV1Api(kube.api)
             .list_custom_resource_definition().items}
    assert {"inferencedeployments.infleet.dev", "kopfpeerings.kopf.dev"} <= names
