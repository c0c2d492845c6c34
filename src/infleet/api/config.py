"""The operator configuration's wire model (Helm values -> ConfigMap -> this model).

Validated once at start (:func:`load_operator_config`), so a typo in the ConfigMap stops the
operator with a message naming the field instead of surfacing later as a wrong placement.
Keys are camelCase, like the CRD and the Helm values they come from. It lives with the API
models because the scheduler and ``infleet plan`` read it too, and the scheduler never
imports the operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from infleet.api.errors import OperatorConfigError
from infleet.api.spec import Backend, Precision
from infleet.api.validation import describe

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
# pvc://<claim>: a PersistentVolumeClaim of that name in each namespace that holds
# InferenceDeployments (PVCs are namespaced, so is the store).
STORE_URI = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class _Config(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True,
        use_attribute_docstrings=True,
    )


class ReplicaResources(_Config):
    """CPU and memory requests of one pod (a GPU class's pod also requests one GPU)."""

    cpu: Annotated[str, Field(pattern=QUANTITY)] = "2"
    memory: Annotated[str, Field(pattern=QUANTITY)] = "4Gi"
    """Grown by the planner when the model needs more."""


class ClassDefault(_Config):
    """A cluster-wide override for one node class."""

    backend: Backend | None = None
    precision_ladder: list[Precision] | None = None
    cost_per_hour: Annotated[float | None, Field(ge=0)] = None
    """Price of one replica of this class, in any currency unit, used to rank classes."""
    replica: ReplicaResources | None = None
    """Requests of one serving pod on this class, instead of cpuReplica/gpuReplica."""


class Images(_Config):
    """The runtime image of each backend: build Jobs and serving pods run `infleet` in it."""

    onnxruntime: str = "ghcr.io/infleet/runtime-onnxruntime:0.1.0"
    tvm: str = "ghcr.io/infleet/runtime-tvm:0.1.0"
    tensorrt: str = "ghcr.io/infleet/runtime-tensorrt:0.1.0"
    pull_policy: Annotated[str, Field(pattern=r"^(Always|IfNotPresent|Never)$")] = "IfNotPresent"

    def for_backend(self, backend: Backend) -> str:
        image: str = getattr(self, backend.value)
        return image


class BuildConfig(_Config):
    """How build Jobs run."""

    resources: ReplicaResources = ReplicaResources(cpu="2", memory="4Gi")
    """Requests (and limits) of a build pod; a GPU class's build pod also requests one GPU."""
    backoff_limit: Annotated[int, Field(ge=0, le=10)] = 1
    """Retries of a build pod within one Job (the Job's backoffLimit)."""
    active_deadline_seconds: Annotated[int, Field(ge=60, le=86_400)] = 3600
    """A build still running after this long is stopped and its class marked Failed."""
    tuning_trials: Annotated[int, Field(ge=0, le=100_000)] = 0
    """TVM MetaSchedule trials per task (function) of the model, for tasks without records in
    the engine store; 0 builds untuned engines (infleet's default CPU schedules). Each trial is
    measured on the build node; EfficientNet-Lite0 has 36 tasks per batch size."""
    tuning_seconds: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    """Time bound of TVM tuning within a build."""


class GatewayConfig(_Config):
    """The Gateway API Gateway that HTTPRoutes attach to (when the Gateway API is installed)."""

    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] = "infleet"
    namespace: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=63)] = "infleet-system"
    domain: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=200)] = "infleet.example.com"
    """Each deployment is served at host ``<name>.<namespace>.<domain>``."""
    enabled: bool = True
    """False: never write HTTPRoutes, serve through the all-classes Service only."""


class AutoscalerConfig(_Config):
    """How the SLO autoscaler samples load (the decision rules' knobs per deployment are in
    its spec: SLO, min/max replicas, headroom, scale-down stabilization)."""

    enabled: bool = True
    """False: replicas come from the placement alone (min replicas, or spec.replicas)."""
    interval_seconds: Annotated[float, Field(ge=0.5, le=600)] = 15.0
    """Time between two decisions: the window over which rate and p99 are measured."""
    stable_window_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """Demand is averaged over this long (the latest window alone when it needs more)."""
    scrape_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    """A pod (or Prometheus) that has not answered within this long is unknown."""
    min_requests: Annotated[float, Field(ge=1, le=1_000_000)] = 100.0
    """Requests a window needs before its p99 counts (p99 of fewer is noise)."""
    prometheus_window_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """The range of ``rate()`` when the load comes from Prometheus (at least twice its
    scrape interval)."""


class OperatorConfig(_Config):
    """Settings that apply to every InferenceDeployment in the cluster."""

    classes: dict[str, ClassDefault] = {}
    """Per node class selector (a class name, or a prefix of one ending at a dash; the longest
    match wins): backend, precision ladder, cost and replica size overrides."""
    cpu_replica: ReplicaResources = ReplicaResources()
    """Requests of a serving pod on CPU classes."""
    gpu_replica: ReplicaResources = ReplicaResources(cpu="2", memory="8Gi")
    """CPU and memory requests of a serving pod on GPU classes (plus one nvidia.com/gpu)."""
    engine_store: Annotated[str, Field(pattern=STORE_URI)] = "pvc://infleet-engines"
    """Where engines are kept: ``pvc://<claim>``, a ReadWriteMany PersistentVolumeClaim of that
    name in every namespace with InferenceDeployments (build Jobs write it, serving pods mount
    it read-only)."""
    images: Images = Images()
    build: BuildConfig = BuildConfig()
    gateway: GatewayConfig = GatewayConfig()
    metrics_source: Annotated[str, Field(pattern=r"^(pods|https?://.+)$")] = "pods"
    """`pods` scrapes serving pods directly; a URL names a Prometheus server that scrapes
    them (with the pod labels ``namespace``, ``pod``, ``infleet_dev_deployment`` and
    ``infleet_dev_class``, as the README's scrape configuration sets them)."""
    autoscaler: AutoscalerConfig = AutoscalerConfig()
    reconcile_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Longest time between two reconciles of one deployment when nothing changes (drift)."""
    probe_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """How often a verified class is sent a test inference again."""

    @property
    def store_claim(self) -> str:
        return self.engine_store.removeprefix("pvc://")


def load_operator_config(path: Path | None) -> OperatorConfig:
    """The configuration in ``path`` (YAML), or the defaults when None."""
    if path is None:
        return OperatorConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return OperatorConfig.model_validate(raw)
    except ValidationError as e:
        raise OperatorConfigError(f"{path}: " + "; ".join(describe(e, prefix="config"))) from e
    except (OSError, yaml.YAMLError) as e:
        raise OperatorConfigError(f"cannot read operator configuration {path}: {e}") from e
