"""The dev cluster's Gateway API implementation is real: Traefik routes an HTTPRoute by its
hostname to real pods of the local class, splits by the backendRefs' weights, and drops a pod
that turns unready from the rotation."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx
import pytest
from kubernetes.client.exceptions import ApiException
from support.cluster import Kube, pod_summary, wait_until

pytestmark = pytest.mark.integration

GATEWAY_API = ("gateway.networking.k8s.io", "v1")
HOST = "weights.infleet.test"
LOCAL = {"nodeSelector": {"dev.infleet.dev/fleet-class": "x86-local"}}


def _server_pod(name: str, app: str, folder: Path) -> dict:
    # The pod serves its own folder: /name says who answered, /ready is its readiness probe.
    folder.mkdir()
    (folder / "name").write_text(name)
    (folder / "ready").write_text("ok")
    return {
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            **LOCAL,
            "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "site", "hostPath": {"path": str(folder)}}],
            "containers": [{
                "name": "srv", "image": "x",
                "command": ["python", "-m", "http.server", "--bind", "$(POD_IP)",
                            "--directory", "/srv", "8080"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "volumeMounts": [{"name": "site", "mountPath": "/srv"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                   "periodSeconds": 1, "failureThreshold": 1},
            }],
        },
    }


def _service(name: str) -> dict:
    return {"metadata": {"name": name},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}


def _answers(client: httpx.Client, url: str, n: int) -> collections.Counter[str]:
    """Who answered each of ``n`` requests (the status code when it was not a 200)."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        r = client.get(f"{url}/name", headers={"Host": HOST})
        seen[r.text if r.status_code == 200 else f"HTTP {r.status_code}"] += 1
    return seen


def test_httproute_weights_split_traffic_and_unready_pods_leave_the_rotation(
    kube: Kube, namespace: str, gateway_url: str, tmp_path: Path
) -> None:
    for name, app in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        kube.core.create_namespaced_pod(namespace, _server_pod(name, app, tmp_path / name))
    for app in ("a", "b"):
        kube.core.create_namespaced_service(namespace, _service(app))
    kube.custom.create_namespaced_custom_object(*GATEWAY_API, namespace, "httproutes", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split"},
        "spec": {
            "parentRefs": [{"name": "infleet", "namespace": "infleet-system"}],
            "hostnames": [HOST],
            "rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": 3},
                                       {"name": "b", "port": 80, "weight": 1}]}],
        },
    })

    def route_conditions() -> dict[str, str]:
        route = kube.custom.get_namespaced_custom_object(*GATEWAY_API, namespace, "httproutes",
                                                         "split")
        parents = route.get("status", {}).get("parents") or [{}]
        return {c["type"]: c["status"] for c in parents[0].get("conditions") or []}

    wait_until(lambda: route_conditions().get("Accepted") == "True", 60,
               "Traefik to accept the HTTPRoute", lambda: str(route_conditions()))

    with httpx.Client(timeout=5) as client:
        def every_pod_answers() -> collections.Counter[str] | None:
            seen = _answers(client, gateway_url, 16)
            return seen if set(seen) == {"a1", "a2", "b1"} else None

        wait_until(every_pod_answers, 90, "all three pods to answer through the gateway",
                   lambda: f"{_answers(client, gateway_url, 8)}; " + "; ".join(
                       pod_summary(kube, namespace, n) for n in ("a1", "a2", "b1")))
        seen = _answers(client, gateway_url, 200)
        print(f"\n3:1 route over 200 requests: {dict(seen)}")  # pytest -s shows it
        # Traefik's weighted round robin is deterministic (earliest deadline first), so 3:1 over
        # 200 requests is 150:50 up to the position the rotation started at; +-20 is generous
        # and still far from an even split (100) or a lost backend (0 or 200).
        assert sum(seen.values()) == seen["a1"] + seen["a2"] + seen["b1"] == 200, seen
        assert 130 <= seen["a1"] + seen["a2"] <= 170, seen
        assert seen["a1"] > 0 and seen["a2"] > 0, seen  # Service a balances its two pods

        (tmp_path / "a1" / "ready").unlink()  # a1's readiness probe now fails

        def a1_left() -> collections.Counter[str] | None:
            recent = _answers(client, gateway_url, 20)
            return recent if set(recent) == {"a2", "b1"} else None

        wait_until(a1_left, 60, "a1 to leave the rotation after turning unready",
                   lambda: f"{_answers(client, gateway_url, 8)}; "
                           + pod_summary(kube, namespace, "a1"))
        after = _answers(client, gateway_url, 80)
        assert set(after) == {"a2", "b1"}, after  # no errors, and a1 gets nothing
        assert 50 <= after["a2"] <= 70, after  # a's whole share now goes to a2


def test_traefik_user_reads_what_it_routes_and_may_not_touch_pods(kube: Kube) -> None:
    from kubernetes import client

    from infleet.devcluster.cluster import kube_client

    # Every cluster's work directory holds the kubeconfig of Traefik's own user.
    api = kube_client(kube.kubeconfig.parent / "gateway.kubeconfig")
    try:
        core = client.CoreV1Api(api)
        assert core.list_service_for_all_namespaces().items is not None
        assert client.CustomObjectsApi(api).list_cluster_custom_object(
            *GATEWAY_API, "gatewayclasses")["items"]
        for forbidden in (lambda: core.list_pod_for_all_namespaces(),
                          lambda: core.create_namespace({"metadata": {"name": "nope"}}),
                          lambda: core.delete_namespaced_service("kubernetes", "default")):
            with pytest.raises(ApiException) as info:
                forbidden()
            assert info.value.status == 403, info.value.body
    finally:
        api.close()
