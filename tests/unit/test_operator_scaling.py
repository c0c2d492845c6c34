"""The autoscaler inside the reconcile plan, on plain data: a tick's observation becomes the
Deployments' replicas, an Event and the status; between ticks the classes hold; a pinned
``spec.replicas`` wins; simulated classes stay out of it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from test_operator_planner import (
    CPU,
    GPU,
    SIM,
    Snapshot,
    _serving_state,
    converge,
    keys_of,
    kinds,
    plan,
    served,
    snap,
    spec,
)

from infleet.api import ObservedLoad
from infleet.api.config import AutoscalerConfig
from infleet.operator import naming, scaling
from infleet.operator.engines import EngineResult, Outcome
from infleet.operator.planner import ProbeResult, Reconcile
from infleet.scheduler.autoscale import AutoscaleState
from infleet.scheduler.metrics import ClassObservation

SPEC = spec(slo={"latencyP99Ms": 50})  # no maxThroughputRps: the placement starts at 1


def obs(rate: float, p99_ms: float | None, pods: int = 1, window_s: float = 5.0
        ) -> ClassObservation:
    return ClassObservation(rate_rps=rate, success_rps=rate, refused_rps=0.0, error_rps=0.0,
                            p99_ms=p99_ms, requests=rate * window_s, queue_depth=0.0,
                            in_flight=0.0, window_s=window_s, pods_known=pods,
                            pods_unknown=0)


def serving(ready: dict[str, int] | None = None) -> Snapshot:
    """One CPU replica serving and verified, the simulated class beside it, the GPU failed."""
    keys = keys_of(plan(snap(spec=SPEC)))
    records = {**served(keys), keys[GPU]: EngineResult(
        Outcome.FAILED, message="no", finished_at="2026-12-01T11:00:00Z")}
    s, _ = converge(snap(spec=SPEC, records=records))
    sets, pods = _serving_state(s, ready or {CPU: 1})
    probes = {CPU: ProbeResult(True, "e" * 32, "ok", s.now)}
    s, _ = converge(replace(s, serving=sets, pods=pods, probes=probes))
    return s


def replicas(r: Reconcile) -> dict[str, int]:
    return {d["metadata"]["labels"][naming.CLASS_LABEL]: d["spec"]["replicas"]
            for d in kinds(r, "Deployment")}


def tick(s: Snapshot, observed: dict[str, ClassObservation | None], now: float = 100.0,
         held: dict[str, int] | None = None, state: AutoscaleState | None = None) -> Reconcile:
    view = scaling.View(state or AutoscaleState(), held or {},
                        scaling.Tick(now, observed, stable_window_s=10, min_requests=50))
    return plan(replace(s, autoscale=view))


def test_the_placement_starts_one_replica_on_the_cheapest_class() -> None:
    s = serving()
    assert s.serving[CPU].replicas == 1 and s.serving[SIM].replicas == 0


def test_a_breach_scales_the_real_class_up_with_an_event_and_status() -> None:
    s = serving()
    r = tick(s, {CPU: obs(1500.0, 90.0)})
    assert r.scale is not None and r.scale.decision is not None
    assert r.scale.decision.mode.value == "panic"
    assert replicas(r)[CPU] == 2  # both CPU nodes' room
    cls = {c.name: c for c in r.status.classes}
    assert cls[CPU].desired_replicas == 2
    assert cls[CPU].observed.rps == 1500.0 and cls[CPU].observed.p99_ms == 90.0
    assert cls[SIM].desired_replicas == 0  # simulated classes are the placement's alone
    auto = r.status.autoscaler
    assert auto is not None and auto.mode == "panic" and "p99 90 ms > SLO 50 ms" in auto.reason
    assert auto.last_scale_time is not None
    scaled = [e for e in r.events if e.reason == "Scaled"]
    assert len(scaled) == 1 and f"{CPU} 1->2" in scaled[0].message


def test_between_ticks_the_classes_hold_the_last_decision() -> None:
    s = serving()
    # The Deployment was edited to 1 by someone else; the decision was 2: 2 is written back.
    r = plan(replace(s, autoscale=scaling.View(AutoscaleState(), {CPU: 2})))
    assert replicas(r)[CPU] == 2
    assert r.scale is not None and r.scale.decision is None
    # the desired count moved against the last status: the per-class Event says so
    assert [e.message for e in r.events if e.reason == "Scaled"] == [f"{CPU}: 1 -> 2 replicas"]
    # With nothing remembered (a restarted operator), the Deployment's count holds.
    r = plan(replace(s, autoscale=scaling.View(AutoscaleState(), {})))
    assert CPU not in replicas(r)  # nothing to write: it already has 1


def test_a_pinned_replica_count_wins_over_the_autoscaler() -> None:
    s = serving()
    pinned = replace(s, spec=spec(slo={"latencyP99Ms": 50}, replicas=1))
    r = tick(pinned, {CPU: obs(1500.0, 90.0)})
    assert r.scale is None and r.status.autoscaler is None
    assert sum(c.desired_replicas for c in r.status.classes) == 1


def test_no_metrics_holds_every_replica() -> None:
    s = serving()
    r = tick(s, {})  # nothing answered
    assert r.scale is not None and r.scale.decision is not None
    assert r.scale.decision.mode.value == "no-metrics"
    assert CPU not in replicas(r)  # unchanged, so not written


def test_a_quiet_load_writes_no_status() -> None:
    s = serving()
    r = tick(s, {CPU: obs(10.0, 3.0)})
    s2 = replace(s, previous=r.status)
    again = tick(s2, {CPU: obs(10.4, 3.1)}, now=105.0, state=r.scale.decision.state
                 if r.scale and r.scale.decision else None)
    assert again.status == r.status  # moved by less than the material threshold


def test_observed_load_moves_only_on_material_change() -> None:
    before = ObservedLoad(rps=100.0, p99_ms=20.0)
    small = scaling.observed_load(before, obs(105.0, 21.0), None, 50)
    assert small is before
    big = scaling.observed_load(before, obs(130.0, 21.0), None, 50)
    assert big.rps == 130.0
    unknown: Any = scaling.observed_load(before, None, None, 50)
    assert unknown is before  # unknown is never zero
    few = scaling.observed_load(ObservedLoad(), obs(5.0, 40.0), None, 50)
    assert few.rps == 5.0 and few.p99_ms is None  # 25 requests: too few for a p99


def test_bounds_leave_the_simulated_classes_their_replicas() -> None:
    s = serving()
    settings = scaling.settings_for(s.spec, others=3, tick=None)
    assert (settings.min_replicas, settings.max_replicas) == (0, 7)


def test_the_operator_configuration_sets_the_reserve() -> None:
    tick = scaling.Tick(0.0, {}, reserve=0.5, reserve_cost_share=0.2)
    settings = scaling.settings_for(serving().spec, others=0, tick=tick)
    assert (settings.reserve, settings.reserve_cost_share) == (0.5, 0.2)
    config = AutoscalerConfig()  # the defaults the operator passes on
    default = scaling.settings_for(serving().spec, others=0, tick=scaling.Tick(0.0, {}))
    assert (default.reserve, default.reserve_cost_share) == \
        (config.reserve_fraction, config.reserve_cost_share)


def _restarted(s: Snapshot, observed: dict[str, ClassObservation | None]) -> Reconcile:
    """A first tick of a new memory (a restarted operator) on ``s``."""
    view = scaling.View(AutoscaleState(), {},
                        scaling.Tick(500.0, observed, stable_window_s=10, min_requests=50),
                        fresh=True)
    return plan(replace(s, autoscale=view))


def test_a_restart_resumes_the_learnt_capacity_and_the_target_from_the_status() -> None:
    s = serving()
    learnt = tick(s, {CPU: obs(600.0, 90.0)})  # a breach under its estimate: it falls
    assert learnt.scale is not None and learnt.scale.decision is not None
    before = {c.name: c for c in learnt.status.classes}[CPU].observed.capacity_rps
    target = learnt.status.autoscaler.target_rps if learnt.status.autoscaler else None
    assert before is not None and target is not None
    # The operator restarts: a new memory, the status the last one wrote, a quiet window.
    after = _restarted(replace(s, previous=learnt.status), {CPU: obs(10.0, 5.0)})
    assert after.scale is not None and after.scale.decision is not None
    d = after.scale.decision
    resumed = {c.name: c for c in after.status.classes}[CPU].observed.capacity_rps
    assert resumed == before  # the learnt capacity per replica, not the profile's again
    assert d.inputs.target_rps >= target  # the target in force holds through the restart
    # without the status it starts over from the profile
    cold = _restarted(s, {CPU: obs(10.0, 5.0)})
    assert cold.scale is not None and cold.scale.decision is not None
    fresh_cap = {c.name: c for c in cold.status.classes}[CPU].observed.capacity_rps
    assert fresh_cap is not None and fresh_cap > before
    assert cold.scale.decision.inputs.target_rps < target


def test_resume_keeps_the_correction_within_its_bounds_and_a_known_memory_as_it_is() -> None:
    from infleet.api import InferenceDeploymentStatus
    from infleet.scheduler.autoscale import AutoscaleSettings, ClassMemory
    from infleet.scheduler.capacity import ClassProfile

    prof = ClassProfile(capacity_rps=100.0, latency_b1_ms=5.0)
    g = scaling.Governed("c", prof, 1.0, 1, 1, 4, True, 1)
    status = InferenceDeploymentStatus.model_validate(
        {"classes": [{"name": "c", "observed": {"capacityRps": 1.0}}]})
    rules = AutoscaleSettings.from_spec(SPEC)
    state = scaling.resume(AutoscaleState(), [g], status, 0.0, SPEC)
    assert state.classes["c"].correction == rules.correction_floor  # 0.01 clamped
    known = AutoscaleState(classes={"c": ClassMemory(correction=1.5)})
    assert scaling.resume(known, [g], status, 0.0, SPEC).classes["c"].correction == 1.5
    assert scaling.resume(AutoscaleState(), [g], None, 0.0, SPEC) == AutoscaleState()
