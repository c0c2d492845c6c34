"""Node affinity as plain data, with a matcher that follows Kubernetes' semantics.

The matcher lets class derivation prove that the affinity it writes selects exactly the
nodes of the class (and lets tests check it), without a kube-scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One ``NodeSelectorRequirement`` on a label."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values  # absent keys match NotIn
        if self.operator == "Exists":
            return value is not None
        return value is None

    def to_k8s(self) -> dict[str, object]:
        out: dict[str, object] = {"key": self.key, "operator": self.operator}
        if self.operator in ("In", "NotIn"):
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True, slots=True)
class NodeAffinity:
    """One required node selector term: every requirement must hold (a logical AND)."""

    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def to_k8s(self) -> dict[str, object]:
        """The pod spec's ``affinity.nodeAffinity`` stanza."""
        term = {"matchExpressions": [r.to_k8s() for r in self.requirements]}
        return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
