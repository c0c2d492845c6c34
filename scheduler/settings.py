"""The operator configuration, turned into the scheduler's :class:`ClusterPolicy`.

Kept apart from the policy so the pure modules never depend on the configuration's wire
model; the operator and ``infleet plan`` both call :func:`cluster_policy`.
"""

from __future__ import annotations

from types import MappingProxyType

from infleet.operator.config import OperatorConfig
from infleet.scheduler.policy import ClassDefaults, ClusterPolicy


def cluster_policy(config: OperatorConfig) -> ClusterPolicy:
    """Per-class backend, ladder and cost overrides from ``config.classes`` (keyed by class
    selector: a class name or a dash-bounded prefix of one, the longest match wins)."""
    defaults = {
        selector: ClassDefaults(
            backend=c.backend,
            precision_ladder=tuple(c.precision_ladder) if c.precision_ladder else None,
            cost_per_hour=c.cost_per_hour,
        )
        for selector, c in config.classes.items()
    }
    return ClusterPolicy(class_defaults=MappingProxyType(defaults))
