"""The dev fleet's emulated arm64 class end to end under the operator: the build Job runs on the
arm64 node (cross-compiling the TVM engine on this machine and gating it under qemu emulating
the node's Neoverse N1), the engine lands in the store, and the serving pod runs `infleet
serve` on the aarch64 library in an emulated python3.11. Then one deployment served at once
by the real x86 class (ONNX Runtime) and the emulated arm64 class (TVM), with the gateway's
traffic split by their weights, counted from each class's own /metrics.

The two tests share a namespace (so the second reuses the first's arm64 engine, as two
deployments of one model do) and an operator. Timings are printed for the record (run with
-s); nothing here asserts speed.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serve_harness import binary_body, decode_response, json_input
from support.arm64 import prepare_arm64_root
from support.cluster import Kube, fresh_namespace, wait_until
from support.operator import (
    Operator,
    apply_deployment,
    claims,
    deployment,
    describe,
    events_of,
    local_class,
    put_model,
    running_operator,
    short_interval_config,
    status_of,
    wait_available,
    write_config,
)
from test_operator import cnn_spec, reference_logits

from infleet.operator import naming
from infleet.runtime.builders.tvm import elf_machine
from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server.samples import small_cnn

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EM_AARCH64 = 183


@pytest.fixture(scope="module", autouse=True)
def arm64_root() -> Path:
    return prepare_arm64_root()


@pytest.fixture(scope="module")
def ns(kube: Kube, crd: Path) -> Iterator[str]:
    with fresh_namespace(kube) as name:  # one for the module: both tests share its engines
        yield name


@pytest.fixture(scope="module")
def store(kube: Kube, ns: str) -> dict[str, Path]:
    return claims(kube, ns)


@pytest.fixture(scope="module")
def classes(kube: Kube) -> dict[str, str]:
    return {"x86": local_class(kube), "arm64": local_class(kube, "arm64-qemu")}


@pytest.fixture(scope="module")
def operator(kube: Kube, ns: str, store: dict[str, Path], classes: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    # The dev configuration, with the emulated class priced below the x86 one, so that the
    # mixed test's plan takes one replica of each (at the dev prices two x86 replicas, which
    # cover any target the emulated class could share, are cheapest).
    raw = short_interval_config()
    raw["classes"][classes["arm64"]] = {"costPerHour": 0.005}
    work = tmp_path_factory.mktemp("arm64-operator")
    config = write_config(work, raw)
    with running_operator(kube, work / "operator", "-n", ns, config=config) as op:
        yield op


def pods_of(kube: Kube, ns: str, selector: str) -> list[Any]:
    return list(kube.core.list_namespaced_pod(ns, label_selector=selector).items)


def class_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in status["classes"] if c["name"] == name)


def test_an_arm64_deployment_builds_gates_and_serves_under_qemu(
    kube: Kube, ns: str, store: dict[str, Path], classes: dict[str, str], operator: Operator
) -> None:
    arm = classes["arm64"]
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    started = time.monotonic()
    apply_deployment(kube, deployment("arm", ns, cnn_spec(
        sha, arm, scaling={"minReplicas": 1, "maxReplicas": 1})))

    # The build Job runs on the arm64 node.
    builds = wait_until(
        lambda: [p for p in pods_of(kube, ns, "app.kubernetes.io/component=engine-build")
                 if p.spec.node_name], 120, "the build pod to be scheduled",
        lambda: describe(kube, ns, "arm"))
    assert {p.spec.node_name for p in builds} == {"arm64-qemu-0"}
    engine_ready = wait_until(
        lambda: (class_of(s, arm)["engine"].get("state") == "Ready" and s)
        if (s := status_of(kube, ns, "arm")).get("classes") else None,
        600, "the arm64 engine", lambda: describe(kube, ns, "arm"))
    build_s = time.monotonic() - started
    status = wait_available(kube, ns, "arm", timeout=300)
    available_s = time.monotonic() - started

    cls = class_of(status, arm)
    engine = cls["engine"]
    assert cls["emulated"] and not cls["simulated"] and cls["verified"], describe(kube, ns, "arm")
    assert engine["backend"] == "tvm" and engine["emulated"] and engine["accuracy"][-1]["passed"]
    assert engine["accuracy"][-1]["deviation"] < 1e-4
    assert "qemu-user emulation" in engine["message"]  # its profile is marked the emulator's
    assert engine["profile"] and "nominal figures" in cls["reason"]
    assert "ONNX Runtime fallback is not tried" in cls["reason"]
    assert class_of(engine_ready, arm)["engine"]["key"] == engine["key"]
    # The engine is in the store: an aarch64 library for Neoverse N1.
    folder = store["engines"] / "engines" / engine["key"]
    manifest = EngineManifest.model_validate_json((folder / "manifest.json").read_bytes())
    assert elf_machine(folder / manifest.engine_file) == EM_AARCH64
    assert '"mcpu": "neoverse-n1"' in manifest.options["target"]
    finished = [m for _, r, m in events_of(kube, ns, "arm") if r == "BuildFinished"]
    assert finished and "gated under qemu-user emulation" in finished[0]

    # The serving pod: on the arm64 node, an emulated process, answering OIP requests with
    # the outputs of ONNX Runtime on this x86 machine.
    (pod,) = [p for p in pods_of(kube, ns, "infleet.dev/deployment=arm") if p.status.pod_ip]
    assert pod.spec.node_name == "arm64-qemu-0"
    pid = int(pod.status.container_statuses[0].container_id.removeprefix("local://"))
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"qemu-aarch64-static") and b"/usr/local/bin/infleet" in cmdline
    url = f"http://{pod.status.pod_ip}:8080/v2/models/cnn/infer"
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 3, 48, 192)).astype(np.float32)
    want = reference_logits(store["models"] / "cnn.onnx", x)
    answer = httpx.post(url, json={"inputs": [json_input("input", x, "FP32")]}, timeout=60)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(decode_response(answer)["logits"], want, rtol=1e-4, atol=1e-5)
    one = x[:1]
    body, headers = binary_body([("input", one, "FP32")])
    latencies = []
    for _ in range(5):
        t0 = time.perf_counter()
        answer = httpx.post(url, content=body, headers=headers, timeout=60)
        latencies.append(time.perf_counter() - t0)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(decode_response(answer)["logits"], want[:1], rtol=1e-4,
                                   atol=1e-5)
    print(f"\narm64 under qemu: engine Ready {build_s:.0f} s after apply, Available "
          f"{available_s:.0f} s; emulated gate profile {engine['profile']}; one request "
          f"(batch 1, binary) p50 {1e3 * float(np.median(latencies)):.0f} ms, "
          f"max {1e3 * max(latencies):.0f} ms")
    kube.custom.delete_namespaced_custom_object("infleet.dev", "v1alpha1", ns,
                                                "inferencedeployments", "arm")


def _requests_total(ip: str) -> float:
    text = httpx.get(f"http://{ip}:8080/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(
        r'^infleet_serve_requests_total\{model="cnn",[^}]*\} ([0-9.e+]+)$', text, re.M))


def _route_weights(kube: Kube, ns: str, name: str) -> dict[str, int]:
    route = kube.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", ns,
                                                     "httproutes", name)
    return {b["name"]: int(b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]}


def test_one_deployment_is_served_by_the_x86_and_the_arm64_class_by_weight(
    kube: Kube, ns: str, store: dict[str, Path], classes: dict[str, str], operator: Operator,
    gateway_url: str,
) -> None:
    x86, arm = classes["x86"], classes["arm64"]
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    # Two replicas, a target two emulated replicas cannot cover at their nominal capacity
    # (105 rps each at batch 4) and one of each can: with the emulated class priced lower,
    # that is the cheapest plan. The x86 replica covers the rest with its measured profile.
    spec = cnn_spec(sha, None, classes={"allow": [x86, arm]},
                    slo={"latencyP99Ms": 10000, "maxThroughputRps": 260},
                    scaling={"minReplicas": 2, "maxReplicas": 2})
    apply_deployment(kube, deployment("mix", ns, spec))
    wait_available(kube, ns, "mix", timeout=600)

    def settled() -> dict[str, Any] | None:
        # one Ready, verified replica per class, both weighted (the emulated class by its
        # nominal capacity), and the route carrying those weights
        s = status_of(kube, ns, "mix")
        both = [class_of(s, c) for c in (x86, arm)]
        steady = all(c["verified"] and c["weight"] > 0 and c["readyReplicas"] == 1 and
                     c["replicas"] == 1 and c["desiredReplicas"] == 1 for c in both)
        if not steady:
            return None
        weights = _route_weights(kube, ns, "mix")
        want = {naming.serving_name("mix", c["name"]): c["weight"] for c in both}
        return s if weights == want else None

    status = wait_until(settled, 240, "one verified replica per class, both weighted",
                        lambda: describe(kube, ns, "mix"))
    assert class_of(status, x86)["engine"]["backend"] == "onnxruntime"
    assert not class_of(status, x86)["emulated"]
    assert class_of(status, arm)["engine"]["backend"] == "tvm" and class_of(status, arm)["emulated"]
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert f"emulated (qemu-user, nominal capacity): {arm}" in available["message"]
    weights = _route_weights(kube, ns, "mix")
    services = {c: naming.serving_name("mix", c) for c in (x86, arm)}
    share = weights[services[arm]] / sum(weights.values())
    ips = {}
    for c in (x86, arm):
        (pod,) = pods_of(kube, ns, f"infleet.dev/deployment=mix,infleet.dev/class={c}")
        ips[c] = pod.status.pod_ip
    before = {c: _requests_total(ip) for c, ip in ips.items()}

    # Requests to the deployment's endpoint (the gateway, by host name), every answer checked.
    rows = np.random.default_rng(5).standard_normal((4, 1, 3, 48, 192)).astype(np.float32)
    want = [reference_logits(store["models"] / "cnn.onnx", r) for r in rows]
    host = status["endpoint"].removeprefix("http://")
    url = f"{gateway_url}/v2/models/cnn/infer"
    # Enough requests for a dozen to go to the emulated class: its nominal figures are a
    # ResNet-50-sized model's, the x86 class measured this tiny CNN, so its share is small.
    n = min(1500, max(100, math.ceil(12 / share)))

    def send(i: int) -> float:
        body, headers = binary_body([("input", rows[i % 4], "FP32")])
        t0 = time.perf_counter()
        r = client.post(url, content=body, headers={**headers, "Host": host})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(decode_response(r)["logits"], want[i % 4], rtol=1e-4,
                                   atol=1e-5)
        return time.perf_counter() - t0

    started = time.monotonic()
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(4) as pool:
        latencies = list(pool.map(send, range(n)))
    took = time.monotonic() - started
    after = {c: _requests_total(ip) for c, ip in ips.items()}
    delta = {c: after[c] - before[c] for c in ips}
    assert _route_weights(kube, ns, "mix") == weights  # the split held while we measured
    # Every request was answered by one of the two classes (the operator's test inference
    # may add one per class meanwhile), in the proportion of the weights.
    assert n <= sum(delta.values()) <= n + 2, (delta, n)
    expected = n * share
    assert delta[arm] >= 1 and delta[x86] >= 1, delta
    assert abs(delta[arm] - expected) <= max(3.0, 0.25 * expected), (delta, n, weights)
    print(f"\nmixed: weights {weights}; {n} requests through the gateway in {took:.1f} s "
          f"(4 at a time): x86 answered {delta[x86]:.0f}, arm64 {delta[arm]:.0f} "
          f"(expected {expected:.1f}); p50 {1e3 * float(np.median(latencies)):.0f} ms, "
          f"max {1e3 * max(latencies):.0f} ms")
