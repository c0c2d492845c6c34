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
    problem: str = ""
    """Why the pod does not start (:func:`pod_problem`); empty when nothing is known wrong."""


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
        problem=pod_problem(status),
    )


# Waiting reasons of a container that will not run until something changes (the kubelet
# retries, with a growing back-off, but the pod makes no progress on its own).
STUCK_REASONS = frozenset({
    "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "RunContainerError",
})


def pod_problem(status: Mapping[str, Any]) -> str:
    """Why a pod does not start, from its container statuses: the first init container, then
    container, that is stuck or failed, with what it said (the termination message its
    process wrote, else the kubelet's reason). Stable across retries (no counts, no back-off
    times), so a status holding it is rewritten only when the cause changes."""
    for kind, field_name in (("init container", "initContainerStatuses"),
                             ("container", "containerStatuses")):
        for c in status.get(field_name) or ():
            state = c.get("state") or {}
            waiting = state.get("waiting") or {}
            terminated = state.get("terminated") or {}
            if waiting.get("reason") in STUCK_REASONS:
                last = (c.get("lastState") or {}).get("terminated") or {}
                detail = _said(last) or str(waiting.get("message") or "")
                reason = str(waiting["reason"])
            elif terminated and terminated.get("exitCode") not in (0, None) and (
                    kind == "init container" or status.get("phase") == "Running"):
                detail, reason = _said(terminated), f"exit code {terminated.get('exitCode')}"
            else:
                continue
            return f"{kind} {c.get('name')}: {reason}" + (f": {detail}" if detail else "")
    return ""


def _said(terminated: Mapping[str, Any]) -> str:
    """A terminated container's message, on one line (a log tail may hold many)."""
    message = str(terminated.get("message") or "").strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:600]


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


def kept(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a child it watches, to compare its desired manifest with:
    the object without ``status`` and ``metadata.managedFields``, which no manifest of ours
    sets (the diff is a subset test over the fields we set). managedFields is most of a
    server-side-applied object's size: with thousands of children in the indexes it was
    most of the operator's memory."""
    out = {k: v for k, v in body.items() if k != "status"}
    meta = out.get("metadata")
    if isinstance(meta, Mapping) and "managedFields" in meta:
        out["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return out


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
        body=kept(body),
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
