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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from infleet.api.errors import OperatorConfigError
from infleet.api.spec import Backend, Precision
from infleet.api.validation import describe

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
# pvc://<claim>: a PersistentVolumeClaim of that name in each namespace that holds
# InferenceDeployments (PVCs are namespaced, so is the store).
PVC_STORE = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# s3://<bucket>[/<prefix>]: S3's bucket naming rules, and a prefix of path segments made of
# S3's "safe" key characters only, so no object key of the store ever needs escaping.
S3_STORE = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_][A-Za-z0-9._-]*)*"
STORE_URI = rf"^({PVC_STORE}|{S3_STORE})$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# Empty means "not set": Helm values cannot leave a key out of the chart's defaults.
OPTIONAL_DNS_SUBDOMAIN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"


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
    reserve_fraction: Annotated[float, Field(ge=0, le=100)] = 3.0
    """Capacity held on cheap classes beyond the demand, as a fraction of the demand (3: a
    burst to four times the demand finds Ready replicas instead of waiting for pods to
    start, as far as the cheap classes have room); 0: none."""
    reserve_cost_share: Annotated[float, Field(ge=0, le=1)] = 0.1
    """A class is cheap (held in reserve) when its cost per request at the SLO is at most
    this share of the dearest class's the deployment uses; a fleet of one price holds none."""
    prometheus_window_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """The range of ``rate()`` when the load comes from Prometheus (at least twice its
    scrape interval)."""


# The JSON schema (Helm's values.schema.json embeds it) says what the validator below says,
# so `helm install` refuses an s3:// store without its Secret, or S3 settings beside a claim,
# before anything runs.
_STORE_RULES: JsonDict = {
    "if": {"required": ["engineStore"], "properties": {"engineStore": {"pattern": "^s3://"}}},
    "then": {"required": ["engineStoreSecret"],
             "properties": {"engineStoreSecret": {"minLength": 1}}},
    "else": {"properties": {name: {"maxLength": 0} for name in (
        "engineStoreSecret", "engineStoreEndpoint", "engineStoreRegion")}},
}


class OperatorConfig(_Config):
    """Settings that apply to every InferenceDeployment in the cluster."""

    model_config = ConfigDict(json_schema_extra=_STORE_RULES)

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
    it read-only); or ``s3://<bucket>[/<prefix>]``, an S3-compatible bucket (build Jobs upload
    engines there, serving pods download theirs before they turn ready)."""
    engine_store_secret: Annotated[str, Field(pattern=OPTIONAL_DNS_SUBDOMAIN,
                                              max_length=253)] = ""
    """With an ``s3://`` store (required there): the Secret, in every namespace with
    InferenceDeployments, whose keys build and serving pods get as the store's ``AWS_*``
    variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``; optionally
    ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``). The operator never reads
    it: only those pods do."""
    engine_store_endpoint: Annotated[str, Field(pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$",
                                                max_length=512)] = ""
    """With an ``s3://`` store: the URL of an S3-compatible service (MinIO, Ceph, ...),
    addressed path-style; empty: the Secret's ``AWS_ENDPOINT_URL``, else AWS itself."""
    engine_store_region: Annotated[str, Field(pattern=r"^([a-z0-9-]{1,32})?$")] = ""
    """With an ``s3://`` store: its region; empty: the Secret's ``AWS_REGION``, else
    ``us-east-1``."""
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
    max_concurrent_reconciles: Annotated[int, Field(ge=1, le=256)] = 16
    """Reconciles that run at once over all deployments (controller-runtime's
    MaxConcurrentReconciles): with hundreds of deployments, the others wait their turn
    instead of crowding the API client until its requests time out."""
    probe_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """How often a verified class is sent a test inference again."""
    shutdown_delay_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    """How long a serving pod that is stopping (a rollout, a scale-down) keeps answering,
    not ready, before it refuses new requests: the time the gateway and kube-proxy take to
    drop a deleted pod's address. Too short, and requests routed to it meanwhile fail
    (503, or 502 once it has exited); a cloud load balancer in front may need 15-30."""

    @model_validator(mode="after")
    def _store_settings(self) -> OperatorConfig:
        if self.store_is_s3 and not self.engine_store_secret:
            raise ValueError(
                "engineStoreSecret: an s3:// engine store needs the name of the Secret that "
                "holds its credentials")
        s3_only = [name for name, value in (("engineStoreSecret", self.engine_store_secret),
                                            ("engineStoreEndpoint", self.engine_store_endpoint),
                                            ("engineStoreRegion", self.engine_store_region))
                   if value]
        if not self.store_is_s3 and s3_only:
            raise ValueError(f"{', '.join(s3_only)}: only for an s3:// engine store")
        return self

    @property
    def store_is_s3(self) -> bool:
        return self.engine_store.startswith("s3://")

    @property
    def store_claim(self) -> str:
        """The claim of a ``pvc://`` store; empty for an ``s3://`` one."""
        return "" if self.store_is_s3 else self.engine_store.removeprefix("pvc://")

    @property
    def store_identity(self) -> str:
        """What names the store in build keys: its URI, and for S3 the endpoint too (one
        bucket name on two services is two stores)."""
        if self.store_is_s3 and self.engine_store_endpoint:
            return f"{self.engine_store}@{self.engine_store_endpoint}"
        return self.engine_store


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
