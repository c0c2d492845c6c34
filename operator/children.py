"""The objects one InferenceDeployment owns, as plain manifests. Pure.

Every pod passes Pod Security ``restricted``: non-root, no privilege escalation, every
capability dropped, seccomp RuntimeDefault, a read-only root filesystem with emptyDirs where
the process writes, no service-account token (the pods never talk to the API server). Commands
are argv lists; user strings (the model URI, input names) are single arguments, never parts of
a shell line.

The engine store is a claim (``pvc://``: build Jobs mount it, serving pods mount it
read-only) or a bucket (``s3://``: build Jobs upload to it, serving pods download their engine
into an emptyDir in an init container, before the server starts). A bucket's credentials are
the pods' business: they get the Secret the configuration names through ``envFrom``; the
operator only writes its name into the pod spec and never reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from infleet.api import API_VERSION, KIND, Backend, InferenceDeploymentSpec
from infleet.api.config import OperatorConfig, ReplicaResources
from infleet.operator import naming
from infleet.operator.observed import ENGINE_KEY_ANNOTATION
from infleet.scheduler.capacity import queue_wait_budget_ms
from infleet.scheduler.classes import NodeClass
from infleet.scheduler.inventory import GPU_RESOURCE, Resources
from infleet.scheduler.policy import ClassDecision

Manifest = dict[str, Any]

STORE_MOUNT = "/var/lib/infleet/store"
ENGINE_MOUNT = "/var/lib/infleet/engine"
"""Where a serving pod with an s3:// store keeps its downloaded engine (an emptyDir)."""
BUILD_CACHE = "/tmp/store"  # noqa: S108 - in the build pod's tmp emptyDir
"""With an s3:// store, a build's local working copy of the store."""
STORE_ENV_PREFIX = "INFLEET_STORE_"
"""The store Secret's keys reach pods as INFLEET_STORE_<key>, apart from the AWS_* variables
an s3:// model fetch reads (``infleet.runtime.s3store.ENV_PREFIX``)."""
PVC_ROOT = "/mnt/pvc"
TERMINATION_LOG = "/dev/termination-log"
HTTP_PORT = 8080
DRAIN_TIMEOUT_S = 30.0
"""Longest a stopping serving pod waits for the requests it admitted (`infleet serve`'s
--drain-timeout-s)."""
RUNTIME_UID = 65532


@dataclass(frozen=True, slots=True)
class Owner:
    """The InferenceDeployment being reconciled."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def served_name(owner: Owner, spec: InferenceDeploymentSpec) -> str:
    return spec.model.name or owner.name


def _meta(owner: Owner | None, namespace: str, name: str, labels: Mapping[str, str]) -> Manifest:
    meta: Manifest = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner is not None:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def _pod_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(requests: ReplicaResources, gpus: int) -> Manifest:
    # Limits equal requests: Guaranteed QoS, so a latency SLO is not at the mercy of noisy
    # neighbours, and the CPU count the server sizes its threads from is the real one.
    amounts: dict[str, str] = {"cpu": requests.cpu, "memory": requests.memory}
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _quantity(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def _memory(nbytes: int) -> str:
    mib = math.ceil(nbytes / 2**20)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def _scheduling(cls: NodeClass) -> Manifest:
    out: Manifest = {"affinity": {"nodeAffinity": cls.affinity.to_k8s()}}
    if cls.tolerations:
        out["tolerations"] = [t.as_toleration() for t in cls.tolerations]
    return out


def _pvc_claim(uri: str) -> str | None:
    if not uri.startswith("pvc://"):
        return None
    return urlparse(uri).netloc or None


def _mounted(uri: str) -> str:
    claim = _pvc_claim(uri)
    if claim is None:
        return uri
    return f"file://{PVC_ROOT}/{claim}{urlparse(uri).path}"


def _engine_env() -> list[Manifest]:
    return [
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 - an emptyDir (read-only root)
        {"name": "TMPDIR", "value": "/tmp"},  # noqa: S108
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _store_env(config: OperatorConfig) -> tuple[list[Manifest], list[Manifest]]:
    """``env`` and ``envFrom`` of a container that reaches an s3:// store (nothing for a
    claim). The Secret is optional on purpose: a missing one starts the container anyway and
    ``infleet`` fails at once naming it, in the termination message the operator shows,
    instead of a pod stuck in CreateContainerConfigError that a Job waits on until its
    deadline. Settings from the configuration are plain ``env``, which wins over the
    Secret's keys of the same name."""
    if not config.store_is_s3:
        return [], []
    env: list[Manifest] = [{"name": f"{STORE_ENV_PREFIX}SECRET",
                            "value": config.engine_store_secret}]
    if config.engine_store_endpoint:
        env.append({"name": f"{STORE_ENV_PREFIX}AWS_ENDPOINT_URL_S3",
                    "value": config.engine_store_endpoint})
    if config.engine_store_region:
        env.append({"name": f"{STORE_ENV_PREFIX}AWS_REGION", "value": config.engine_store_region})
    return env, [{"prefix": STORE_ENV_PREFIX,
                  "secretRef": {"name": config.engine_store_secret, "optional": True}}]


# --- build Job ---------------------------------------------------------------------------


def build_request(config: OperatorConfig) -> Resources:
    """CPU and memory a build pod requests (a GPU class's also one GPU)."""
    r = config.build.resources
    return Resources.from_quantities({"cpu": r.cpu, "memory": r.memory})


def build_args(
    spec: InferenceDeploymentSpec,
    cls: NodeClass,
    decision: ClassDecision,
    config: OperatorConfig,
    model_name: str,
) -> list[str]:
    """`infleet build`'s argv for one class (a list: nothing here passes through a shell)."""
    assert decision.backend is not None
    model = spec.model
    # A pvc:// model is on a claim the Job mounts itself (build_job): name the file there.
    args = ["build", "--model", _mounted(model.uri)]
    if model.sha256:
        args += ["--sha256", model.sha256]
    args += [
        "--class", cls.name,
        "--backend", decision.backend.value,
        "--precision-ladder", ",".join(p.value for p in decision.ladder),
        "--metric", spec.accuracy.metric.value,
        "--max-batch", str(spec.batching.max_batch_size),
        "--name", model_name,
        "--hardware", json.dumps(cls.key.engine_fields(), sort_keys=True, separators=(",", ":")),
        "--store", config.engine_store if config.store_is_s3 else STORE_MOUNT,
        "--termination-log", TERMINATION_LOG,
        "--tuning-trials", str(config.build.tuning_trials),
        "--tuning-seconds", f"{config.build.tuning_seconds:g}",
    ]
    if config.store_is_s3:
        args += ["--cache-dir", BUILD_CACHE]
    if spec.accuracy.max_deviation is not None:
        args += ["--max-deviation", f"{spec.accuracy.max_deviation:g}"]
    for shape in model.inputs:
        args += ["--input", f"{shape.name}={','.join(str(d) for d in shape.shape)}"]
    calibration = spec.accuracy.calibration
    if calibration is not None and calibration.uri:
        args += ["--calibration", _mounted(calibration.uri),
                 "--calibration-samples", str(calibration.samples)]
        if calibration.sha256:
            args += ["--calibration-sha256", calibration.sha256]
    validation = spec.accuracy.validation
    if validation is not None:
        args += ["--validation", _mounted(validation.uri),
                 "--validation-samples", str(validation.samples)]
        if validation.sha256:
            args += ["--validation-sha256", validation.sha256]
    return args


def build_job(
    owner: Owner,
    key: str,
    spec: InferenceDeploymentSpec,
    cls: NodeClass,
    decision: ClassDecision,
    config: OperatorConfig,
) -> Manifest:
    """One build Job, named by its build key and pinned to exactly ``cls``'s nodes."""
    assert decision.backend is not None
    labels = naming.labels(None, naming.COMPONENT_BUILD, cls.name)
    labels[naming.BUILD_KEY_LABEL] = key
    annotations = {
        naming.BACKEND_ANNOTATION: decision.backend.value,
        naming.LADDER_ANNOTATION: ",".join(p.value for p in decision.ladder),
    }
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}}]
    if not config.store_is_s3:
        mounts.insert(0, {"name": "store", "mountPath": STORE_MOUNT})
        volumes.insert(0, {"name": "store",
                           "persistentVolumeClaim": {"claimName": config.store_claim}})
    store_env, store_env_from = _store_env(config)
    # Claims the model, calibration and validation data live on, mounted read-only where
    # _mounted() points (the store's own claim is the store volume mounted a second time).
    uris = [spec.model.uri, spec.accuracy.calibration.uri if spec.accuracy.calibration else None,
            spec.accuracy.validation.uri if spec.accuracy.validation else None]
    claims = list(dict.fromkeys(c for c in (_pvc_claim(u or "") for u in uris) if c))
    for i, claim in enumerate(claims):
        volume = "store" if claim == config.store_claim else f"data-{i}"
        mounts.append({"name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
        if volume != "store":
            volumes.append({"name": volume,
                            "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    gpus = 1 if cls.key.is_gpu else 0
    container = {
        "name": "build",
        "image": config.images.for_backend(decision.backend),
        "imagePullPolicy": config.images.pull_policy,
        "command": ["infleet"],
        "args": build_args(spec, cls, decision, config, served_name(owner, spec)),
        "env": _engine_env() + store_env,
        **({"envFrom": store_env_from} if store_env_from else {}),
        "resources": _resources(config.build.resources, gpus),
        "securityContext": _container_security(),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The build writes its summary there; a crash before it could leaves the log tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(),
        **_scheduling(cls),
        "containers": [container],
        "volumes": volumes,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(owner, owner.namespace, naming.build_job_name(key), labels),
        "spec": {
            "backoffLimit": config.build.backoff_limit,
            "activeDeadlineSeconds": config.build.active_deadline_seconds,
            # The operator records the outcome and deletes the Job; this only cleans up after
            # an operator that was gone for a day.
            "ttlSecondsAfterFinished": 86_400,
            "template": {
                "metadata": {"labels": dict(labels), "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


# --- serving -------------------------------------------------------------------------------


def serving_workers(decision: ClassDecision) -> int:
    """Server processes per pod: one per whole CPU on CPU classes (each with its own engine
    and event loop), two on GPU classes (the HTTP path, not the GPU, limits one process)."""
    if decision.replica.gpus:
        return 2
    return max(1, min(8, decision.replica.cpu_millis // 1000))


def serving_deployment(
    owner: Owner,
    spec: InferenceDeploymentSpec,
    cls: NodeClass,
    decision: ClassDecision,
    config: OperatorConfig,
    engine_key: str,
    backend: Backend,
    replicas: int,
) -> Manifest:
    name = naming.serving_name(owner.name, cls.name)
    labels = naming.labels(owner.name, naming.COMPONENT_SERVING, cls.name)
    replica = decision.replica
    requests = ReplicaResources(cpu=_quantity(replica.cpu_millis),
                                memory=_memory(replica.memory_bytes))
    s3 = config.store_is_s3
    engine_dir = f"{ENGINE_MOUNT}/{engine_key}" if s3 else f"{STORE_MOUNT}/engines/{engine_key}"
    args = [
        "serve",
        "--engine-dir", engine_dir,
        "--model-name", served_name(owner, spec),
        # The pod's own address: a pod binds it (the local executor gives each pod its own
        # loopback address; on a real node it is the pod network's).
        "--host", "$(POD_IP)",
        "--port", str(HTTP_PORT),
        "--workers", str(serving_workers(decision)),
        "--max-batch-size", str(spec.batching.max_batch_size),
        "--max-queue-delay-ms", f"{spec.batching.max_queue_delay_ms:g}",
        # SLO-aware admission: past saturation a pod answers what it can in time and refuses
        # the rest at once, instead of a backlog that makes every answer late (the
        # autoscaler reads the refusals as a breach)
        "--max-queue-wait-ms", f"{queue_wait_budget_ms(spec.slo.latency_p99_ms):g}",
        # Served on, not ready, for a moment after SIGTERM: the gateway still routes to a
        # deleted pod until its endpoints catch up (without it, every rollout of a one-class
        # deployment answered some requests 502)
        "--shutdown-delay-s", f"{config.shutdown_delay_seconds:g}",
        "--drain-timeout-s", f"{DRAIN_TIMEOUT_S:g}",
    ]
    if replica.gpus:
        args += ["--device", "gpu", "--batch-concurrency", "2"]
    probe_get = {"port": "http", "scheme": "HTTP"}
    container = {
        "name": "server",
        "image": config.images.for_backend(backend),
        "imagePullPolicy": config.images.pull_policy,
        "command": ["infleet"],
        "args": args,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            *_engine_env(),
        ],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        # Ready only once the engine is loaded and warmed (the server's own rule).
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", **probe_get},
            "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3,
        },
        # Liveness answers while a large engine loads, so no startup probe is needed.
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", **probe_get},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": _resources(requests, replica.gpus),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "engine" if s3 else "store", "mountPath": ENGINE_MOUNT if s3 else STORE_MOUNT,
             "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
        ],
    }
    store_volume: Manifest = (
        # No sizeLimit: the engine's size is not known here; the node's ephemeral storage
        # bounds it.
        {"name": "engine", "emptyDir": {}} if s3 else
        {"name": "store",
         "persistentVolumeClaim": {"claimName": config.store_claim, "readOnly": True}})
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # the delay, the drain, and room for the engine to close before SIGKILL
        "terminationGracePeriodSeconds": math.ceil(config.shutdown_delay_seconds
                                                   + DRAIN_TIMEOUT_S) + 10,
        "securityContext": _pod_security(),
        **_scheduling(cls),
        **({"initContainers": [_pull_engine(config, backend, engine_key, requests)]}
           if s3 else {}),
        "containers": [container],
        "volumes": [store_volume, {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, owner.namespace, name, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": naming.selector(owner.name, cls.name)},
            # New capacity first: a pod goes only after its replacement is Ready.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": dict(labels),
                             "annotations": {ENGINE_KEY_ANNOTATION: engine_key}},
                "spec": pod_spec,
            },
        },
    }


def _pull_engine(config: OperatorConfig, backend: Backend, engine_key: str,
                  requests: ReplicaResources) -> Manifest:
    """The init container that copies the engine from an s3:// store into the pod (checksums
    verified) before the server starts, so the pod turns ready only with its engine. It
    requests what the server does: an init container's requests count on their own, and equal
    requests and limits keep the pod Guaranteed."""
    store_env, store_env_from = _store_env(config)
    return {
        "name": "pull-engine",
        "image": config.images.for_backend(backend),
        "imagePullPolicy": config.images.pull_policy,
        "command": ["infleet"],
        "args": ["pull", "--store", config.engine_store, "--engine", engine_key,
                 "--dest", ENGINE_MOUNT],
        "env": _engine_env() + store_env,
        "envFrom": store_env_from,
        "resources": _resources(requests, 0),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "engine", "mountPath": ENGINE_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
        ],
        "terminationMessagePath": TERMINATION_LOG,
        # `infleet pull` writes why it failed there; a crash before it could leaves the log tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def service(owner: Owner, name: str, node_class: str | None) -> Manifest:
    """A class's Service, or (``node_class`` None) the one selecting every class's pods."""
    component = naming.COMPONENT_SERVING if node_class else naming.COMPONENT_ENDPOINT
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, owner.namespace, name,
                          naming.labels(owner.name, component, node_class)),
        "spec": {
            "selector": naming.selector(owner.name, node_class),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }


def route_host(owner: Owner, config: OperatorConfig) -> str:
    return f"{owner.name}.{owner.namespace}.{config.gateway.domain}"


def http_route(
    owner: Owner, config: OperatorConfig, backends: Sequence[tuple[str, int]]
) -> Manifest:
    """The deployment's one endpoint: weighted backendRefs, one per class Service."""
    gateway = config.gateway
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _meta(owner, owner.namespace, owner.name,
                          naming.labels(owner.name, naming.COMPONENT_ENDPOINT)),
        "spec": {
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                            "name": gateway.name, "namespace": gateway.namespace}],
            "hostnames": [route_host(owner, config)],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": name, "port": HTTP_PORT,
                     "weight": weight}
                    for name, weight in backends
                ],
            }],
        },
    }
