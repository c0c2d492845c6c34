"""The local control plane is real: schema/CEL validation, scheduling onto node classes,
admission, RBAC, garbage collection, and the local executor running pods for real."""

from __future__ import annotations

import copy
import json
import time

import pytest
from kubernetes.client.exceptions import ApiException
from support.cluster import (
    Kube,
    pod_summary,
    process_alive,
    wait_for_pod_phase,
    wait_until,
)

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "infleet.dev", "v1alpha1", "inferencedeployments"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
CLASS_LABEL = "dev.infleet.dev/fleet-class"
LOCAL = {"nodeSelector": {CLASS_LABEL: "x86-local"}}
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
VALID = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "InferenceDeployment",
    "metadata": {"name": "resnet"},
    "spec": {
        "model": {"uri": "https://example.com/resnet50.onnx", "sha256": "a" * 64},
        "slo": {"latencyP99Ms": 25},
        "scaling": {"minReplicas": 1, "maxReplicas": 4},
    },
}


def idep(**changes: dict) -> dict:
    body = copy.deepcopy(VALID)
    for section, values in changes.items():
        body["spec"].setdefault(section, {}).update(values)
    return body


def refusal(kube: Kube, namespace: str, body: dict) -> str:
    with pytest.raises(ApiException) as info:
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert info.value.status == 422, info.value.body
    return str(json.loads(info.value.body)["message"])


@pytest.mark.usefixtures("crd")
def test_api_server_accepts_a_valid_inference_deployment(kube: Kube, namespace: str) -> None:
    created = kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, copy.deepcopy(VALID)
    )
    assert created["spec"]["scaling"]["maxReplicas"] == 4
    assert created["spec"]["accuracy"]["metric"] == "cosine"  # defaults applied by the server
    # `kubectl scale` patches the scale subresource; that pins spec.replicas (absent until then,
    # and then a GET of /scale is an error: Kubernetes' rule for an absent specReplicasPath).
    kube.custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "resnet", {"spec": {"replicas": 2}}
    )
    scale = kube.custom.get_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "resnet"
    )
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2
    pinned = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "resnet")
    assert pinned["spec"]["replicas"] == 2
    # Scaling past scaling.maxReplicas through /scale meets the same CEL rule as an edit.
    with pytest.raises(ApiException) as info:
        kube.custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, "resnet", {"spec": {"replicas": 9}}
        )
    assert info.value.status == 422, info.value.body
    assert "replicas must lie between scaling.minReplicas and scaling.maxReplicas" in str(
        info.value.body
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"scaling": {"minReplicas": 5, "maxReplicas": 2}},
            "scaling.maxReplicas must be greater than or equal to scaling.minReplicas",
        ),
        ({"model": {"sha256": "not-a-sha"}}, "spec.model.sha256"),
        ({"slo": {"latencyP99Ms": -5}}, "spec.slo.latencyP99Ms"),
        (
            {"classes": {"overrides": [{"class": "nvidia-h100", "backend": "pytorch"}]}},
            'Unsupported value: "pytorch"',
        ),
        (
            {
                "classes": {
                    "overrides": [{"class": "x86", "backend": "onnxruntime", "precision": "fp8"}]
                }
            },
            "precision fp8 needs backend tensorrt",
        ),
        (
            {
                "classes": {
                    "overrides": [
                        {"class": "nvidia-t4", "precision": "fp16"},
                        {"class": "nvidia-t4", "precision": "int8"},
                    ]
                }
            },
            "each class may be overridden only once",
        ),
    ],
    ids=[
        "max-below-min",
        "bad-sha256",
        "negative-latency",
        "unknown-backend",
        "fp8-not-trt",
        "duplicate-override",
    ],
)
@pytest.mark.usefixtures("crd")
def test_api_server_refuses_invalid_inference_deployments(
    kube: Kube, namespace: str, changes: dict, message: str
) -> None:
    body = idep(**changes)
    refused = refusal(kube, namespace, body)
    assert message in refused, refused


@pytest.mark.usefixtures("crd")
def test_missing_model_is_refused(kube: Kube, namespace: str) -> None:
    body = copy.deepcopy(VALID)
    del body["spec"]["model"]
    assert "spec.model: Required value" in refusal(kube, namespace, body)


def _deployment(name: str, replicas: int, pod_spec: dict) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def _pods(kube: Kube, namespace: str, app: str) -> list:
    return kube.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def test_h100_affinity_lands_only_on_h100_nodes(kube: Kube, namespace: str) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "nvidia.com/gpu.product",
                                "operator": "In",
                                "values": ["NVIDIA-H100-80GB-HBM3"],
                            }
                        ]
                    }
                ]
            }
        }
    }
    spec = {
        "affinity": affinity,
        "tolerations": [GPU_TOLERATION],
        "containers": [
            {
                "name": "serve",
                "image": "infleet/tensorrt:dev",
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }
        ],
    }
    kube.apps.create_namespaced_deployment(namespace, _deployment("trt", 6, spec))

    def all_running() -> list | None:
        pods = _pods(kube, namespace, "trt")
        ok = len(pods) == 6 and all(p.status.phase == "Running" for p in pods)
        return pods if ok else None

    pods = wait_until(
        all_running,
        90,
        "6 H100 pods Running",
        lambda: [
            (p.metadata.name, p.spec.node_name, p.status.phase)
            for p in _pods(kube, namespace, "trt")
        ],
    )
    nodes = {p.spec.node_name for p in pods}
    assert nodes <= {"nvidia-h100-0", "nvidia-h100-1"}, nodes
    for p in pods:  # Running *and* Ready through kwok
        assert any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)


def test_oversized_gpu_request_stays_pending_with_the_schedulers_reason(
    kube: Kube, namespace: str
) -> None:
    kube.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "greedy"},
            "spec": {
                "tolerations": [GPU_TOLERATION],
                "containers": [
                    {"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "16"}}}
                ],
            },
        },
    )

    def unschedulable() -> str | None:
        pod = kube.core.read_namespaced_pod("greedy", namespace)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return c.message
        return None

    message = wait_until(
        unschedulable,
        60,
        "PodScheduled=False/Unschedulable",
        lambda: pod_summary(kube, namespace, "greedy"),
    )
    assert "Insufficient nvidia.com/gpu" in message
    time.sleep(2)
    pod = kube.core.read_namespaced_pod("greedy", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_pods_without_the_gpu_toleration_never_land_on_gpu_nodes(
    kube: Kube, namespace: str
) -> None:
    # More replicas than the CPU nodes' share would be: the scheduler spreads, yet never onto
    # the tainted GPU nodes.
    # A real command: the replicas that land on the real-executor class run instead of failing.
    spec = {
        "containers": [
            {
                "name": "c",
                "image": "x",
                "command": ["sleep", "600"],
                "resources": {"requests": {"cpu": "100m"}},
            }
        ]
    }
    kube.apps.create_namespaced_deployment(namespace, _deployment("cpu", 20, spec))

    def all_bound() -> list | None:
        pods = _pods(kube, namespace, "cpu")
        return pods if len(pods) == 20 and all(p.spec.node_name for p in pods) else None

    pods = wait_until(all_bound, 90, "20 pods scheduled")
    gpu_nodes = {
        n.metadata.name
        for n in kube.core.list_node().items
        if "nvidia.com/gpu.product" in (n.metadata.labels or {})
    }
    assert len(gpu_nodes) == 4
    landed = {p.spec.node_name for p in pods}
    assert not landed & gpu_nodes, landed & gpu_nodes
    assert len(landed) > 3  # really spread over the CPU classes


def test_job_on_the_local_class_runs_for_real_and_reports_its_message(
    kube: Kube, namespace: str
) -> None:
    script = (
        "import os, sys, pathlib\n"
        "pathlib.Path(sys.argv[1]).write_text('summary: ok ' + os.environ['POD_IP'])\n"
        "pathlib.Path('/work/out.txt').write_text('x')\n"
    )
    kube.batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "build"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        **LOCAL,
                        "restartPolicy": "Never",
                        "volumes": [{"name": "work", "emptyDir": {}}],
                        "containers": [
                            {
                                "name": "build",
                                "image": "infleet/onnxruntime:dev",
                                "command": [
                                    "python",
                                    "-c",
                                    script.replace("/work/out.txt", "$(OUT)"),
                                ],
                                "args": ["/dev/termination-log"],
                                "env": [{"name": "OUT", "value": "/work/out.txt"}],
                                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                            }
                        ],
                    }
                },
            },
        },
    )

    def done() -> object | None:
        job = kube.batch.read_namespaced_job_status("build", namespace)
        return job if (job.status.succeeded or job.status.failed) else None

    job = wait_until(
        done,
        60,
        "the Job to finish",
        lambda: [
            pod_summary(kube, namespace, p.metadata.name)
            for p in kube.core.list_namespaced_pod(namespace).items
        ],
    )
    assert job.status.succeeded == 1
    (pod,) = kube.core.list_namespaced_pod(namespace, label_selector="job-name=build").items
    assert pod.spec.node_name.startswith("x86-local-")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"
    assert terminated.message == f"summary: ok {pod.status.pod_ip}"
    assert pod.status.pod_ip.startswith("127.")


def test_failing_container_fails_the_pod_with_its_exit_code(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "bad"},
            "spec": {
                **LOCAL,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "c",
                        "image": "x",
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "command": ["python", "-c", "import sys; print('went wrong'); sys.exit(3)"],
                    }
                ],
            },
        },
    )
    pod = wait_for_pod_phase(kube, namespace, "bad", ("Failed", "Succeeded"))
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3 and terminated.reason == "Error"
    assert "went wrong" in terminated.message


def _serving_pod(name: str) -> dict:
    server = (
        "import http.server, os, signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "http.server.HTTPServer((os.environ['POD_IP'], 8080),"
        " http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    return {
        "metadata": {"name": name},
        "spec": {
            **LOCAL,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "srv",
                    "image": "x",
                    "command": ["python", "-c", server],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": "http"},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }


def test_local_pod_serves_on_its_own_address_and_turns_ready(kube: Kube, namespace: str) -> None:
    import httpx

    kube.core.create_namespaced_pod(namespace, _serving_pod("srv"))

    def ready() -> object | None:
        pod = kube.core.read_namespaced_pod("srv", namespace)
        ok = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        return pod if ok else None

    pod = wait_until(
        ready, 60, "the serving pod to turn Ready", lambda: pod_summary(kube, namespace, "srv")
    )
    assert httpx.get(f"http://{pod.status.pod_ip}:8080/", timeout=5).status_code == 200


def test_deleting_a_running_local_pod_stops_its_process(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "sleeper"},
            "spec": {
                **LOCAL,
                "terminationGracePeriodSeconds": 3,
                "containers": [
                    {
                        "name": "c",
                        "image": "x",
                        # Ignores SIGTERM, so only the SIGKILL after the grace period ends it.
                        "command": [
                            "python",
                            "-c",
                            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                            " time.sleep(3600)",
                        ],
                    }
                ],
            },
        },
    )
    pod = wait_for_pod_phase(kube, namespace, "sleeper", ("Running",))
    pid = int(pod.status.container_statuses[0].container_id.removeprefix("local://"))
    assert process_alive(pid)
    started = time.monotonic()
    kube.core.delete_namespaced_pod("sleeper", namespace)
    wait_until(lambda: not process_alive(pid), 30, f"process {pid} to stop")
    assert time.monotonic() - started >= 2.5  # it got its grace period before SIGKILL

    def gone() -> bool:
        try:
            kube.core.read_namespaced_pod("sleeper", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until(gone, 30, "the pod object to be removed")


def test_pod_security_restricted_refuses_a_privileged_pod(kube: Kube, namespace: str) -> None:
    kube.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    with pytest.raises(ApiException) as info:
        kube.core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "root"},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "x", "securityContext": {"privileged": True}}
                    ]
                },
            },
        )
    assert info.value.status == 403
    message = json.loads(info.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "privileged" in message
    # A pod that follows the restricted profile is admitted.
    kube.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "fine"},
            "spec": {"containers": [{"name": "c", "image": "x", "securityContext": RESTRICTED}]},
        },
    )


def test_rbac_refuses_a_service_account_without_a_role(kube: Kube, namespace: str) -> None:
    from kubernetes import client

    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = kube.core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    config = copy.copy(kube.api.configuration)
    # The kubeconfig loader's refresh hook would put the admin token back on every request.
    config.refresh_api_key_hook = None
    config.api_key = {"BearerToken": f"Bearer {token}"}
    config.api_key_prefix = {}
    api = client.ApiClient(config)
    try:
        as_nobody = client.CoreV1Api(api)
        with pytest.raises(ApiException) as info:
            as_nobody.list_namespaced_pod(namespace)
        assert info.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in info.value.body
        # Bind a role: the same token now may list pods (so the 403 above was RBAC's).
        kube.rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        kube.rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )
        wait_until(
            lambda: as_nobody.list_namespaced_pod(namespace) is not None,
            10,
            "the RoleBinding to take effect",
        )
    finally:
        api.close()


def test_owner_referenced_children_are_garbage_collected(kube: Kube, namespace: str) -> None:
    owner = kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    for i in range(3):
        kube.core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {
                    "name": f"child-{i}",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "name": "owner",
                            "uid": owner.metadata.uid,
                        }
                    ],
                }
            },
        )
    kube.core.delete_namespaced_config_map("owner", namespace)

    def children() -> list[str]:
        return [
            c.metadata.name
            for c in kube.core.list_namespaced_config_map(namespace).items
            if c.metadata.name.startswith("child-")
        ]

    wait_until(
        lambda: not children(),
        60,
        "the garbage collector to delete the children",
        lambda: str(children()),
    )
