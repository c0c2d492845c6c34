"""The operator configuration, turned into the scheduler's :class:`ClusterPolicy`.

Kept apart from the policy so the pure modules never depend on the configuration's wire
model; the operator and ``infleet plan`` both call :func:`cluster_policy`.
"""

from __future__ import annotations

from types import MappingProxyType

from infleet.api.config import OperatorConfig, ReplicaResources
from infleet.scheduler.inventory import Resources
from infleet.scheduler.policy import ClassDefaults, ClusterPolicy


def _resources(r: ReplicaResources, gpus: int) -> Resources:
    return Resources.from_quantities({"cpu": r.cpu, "memory": r.memory}) + Resources(0, 0, gpus)


def cluster_policy(config: OperatorConfig) -> ClusterPolicy:
    """Per-class backend, ladder, cost and replica overrides from ``config.classes`` (keyed by
    class selector: a class name or a dash-bounded prefix of one, the longest match wins)."""
    defaults = {
        selector: ClassDefaults(
            backend=c.backend,
            precision_ladder=tuple(c.precision_ladder) if c.precision_ladder else None,
            cost_per_hour=c.cost_per_hour,
            replica=_resources(c.replica, 0) if c.replica else None,
        )
        for selector, c in config.classes.items()
    }
    return ClusterPolicy(
        class_defaults=MappingProxyType(defaults),
        cpu_replica=_resources(config.cpu_replica, 0),
        gpu_replica=_resources(config.gpu_replica, 1),
    )
