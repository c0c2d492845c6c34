"""What the operator observes, reduced to plain frozen data. Pure.

The kopf indexes (handlers.py) turn each watched object into one of these views as it
arrives, so the planner never sees a raw API object and the operator keeps only what it
reads (a Pod view is a few strings, not the whole Pod).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infleet.operator import engines, naming
from infleet.scheduler.inventory import NodeInfo, Resources, node_from_object, pod_request


@dataclass(frozen=True, slots=True)
class PodUsage:
    """A bound, running pod's requests, for the free allocatable of its node."""

    node: str
    requests: Resources
    deployment: str | None
    """The InferenceDeployment whose serving pod this is (its own pods do not count against
    the room it plans in)."""
    namespace: str


@dataclass(frozen=True, slots=True)
class ServingPod:
    name: str
    node_class: str
    ip: str | None
    ready: bool
    engine_key: str
    deleting: bool


@dataclass(frozen=True, slots=True)
class ServingSet:
    """One class's serving Deployment as observed."""

    name: str
    node_class: str
    replicas: int
    ready_replicas: int
    updated_replicas: int
    engine_key: str
    """The engine its pod template serves (annotation)."""
    body: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BuildPod:
    """The last state of a build Job's pod (where the termination message is)."""

    job: str
    termination_message: str | None
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class JobView:
    name: str
    build_key: str
    node_class: str
    owner_uid: str | None
    conditions: tuple[Mapping[str, Any], ...]
    active: int


ENGINE_KEY_ANNOTATION = "infleet.dev/engine-key"


def node_view(body: Mapping[str, Any]) -> NodeInfo:
    return node_from_object(body)


def pod_usage(body: Mapping[str, Any]) -> PodUsage | None:
    spec = body.get("spec") or {}
    node = spec.get("nodeName")
    phase = (body.get("status") or {}).get("phase")
    if not node or phase in ("Succeeded", "Failed"):
        return None
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        requests = pod_request(body)
    except ValueError:
        return None  # the API server validated it; a quantity we cannot read counts as zero
    serving = labels.get(naming.COMPONENT_LABEL) == naming.COMPONENT_SERVING
    return PodUsage(
        node=node,
        requests=requests,
        deployment=labels.get(naming.DEPLOYMENT_LABEL) if serving else None,
        namespace=str(meta.get("namespace", "")),
    )


def _ready(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def serving_pod(body: Mapping[str, Any]) -> ServingPod:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return ServingPod(
        name=str(meta.get("name", "")),
        node_class=str((meta.get("labels") or {}).get(naming.CLASS_LABEL, "")),
        ip=status.get("podIP"),
        ready=_ready(status) and status.get("phase") == "Running",
        engine_key=str((meta.get("annotations") or {}).get(ENGINE_KEY_ANNOTATION, "")),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def build_pod(body: Mapping[str, Any]) -> BuildPod | None:
    """The termination state of a finished build pod; None while it runs."""
    meta = body.get("metadata") or {}
    job = (meta.get("labels") or {}).get("job-name") or ""
    for c in (body.get("status") or {}).get("containerStatuses") or ():
        terminated = (c.get("state") or {}).get("terminated")
        if terminated:
            code = terminated.get("exitCode")
            return BuildPod(
                job=str(job),
                termination_message=terminated.get("message"),
                exit_code=int(code) if code is not None else None,
            )
    return None


def job_view(body: Mapping[str, Any]) -> JobView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    owners = [o.get("uid") for o in meta.get("ownerReferences") or ()
              if o.get("kind") == "InferenceDeployment"]
    status = body.get("status") or {}
    return JobView(
        name=str(meta.get("name", "")),
        build_key=str(labels.get(naming.BUILD_KEY_LABEL, "")),
        node_class=str(labels.get(naming.CLASS_LABEL, "")),
        owner_uid=owners[0] if owners else None,
        conditions=tuple(status.get("conditions") or ()),
        active=int(status.get("active") or 0),
    )


def serving_set(body: Mapping[str, Any]) -> ServingSet:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    template = (spec.get("template") or {}).get("metadata") or {}
    return ServingSet(
        name=str(meta.get("name", "")),
        node_class=str((meta.get("labels") or {}).get(naming.CLASS_LABEL, "")),
        replicas=int(spec.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        engine_key=str((template.get("annotations") or {}).get(ENGINE_KEY_ANNOTATION, "")),
        body=body,
    )


def build_state(
    job: JobView, pods: list[BuildPod], previous: engines.EngineResult | None, now: datetime
) -> engines.BuildJobState:
    """A Job and its pods as one build state; ``previous`` (a failed record being retried)
    gives the attempt count."""
    last = next((p for p in reversed(pods) if p.job == job.name), None)
    result = engines.job_result(
        list(job.conditions),
        last.termination_message if last else None,
        last.exit_code if last else None,
        now,
    )
    if result is not None and previous is not None:
        result = engines.EngineResult(
            result.outcome, result.summary, result.message, result.retryable,
            previous.attempts + 1, result.finished_at,
        )
    return engines.BuildJobState(
        name=job.name, owner_uid=job.owner_uid, active=result is None, result=result
    )
