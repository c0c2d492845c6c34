"""`infleet plan --kubeconfig` against the real local control plane and its simulated fleet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cluster import Kube, wait_for_pod_phase

from infleet.cli import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def plan(kube: Kube, capsys: pytest.CaptureFixture[str]) -> dict:
    rc = main(["plan", "-f", str(EXAMPLES / "deployment.yaml"), "--kubeconfig",
               str(kube.kubeconfig), "--profiles", str(EXAMPLES / "profiles-dev.yaml"),
               "--demand", "1000", "-o", "json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_plan_reads_the_fleet_and_its_free_gpus(
    kube: Kube, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = plan(kube, capsys)
    classes = {c["name"]: c for c in before["classes"]}
    h100 = classes["nvidia-h100-80gb-p5-48xlarge"]
    assert h100["backend"] == "tensorrt" and h100["nodes"]["usable"] == 2
    assert classes["nvidia-t4-16gb-g4dn-12xlarge"]["hardware"]["computeCapability"] == "7.5"
    assert classes["x86-avx512vnni-c6i-8xlarge"]["backend"] == "onnxruntime"
    assert any(name.startswith("arm64-") and c["backend"] == "tvm"
               for name, c in classes.items())
    assert before["feasible"] and before["capacityRps"] >= 1200

    # A pod holding all 8 GPUs of one H100 node takes them out of the class's free resources.
    kube.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "gpu-hog"},
        "spec": {
            "nodeName": "nvidia-h100-0",
            "tolerations": [GPU_TOLERATION],
            "containers": [{"name": "c", "image": "busybox",
                            "resources": {"requests": {"nvidia.com/gpu": "8"},
                                          "limits": {"nvidia.com/gpu": "8"}}}],
        },
    })
    wait_for_pod_phase(kube, namespace, "gpu-hog", ("Running",))
    after = {c["name"]: c for c in plan(kube, capsys)["classes"]}
    assert after["nvidia-h100-80gb-p5-48xlarge"]["free"]["gpu"] == h100["free"]["gpu"] - 8
    assert after["nvidia-h100-80gb-p5-48xlarge"]["freeReplicas"] == h100["freeReplicas"] - 8
