"""Cluster-wide operator configuration (Helm values -> ConfigMap -> this model).

Validated once at start, so a typo in the ConfigMap stops the operator with a message
naming the field instead of surfacing later as a wrong placement. Keys are camelCase, like
the CRD and the Helm values they come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from infleet.api import Backend, Precision
from infleet.api.validation import describe
from infleet.errors import InfleetError


class ConfigError(InfleetError):
    """The operator configuration does not validate."""


class _Config(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


class ReplicaResources(_Config):
    """CPU and memory requests of one serving pod (a GPU class's pod also requests one GPU)."""

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


class OperatorConfig(_Config):
    """Settings that apply to every InferenceDeployment in the cluster."""

    classes: dict[str, ClassDefault] = {}
    """Per node class selector (a class name, or a prefix of one ending at a dash; the longest
    match wins): backend, precision ladder, cost and replica size overrides."""
    cpu_replica: ReplicaResources = ReplicaResources()
    """Requests of a serving pod on CPU classes."""
    gpu_replica: ReplicaResources = ReplicaResources(cpu="2", memory="8Gi")
    """CPU and memory requests of a serving pod on GPU classes (plus one nvidia.com/gpu)."""
    engine_store: str = "/var/lib/infleet/engines"
    """Engine store location mounted into build Jobs and serving pods."""
    metrics_source: Annotated[str, Field(pattern=r"^(pods|https?://.+)$")] = "pods"
    """`pods` scrapes serving pods directly; a URL names a Prometheus server."""
    reconcile_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 15.0

    @classmethod
    def load(cls, path: Path | None) -> OperatorConfig:
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"{path}: " + "; ".join(describe(e, prefix="config"))) from e
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read operator configuration {path}: {e}") from e
