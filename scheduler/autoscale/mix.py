"""Rules 5-6: replicas per class for the target in force, within the bounds, at the least
cost: scale-up on top of the running replicas (bridged while slower classes start),
scale-down to the cheapest mix once the stabilization window allows it, and above floors of
cheap capacity held in reserve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from infleet.scheduler.autoscale.decision import Mode
from infleet.scheduler.autoscale.settings import AutoscaleSettings, ClassInput
from infleet.scheduler.autoscale.state import AutoscaleState
from infleet.scheduler.capacity import Option, Solution, max_capacity, solve


def reserve_floors(
    classes: Sequence[ClassInput],
    settings: AutoscaleSettings,
    rooms: Sequence[int],
    caps: Sequence[float],
    costs: Sequence[float],
    want: float,
) -> list[int]:
    """Replicas per class held in reserve (rule 6): the classes whose cost per request is at
    most ``reserve_cost_share`` of the dearest usable class's, filled cheapest first until
    they alone hold ``want`` rps, within room and maxReplicas.

    The order is fixed and the fill greedy, so the floors never fall as ``want`` rises; the
    mix is then the cheapest one above them, which keeps the cost monotone in demand."""
    floors = [0] * len(classes)
    if settings.reserve <= 0 or want <= 0:
        return floors
    per = [p / q if q > 0 and r > 0 else None
           for p, q, r in zip(costs, caps, rooms, strict=True)]
    known = [x for x in per if x is not None]
    if not known:
        return floors
    limit = settings.reserve_cost_share * max(known)
    cheap = sorted((i for i, x in enumerate(per) if x is not None and x <= limit),
                   key=lambda i: (costs[i] / caps[i], classes[i].startup_s, classes[i].name))
    budget = settings.max_replicas
    for i in cheap:
        if want <= 0 or budget <= 0:
            break
        take = min(rooms[i], budget, math.ceil(want / caps[i] - 1e-9))
        floors[i] = take
        budget -= take
        want -= take * caps[i]
    return floors


def solve_above(
    options: Sequence[Option], target: float, lo: int, hi: int, floors: Sequence[int]
) -> Solution:
    """The cheapest mix covering ``target`` with at least ``floors`` replicas per option
    (exact: the floors are placed, the solver covers the rest within what is left)."""
    placed = sum(floors)
    if placed > hi:
        return solve(options, target, lo, hi)  # floors never make the bounds infeasible
    base = sum(f * o.capacity_rps for f, o in zip(floors, options, strict=True))
    rest = [Option(o.name, o.capacity_rps, o.cost_per_hour, o.max_replicas - f)
            for o, f in zip(options, floors, strict=True)]
    sol = solve(rest, max(0.0, target - base), max(0, lo - placed), hi - placed)
    if not sol.feasible:
        return sol
    return replace(
        sol,
        replicas=tuple(n + f for n, f in zip(sol.replicas, floors, strict=True)),
        cost_per_hour=sol.cost_per_hour + sum(f * o.cost_per_hour
                                              for f, o in zip(floors, options, strict=True)),
        capacity_rps=sol.capacity_rps + base,
    )


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
    band = 1 + settings.scale_down_tolerance
    options = [Option(c.name, q, p, r) for c, q, p, r in zip(classes, caps, costs, rooms,
                                                             strict=True)]
    cap_now = sum(n * q for n, q in zip(current, caps, strict=True))
    cost_now = sum(n * p for n, p in zip(current, costs, strict=True))
    eps = 1e-9 * max(1.0, target)
    # the reserve, for the demand the target stands for; with the same band as the target
    want = target / (1 + settings.headroom) * (1 + settings.reserve)
    floors = reserve_floors(classes, settings, rooms, caps, costs, want)
    floors_band = reserve_floors(classes, settings, rooms, caps, costs, want * band)
    reserved = all(n >= f for n, f in zip(current, floors, strict=True))

    def held(fl: Sequence[int], why: str = "") -> str:
        kept = ", ".join(f"{c.name} {f}" for c, f in zip(classes, fl, strict=True) if f)
        if not kept:
            return why
        kept = f"cheap replicas held for {1 + settings.reserve:g}x the demand: {kept}"
        return f"{why}; {kept}" if why else kept

    if within and cap_now >= target - eps and reserved:
        recent_up = (state.last_scale_up is not None
                     and now - state.last_scale_up < settings.stabilization_s)
        if recent_up:
            return Mode.HOLD, current, "within the stabilization window of the last scale-up", True
        best = solve_above(options, target * band, lo, hi, floors_band)
        if best.feasible and best.cost_per_hour < cost_now - 1e-9 * max(1.0, cost_now):
            return Mode.SCALE_DOWN, list(best.replicas), held(
                floors_band, f"{cost_now:.4g}/h -> {best.cost_per_hour:.4g}/h"), True
        return Mode.HOLD, current, "", True
    none = [0] * len(current)
    if within:
        # Add the cheapest replicas covering the shortfall on top of those running: the
        # running ones keep serving while the new ones start.
        more = [Option(o.name, o.capacity_rps, o.cost_per_hour, r - n)
                for o, r, n in zip(options, rooms, current, strict=True)]
        placed = sum(current)
        # Up to the top of the scale-down band when it fits: noise within the band then
        # asks for no further scale-up, and scale-down uses the same band. The reserve
        # yields first when maxReplicas cannot hold it and the target both.
        for aim, fl in ((target * band, floors_band), (target, floors), (target, none)):
            owed = [max(0, f - n) for f, n in zip(fl, current, strict=True)]
            add = solve_above(more, max(0.0, aim - cap_now), max(0, lo - placed), hi - placed,
                              owed)
            if add.feasible:
                chosen = [n + a for n, a in zip(current, add.replicas, strict=True)]
                return (Mode.PANIC if panic else Mode.SCALE_UP), chosen, held(fl), True
    for aim, fl in ((target * band, floors_band), (target, floors), (target, none)):
        best = solve_above(options, aim, lo, hi, fl)
        if best.feasible:
            if within:  # scale-up on top did not fit: re-mix the whole fleet
                return (Mode.PANIC if panic else Mode.SCALE_UP), list(best.replicas), held(
                    fl, "re-mixed: no room to add on top of the running replicas"), True
            return Mode.BOUNDS, list(best.replicas), held(
                fl, "the running mix broke the bounds"), True
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




