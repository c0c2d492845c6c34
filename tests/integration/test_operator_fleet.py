"""One InferenceDeployment on the whole dev fleet: the real-executor class builds and serves for
real, the simulated classes (kwok) answer with simulated builds and take no traffic, the
emulated arm64 class stays out (a deployment must name it), and the deployment's one endpoint
(the Gateway API route, served by Traefik) answers OIP requests. The emulated class serving
beside the x86 one is test_operator_arm64's.
"""

from __future__ import annotations

import subprocess
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
    deployment,
    describe,
    local_class,
    put_model,
    running_operator,
    status_of,
    wait_available,
)
from test_operator import cnn_spec, reference_logits

from infleet.api import GROUP, PLURAL, VERSION
from infleet.runtime.server.samples import small_cnn

pytestmark = pytest.mark.integration


@pytest.fixture
def operator(kube: Kube, namespace: str, store: dict[str, Path], tmp_path: Path,
             op_config: Path) -> Any:
    with running_operator(kube, tmp_path / "operator", "-n", namespace, config=op_config) as op:
        yield op


def class_nodes(kube: Kube) -> dict[str, set[str]]:
    from infleet.scheduler.classes import derive_classes
    from infleet.scheduler.inventory import nodes_from_objects

    raw = kube.api.sanitize_for_serialization(kube.core.list_node().items)
    return {c.name: set(c.nodes) for c in derive_classes(nodes_from_objects(raw))}


def pods_by_class(kube: Kube, namespace: str, selector: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in kube.core.list_namespaced_pod(namespace, label_selector=selector).items:
        out.setdefault(p.metadata.labels["infleet.dev/class"], []).append(p)
    return out


def test_the_fleet_builds_serves_routes_and_rebuilds_only_what_changed(
    kube: Kube, namespace: str, store: dict[str, Path], operator: Operator
) -> None:
    assert kube.cluster is not None
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    emulated = local_class(kube, "arm64-qemu")
    everyone = class_nodes(kube)
    # The emulated class serves only deployments that name it in spec.classes.allow.
    nodes = {c: n for c, n in everyone.items() if c != emulated}
    # More throughput than fits: the planner fills the real class (the cheapest), spills onto
    # simulated ones and places what it can (best effort), saying so.
    spec = cnn_spec(sha, None, slo={"latencyP99Ms": 10000, "maxThroughputRps": 100000},
                    scaling={"minReplicas": 1, "maxReplicas": 8})
    apply_deployment(kube, deployment("cnn", namespace, spec))

    # Build Jobs, each pinned to exactly its class's nodes.
    def build_pods() -> dict[str, list[Any]]:
        return pods_by_class(kube, namespace, "app.kubernetes.io/component=engine-build")

    def scheduled() -> dict[str, list[Any]] | None:
        b = build_pods()
        placed = all(p.spec.node_name for ps in b.values() for p in ps)
        return b if len(b) == len(nodes) and placed else None

    seen = wait_until(scheduled, 120, "a scheduled build pod per class",
                      lambda: str(build_pods()))
    for cls, pods in seen.items():
        assert {p.spec.node_name for p in pods} <= nodes[cls], cls

    status = wait_available(kube, namespace, "cnn", timeout=300)
    classes = {c["name"]: c for c in status["classes"]}
    assert set(classes) == set(everyone)
    assert classes[emulated]["excluded"] and classes[emulated]["emulated"]
    assert "spec.classes.allow selects it" in classes[emulated]["reason"]
    assert not classes[local]["engine"]["simulated"] and classes[local]["verified"]
    simulated = [n for n in nodes if n != local]
    for name in simulated:
        engine = classes[name]["engine"]
        assert engine["state"] == "Ready" and engine["simulated"], (name, engine)
        assert classes[name]["weight"] == 0  # no process there: no traffic
    assert classes[local]["weight"] == 100
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert "simulated (no traffic)" in available["message"]
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert "best effort" in placed["message"]

    # Serving pods run on their classes; some spill onto simulated classes. (A pod the
    # autoscaler has just added may not be scheduled yet: it runs nowhere so far.)
    serving = pods_by_class(kube, namespace, "infleet.dev/deployment=cnn")
    for cls, pods in serving.items():
        assert {p.spec.node_name for p in pods if p.spec.node_name} <= nodes[cls], cls
    assert local in serving and set(serving) - {local}, describe(kube, namespace, "cnn")

    # kubectl shows it (the printer columns).
    kubectl = kube.cluster.tools.path("kubectl")
    shown = subprocess.run([str(kubectl), "--kubeconfig", str(kube.kubeconfig), "get", "idep",
                            "-n", namespace], capture_output=True, text=True, check=True).stdout
    header, row = shown.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PHASE", "AVAILABLE", "CLASSES", "READY"]
    assert row.split()[:3] == ["cnn", status["phase"], "True"]

    # The deployment's one endpoint: the gateway, by host name, JSON and binary.
    assert status["endpoint"] == f"http://cnn.{namespace}.infleet.local"
    gateway = kube.cluster.state.gateway_url
    host = {"Host": f"cnn.{namespace}.infleet.local"}
    x = np.random.default_rng(3).standard_normal((1, 3, 48, 192)).astype(np.float32)
    want = reference_logits(store["models"] / "cnn.onnx", x)
    url = f"{gateway}/v2/models/cnn/infer"

    def through_gateway() -> httpx.Response | None:
        r = httpx.post(url, json={"inputs": [json_input("input", x, "FP32")]}, headers=host,
                       timeout=30)
        return r if r.status_code == 200 else None

    answer = wait_until(through_gateway, 60, "the route to answer")  # Traefik reloads routes
    np.testing.assert_allclose(decode_response(answer)["logits"], want, rtol=1e-4, atol=1e-5)
    body, headers = binary_body([("input", x, "FP32")])
    answer = httpx.post(url, content=body, headers={**headers, **host}, timeout=30)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(decode_response(answer)["logits"], want, rtol=1e-4, atol=1e-5)
    for _ in range(20):  # every answer through the route comes from a real pod
        assert through_gateway() is not None

    # A budget change rebuilds exactly the classes whose build key it changes.
    keys = {n: c["engine"]["buildKey"] for n, c in classes.items()}
    pods_before = {p.metadata.uid for ps in serving.values() for p in ps}
    body_now = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn")
    body_now["spec"]["accuracy"] = {"metric": "cosine", "maxDeviation": 0.05}
    kube.custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn",
                                                 body_now)

    def settled() -> dict[str, Any] | None:
        s = status_of(kube, namespace, "cnn")
        ready = all(c["engine"]["state"] in ("Ready", "Failed")
                    for c in s.get("classes", ()) if not c.get("excluded"))
        return s if s.get("observedGeneration") == 2 and ready else None

    after = wait_until(settled, 300, "the rebuilt engines", lambda: describe(kube, namespace,
                                                                            "cnn"))
    new_keys = {c["name"]: c["engine"]["buildKey"] for c in after["classes"]}
    changed = {n for n in keys if new_keys[n] != keys[n]}
    unchanged = set(keys) - changed
    assert changed and unchanged, (keys, new_keys)  # FP32-only ladders keep their key
    jobs_now = kube.batch.list_namespaced_job(namespace).items
    assert not [j for j in jobs_now if j.metadata.labels["infleet.dev/class"] in unchanged]
    serving_after = pods_by_class(kube, namespace, "infleet.dev/deployment=cnn")
    for cls in unchanged & set(serving):  # their pods were not rolled
        kept = {p.metadata.uid for p in serving_after.get(cls, [])}
        assert kept and kept <= pods_before, cls
