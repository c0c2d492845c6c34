"""The dev fleet's emulated arm64 class is real: its node carries a Neoverse N1's labels, and
the local executor runs its pods' aarch64 programs under qemu-user with the arm64 root
(``hack/arm64-sysroot.sh``), emulating that core. No operator here: plain pods."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from support.arm64 import prepare_arm64_root
from support.cluster import Kube, pod_summary, process_alive, wait_for_pod_phase, wait_until

from infleet.devcluster import fleet

pytestmark = pytest.mark.integration

EMULATED = {"nodeSelector": {fleet.FLEET_CLASS_LABEL: "arm64-qemu"}}
# What the emulated core reports to the program (HWCAPs from the auxiliary vector): N1 has
# dot product, no SVE.
PROBE = (
    "import ctypes, platform, sys, pathlib\n"
    "libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong\n"
    "caps = libc.getauxval(16)\n"
    "pathlib.Path(sys.argv[1]).write_text(\n"
    "    f'{platform.machine()} asimddp={caps >> 20 & 1} sve={caps >> 22 & 1}')\n"
)


@pytest.fixture(scope="module", autouse=True)
def arm64_root() -> Path:
    # The executor looks the root up when a pod comes; make sure it is there.
    return prepare_arm64_root()


def test_the_emulated_node_is_an_arm64_neoverse_n1(kube: Kube) -> None:
    (node,) = kube.core.list_node(
        label_selector=f"{fleet.FLEET_CLASS_LABEL}=arm64-qemu").items
    labels = node.metadata.labels
    assert labels["kubernetes.io/arch"] == "arm64"
    assert labels[fleet.EMULATED_LABEL] == "true" and labels[fleet.SIMULATED_LABEL] == "false"
    assert labels["feature.node.kubernetes.io/cpu-cpuid.ASIMDDP"] == "true"
    assert "feature.node.kubernetes.io/cpu-cpuid.SVE" not in labels
    assert fleet.KWOK_ANNOTATION not in node.metadata.annotations
    assert "neoverse-n1" in node.metadata.annotations[fleet.EMULATION_ANNOTATION]
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True" and "local executor" in ready.message


def test_a_pod_on_the_emulated_node_runs_aarch64_code_on_the_nodes_core(
    kube: Kube, namespace: str
) -> None:
    kube.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "machine"},
        "spec": {**EMULATED, "restartPolicy": "Never", "containers": [{
            "name": "c", "image": "x", "command": ["python3.11", "-c", PROBE],
            "args": ["/dev/termination-log"]}]},
    })
    pod = wait_for_pod_phase(kube, namespace, "machine", ("Succeeded", "Failed"), timeout=120)
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded", pod_summary(kube, namespace, "machine")
    assert terminated.message == "aarch64 asimddp=1 sve=0"


def test_infleet_runs_from_the_checkout_in_the_emulated_python(
    kube: Kube, namespace: str
) -> None:
    # The root's entry point, the checkout's pure-Python package: every command module
    # (operator, scheduler, runtime...) imports there, as `infleet serve` needs.
    kube.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "cli"},
        "spec": {**EMULATED, "restartPolicy": "Never", "containers": [{
            "name": "c", "image": "x", "command": ["infleet"], "args": ["serve", "--help"],
            "terminationMessagePolicy": "FallbackToLogsOnError"}]},
    })
    pod = wait_for_pod_phase(kube, namespace, "cli", ("Succeeded", "Failed"), timeout=120)
    assert pod.status.phase == "Succeeded", pod.status.container_statuses[0].state


def test_a_program_the_arm64_image_lacks_fails_the_pod_saying_so(
    kube: Kube, namespace: str
) -> None:
    kube.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "x86"},
        "spec": {**EMULATED, "restartPolicy": "Never", "containers": [{
            "name": "c", "image": "x", "command": ["bash", "-c", "true"]}]},
    })
    pod = wait_for_pod_phase(kube, namespace, "x86", ("Succeeded", "Failed"))
    assert pod.status.phase == "Failed"
    assert pod.status.reason == "UnsupportedByLocalExecutor"
    assert "bash not found in the arm64 root" in pod.status.message


def test_an_emulated_server_turns_ready_answers_and_stops_on_delete(
    kube: Kube, namespace: str
) -> None:
    server = (
        "import http.server, os, signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "http.server.HTTPServer((os.environ['POD_IP'], 8080),"
        " http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    kube.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "srv"},
        "spec": {**EMULATED, "terminationGracePeriodSeconds": 10, "containers": [{
            "name": "srv", "image": "x", "command": ["python3.11", "-c", server],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1,
                               "timeoutSeconds": 5}}]},
    })

    def ready() -> object | None:
        pod = kube.core.read_namespaced_pod("srv", namespace)
        ok = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        return pod if ok else None

    pod = wait_until(ready, 120, "the emulated server to turn Ready",
                     lambda: pod_summary(kube, namespace, "srv"))
    assert httpx.get(f"http://{pod.status.pod_ip}:8080/", timeout=10).status_code == 200
    pid = int(pod.status.container_statuses[0].container_id.removeprefix("local://"))
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert os.path.basename(cmdline[0]) == b"qemu-aarch64-static"  # emulated, not the host's
    assert cmdline[cmdline.index(b"-cpu") + 1] == b"neoverse-n1"
    kube.core.delete_namespaced_pod("srv", namespace)
    wait_until(lambda: not process_alive(pid), 30, "the emulated server to stop")
