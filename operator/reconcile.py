"""One reconcile of one InferenceDeployment: read, plan, apply once. Async I/O glue.

Reads come from kopf's in-memory indexes (filled by watches, so a reconcile lists nothing),
plus one GET of the HTTPRoute. The plan is computed off the event loop by the pure planner;
then the differing manifests are applied, the leftovers deleted, the status written when it
changed, the Events posted and the test inferences sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from infleet.api import (
    API_VERSION,
    KIND,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
    Phase,
    parse_spec,
)
from infleet.api.errors import SpecError
from infleet.api.spec import NAME_RULE
from infleet.operator import autoscaler, children, metrics, naming, planner, probe
from infleet.operator.children import Owner
from infleet.operator.engines import EngineResult
from infleet.operator.errors import ApiError
from infleet.operator.observed import (
    BuildPod,
    JobView,
    PodUsage,
    ServingPod,
    ServingSet,
    build_state,
)
from infleet.operator.state import OperatorState
from infleet.operator.status import batch_events
from infleet.scheduler.classes import NodeClass, derive_classes
from infleet.scheduler.inventory import NodeInfo, Resources

log = logging.getLogger("infleet.operator")
ROUTE_API = "gateway.networking.k8s.io/v1"
GATEWAY_RECHECK_SECONDS = 60.0

Index = Mapping[Any, Collection[Any]]


@dataclass(frozen=True)
class Indexes:
    """kopf's indexes, as the handlers receive them."""

    nodes: Index
    pod_usage: Index
    jobs: Index
    build_pods: Index
    serving_pods: Index
    deployments: Index
    services: Index
    records: Index


def _one(index: Index, key: Any) -> list[Any]:
    store = index.get(key)
    return list(store) if store is not None else []


def node_classes(ix: Indexes, namespace: str, name: str) -> tuple[NodeClass, ...]:
    """The classes with free room as this deployment sees it: its own serving pods do not
    count as used (it plans where they are), everybody else's do."""
    requested: dict[str, Resources] = {}
    for node, usages in ix.pod_usage.items():
        total = Resources()
        for u in usages:
            assert isinstance(u, PodUsage)
            if u.deployment == name and u.namespace == namespace:
                continue
            total = total + u.requests
        requested[node] = total
    nodes: list[NodeInfo] = []
    for store in ix.nodes.values():
        for n in store:
            nodes.append(n.with_requested(requested.get(n.name, Resources())))
    return tuple(derive_classes(nodes))


def _records(ix: Indexes, namespace: str) -> tuple[dict[str, EngineResult], dict[tuple[str, str],
                                                                                   Any]]:
    results: dict[str, EngineResult] = {}
    bodies: dict[tuple[str, str], Any] = {}
    for (ns, key), store in ix.records.items():
        if ns != namespace:
            continue
        for result, body in store:
            bodies[("ConfigMap", body["metadata"]["name"])] = body
            if result is not None:
                results[key] = result
    return results, bodies


async def _gateway_api(state: OperatorState) -> bool:
    loop = asyncio.get_running_loop()

    def stale() -> bool:
        return state.gateway_api is None or (
            loop.time() - state.gateway_checked > GATEWAY_RECHECK_SECONDS)

    if stale():
        async with state.gateway_lock:
            if stale():  # another deployment may have asked while this one waited
                state.gateway_api = await state.kube.serves(ROUTE_API, "HTTPRoute")
                state.gateway_checked = loop.time()
    assert state.gateway_api is not None
    return state.gateway_api


async def snapshot(
    state: OperatorState, ix: Indexes, body: Mapping[str, Any], spec: InferenceDeploymentSpec
) -> planner.Snapshot:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    now = datetime.now(UTC)
    records, record_bodies = _records(ix, namespace)
    jobs = {}
    for (ns, key), store in ix.jobs.items():
        if ns != namespace:
            continue
        for job in store:
            assert isinstance(job, JobView)
            pods: list[BuildPod] = _one(ix.build_pods, (ns, key))
            jobs[key] = build_state(job, pods, records.get(key), now)
    serving: dict[str, ServingSet] = {}
    child_bodies: dict[tuple[str, str], Any] = dict(record_bodies)
    for d in _one(ix.deployments, (namespace, name)):
        serving[d.node_class] = d
        child_bodies[("Deployment", d.name)] = d.body
    for svc in _one(ix.services, (namespace, name)):
        child_bodies[("Service", svc["metadata"]["name"])] = svc
    gateway = await _gateway_api(state)
    if gateway:
        route = await state.kube.get(ROUTE_API, "HTTPRoute", namespace, name)
        owned = route is not None and any(
            o.get("uid") == meta.get("uid") for o in route["metadata"].get("ownerReferences", ()))
        if route is not None and owned:
            child_bodies[("HTTPRoute", name)] = route
    pods_seen: list[ServingPod] = _one(ix.serving_pods, (namespace, name))
    owner = Owner(name, namespace, meta["uid"])
    scale_view = await autoscaler.view(state, (namespace, name), spec,
                                       children.served_name(owner, spec), pods_seen)
    try:
        previous = InferenceDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        previous = InferenceDeploymentStatus()
    return planner.Snapshot(
        owner=owner,
        generation=int(meta.get("generation") or 0),
        spec=spec,
        classes=await asyncio.to_thread(node_classes, ix, namespace, name),
        config=state.config,
        policy=state.policy,
        records=records,
        jobs=jobs,
        serving=serving,
        pods=tuple(pods_seen),
        children=child_bodies,
        probes=dict(state.probes.get((namespace, name), {})),
        gateway_api=gateway,
        previous=previous,
        now=now,
        autoscale=scale_view,
    )


def status_body(status: InferenceDeploymentStatus) -> dict[str, Any]:
    body: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


async def reconcile(
    state: OperatorState, ix: Indexes, body: Mapping[str, Any]
) -> planner.Reconcile | None:
    """One reconcile; raises ApiError when the API server refused something (the caller
    retries retryable ones). Returns None for an invalid spec (status and Event written)."""
    meta = body["metadata"]
    ref = (meta["namespace"], meta["name"])
    try:
        if not NAME_RULE.holds(meta["name"]):
            raise SpecError([f"metadata.name: {NAME_RULE.message}"])
        spec = parse_spec(body.get("spec") or {})
    except SpecError as e:
        await _invalid(state, body, str(e))
        metrics.RECONCILES.labels("invalid").inc()
        return None
    with metrics.RECONCILE_SECONDS.time():
        snap = await snapshot(state, ix, body, spec)
        result = await asyncio.to_thread(planner.plan, snap)
        await _apply(state, result)
        # Remembered once applied: a refused write leaves the last decision in force, and
        # the next tick decides again from what the Deployments really have.
        autoscaler.record(state, ref, result)
        new_status = status_body(result.status)
        key = (ref[0], "status", ref[1])
        now = asyncio.get_running_loop().time()
        if new_status != body.get("status") and not state.recent.written(key, new_status, now):
            await state.kube.apply_status(API_VERSION, KIND, ref[0], ref[1], new_status)
            state.recent.remember(key, new_status, now)
        for event in result.events:
            if event.reason in ("BuildStarted", "BuildFinished", "BuildFailed"):
                metrics.BUILDS.labels(event.reason.removeprefix("Build").lower()).inc()
        for event in batch_events(list(result.events)):
            await _event(state, body, event.type, event.reason, event.message)
        state.set_waiting(ref, ref[0], result.waiting_on)
        if result.probes:
            await _probe(state, ref, result.probes)
    metrics.RECONCILES.labels("ok").inc()
    return result


async def _apply(state: OperatorState, result: planner.Reconcile) -> None:
    # Build Jobs and records first (they gate nothing else), then serving objects, the
    # endpoint last: a route never points at a Service that does not exist yet.
    order = {"ConfigMap": 0, "Job": 0, "Deployment": 1, "Service": 2, "HTTPRoute": 3}
    now = asyncio.get_running_loop().time()
    for manifest in sorted(result.apply, key=lambda m: order.get(m["kind"], 9)):
        meta = manifest["metadata"]
        key = (meta["namespace"], manifest["kind"], meta["name"])
        if state.recent.written(key, manifest, now):
            continue  # ours, written a moment ago: the watch has not brought it back yet
        if manifest["kind"] == "Job":
            await state.kube.create(manifest)
        else:
            await state.kube.apply(manifest)
        state.recent.remember(key, manifest, now)
    for ref in result.delete:
        await state.kube.delete(ref.api_version, ref.kind, ref.namespace, ref.name)
        state.recent.forget((ref.namespace, ref.kind, ref.name))


async def _probe(
    state: OperatorState, ref: tuple[str, str], targets: tuple[planner.ProbeTarget, ...]
) -> None:
    results = await asyncio.gather(*(probe.probe(state.http, t) for t in targets))
    seen = state.probes.setdefault(ref, {})
    changed = False
    for target, outcome in zip(targets, results, strict=True):
        before = seen.get(target.node_class)
        seen[target.node_class] = outcome
        metrics.PROBES.labels("ok" if outcome.ok else "failed").inc()
        if not outcome.ok:
            log.warning("%s/%s: %s", ref[0], ref[1], outcome.message)
        changed |= before is None or before.ok != outcome.ok or (
            before.engine_key != outcome.engine_key)
    if changed:
        state.poke(ref)  # the next reconcile writes the verdict into the status


async def _event(
    state: OperatorState, body: Mapping[str, Any], type_: str, reason: str, message: str
) -> None:
    involved = {"apiVersion": API_VERSION, "kind": KIND, "metadata": body["metadata"]}
    await state.kube.event(involved, type_, reason, message)


async def refused(
    state: OperatorState, body: Mapping[str, Any], error: ApiError, retry_s: float
) -> None:
    """The API server refused a write (RBAC, an admission policy or webhook, a quota): a
    Warning Event tells the deployment's owner, once per distinct refusal, while the loop
    retries with its backoff. The status cannot say it: its write may be refused too."""
    meta = body["metadata"]
    ref = (meta["namespace"], meta["name"])
    message = str(error)
    if state.refusals.get(ref) == message:
        return
    state.refusals[ref] = message
    try:
        await _event(state, body, "Warning", "WriteRefused",
                     f"{message} (retrying with backoff, first in {retry_s:.0f}s)")
    except ApiError as e:  # the Event may be refused as well: the log has both
        log.warning("%s/%s: the WriteRefused Event was refused too: %s", ref[0], ref[1], e)


async def _invalid(state: OperatorState, body: Mapping[str, Any], message: str) -> None:
    """A spec the API server accepted but the operator cannot use: status Failed, one Event
    (not one per retry: only when the status did not already say so)."""
    meta = body["metadata"]
    previous = body.get("status") or {}
    status = InferenceDeploymentStatus(
        observed_generation=int(meta.get("generation") or 0),
        phase=Phase.FAILED,
        conditions=[{"type": "Placed", "status": "False", "reason": "InvalidSpec",
                     "message": message[:1024],
                     "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "observedGeneration": int(meta.get("generation") or 0)}],
        selector=",".join(f"{k}={v}" for k, v in naming.selector(meta["name"]).items()),
    )
    old = previous.get("conditions") or []
    if old and old[0].get("reason") == "InvalidSpec" and old[0].get("message") == message[:1024] \
            and previous.get("observedGeneration") == meta.get("generation"):
        return
    await state.kube.apply_status(API_VERSION, KIND, meta["namespace"], meta["name"],
                                  status_body(status))
    await _event(state, body, "Warning", "InvalidSpec", message)
