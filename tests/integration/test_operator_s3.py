"""The operator end to end with its engine store on S3, installed as the chart installs it:
versitygw (tests/support/s3.py) as the bucket; the chart rendered with `config.engineStore:
s3://...` and the Secret's name in its values, its RBAC applied, and the operator run with a
token of the chart's ServiceAccount (which may not read Secrets) on the chart's ConfigMap, in
a namespace that enforces Pod Security `restricted`. The credentials are in a Secret that only
the pods read; the build Job on the real-executor class uploads the engine; serving pods pull
it into an emptyDir in their init container before they turn ready. No claim holds engines
here: the namespace has only the claim the model file lies on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from serve_harness import decode_response, json_input
from support.chart import apply, can_i, delete, objects, of_kind, service_account_kubeconfig
from support.chart import template as helm_template
from support.cluster import Kube, wait_until
from support.operator import (
    Operator,
    apply_deployment,
    claim,
    condition,
    deployment,
    describe,
    events_of,
    local_class,
    put_model,
    status_of,
    wait_available,
)
from support.s3 import ACCESS, SECRET, S3Server, bucket_server
from test_chart_rbac import RBAC_KINDS, RESTRICTED, chart_config
from test_operator import cnn_spec, reference_logits, serving_pod_ip

from infleet.runtime.server.samples import small_cnn
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration

BUCKET = "infleet-engines"
STORE_SECRET = "engine-store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with bucket_server(tmp_path_factory, "s3-store", BUCKET) as server:
        yield server


def put_secret(kube: Kube, namespace: str, secret_key: str | None) -> None:
    """The store's Secret with these credentials (replaced if there); None deletes it."""
    from kubernetes.client.exceptions import ApiException

    try:
        kube.core.delete_namespaced_secret(STORE_SECRET, namespace)
    except ApiException as e:
        if e.status != 404:
            raise
    if secret_key is not None:
        kube.core.create_namespaced_secret(namespace, {
            "metadata": {"name": STORE_SECRET},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": secret_key},
        })


@pytest.fixture
def operator(kube: Kube, crd: Path, namespace: str, s3: S3Server,
             tmp_path: Path) -> Iterator[Operator]:
    kube.core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    config = chart_config(namespace)
    config.update(engineStore=f"s3://{BUCKET}/{namespace}", engineStoreSecret=STORE_SECRET,
                  engineStoreEndpoint=s3.endpoint)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"watchNamespaces": [namespace], "config": config}))
    docs = objects(helm_template(release=f"s3-{namespace}", namespace=namespace,
                                 files=[values]))
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    apply(kube, rbac)
    op: Operator | None = None
    try:
        sa = of_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
        kubeconfig = service_account_kubeconfig(kube, namespace, sa, tmp_path / "sa.kubeconfig")
        assert not can_i(kube, kubeconfig, "get", "secrets", namespace)
        chart_cm = tmp_path / "config.yaml"
        chart_cm.write_text(of_kind(docs, "ConfigMap")[0]["data"]["config.yaml"])
        container = of_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
        args = [a.replace("$(INFLEET_PRIORITY)", "1") for a in container["args"]][1:]
        op = Operator(dataclasses.replace(kube, kubeconfig=kubeconfig), tmp_path / "operator",
                      [*args, "--config", str(chart_cm)]).start()
        yield op
    finally:
        if op is not None:
            op.stop()
        delete(kube, rbac)


def warnings_of(kube: Kube, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(r, m) for t, r, m in events_of(kube, namespace, name) if t == "Warning"]


def class_status(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status.get("classes") or [] if c["name"] == name)
    return found


def test_the_s3_store_builds_uploads_pulls_serves_reuses_and_says_what_is_wrong(
    kube: Kube, namespace: str, s3: S3Server, operator: Operator
) -> None:
    models = claim(kube, namespace, "infleet-models")
    sha = put_model(models, "cnn.onnx", small_cnn)
    local = local_class(kube)
    put_secret(kube, namespace, SECRET)

    # 1. A real build on the local class, uploaded to the bucket: blobs, then the manifest.
    apply_deployment(kube, deployment("first", namespace, cnn_spec(sha, local)))
    first = wait_available(kube, namespace, "first")
    key = class_status(first, local)["engine"]["key"]
    prefix = s3.root / BUCKET / namespace
    manifest = json.loads((prefix / "engines" / key / "manifest.json").read_text())
    assert manifest["files"], manifest
    for name, digest in manifest["files"].items():
        blob = prefix / "engines" / key / "blobs" / digest
        assert blob.is_file(), f"{name}: blob {digest} missing"
    assert list((prefix / "requests").glob("*.json")), "the build request's record"

    # 2. The serving pod pulled the engine in its init container and answers with the
    #    model's own outputs.
    pods = kube.core.list_namespaced_pod(namespace, label_selector="infleet.dev/deployment=first")
    init = pods.items[0].status.init_container_statuses
    assert [(c.name, c.state.terminated.exit_code) for c in init] == [("pull-engine", 0)]
    x = np.random.default_rng(3).standard_normal((2, 3, 48, 192)).astype(np.float32)
    url = f"http://{serving_pod_ip(kube, namespace, 'first')}:8080/v2/models/cnn/infer"
    answer = httpx.post(url, json={"inputs": [json_input("input", x, "FP32")]}, timeout=30)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(decode_response(answer)["logits"],
                               reference_logits(models / "cnn.onnx", x), rtol=1e-4, atol=1e-5)

    # 3. A second deployment of the model reuses the engine: no second build.
    apply_deployment(kube, deployment("second", namespace, cnn_spec(sha, local)))
    second = wait_available(kube, namespace, "second")
    assert class_status(second, local)["engine"]["key"] == key
    assert operator.metrics().get('infleet_operator_builds_total{event="started"}') == 1
    assert "BuildStarted" not in {r for _, r, _ in events_of(kube, namespace, "second")}

    # 4. Wrong credentials: a serving pod cannot pull its engine. The class says why, one
    #    Warning Event says it, and the pod retries (Pending, CrashLoopBackOff), not silently.
    put_secret(kube, namespace, "not-the-secret")
    apply_deployment(kube, deployment("third", namespace, cnn_spec(sha, local)))
    status = wait_until(
        lambda: (s := status_of(kube, namespace, "third")) and s.get("classes")
        and class_status(s, local).get("problem") and s,
        120, "the third deployment's class to report its failing pods",
        lambda: describe(kube, namespace, "third"))
    problem = class_status(status, local)["problem"]
    assert "init container pull-engine" in problem and "SignatureDoesNotMatch" in problem, problem
    assert condition(status, "Available").get("reason") == "PodsFailing", status
    wait_until(lambda: any(r == "ServingFailed" and "SignatureDoesNotMatch" in m
                           for r, m in warnings_of(kube, namespace, "third")),
               30, "a ServingFailed Warning", lambda: str(warnings_of(kube, namespace, "third")))

    # 5. No Secret at all: a new build fails at once (before any work), naming the Secret.
    put_secret(kube, namespace, None)
    mlp_sha = put_model(models, "mlp.onnx", synthetic.mlp)
    apply_deployment(kube, deployment("other", namespace, {
        **cnn_spec(mlp_sha, local),
        "model": {"uri": "pvc://infleet-models/mlp.onnx", "sha256": mlp_sha, "name": "mlp"}}))
    status = wait_until(
        lambda: (s := status_of(kube, namespace, "other")) and
        condition(s, "EnginesReady").get("reason") == "BuildFailed" and s,
        120, "the build without a Secret to fail", lambda: describe(kube, namespace, "other"))
    message = class_status(status, local)["engine"]["message"]
    assert f"the Secret '{STORE_SECRET}'" in message and "no credentials" in message, message
    # (the reconcile writes the status, then its Events: wait for them, not just the status)
    wait_until(lambda: any(r == "BuildFailed" and STORE_SECRET in m
                           for r, m in warnings_of(kube, namespace, "other")), 30,
               "a BuildFailed Warning naming the Secret",
               lambda: str(warnings_of(kube, namespace, "other")))

    # 6. The Secret fixed: the failing pod's next attempt pulls the engine and serves.
    put_secret(kube, namespace, SECRET)
    third = wait_available(kube, namespace, "third", timeout=120)
    assert not class_status(third, local).get("problem")
    assert class_status(third, local)["engine"]["key"] == key

    # Every pod (init containers too) was admitted under `restricted`, and the operator,
    # which may not read Secrets, was never refused anything.
    refused = [(e.involved_object.name, e.message) for e in
               kube.core.list_namespaced_event(namespace).items
               if e.reason == "FailedCreate" or "forbidden" in (e.message or "").lower()]
    assert refused == []
    log = operator.log_path.read_text(errors="replace")
    assert ": 403 " not in log and "forbidden" not in log.lower(), operator.tail()
