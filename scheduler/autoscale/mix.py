"""Rules 5-6: replicas per class for the target in force, within the bounds, at the least
cost: scale-up on top of the running replicas (bridged while slower classes start),
scale-down to the cheapest mix once the stabilization window allows it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from infleet.scheduler.autoscale.decision import Mode
from infleet.scheduler.autoscale.settings import AutoscaleSettings, ClassInput
from infleet.scheduler.autoscale.state import AutoscaleState
from infleet.scheduler.capacity import Option, Solution, max_capacity, solve


def choose(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    state: AutoscaleState,
    now: float,
    current: list[int],
    rooms: list[int],
    caps: list[float],
    costs: list[float],
    target: float,
    within: bool,
    panic: bool,
) -> tuple[Mode, list[int], str, bool]:
    """(mode, replicas per class, what decided it, feasible)."""
    lo, hi = settings.min_replicas, settings.max_replicas
    options = [Option(c.name, q, p, r) for c, q, p, r in zip(classes, caps, costs, rooms,
                                                             strict=True)]
    cap_now = sum(n * q for n, q in zip(current, caps, strict=True))
    cost_now = sum(n * p for n, p in zip(current, costs, strict=True))
    eps = 1e-9 * max(1.0, target)
    if within and cap_now >= target - eps:
        recent_up = (state.last_scale_up is not None
                     and now - state.last_scale_up < settings.stabilization_s)
        if recent_up:
            return Mode.HOLD, current, "within the stabilization window of the last scale-up", True
        best = solve(options, target * (1 + settings.scale_down_tolerance), lo, hi)
        if best.feasible and best.cost_per_hour < cost_now - 1e-9 * max(1.0, cost_now):
            return Mode.SCALE_DOWN, list(best.replicas), f"{cost_now:.4g}/h -> " \
                f"{best.cost_per_hour:.4g}/h", True
        return Mode.HOLD, current, "", True
    if within:
        # Add the cheapest replicas covering the shortfall on top of those running: the
        # running ones keep serving while the new ones start.
        more = [Option(o.name, o.capacity_rps, o.cost_per_hour, r - n)
                for o, r, n in zip(options, rooms, current, strict=True)]
        placed = sum(current)
        # Up to the top of the scale-down band when it fits: noise within the band then
        # asks for no further scale-up, and scale-down uses the same band.
        for aim in (target * (1 + settings.scale_down_tolerance), target):
            add = solve(more, max(0.0, aim - cap_now), max(0, lo - placed), hi - placed)
            if add.feasible:
                chosen = [n + a for n, a in zip(current, add.replicas, strict=True)]
                return (Mode.PANIC if panic else Mode.SCALE_UP), chosen, "", True
    best = solve(options, target * (1 + settings.scale_down_tolerance), lo, hi)
    if not best.feasible:
        best = solve(options, target, lo, hi)
    if best.feasible:
        if within:  # scale-up on top did not fit: re-mix the whole fleet
            return (Mode.PANIC if panic else Mode.SCALE_UP), list(best.replicas), \
                "re-mixed: no room to add on top of the running replicas", True
        return Mode.BOUNDS, list(best.replicas), "the running mix broke the bounds", True
    return _best_effort(options, rooms, caps, lo, hi, best, current)


def bridge(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    current: list[int],
    chosen: list[int],
    rooms: list[int],
    caps: list[float],
    costs: list[float],
) -> tuple[list[int], str]:
    """Replicas of classes that start sooner, to carry the load while the slower replicas
    the plan added start (a GPU pod takes far longer than a CPU pod). They cover what the
    slow replicas add, cheapest first, within room and maxReplicas; the scale-down rule
    removes them once the stabilization window has passed."""
    added = [n - m for n, m in zip(chosen, current, strict=True)]
    slow = [i for i, a in enumerate(added) if a > 0]
    if not slow:
        return chosen, ""
    latest = max(classes[i].startup_s for i in slow)
    gap = sum(added[i] * caps[i] for i in slow if classes[i].startup_s >= latest)
    fast = sorted(
        (i for i, c in enumerate(classes) if c.startup_s < latest and caps[i] > 0),
        key=lambda i: (costs[i] / caps[i], classes[i].startup_s),
    )
    out = list(chosen)
    budget = settings.max_replicas - sum(out)
    notes = []
    for i in fast:
        if gap <= 0 or budget <= 0:
            break
        take = min(rooms[i] - out[i], budget, math.ceil(gap / caps[i]))
        if take > 0:
            out[i] += take
            budget -= take
            gap -= take * caps[i]
            notes.append(f"{classes[i].name} +{take}")
    if not notes:
        return chosen, ""
    return out, ("bridging the start-up of the slower replicas with " + ", ".join(notes))


def _best_effort(
    options: Sequence[Option],
    rooms: list[int],
    caps: list[float],
    lo: int,
    hi: int,
    failed: Solution,
    current: list[int],
) -> tuple[Mode, list[int], str, bool]:
    """No mix covers the target: the cheapest mix of the most capacity the bounds allow
    (or, when even min cannot be placed, the current replicas, changed by nothing)."""
    why = "; ".join(failed.problems) or "no mix covers the target"
    reach = max_capacity(caps, rooms, hi)
    most = solve(options, reach * (1 - 1e-9), min(lo, sum(rooms)), hi)
    if most.feasible and sum(most.replicas) >= lo:
        return Mode.INFEASIBLE, list(most.replicas), why, False
    return Mode.INFEASIBLE, current, why, False


