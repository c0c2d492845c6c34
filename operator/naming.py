"""Names and labels of the objects the operator creates. Pure.

Every child carries the labels below, so the operator finds its children with one label
selector, ``kubectl get all -l infleet.dev/deployment=NAME`` shows them, and no name is ever
parsed back: the owner and the class are read from labels.
"""

from __future__ import annotations

import hashlib

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "infleet"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
DEPLOYMENT_LABEL = "infleet.dev/deployment"
CLASS_LABEL = "infleet.dev/class"
BUILD_KEY_LABEL = "infleet.dev/build-key"
RECORD_LABEL = "infleet.dev/engine-record"

COMPONENT_BUILD = "engine-build"
COMPONENT_SERVING = "serving"
COMPONENT_ENDPOINT = "endpoint"

# Annotations on build pods, read by the dev fleet's kwok Stage for simulated classes.
BACKEND_ANNOTATION = "infleet.dev/backend"
LADDER_ANNOTATION = "infleet.dev/precision-ladder"
SPEC_HASH_ANNOTATION = "infleet.dev/spec-hash"

FIELD_MANAGER = "infleet"
DNS_LABEL_MAX = 63


def short_hash(*parts: str, length: int = 6) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


def fit(base: str, suffix: str, limit: int = DNS_LABEL_MAX) -> str:
    """``base-suffix`` when it fits ``limit``; otherwise both parts cut and a hash of the
    untruncated pair appended, so two long inputs never end up with the same name."""
    full = f"{base}-{suffix}"
    if len(full) <= limit:
        return full
    digest = short_hash(base, suffix)
    room = limit - len(digest) - 2
    head = max(room // 2, room - len(suffix))
    return f"{base[:head].rstrip('-')}-{suffix[: room - head].rstrip('-')}-{digest}"


def serving_name(deployment: str, node_class: str) -> str:
    """The Deployment and Service of one class (a DNS-1035 label: the deployment name starts
    with a letter, CEL enforces it)."""
    return fit(deployment, node_class)


def build_job_name(build_key: str) -> str:
    return f"infleet-build-{build_key[:32]}"


def record_name(build_key: str) -> str:
    return f"infleet-engine-{build_key[:32]}"


def labels(deployment: str | None, component: str, node_class: str | None = None) -> dict[str, str]:
    out = {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: "infleet", COMPONENT_LABEL: component}
    if deployment is not None:
        out[DEPLOYMENT_LABEL] = deployment
    if node_class is not None:
        out[CLASS_LABEL] = node_class
    return out


def selector(deployment: str, node_class: str | None = None) -> dict[str, str]:
    """What a class Service (or, without a class, the all-classes Service) selects."""
    out = {DEPLOYMENT_LABEL: deployment, COMPONENT_LABEL: COMPONENT_SERVING}
    if node_class is not None:
        out[CLASS_LABEL] = node_class
    return out
