"""The chart's RBAC is enough, proven on the real API server: the chart's ServiceAccount,
ClusterRoles and bindings (rendered by helm, applied with kubectl), a token for that
ServiceAccount from the TokenRequest API, and the operator's end-to-end flow run with only
that token, with the command line the chart's StatefulSet gives it, in a namespace that
enforces Pod Security `restricted` (so every pod it creates, GPU classes' too, is admitted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from serve_harness import decode_response, json_input
from support.chart import (
    apply,
    can_i,
    delete,
    objects,
    of_kind,
    service_account_kubeconfig,
    template,
)
from support.cluster import Kube, wait_until
from support.operator import (
    Operator,
    apply_deployment,
    claim,
    deployment,
    describe,
    local_class,
    put_model,
    short_interval_config,
    status_of,
)

from infleet.runtime.server.samples import small_cnn

pytestmark = pytest.mark.integration

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "RoleBinding",
              "KopfPeering")


@dataclasses.dataclass
class Installed:
    release: str
    docs: list[dict[str, Any]]
    kubeconfig: Path
    config: Path
    args: list[str]


def chart_config(namespace: str) -> dict[str, Any]:
    """The dev cluster's operator configuration, as chart values (nominal images: the local
    executor runs `infleet` from the venv), with a short drift interval."""
    return short_interval_config()


@pytest.fixture
def restricted(kube: Kube, crd: Path, namespace: str) -> str:
    kube.core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    return namespace


@pytest.fixture
def installed(kube: Kube, restricted: str, tmp_path: Path) -> Iterator[Installed]:
    namespace = restricted
    release = f"rbac-{namespace}"
    values = {"watchNamespaces": [namespace], "config": chart_config(namespace)}
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    docs = objects(template(release=release, namespace=namespace, files=[values_file]))
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    apply(kube, rbac)
    try:
        sa = of_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
        kubeconfig = service_account_kubeconfig(kube, namespace, sa, tmp_path / "sa.kubeconfig")
        config = tmp_path / "config.yaml"
        config.write_text(of_kind(docs, "ConfigMap")[0]["data"]["config.yaml"])
        container = of_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
        # The chart's own argv, with what the pod would expand: ordinal 1's priority; config,
        # health address and kubeconfig are given again by Operator.start (the last one wins).
        args = [a.replace("$(INFLEET_PRIORITY)", "1") for a in container["args"]]
        assert args[0] == "run"
        yield Installed(release, docs, kubeconfig, config, args[1:])
    finally:
        delete(kube, rbac)


def test_the_service_account_may_do_only_what_the_chart_grants(
    kube: Kube, installed: Installed, restricted: str
) -> None:
    sa = installed.kubeconfig
    assert can_i(kube, sa, "list", "nodes", None)
    assert can_i(kube, sa, "patch", "inferencedeployments.infleet.dev", restricted)
    assert can_i(kube, sa, "create", "jobs.batch", restricted)
    assert not can_i(kube, sa, "get", "secrets", restricted)
    assert not can_i(kube, sa, "list", "secrets", None)
    assert not can_i(kube, sa, "get", "nodes", None)  # list and watch only
    assert not can_i(kube, sa, "create", "deployments.apps", "default")  # not a watched namespace
    assert not can_i(kube, sa, "delete", "configmaps", restricted)  # engine records stay


def test_the_namespace_really_enforces_restricted(kube: Kube, restricted: str) -> None:
    # the control for the admission check below: a pod without the restricted settings is
    # refused here (the API server runs the PodSecurity admission plugin)
    from kubernetes.client.exceptions import ApiException

    pod = {"metadata": {"name": "plain"},
           "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}
    with pytest.raises(ApiException) as refused:
        kube.core.create_namespaced_pod(restricted, pod)
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body


def test_the_operator_runs_end_to_end_as_the_charts_service_account(
    kube: Kube, installed: Installed, restricted: str, tmp_path: Path
) -> None:
    namespace = restricted
    models = claim(kube, namespace, "infleet-models")
    claim(kube, namespace, "infleet-engines")
    sha = put_model(models, "cnn.onnx", small_cnn)
    local = local_class(kube)
    as_sa = dataclasses.replace(kube, kubeconfig=installed.kubeconfig)
    op = Operator(as_sa, tmp_path / "operator", [*installed.args, "--config",
                                                 str(installed.config)]).start()
    try:
        # Two deployments of the model: one on the real class (a real build, server and OIP
        # answer), one on a GPU class (simulated by kwok: a build pod and serving pods, GPU
        # requests and tolerations, all admitted). One deployment allowed both would place
        # the GPU class only when the real class's measured capacity falls short of the GPU
        # class's nominal one, which depends on the machine's speed.
        common = {
            "model": {"uri": "pvc://infleet-models/cnn.onnx", "sha256": sha, "name": "cnn"},
            "slo": {"latencyP99Ms": 10000},
            "batching": {"maxBatchSize": 4, "maxQueueDelayMs": 2},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        }
        apply_deployment(kube, deployment("cnn", namespace, {**common,
                                                               "classes": {"allow": [local]}}))
        apply_deployment(kube, deployment("gpu", namespace, {
            **common, "classes": {"allow": ["nvidia-t4"]}}))
        status = wait_until(
            lambda: (s := _status(kube, namespace)) and any(
                c["type"] == "Available" and c["status"] == "True"
                for c in s.get("conditions") or []) and s,
            300, "cnn to become Available as the ServiceAccount",
            lambda: describe(kube, namespace, "cnn") + "\n" + op.tail())
        classes = {c["name"]: c for c in status["classes"]}
        assert classes[local]["verified"]

        # a real OIP request to the real serving pod
        x = np.random.default_rng(5).standard_normal((1, 3, 48, 192)).astype(np.float32)
        pod_ip = _ready_pod_ip(kube, namespace, local)
        answer = httpx.post(f"http://{pod_ip}:8080/v2/models/cnn/infer",
                            json={"inputs": [json_input("input", x, "FP32")]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert decode_response(answer)["logits"].shape[0] == 1

        # Every pod the operator made was admitted under `restricted`, the GPU class's too.
        def gpu_components() -> set[str]:
            pods = kube.core.list_namespaced_pod(
                namespace, label_selector="infleet.dev/deployment=gpu").items
            return {p.metadata.labels.get("app.kubernetes.io/component", "") for p in pods
                    if p.metadata.labels.get("infleet.dev/class", "").startswith("nvidia-t4")}

        wait_until(lambda: "serving" in gpu_components(), 120, "serving pods on nvidia-t4",
                   lambda: f"{gpu_components()}\n{describe(kube, namespace, 'gpu')}")
        gpu = next(c for c in status_of(kube, namespace, "gpu")["classes"]
                   if c["name"].startswith("nvidia-t4"))
        assert gpu["engine"]["simulated"] and gpu["desiredReplicas"] >= 1, gpu
        refused = [(e.involved_object.name, e.message) for e in
                   kube.core.list_namespaced_event(namespace).items
                   if e.reason == "FailedCreate" or "forbidden" in (e.message or "").lower()]
        assert refused == []
        # and the operator was never refused anything by RBAC
        log = op.log_path.read_text(errors="replace")
        # (kube.py logs refusals as ": 403 <message>"; kopf's as "APIForbiddenError")
        assert ": 403 " not in log and "forbidden" not in log.lower(), op.tail()
    finally:
        op.stop()


def _status(kube: Kube, namespace: str) -> dict[str, Any]:
    return status_of(kube, namespace, "cnn")


def _ready_pod_ip(kube: Kube, namespace: str, node_class: str) -> str:
    pods = kube.core.list_namespaced_pod(
        namespace, label_selector=f"infleet.dev/deployment=cnn,infleet.dev/class={node_class}"
    ).items
    ready = [p for p in pods if p.status.pod_ip and any(
        c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
    assert ready, "no Ready serving pod on the real class"
    ip: str = ready[0].status.pod_ip
    return ip
