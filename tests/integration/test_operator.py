"""The operator end to end on the local cluster: `infleet run` in a process of its own, the
real API server, the local executor running build Jobs and serving pods for real.

Most tests here pin the deployment to the real-executor class (``classes.allow``), so what
they check is a real build and a real server; the whole-fleet test adds the simulated classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serve_harness import binary_body, decode_response, json_input
from support.cluster import Kube, wait_until
from support.operator import (
    Operator,
    apply_deployment,
    condition,
    deployment,
    describe,
    events_of,
    local_class,
    put_model,
    running_operator,
    settled_autoscaler,
    status_of,
    wait_available,
    wait_event_reasons,
    writes_over_idle_reconciles,
)

from infleet.api import GROUP, PLURAL, VERSION
from infleet.runtime.server.samples import small_cnn

pytestmark = pytest.mark.integration


@pytest.fixture
def operator(kube: Kube, namespace: str, store: dict[str, Path], tmp_path: Path,
             op_config: Path) -> Any:
    with running_operator(kube, tmp_path / "operator", "-n", namespace, config=op_config) as op:
        yield op


def cnn_spec(sha: str, only: str | None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "pvc://infleet-models/cnn.onnx", "sha256": sha, "name": "cnn"},
        # generous: what these tests check is not speed (a loaded CI machine profiles slowly)
        "slo": {"latencyP99Ms": 10000},
        "batching": {"maxBatchSize": 4, "maxQueueDelayMs": 2},
        "scaling": {"minReplicas": 1, "maxReplicas": 4},
    }
    if only:
        spec["classes"] = {"allow": [only]}
    spec.update(extra)
    return spec


def reference_logits(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"input": x})[0]
    return out


def serving_pod_ip(kube: Kube, namespace: str, name: str) -> str:
    pods = kube.core.list_namespaced_pod(
        namespace, label_selector=f"infleet.dev/deployment={name}").items
    ready = [p for p in pods if p.status.pod_ip and any(
        c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
    assert ready, "no Ready serving pod"
    ip: str = ready[0].status.pod_ip
    return ip


def test_a_deployment_is_built_served_verified_and_answers(
    kube: Kube, namespace: str, store: dict[str, Path], operator: Operator
) -> None:
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    apply_deployment(kube, deployment("cnn", namespace, cnn_spec(sha, local)))
    status = wait_available(kube, namespace, "cnn")

    assert status["phase"] == "Ready", describe(kube, namespace, "cnn")
    assert status["observedGeneration"] == 1
    cls = next(c for c in status["classes"] if c["name"] == local)
    engine = cls["engine"]
    assert engine["state"] == "Ready" and not engine.get("simulated")
    assert engine["backend"] == "onnxruntime" and engine["accuracy"][0]["passed"]
    assert [p["batchSize"] for p in engine["profile"]] == [1, 2, 4]
    # the engine really is in the store, under the key the status names
    manifest = store["engines"] / "engines" / engine["key"] / "manifest.json"
    assert manifest.is_file()
    assert cls["verified"] and cls["readyReplicas"] >= 1 and cls["weight"] == 100
    wait_event_reasons(kube, namespace, "cnn",
                       {"ClassPlaced", "BuildStarted", "BuildFinished", "Verified", "Available"})

    # A real OIP request, JSON and binary, answered with the model's own outputs.
    x = np.random.default_rng(7).standard_normal((2, 3, 48, 192)).astype(np.float32)
    want = reference_logits(store["models"] / "cnn.onnx", x)
    url = f"http://{serving_pod_ip(kube, namespace, 'cnn')}:8080/v2/models/cnn/infer"
    answer = httpx.post(url, json={"inputs": [json_input("input", x, "FP32")]}, timeout=30)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(decode_response(answer)["logits"], want, rtol=1e-4, atol=1e-5)
    body, headers = binary_body([("input", x, "FP32")])
    answer = httpx.post(url, content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(decode_response(answer)["logits"], want, rtol=1e-4, atol=1e-5)

    # Converged: once the autoscaler has seen the pods, reconciles go on (the drift timer
    # and the autoscaler's ticks), writes do not.
    settled_autoscaler(kube, namespace, "cnn")
    writes = writes_over_idle_reconciles(operator, count=3)
    assert not writes, f"{writes}\n{operator.tail()}"


def test_a_second_deployment_of_the_model_reuses_the_engine(
    kube: Kube, namespace: str, store: dict[str, Path], operator: Operator
) -> None:
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    apply_deployment(kube, deployment("first", namespace, cnn_spec(sha, local)))
    first = wait_available(kube, namespace, "first")
    started = operator.metrics().get('infleet_operator_builds_total{event="started"}')
    assert started == 1
    apply_deployment(kube, deployment("second", namespace, cnn_spec(sha, local)))
    second = wait_available(kube, namespace, "second")
    assert operator.metrics().get('infleet_operator_builds_total{event="started"}') == 1
    key = next(c["engine"]["key"] for c in first["classes"] if c["name"] == local)
    assert next(c["engine"]["key"] for c in second["classes"] if c["name"] == local) == key
    assert "BuildStarted" not in {r for _, r, _ in events_of(kube, namespace, "second")}


def test_bad_models_fail_their_class_clearly_and_the_operator_goes_on(
    kube: Kube, namespace: str, store: dict[str, Path], operator: Operator
) -> None:
    from infleet.runtime.zoo.synthetic import unsupported_op

    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    bad_sha = put_model(store["models"], "bad.onnx", unsupported_op)
    local = local_class(kube)
    cases = {
        "checksum": (cnn_spec("0" * 64, local), "sha256 mismatch"),
        "unreachable": ({**cnn_spec(sha, local), "model": {
            "uri": "http://127.0.0.1:9/missing.onnx"}}, "127.0.0.1:9"),
        "unsupported": ({**cnn_spec(bad_sha, local), "model": {
            "uri": "pvc://infleet-models/bad.onnx", "sha256": bad_sha}},
                        "cannot run the operators com.example:Frobnicate"),
    }
    for name, (spec, _) in cases.items():
        apply_deployment(kube, deployment(name, namespace, spec))
    apply_deployment(kube, deployment("good", namespace, cnn_spec(sha, local)))
    for name, (_, words) in cases.items():
        status = wait_until(
            lambda n=name: (s := status_of(kube, namespace, n)) and
            condition(s, "EnginesReady").get("reason") == "BuildFailed" and s,
            240, f"{name} to fail its build", lambda n=name: describe(kube, namespace, n))
        assert status["phase"] == "Failed"
        cls = next(c for c in status["classes"] if c["name"] == local)
        assert cls["engine"]["state"] == "Failed"
        assert words in cls["engine"]["message"], cls["engine"]["message"]
        def warned(n: str = name, w: str = words) -> bool:
            return any(t == "Warning" and r == "BuildFailed" and w in m
                       for t, r, m in events_of(kube, namespace, n))

        wait_until(warned, 30, f"a BuildFailed Warning on {name}",
                   lambda n=name: str(events_of(kube, namespace, n)))
    wait_available(kube, namespace, "good")


def test_deleting_the_deployment_removes_its_children_and_keeps_the_engine(
    kube: Kube, namespace: str, store: dict[str, Path], operator: Operator
) -> None:
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    apply_deployment(kube, deployment("cnn", namespace, cnn_spec(sha, local_class(kube))))
    status = wait_available(kube, namespace, "cnn")
    key = next(c["engine"]["key"] for c in status["classes"] if c["engine"].get("key"))
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn")

    def children() -> list[str]:
        selector = "infleet.dev/deployment=cnn"
        found = [d.metadata.name for d in
                 kube.apps.list_namespaced_deployment(namespace, label_selector=selector).items]
        found += [s.metadata.name for s in
                  kube.core.list_namespaced_service(namespace, label_selector=selector).items]
        found += [p.metadata.name for p in
                  kube.core.list_namespaced_pod(namespace, label_selector=selector).items]
        return found

    wait_until(lambda: not children(), 120, "the garbage collector to remove the children",
               lambda: str(children()))
    assert (store["engines"] / "engines" / key / "manifest.json").is_file()
    records = kube.core.list_namespaced_config_map(
        namespace, label_selector="infleet.dev/engine-record=true").items
    assert records, "the engine record must outlive the deployment"


def test_shape_hints_reach_the_build_and_missing_ones_fail_naming_each_dim(
    kube: Kube, namespace: str, store: dict[str, Path], operator: Operator
) -> None:
    """A paddle2onnx-shaped model ([N, 3, ?, ?]): without spec.model.inputs its class fails
    naming both open dimensions; with them it serves 48x192 crops."""
    from infleet.runtime.zoo.synthetic import open_spatial_cnn

    sha = put_model(store["models"], "crop.onnx", open_spatial_cnn)
    local = local_class(kube)
    model = {"uri": "pvc://infleet-models/crop.onnx", "sha256": sha, "name": "crop"}
    apply_deployment(kube, deployment("open", namespace, {**cnn_spec(sha, local),
                                                          "model": model}))
    hinted = {**model, "inputs": [{"name": "x", "shape": [-1, 3, 48, 192]}]}
    apply_deployment(kube, deployment("hinted", namespace, {**cnn_spec(sha, local),
                                                            "model": hinted}))
    status = wait_until(
        lambda: (s := status_of(kube, namespace, "open")) and s.get("phase") == "Failed" and s,
        240, "the open-shaped build to fail", lambda: describe(kube, namespace, "open"))
    message = next(c for c in status["classes"] if c["name"] == local)["engine"]["message"]
    assert "input 'x' dimension 2 ('?'); input 'x' dimension 3 ('?')" in message, message
    wait_available(kube, namespace, "hinted")
    x = np.random.default_rng(1).random((1, 3, 48, 192)).astype(np.float32)
    url = f"http://{serving_pod_ip(kube, namespace, 'hinted')}:8080/v2/models/crop/infer"
    answer = httpx.post(url, json={"inputs": [json_input("x", x, "FP32")]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert decode_response(answer)["softmax"].shape == (1, 2)
    wrong = np.zeros((1, 3, 48, 100), np.float32)
    refused = httpx.post(url, json={"inputs": [json_input("x", wrong, "FP32")]}, timeout=30)
    assert refused.status_code == 400 and "x" in refused.text


def _refusing_policy(namespace: str) -> list[dict[str, Any]]:
    """A real refusal, not a mock: an admission policy (CEL, evaluated by the API server)
    that refuses any Deployment of more than one replica in ``namespace``."""
    name = f"test-one-replica-{namespace}"
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{
                      "apiGroups": ["apps"], "apiVersions": ["v1"],
                      "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                  "validations": [{"expression": "object.spec.replicas <= 1",
                                   "message": "test policy: at most one replica here"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": namespace}}}}},
    ]


def test_a_refused_write_is_told_and_retried_until_the_api_takes_it(
    kube: Kube, namespace: str, store: dict[str, Path], operator: Operator
) -> None:
    from kubernetes.client.exceptions import ApiException
    from support.chart import apply as kubectl_apply
    from support.chart import delete as kubectl_delete

    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    apply_deployment(kube, deployment("cnn", namespace, cnn_spec(sha, local)))
    wait_available(kube, namespace, "cnn")
    serving = next(d.metadata.name for d in kube.apps.list_namespaced_deployment(namespace).items
                   if d.metadata.labels.get("infleet.dev/class") == local)
    policy = _refusing_policy(namespace)
    kubectl_apply(kube, policy)
    try:
        # the API server loads policies asynchronously: wait until it refuses for real
        def refuses() -> bool:
            try:
                kube.apps.patch_namespaced_deployment(
                    serving, namespace, {"spec": {"replicas": 2}}, dry_run="All")
            except ApiException as e:
                return "at most one replica" in (e.body or "")
            return False

        wait_until(refuses, 60, "the admission policy to take effect")
        # Pin two replicas: the operator's apply of the class Deployment is refused.
        kube.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn",
                                                   {"spec": {"replicas": 2}})
        warned = wait_until(
            lambda: [m for t, r, m in events_of(kube, namespace, "cnn")
                     if r == "WriteRefused" and t == "Warning"], 60,
            "a WriteRefused Event", operator.tail)
        assert "at most one replica" in warned[0] and "retrying" in warned[0], warned
        # retried with backoff, told once (not an Event per retry), and nothing else moved
        wait_until(lambda: operator.metrics().get(
            'infleet_operator_reconciles_total{outcome="retry"}', 0) >= 2, 60,
            "a second refused try", operator.tail)
        assert len([r for _, r, _ in events_of(kube, namespace, "cnn")
                    if r == "WriteRefused"]) == 1
        assert kube.apps.read_namespaced_deployment(serving, namespace).spec.replicas == 1
        assert "retrying in" in operator.tail(200)
    finally:
        kubectl_delete(kube, policy)
    # The policy gone, the next try goes through: two replicas, as pinned.
    wait_until(lambda: kube.apps.read_namespaced_deployment(serving, namespace).spec.replicas
               == 2, 90, "the pinned replicas once the API takes them", operator.tail)
    wait_until(lambda: status_of(kube, namespace, "cnn").get("desiredReplicas") == 2, 60,
               "the status to say 2", lambda: describe(kube, namespace, "cnn"))
