"""Engine build Jobs on simulated classes never pass for real builds: kwok ends them with a
summary marked simulated (the fleet profile's nominal figures), while the local class runs the
Job's command for real."""

from __future__ import annotations

import pytest
from support.cluster import Kube, pod_summary, wait_until

from infleet.api.engine import BuildFailure, BuildSummary
from infleet.devcluster import fleet

pytestmark = pytest.mark.integration

CLASS_LABEL = "dev.infleet.dev/fleet-class"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
REAL_BUILD = "import os, sys; open(sys.argv[1], 'w').write('real build at ' + os.environ['POD_IP'])"


def build_job(name: str, fleet_class: str, annotations: dict[str, str], gpu: bool) -> dict:
    """A Job shaped like the operator's build Job: the component label, the class label and
    the backend/precision annotations, node affinity for exactly one class, the GPU toleration
    and request on GPU classes, no retries and a deadline."""
    container: dict = {
        "name": "build", "image": "infleet/tensorrt:dev",
        "command": ["python", "-c", REAL_BUILD, "/dev/termination-log"],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if gpu:
        container["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": CLASS_LABEL, "operator": "In", "values": [fleet_class]}]}]}}}
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/component": "engine-build",
                               "infleet.dev/class": f"{fleet_class}-class"},
                    "annotations": annotations,
                },
                "spec": {"restartPolicy": "Never", "affinity": affinity,
                         "tolerations": [GPU_TOLERATION] if gpu else [],
                         "containers": [container]},
            },
        },
    }


def finished_pod(kube: Kube, namespace: str, job: str):
    def done():
        pods = kube.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        return pods[0] if pods and pods[0].status.phase in ("Succeeded", "Failed") else None

    return wait_until(done, 90, f"the pod of Job {job} to finish", lambda: [
        pod_summary(kube, namespace, p.metadata.name)
        for p in kube.core.list_namespaced_pod(namespace).items])


def job_condition(kube: Kube, namespace: str, job: str, kind: str) -> None:
    wait_until(
        lambda: any(c.type == kind and c.status == "True"
                    for c in kube.batch.read_namespaced_job_status(job, namespace)
                    .status.conditions or []),
        60, f"Job {job} to be {kind}",
        lambda: str(kube.batch.read_namespaced_job_status(job, namespace).status))


def test_build_job_on_a_kwok_gpu_class_ends_with_a_simulated_summary(
    kube: Kube, namespace: str
) -> None:
    kube.batch.create_namespaced_job(namespace, build_job(
        "build-t4", "nvidia-t4",
        {"infleet.dev/backend": "tensorrt", "infleet.dev/precision-ladder": "fp16,int8,fp32"},
        gpu=True))
    pod = finished_pod(kube, namespace, "build-t4")
    assert pod.status.phase == "Succeeded", pod_summary(kube, namespace, pod.metadata.name)
    node = kube.core.read_node(pod.spec.node_name)
    assert node.metadata.labels[CLASS_LABEL] == "nvidia-t4"
    assert node.metadata.labels[fleet.SIMULATED_LABEL] == "true"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    summary = BuildSummary.model_validate_json(terminated.message)
    assert summary.simulated and summary.engine_key == "simulated" and summary.key is None
    assert summary.backend == "tensorrt" and summary.precision == "fp16"
    assert summary.node_class == "nvidia-t4-class"
    (t4,) = [c for c in fleet.load_profile("dev").classes if c.name == "nvidia-t4"]
    assert [p.model_dump() for p in summary.profile] == [p.model_dump() for p in t4.nominalProfile]
    assert "simulated" in summary.notes[0] and "not a measurement" in summary.notes[0]
    assert "real build" not in terminated.message  # the command never ran
    job_condition(kube, namespace, "build-t4", "Complete")


def test_simulated_build_without_its_annotations_fails_and_says_why(
    kube: Kube, namespace: str
) -> None:
    kube.batch.create_namespaced_job(namespace, build_job(
        "build-bad", "x86", {"infleet.dev/precision-ladder": "fp32"}, gpu=False))
    pod = finished_pod(kube, namespace, "build-bad")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    failure = BuildFailure.model_validate_json(terminated.message)
    assert failure.reason == "SimulatedBuildInvalid" and not failure.retryable
    assert 'annotation infleet.dev/backend is ""' in failure.error
    job_condition(kube, namespace, "build-bad", "Failed")


def test_build_job_on_the_local_class_really_runs_its_command(
    kube: Kube, namespace: str
) -> None:
    kube.batch.create_namespaced_job(namespace, build_job(
        "build-local", "x86-local",
        {"infleet.dev/backend": "onnxruntime", "infleet.dev/precision-ladder": "fp32"},
        gpu=False))
    pod = finished_pod(kube, namespace, "build-local")
    assert pod.status.phase == "Succeeded", pod_summary(kube, namespace, pod.metadata.name)
    node = kube.core.read_node(pod.spec.node_name)
    assert node.metadata.labels[fleet.SIMULATED_LABEL] == "false"
    message = pod.status.container_statuses[0].state.terminated.message
    assert message == f"real build at {pod.status.pod_ip}"  # the command's own output
    job_condition(kube, namespace, "build-local", "Complete")
