"""The status that tells the truth: phase, conditions and the Events of transitions. Pure.

``Available`` (and phase ``Ready``) needs more than Running pods: a real test inference must
have succeeded on every real class that serves, on the engine it serves now. Simulated classes
(the dev fleet's kwok nodes) cannot be sent one; they are named as simulated instead and take
no traffic. Emulated classes (qemu-user) are real and must pass one too; they are named as
emulated, since their capacity is nominal. Condition times move only when a condition's
status changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from infleet.api import (
    AutoscalerStatus,
    ClassStatus,
    Condition,
    EngineState,
    InferenceDeploymentStatus,
    Phase,
)
from infleet.operator import children, naming

if TYPE_CHECKING:
    from infleet.operator.planner import Event, Snapshot

CONDITION_TYPES = ("Placed", "EnginesReady", "Available", "Degraded")


def _names(classes: Sequence[ClassStatus]) -> str:
    shown = ", ".join(c.name for c in classes[:6])
    return shown + (f" and {len(classes) - 6} more" if len(classes) > 6 else "")


def _condition(
    previous: InferenceDeploymentStatus, kind: str, ok: bool, reason: str, message: str,
    generation: int, stamp: str,
) -> Condition:
    value = "True" if ok else "False"
    before = next((c for c in previous.conditions if c.type == kind), None)
    since = before.last_transition_time if before and before.status == value else stamp
    return Condition(type=kind, status=value, reason=reason, message=message[:1024],
                     last_transition_time=since, observed_generation=generation)


def summarize(
    s: Snapshot, classes: list[ClassStatus], problems: Sequence[str],
    notes: Sequence[str] = (), autoscaler: AutoscalerStatus | None = None,
) -> InferenceDeploymentStatus:
    placed = [c for c in classes if not c.excluded]
    failed = [c for c in placed if c.engine.state is EngineState.FAILED]
    building = [c for c in placed if c.engine.state in (EngineState.BUILDING,
                                                         EngineState.PENDING)]
    serving = [c for c in placed if c.desired_replicas > 0 or c.replicas > 0]
    real = [c for c in serving if not c.simulated]
    unverified = [c for c in real if not c.verified]
    verified = [c for c in real if c.verified]
    stamp = s.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    gen = s.generation

    def cond(kind: str, ok: bool, reason: str, message: str) -> Condition:
        return _condition(s.previous, kind, ok, reason, message, gen, stamp)

    conditions = []
    if placed:
        excluded = len(classes) - len(placed)
        conditions.append(cond("Placed", True, "ClassesPlaced",
                               f"{len(placed)} of {len(classes)} classes: {_names(placed)}"
                               + (f"; {excluded} excluded" if excluded else "")
                               + "".join(f"; {n}" for n in notes if n.startswith("best effort"))))
    else:
        why = "; ".join(f"{c.name}: {c.reason}" for c in classes[:8]) or "the cluster has no nodes"
        conditions.append(cond("Placed", False, "NoClass", "no class can serve the model: " + why))
    if failed:
        conditions.append(cond("EnginesReady", False, "BuildFailed",
                               "; ".join(f"{c.name}: {c.engine.message}" for c in failed)))
    elif building:
        conditions.append(cond("EnginesReady", False, "Building",
                               f"building on {_names(building)}"))
    else:
        conditions.append(cond("EnginesReady", bool(placed), "EnginesBuilt" if placed else
                               "NoClass", f"engines ready on {_names(placed)}"))
    simulated = [c for c in serving if c.simulated]
    sim_note = f"; simulated (no traffic): {_names(simulated)}" if simulated else ""
    emulated = [c for c in serving if c.emulated]
    if emulated:
        sim_note += f"; emulated (qemu-user, nominal capacity): {_names(emulated)}"
    available = bool(verified) and not unverified
    if available:
        message = f"test inference passed on {_names(verified)}{sim_note}"
        reason = "Verified"
    elif unverified:
        message = f"waiting for a test inference to pass on {_names(unverified)}{sim_note}"
        reason = "NotVerified"
        stuck = [c for c in unverified if c.problem]
        if stuck:
            message += "".join(f"; {c.name}: {c.problem}" for c in stuck)
            reason = "PodsFailing"
    elif simulated:
        message = f"only simulated classes serve{sim_note}"
        reason = "OnlySimulated"
    else:
        message = "no class serves yet" + (": " + "; ".join(problems) if problems else "")
        reason = "NoReplicas"
    conditions.append(cond("Available", available, reason, message))
    degraded = bool(failed) and bool(serving)
    conditions.append(cond(
        "Degraded", degraded, "ClassFailed" if degraded else "AsPlanned",
        f"failed: {_names(failed)}; serving on {_names(serving)}" if degraded else
        "every placed class is as planned" if not failed else "nothing serves"))

    if not placed or (failed and not serving and not building):
        phase = Phase.FAILED
    elif available and failed:
        phase = Phase.DEGRADED
    elif available and not building:
        phase = Phase.READY
    elif building:
        phase = Phase.BUILDING
    else:
        phase = Phase.PENDING

    if s.gateway_api and s.config.gateway.enabled:
        endpoint = f"http://{children.route_host(s.owner, s.config)}"
    else:
        endpoint = f"http://{s.owner.name}.{s.owner.namespace}.svc:{children.HTTP_PORT}"
    selector = ",".join(f"{k}={v}" for k, v in naming.selector(s.owner.name).items())
    return InferenceDeploymentStatus(
        observed_generation=gen,
        phase=phase,
        conditions=conditions,
        endpoint=endpoint,
        classes=classes,
        classes_in_use=sum(1 for c in placed if c.desired_replicas > 0),
        replicas=sum(c.replicas for c in classes),
        ready_replicas=sum(c.ready_replicas for c in classes),
        desired_replicas=sum(c.desired_replicas for c in classes),
        autoscaler=autoscaler,
        p99_ms=_p99(classes),
        selector=selector,
    )


def _p99(classes: Sequence[ClassStatus]) -> float | None:
    """The worst observed p99 over the classes (a bound on the fleet's)."""
    seen = [c.observed.p99_ms for c in classes if c.observed.p99_ms is not None]
    return max(seen) if seen else None


def transition_events(
    previous: InferenceDeploymentStatus, new: InferenceDeploymentStatus
) -> list[Event]:
    """Events for what changed since the status written last (so a restarted operator,
    which reads that status back, never repeats them)."""
    from infleet.operator.planner import Event

    out: list[Event] = []
    before = {c.name: c for c in previous.classes}
    for c in new.classes:
        old = before.get(c.name)
        if c.excluded and (old is None or not old.excluded):
            out.append(Event("Normal", "ClassExcluded", f"{c.name}: {c.reason}"[:1000]))
        elif not c.excluded and (old is None or old.excluded):
            ladder = f" {c.backend}" if c.backend else ""
            out.append(Event("Normal", "ClassPlaced", f"{c.name}:{ladder} ({c.reason})"[:1000]))
        if old is not None and old.desired_replicas != c.desired_replicas:
            out.append(Event("Normal", "Scaled", f"{c.name}: {old.desired_replicas} -> "
                             f"{c.desired_replicas} replicas"))
        if c.problem and (old is None or old.problem != c.problem):
            out.append(Event("Warning", "ServingFailed", f"{c.name}: {c.problem}"[:1000]))
        if c.verified and (old is None or not old.verified):
            out.append(Event("Normal", "Verified",
                             f"{c.name}: a test inference passed on engine {c.engine.key}"))
    for name in set(before) - {c.name for c in new.classes}:
        out.append(Event("Normal", "ClassGone", f"{name}: no longer in the cluster"))
    was = next((c for c in previous.conditions if c.type == "Available"), None)
    now = next(c for c in new.conditions if c.type == "Available")
    if (was is None or was.status != "True") and now.status == "True":
        out.append(Event("Normal", "Available", now.message))
    elif was is not None and was.status == "True" and now.status != "True":
        out.append(Event("Warning", "Unavailable", now.message))
    return out


EVENT_MESSAGE_MAX = 1024


def batch_events(events: list[Event], limit: int = EVENT_MESSAGE_MAX) -> list[Event]:
    """One Event per (type, reason) of a reconcile, the classes' messages joined with "; "
    (split where the joined message would pass ``limit``), in the order each reason first
    came. A deployment placed on a fleet of a dozen classes would otherwise post a dozen
    ClassPlaced/ClassExcluded, BuildFinished and Scaled Events each: with hundreds of
    deployments those writes were a third of what the operator sent the API server."""
    groups: dict[tuple[str, str], list[str]] = {}
    for e in events:
        groups.setdefault((e.type, e.reason), []).append(e.message[:limit])
    out: list[Event] = []
    for (type_, reason), messages in groups.items():
        text = ""
        for m in messages:
            if text and len(text) + 2 + len(m) > limit:
                out.append(_event(type_, reason, text))
                text = ""
            text = f"{text}; {m}" if text else m
        out.append(_event(type_, reason, text))
    return out


def _event(type_: str, reason: str, message: str) -> Event:
    from infleet.operator.planner import Event

    return Event(type_, reason, message)
