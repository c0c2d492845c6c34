"""The decision of one tick: the rules of :mod:`infleet.scheduler.autoscale` in order."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from infleet.scheduler.autoscale.correction import corrected, panic_reason
from infleet.scheduler.autoscale.decision import (
    Mode,
    ScaleDecision,
    ScaleInputs,
    class_scales,
    sentence,
)
from infleet.scheduler.autoscale.demand import measure_demand, tick_target
from infleet.scheduler.autoscale.mix import bridge, choose
from infleet.scheduler.autoscale.settings import AutoscaleSettings, ClassInput
from infleet.scheduler.autoscale.state import AutoscaleState, ClassMemory, push_max, window


def decide_scale(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    state: AutoscaleState,
    now: float,
) -> ScaleDecision:
    """This tick's replicas and weights per class; see the module's docstring for the rules."""
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    memory = {c.name: state.classes.get(c.name, ClassMemory()) for c in classes}
    usable = [c.usable(settings.slo_ms) for c in classes]
    # 1. capacity per replica
    factors: list[float] = []
    notes: list[str] = []
    caps: list[float] = []
    plan_caps: list[float] = []
    panics: list[str] = []
    for c, ok in zip(classes, usable, strict=True):
        k, note, broke_at = corrected(memory[c.name], c, settings)
        base = c.profile.capacity_rps if c.profile is not None and ok else 0.0
        q = base * k
        if not ok:
            note = c.unusable_note(settings.slo_ms)
        why = panic_reason(c, base * memory[c.name].correction, memory[c.name], settings)
        factors.append(k)
        notes.append(note)
        caps.append(q)
        # A class that cannot keep up under load is planned at what it carried, this very
        # tick (the correction factor follows more slowly).
        plan_caps.append(min(q, 0.95 * broke_at) if broke_at is not None and why else q)
        if why and ok:
            panics.append(why)
    new_memory = {
        c.name: ClassMemory(k, c.observed.queue_depth if c.observed else 0.0)
        for c, k in zip(classes, factors, strict=True)
    }
    current = [c.replicas for c in classes]
    cap_before = sum(n * q for n, q in zip(current, plan_caps, strict=True))

    # 2. demand
    demand_now, backlog, demand_note = measure_demand(classes, caps)
    if demand_now is None:
        return _blind(classes, settings, state, now, caps, factors, notes, new_memory,
                      demand_note, cap_before)
    demand = (*window(state.demand, now, settings.stable_window_s), (now, demand_now))
    stable = sum(p[1] for p in demand) / len(demand)
    # 3. this tick's target (panic adds the backlog), 4. the stabilized one
    target_now = tick_target(settings, stable, demand_now, backlog, cap_before, bool(panics))
    targets = push_max(state.targets, now, target_now, settings.stabilization_s)
    target = targets[0][1]

    # 5. the mix
    rooms = [c.replicas + c.free_replicas if ok else 0
             for c, ok in zip(classes, usable, strict=True)]
    costs = [c.cost_per_hour for c in classes]
    within = (
        settings.min_replicas <= sum(current) <= settings.max_replicas
        and all(n <= r for n, r in zip(current, rooms, strict=True))
    )
    mode, chosen, why, feasible = choose(
        classes, settings, state, now, current, rooms, plan_caps, costs, target, within,
        bool(panics),
    )
    if mode in (Mode.PANIC, Mode.SCALE_UP, Mode.INFEASIBLE):
        chosen, bridged = bridge(classes, settings, current, chosen, rooms, plan_caps, costs)
        if bridged:
            why = (why + "; " if why else "") + bridged
    # a class that broke the SLO must not be counted at more than it carried, this tick
    capacity = sum(n * q for n, q in zip(chosen, plan_caps, strict=True))
    scaled_up = any(n > m for n, m in zip(chosen, current, strict=True))
    scaled_down = any(n < m for n, m in zip(chosen, current, strict=True))
    new_state = AutoscaleState(
        demand=demand,
        targets=targets,
        classes=MappingProxyType(new_memory),
        last_scale_up=now if scaled_up else state.last_scale_up,
        last_scale_down=now if scaled_down else state.last_scale_down,
    )
    inputs = ScaleInputs(
        demand_now_rps=demand_now,
        demand_stable_rps=stable,
        backlog=backlog,
        target_now_rps=target_now,
        target_rps=target,
        capacity_before_rps=cap_before,
        panic=tuple(panics),
    )
    reason = sentence(mode, inputs, settings, why, demand_note, classes, chosen)
    return ScaleDecision(
        at=now,
        mode=mode,
        reason=reason,
        classes=class_scales(classes, chosen, caps, factors, notes),
        capacity_rps=capacity,
        cost_per_hour=sum(n * p for n, p in zip(chosen, costs, strict=True)),
        feasible=feasible,
        changed=chosen != current,
        inputs=inputs,
        state=new_state,
    )



def _blind(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    state: AutoscaleState,
    now: float,
    caps: list[float],
    factors: list[float],
    notes: list[str],
    memory: dict[str, ClassMemory],
    why: str,
    cap_before: float,
) -> ScaleDecision:
    """Nothing measured: keep every replica (a failed scrape must never look like idle)."""
    current = [c.replicas for c in classes]
    keep = AutoscaleState(
        demand=window(state.demand, now, settings.stable_window_s),
        targets=state.targets,
        classes=MappingProxyType(memory),
        last_scale_up=state.last_scale_up,
        last_scale_down=state.last_scale_down,
    )
    stable = sum(p[1] for p in keep.demand) / len(keep.demand) if keep.demand else 0.0
    target = state.targets[0][1] if state.targets else 0.0
    inputs = ScaleInputs(None, stable, 0.0, target, target, cap_before, ())
    return ScaleDecision(
        at=now,
        mode=Mode.BLIND,
        reason=f"holding {sum(current)} replicas: {why}; load unknown, not zero",
        classes=class_scales(classes, current, caps, factors, notes),
        capacity_rps=cap_before,
        cost_per_hour=sum(n * c.cost_per_hour for n, c in zip(current, classes, strict=True)),
        feasible=True,
        changed=False,
        inputs=inputs,
        state=keep,
    )

