"""The reconcile planner: one InferenceDeployment's observed world in, what to write out. Pure.

:func:`plan` takes a :class:`Snapshot` (the spec, the node classes, the engine records and
build Jobs of the namespace, the deployment's own children, the results of the test
inferences, the previous status) and returns a :class:`Reconcile`: the manifests that differ
from what exists (so a reconcile with nothing changed writes nothing), the objects to delete,
the status, the Events and the classes to send a test inference. Per class:

1. the scheduler's decision (backend, precision ladder, or why the class is excluded);
2. the engine: its record (Ready or Failed) or its build Job (running or finished: then the
   planner writes the record and deletes the Job) or, with neither, a new build Job;
3. serving: the class's Deployment and Service once an engine is ready. While a changed spec
   rebuilds a class, the class keeps serving its previous engine; replicas come from the
   capacity planner over the classes with a ready engine, and a class shrinks only once the
   new mix's Ready capacity covers the target;
4. scaling: unless ``spec.replicas`` pins the count, the SLO autoscaler (:mod:`.scaling`,
   when the snapshot carries its view) overrides the replicas of the real classes;
5. routing: HTTPRoute weights proportional to the Ready capacity of the classes whose test
   inference passed (simulated classes take no traffic: no process serves there), at the
   capacity per replica the autoscaler learnt.

Emulated classes (the dev fleet's qemu-user arm64 nodes) build, serve and answer for real, but
at the emulator's speed: their capacity comes from their nodes' nominal figures, never from a
latency measured under emulation, and the autoscaler neither scales them nor learns from them
(they keep the placement's replicas). Status and Events say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infleet.api import (
    Backend,
    ClassStatus,
    EngineState,
    EngineStatus,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
    ObservedLoad,
    Precision,
)
from infleet.api.config import OperatorConfig
from infleet.api.engine import BuildSummary
from infleet.api.spec import DEFAULT_FP16_DEVIATION
from infleet.operator import children, engines, naming, profiles, scaling, status
from infleet.operator.diff import needs_apply
from infleet.operator.engines import BuildJobState, EngineResult, Outcome
from infleet.operator.observed import ServingPod, ServingSet
from infleet.scheduler.capacity import ClassProfile, traffic_weights
from infleet.scheduler.classes import NodeClass
from infleet.scheduler.inventory import Resources
from infleet.scheduler.plan import plan_deployment
from infleet.scheduler.policy import ClassDecision, ClusterPolicy, decide

Manifest = dict[str, Any]
BUILD_KEY_ANNOTATION = "infleet.dev/build-key"
EMULATED_PROBE_TIMEOUT_S = 120.0
"""An emulated class answers at the emulator's speed (EfficientNet-Lite0 takes about 10 s a
row under qemu-user on a busy 2-core machine), so its test inference may take this long."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The last test inference sent to one class."""

    ok: bool
    engine_key: str
    message: str
    checked_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    owner: children.Owner
    generation: int
    spec: InferenceDeploymentSpec
    classes: tuple[NodeClass, ...]
    config: OperatorConfig
    policy: ClusterPolicy
    records: Mapping[str, EngineResult]
    """Engine records of the namespace, by build key."""
    jobs: Mapping[str, BuildJobState]
    """Build Jobs of the namespace, by build key."""
    serving: Mapping[str, ServingSet]
    """This deployment's serving Deployments, by class."""
    pods: tuple[ServingPod, ...]
    """This deployment's serving pods."""
    children: Mapping[tuple[str, str], Mapping[str, Any]]
    """This deployment's observed children (Deployments, Services, HTTPRoute) and the
    namespace's engine records, by (kind, name): what a desired manifest is compared with."""
    probes: Mapping[str, ProbeResult]
    gateway_api: bool
    """The Gateway API's HTTPRoute kind is served by this cluster."""
    previous: InferenceDeploymentStatus
    now: datetime
    autoscale: scaling.View | None = None
    """The autoscaler's memory and this tick's load; None: the autoscaler is off."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    namespace: str


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    node_class: str
    pod: str
    ip: str
    engine_key: str
    model: str
    timeout_s: float | None = None
    """How long the test inference may take; None: the operator's HTTP default (10 s)."""


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Reconcile:
    apply: tuple[Manifest, ...]
    delete: tuple[ObjectRef, ...]
    status: InferenceDeploymentStatus
    events: tuple[Event, ...]
    probes: tuple[ProbeTarget, ...]
    waiting_on: tuple[str, ...] = ()
    """Build keys this deployment waits for (a finished Job of one of them re-triggers it)."""
    scale: scaling.Outcome | None = None
    """What the autoscaler decided or held (None: it governs no class)."""


@dataclass(slots=True)
class _Class:
    """Working state of one class while planning."""

    cls: NodeClass
    decision: ClassDecision
    key: str = ""
    state: EngineState = EngineState.PENDING
    result: EngineResult | None = None
    message: str = ""
    serving_key: str = ""
    """Build key of the engine the class serves (the new one, or the previous one meanwhile)."""
    serving_summary: BuildSummary | None = None
    untuned_key: str = ""
    """Build key of the untuned engine a tuned class serves while its tuned engine builds."""
    untuned: EngineResult | None = None
    """The untuned engine's record, once it is ready."""
    untuned_building: bool = False
    what: str = ""
    """"tuned " or "untuned " in Events, where the class's engine is tuned."""
    profile: ClassProfile | None = None
    desired: int = 0
    weight: int = 0
    correction: float = 1.0
    """Factor on the profile's capacity per replica, learnt by the autoscaler."""
    verified: bool = False
    events: list[Event] = field(default_factory=list)


def _settings(config: OperatorConfig, backend: Backend) -> engines.BuildSettings:
    return engines.BuildSettings(
        image=config.images.for_backend(backend),
        store=config.store_identity,
        tuning_trials=config.build.tuning_trials,
        tuning_seconds=config.build.tuning_seconds,
    )


def _untuned(config: OperatorConfig) -> OperatorConfig:
    build = config.build.model_copy(update={"tuning_trials": 0, "tuning_seconds": 0.0})
    return config.model_copy(update={"build": build})


def _tunes(s: Snapshot, c: _Class) -> bool:
    """Whether the class's build spends the tuning budget (TVM on the build node's own CPU:
    an emulated class's timings would be the emulator's, so its builds never tune)."""
    budget = s.config.build
    return (c.decision.backend is Backend.TVM and budget.tuning_trials > 0
            and budget.tuning_seconds > 0 and not c.cls.key.emulated)


def _ready_summary(result: EngineResult | None) -> BuildSummary | None:
    if result is not None and result.outcome is Outcome.SUCCEEDED:
        return result.summary
    return None


def plan(s: Snapshot) -> Reconcile:
    apply: list[Manifest] = []
    delete: list[ObjectRef] = []
    ns = s.owner.namespace
    work: list[_Class] = []
    jobs_needed: set[str] = set()
    for cls in s.classes:
        c = _Class(cls, decide(cls, s.spec, s.policy))
        work.append(c)
        if c.decision.excluded:
            continue
        assert c.decision.backend is not None
        c.key = engines.build_key(
            s.spec, backend=c.decision.backend, ladder=c.decision.ladder,
            hardware_fingerprint=cls.fingerprint,
            settings=_settings(s.config, c.decision.backend),
        )
        jobs_needed.add(c.key)
        if _tunes(s, c) and not s.spec.build.wait_for_tuning:
            _untuned_first(s, c, apply, delete)
            jobs_needed.add(c.untuned_key)
        else:
            _engine(s, c, apply, delete)
        _serving_engine(s, c)

    # Replicas: the capacity planner over the classes that have an engine to serve, with room
    # kept for the build Jobs still to run (else a full class never rebuilds).
    profiles = {c.cls.name: c.profile for c in work if c.profile is not None}
    build_room = children.build_request(s.config)
    classes = [c.cls.with_reserved(build_room + Resources(0, 0, 1 if c.cls.key.is_gpu else 0))
               if c.state is EngineState.BUILDING else c.cls for c in work]
    placement = plan_deployment(
        classes, s.spec, name=s.owner.name, profiles=profiles, policy=s.policy,
        best_effort=True,
    )
    by_name = {cp.name: cp for cp in placement.classes}
    for c in work:
        cp = by_name.get(c.cls.name)
        c.desired = cp.replicas if cp is not None and placement.feasible else 0
    scale = _autoscale(s, work, {cp.name: cp.free_replicas for cp in placement.classes})
    _hold_until_ready(s, work, placement.feasible)

    # Serving objects, then routing.
    for c in work:
        _serving_children(s, c, apply)
    _weights(s, work)
    apply.extend(_endpoint(s, work))

    # Children that no class wants any more.
    wanted = {(m["kind"], m["metadata"]["name"]) for m in apply}
    wanted |= {("Deployment", naming.serving_name(s.owner.name, c.cls.name))
               for c in work if c.serving_key}
    wanted |= {("Service", naming.serving_name(s.owner.name, c.cls.name))
               for c in work if c.serving_key}
    wanted |= {("Service", s.owner.name)}
    if s.gateway_api and s.config.gateway.enabled:
        wanted.add(("HTTPRoute", s.owner.name))
    for (kind, name), body in s.children.items():
        if kind in ("Deployment", "Service", "HTTPRoute") and (kind, name) not in wanted:
            delete.append(ObjectRef(str(body.get("apiVersion", "v1")), kind, name, ns))
    for key, job in s.jobs.items():
        # A build this deployment started and no longer wants (its spec changed mid-build).
        if job.owner_uid == s.owner.uid and key not in jobs_needed and job.active:
            delete.append(ObjectRef("batch/v1", "Job", job.name, ns))

    new_status = _status(s, work, placement.problems, placement.notes, scale)
    events = [e for c in work for e in c.events]
    transitions = status.transition_events(s.previous, new_status)
    if scale is not None and scale.decision is not None and scale.decision.changed:
        # One Event for the new mix, with the decision's reason, instead of one per class.
        transitions = [e for e in transitions if e.reason != "Scaled"]
        events.append(Event("Normal", "Scaled", scale.decision.reason[:1000]))
    events += transitions
    changed = [m for m in apply if needs_apply(m, s.children.get((m["kind"],
                                                                  m["metadata"]["name"])))]
    return Reconcile(
        apply=tuple(changed),
        delete=tuple(dict.fromkeys(delete)),
        status=new_status,
        events=tuple(events),
        probes=tuple(_probe_targets(s, work)),
        waiting_on=tuple(sorted({c.key for c in work if c.state is EngineState.BUILDING}
                                | {c.untuned_key for c in work if c.untuned_building})),
        scale=scale,
    )


def _autoscale(s: Snapshot, work: list[_Class], rooms: Mapping[str, int]
               ) -> scaling.Outcome | None:
    """The autoscaler's replicas for the real classes with an engine to serve."""
    if s.autoscale is None or s.spec.replicas is not None:
        return None
    governed: list[scaling.Governed] = []
    mine: list[_Class] = []
    for c in work:
        sm = c.serving_summary
        # Emulated classes too stay out: their latency is the emulator's, and learning a
        # capacity from it (or scaling on it) would act on numbers that are not the hardware's.
        if (c.decision.excluded or c.profile is None or sm is None or sm.simulated
                or c.cls.key.emulated):
            continue
        current = s.serving.get(c.cls.name)
        governed.append(scaling.Governed(
            name=c.cls.name, profile=c.profile, cost_per_hour=c.decision.cost_per_hour,
            replicas=current.replicas if current else 0,
            ready_replicas=current.ready_replicas if current else 0,
            room=rooms.get(c.cls.name, 0), has_deployment=current is not None,
            planned=c.desired,
        ))
        mine.append(c)
    if not governed:
        return None
    others = sum(c.desired for c in work if c not in mine)
    outcome = scaling.decide(s.autoscale, s.spec, governed, others, s.previous)
    for c in mine:
        c.desired = outcome.replicas[c.cls.name]
        c.correction = outcome.corrections.get(c.cls.name, 1.0)
    return outcome


def _untuned_first(s: Snapshot, c: _Class, apply: list[Manifest], delete: list[ObjectRef]
                   ) -> None:
    """A tuned class's rollout does not wait for tuning (tens of minutes; unless
    spec.build.waitForTuning): its untuned engine builds in a Job and under a key of its own
    and serves until the tuned engine is ready. This deployment starts the tuned build once
    the untuned one is done, so the two do not share the class's CPUs; a tuned build already
    under way (another deployment's) is joined, with the untuned one built beside it."""
    assert c.decision.backend is not None
    c.what = "tuned "
    tuned = s.records.get(c.key)
    if tuned is not None and tuned.outcome is Outcome.SUCCEEDED:
        _engine(s, c, apply, delete)
        return
    config = _untuned(s.config)
    interim = _Class(c.cls, c.decision, what="untuned ")
    interim.key = c.untuned_key = engines.build_key(
        s.spec, backend=c.decision.backend, ladder=c.decision.ladder,
        hardware_fingerprint=c.cls.fingerprint, settings=_settings(config, c.decision.backend))
    _engine(s, interim, apply, delete, config)
    c.events += interim.events
    if interim.state is EngineState.READY:
        c.untuned = interim.result
    if interim.state is EngineState.BUILDING:
        c.untuned_building = True
        if c.key not in s.jobs:
            c.state = EngineState.BUILDING
            c.message = (interim.message + ": the untuned engine, served while the tuned one "
                         "builds after it")
            return
    _engine(s, c, apply, delete)


def _engine(s: Snapshot, c: _Class, apply: list[Manifest], delete: list[ObjectRef],
            config: OperatorConfig | None = None) -> None:
    """The engine state of one class; adds the build Job (built with ``config``, the
    operator's by default) or the record to write."""
    ns = s.owner.namespace
    record = s.records.get(c.key)
    job = s.jobs.get(c.key)
    if record is not None and record.outcome is Outcome.SUCCEEDED:
        c.state, c.result = EngineState.READY, record
        if job is not None and not job.active:
            delete.append(ObjectRef("batch/v1", "Job", job.name, ns))
        over = _over_budget(s.spec, record)
        if over:
            c.state, c.message = EngineState.FAILED, over
            c.result = EngineResult(Outcome.FAILED, message=over, finished_at=record.finished_at)
        return
    if job is not None:
        if job.result is None:
            c.state = EngineState.BUILDING
            ours = job.owner_uid == s.owner.uid
            c.message = (f"building in Job {job.name}" if ours else
                         f"waiting for Job {job.name}, shared with another deployment")
            return
        # Finished: record it (the record outlives the Job and every deployment), then the
        # Job can go. Any deployment that sees a finished Job may do this; it is idempotent.
        c.result = job.result
        c.state = engines.engine_state(job.result, building=False)
        apply.append(engines.record_manifest(ns, c.key, c.cls.name, job.result))
        delete.append(ObjectRef("batch/v1", "Job", job.name, ns))
        c.events.append(_build_event(c, job.result))
        if c.state is EngineState.FAILED:
            c.message = job.result.message
        return
    if record is not None and not engines.retry_due(record, s.now):
        c.state, c.result, c.message = EngineState.FAILED, record, record.message
        if record.retryable:
            c.message += " (a retryable failure: tried again after a backoff)"
        return
    # No engine, no build: start one.
    apply.append(children.build_job(s.owner, c.key, s.spec, c.cls, c.decision,
                                    config or s.config))
    c.state = EngineState.BUILDING
    c.message = f"building in Job {naming.build_job_name(c.key)}"
    again = " again" if record is not None else ""
    c.events.append(Event("Normal", "BuildStarted", (
        f"{c.cls.name}: building{again} a {c.what}{c.decision.backend} engine (ladder "
        f"{'>'.join(p.value for p in c.decision.ladder)}) in Job {naming.build_job_name(c.key)}"
    )))


def _over_budget(spec: InferenceDeploymentSpec, record: EngineResult) -> str | None:
    """An engine kept under an earlier budget that the current one no longer allows (the
    build key leaves the budget out of FP32-only builds: the recorded deviation decides)."""
    sm = record.summary
    if sm is None or sm.simulated:
        return None
    metric = spec.accuracy.metric
    limit = spec.accuracy.max_deviation
    if limit is None:
        limit = DEFAULT_FP16_DEVIATION[metric] if sm.precision in (
            Precision.FP32, Precision.FP16) else None
    rung = next((r for r in sm.accuracy if r.precision == sm.precision and r.passed), None)
    # admits(): within the limit, or (FP32) within the noise of ORT's own optimisation
    # levels that the build measured on its reference: the gate's own rule.
    if limit is None or rung is None or rung.deviation is None or rung.admits(limit):
        return None
    return (f"the {sm.precision} engine's {metric} deviation {rung.deviation:.3g} is over the "
            f"budget {limit:g} (spec.accuracy.maxDeviation)")


def _build_event(c: _Class, result: EngineResult) -> Event:
    if result.outcome is Outcome.SUCCEEDED and result.summary is not None:
        sm = result.summary
        what = "simulated engine (no build ran: a simulated class)" if sm.simulated else (
            f"engine {sm.engine_key}" + (" (gated under qemu-user emulation)" if sm.emulated
                                         else ""))
        return Event("Normal", "BuildFinished",
                     f"{c.cls.name}: {c.what}{sm.backend} {sm.precision} {what}")
    return Event("Warning", "BuildFailed", f"{c.cls.name}: {result.message}"[:1000])


def _serving_engine(s: Snapshot, c: _Class) -> None:
    """Which engine the class serves: the new one once ready, else its untuned one while it is
    tuned, else the previous one."""
    summary, key = _ready_summary(c.result), c.key
    if summary is None and c.untuned is not None:
        summary, key = _ready_summary(c.untuned), c.untuned_key
    if summary is None:
        current = s.serving.get(c.cls.name)
        old_key = _template_build_key(current) if current else ""
        old = _ready_summary(s.records.get(old_key)) if old_key and old_key != c.key else None
        if old is None:
            return
        summary, key = old, old_key
    c.serving_key, c.serving_summary = key, summary
    c.profile = profiles.class_profile(s.spec, c.cls, summary)


def _template_build_key(current: ServingSet) -> str:
    meta = current.body.get("spec", {}).get("template", {}).get("metadata", {})
    return str((meta.get("annotations") or {}).get(BUILD_KEY_ANNOTATION, ""))


def _capacity(c: _Class) -> float:
    return c.profile.capacity_rps if c.profile else 0.0


def _hold_until_ready(s: Snapshot, work: list[_Class], feasible: bool) -> None:
    """Old capacity shrinks only after new capacity is Ready: while the Ready part of the
    planned mix covers less than the plan, no class goes below what it has now."""
    target = sum(c.desired * _capacity(c) for c in work)
    ready = 0.0
    for c in work:
        current = s.serving.get(c.cls.name)
        ready += min(c.desired, current.ready_replicas if current else 0) * _capacity(c)
    if feasible and ready >= target * (1 - 1e-9):
        return
    for c in work:
        current = s.serving.get(c.cls.name)
        if current is not None and c.serving_key:
            c.desired = max(c.desired, current.replicas)


def _serving_children(s: Snapshot, c: _Class, apply: list[Manifest]) -> None:
    if not c.serving_key or c.serving_summary is None:
        return
    sm = c.serving_summary
    deployment = children.serving_deployment(
        s.owner, s.spec, c.cls, c.decision, s.config, sm.engine_key, sm.backend, c.desired
    )
    deployment["spec"]["template"]["metadata"]["annotations"][BUILD_KEY_ANNOTATION] = (
        c.serving_key
    )
    current = s.serving.get(c.cls.name)
    if current is not None and current.engine_key and current.engine_key != sm.engine_key:
        c.events.append(Event("Normal", "Rollout", (
            f"{c.cls.name}: rolling out engine {sm.engine_key} ({sm.backend} {sm.precision}) "
            f"in place of {current.engine_key}")))
    apply.append(deployment)
    apply.append(children.service(s.owner, naming.serving_name(s.owner.name, c.cls.name),
                                  c.cls.name))


def _ready_pods(s: Snapshot, c: _Class) -> list[ServingPod]:
    key = c.serving_summary.engine_key if c.serving_summary else ""
    return [p for p in s.pods if p.node_class == c.cls.name and p.ready and not p.deleting
            and p.ip and p.engine_key == key]


def _verified_pods(s: Snapshot, c: _Class) -> list[ServingPod]:
    """Ready pods of the engine the class's last test inference passed on: the serving
    engine's once it passed, the previous engine's while a rollout replaces it (so a class
    that rolls keeps its traffic until the new engine has answered; counting only the new
    engine's pods left a one-class deployment with every weight 0, which a gateway answers
    with 500s)."""
    probe = s.probes.get(c.cls.name)
    if probe is None or not probe.ok:
        return []
    return [p for p in s.pods if p.node_class == c.cls.name and p.ready and not p.deleting
            and p.ip and p.engine_key == probe.engine_key]


def _weights(s: Snapshot, work: list[_Class]) -> None:
    caps = []
    for c in work:
        probe = s.probes.get(c.cls.name)
        sm = c.serving_summary
        c.verified = bool(probe and probe.ok and sm and probe.engine_key == sm.engine_key)
        real = sm is not None and not sm.simulated
        caps.append(len(_verified_pods(s, c)) * _capacity(c) * c.correction if real else 0.0)
    for c, w in zip(work, traffic_weights(caps), strict=True):
        c.weight = w


def _endpoint(s: Snapshot, work: list[_Class]) -> list[Manifest]:
    out = [children.service(s.owner, s.owner.name, None)]
    if s.gateway_api and s.config.gateway.enabled:
        backends = [(naming.serving_name(s.owner.name, c.cls.name), c.weight)
                    for c in work if c.serving_key]
        out.append(children.http_route(s.owner, s.config, backends))
    return out


def _probe_targets(s: Snapshot, work: list[_Class]) -> list[ProbeTarget]:
    """Classes to send a test inference: real classes with a Ready pod whose current engine
    is not verified yet, or was verified longer ago than the probe interval."""
    out = []
    model = children.served_name(s.owner, s.spec)
    for c in work:
        sm = c.serving_summary
        if sm is None or sm.simulated:
            continue
        pods = _ready_pods(s, c)
        if not pods:
            continue
        probe = s.probes.get(c.cls.name)
        fresh = probe is not None and probe.engine_key == sm.engine_key and (
            (s.now - probe.checked_at).total_seconds() < s.config.probe_interval_seconds)
        if fresh:
            continue
        pod = pods[0]
        assert pod.ip is not None
        timeout = EMULATED_PROBE_TIMEOUT_S if c.cls.key.emulated else None
        out.append(ProbeTarget(c.cls.name, pod.name, pod.ip, sm.engine_key, model, timeout))
    return out


def _status(
    s: Snapshot, work: list[_Class], problems: tuple[str, ...], notes: tuple[str, ...],
    scale: scaling.Outcome | None,
) -> InferenceDeploymentStatus:
    class_statuses = []
    before = {c.name: c.observed for c in s.previous.classes}
    tick = s.autoscale.tick if s.autoscale is not None else None
    decision = scale.decision if scale is not None else None
    moved = False
    for c in work:
        observed = before.get(c.cls.name, ObservedLoad())
        if (tick is not None and scale is not None and decision is not None
                and c.cls.name in scale.replicas):
            cap = _capacity(c) * c.correction if c.profile else None
            new = scaling.observed_load(observed, tick.observed.get(c.cls.name), cap,
                                        tick.min_requests)
            moved |= new is not observed
            observed = new
        current = s.serving.get(c.cls.name)
        result_summary = _ready_summary(c.result)
        sm = result_summary or c.serving_summary
        engine = EngineStatus(
            key=result_summary.engine_key if result_summary else "",
            build_key=c.key,
            state=c.state,
            backend=sm.backend if sm else c.decision.backend,
            precision=sm.precision if sm else None,
            accuracy=list(sm.accuracy) if sm else [],
            profile=list(sm.profile) if sm else [],
            message=_engine_message(c, result_summary),
            simulated=bool(sm and sm.simulated),
            emulated=bool(sm and sm.emulated),
        )
        serving_precision: Precision | None = (
            c.serving_summary.precision if c.serving_summary else None
        )
        reason = c.decision.reason
        if c.cls.key.emulated and not c.decision.excluded:
            reason += "; " + profiles.emulation_note(s.spec, c.cls)
        class_statuses.append(ClassStatus(
            problem=_pods_problem(s, c),
            name=c.cls.name,
            excluded=c.decision.excluded,
            simulated=bool(c.serving_summary and c.serving_summary.simulated),
            emulated=c.cls.key.emulated,
            verified=c.verified,
            nodes=c.cls.usable_nodes,
            backend=c.decision.backend,
            precision=serving_precision,
            reason=reason,
            engine=engine,
            replicas=current.replicas if current else 0,
            ready_replicas=current.ready_replicas if current else 0,
            desired_replicas=c.desired,
            weight=c.weight,
            observed=observed,
        ))
    stamp = s.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    auto = scaling.autoscaler_status(
        s.previous.autoscaler if s.spec.replicas is None else None, decision,
        bool(decision and decision.changed), stamp, moved)
    return status.summarize(s, class_statuses, problems, notes, auto)


def _pods_problem(s: Snapshot, c: _Class) -> str:
    """Why the class's serving pods do not start, when one that is not ready says so."""
    stuck = [p for p in s.pods if p.node_class == c.cls.name and p.problem and not p.ready
             and not p.deleting]
    if not stuck:
        return ""
    # The first by name: the same pod's words from one reconcile to the next.
    first = min(stuck, key=lambda p: p.name)
    return f"serving pods do not start: {first.problem}"[:1000]


def _engine_message(c: _Class, summary: BuildSummary | None) -> str:
    if c.decision.excluded:
        return ""
    if summary is not None:
        text = "; ".join(summary.notes)
        return text[:1000]
    if c.state is EngineState.BUILDING and c.serving_summary is not None:
        which = ("untuned (spec.build.waitForTuning is false)"
                 if c.serving_key == c.untuned_key else "previous")
        return (c.message + f"; serving the {which} engine {c.serving_summary.engine_key} "
                "meanwhile")[:1000]
    return c.message[:1000]
