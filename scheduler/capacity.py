"""The capacity planner: replicas per class that cover demand at the least cost.

The problem, for classes c with per-replica capacity q_c (requests/s at the SLO), cost p_c
and room for at most u_c replicas (free allocatable):

    minimise  sum p_c n_c
    such that sum q_c n_c >= target,   min <= sum n_c <= max,   0 <= n_c <= u_c integer

A bounded covering knapsack with a cardinality constraint. :func:`solve` is an exact
depth-first branch and bound: classes in order of cost per capacity, counts tried from the
largest useful one down (so the first leaf is the greedy answer), pruned by two valid lower
bounds on the remaining cost (the fractional cover of the remaining capacity, and the
cheapest replicas still owed to ``min``) and by a feasibility bound (the largest capacity the
remaining replica budget can still add). Among plans of equal cost the one with fewer
replicas wins. A node limit guards pathological inputs: a plan found under it is marked
``optimal=False`` with the proven lower bound, so the gap is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from infleet.api import LatencyPoint

NODE_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class ClassProfile:
    """How one replica of a class performs for this model."""

    capacity_rps: float
    """Requests per second one replica sustains while holding the SLO."""
    latency_b1_ms: float
    """p99 latency of a single request on an idle replica (batch 1)."""
    source: str = "profile"


def profile_from_points(
    points: Sequence[LatencyPoint], slo_ms: float, max_queue_delay_ms: float, max_batch: int
) -> ClassProfile | None:
    """Capacity at the SLO from an engine's measured latency per batch size.

    Under load a request may wait for the batch in flight, then for its own batch to form
    and run, so batch size b is usable when ``queue delay + 2 x p99(b) <= SLO``; capacity is
    the best throughput among usable sizes. When only batch 1 is under the SLO and not even
    it passes that rule, a replica is run at half its batch-1 throughput.
    """
    usable = [p for p in points if p.batch_size <= max_batch]
    if not usable:
        return None
    b1 = min(usable, key=lambda p: p.batch_size)
    ok = [p for p in usable if max_queue_delay_ms + 2 * p.p99_ms <= slo_ms]
    capacity = max((p.throughput_ips for p in ok), default=0.0)
    if not ok and b1.p99_ms <= slo_ms:
        capacity = b1.throughput_ips / 2
    return ClassProfile(capacity, b1.p99_ms, "engine profile")


@dataclass(frozen=True, slots=True)
class Option:
    """One class as the solver sees it."""

    name: str
    capacity_rps: float
    cost_per_hour: float
    max_replicas: int
    """Replicas that fit in the class's free allocatable resources."""


@dataclass(frozen=True, slots=True)
class Solution:
    feasible: bool
    replicas: tuple[int, ...]
    """Per option, in the order given; all zero when infeasible."""
    cost_per_hour: float
    capacity_rps: float
    optimal: bool
    """Proven optimal; False only when the node limit cut the search short."""
    lower_bound: float
    """A proven lower bound on the optimal cost."""
    problems: tuple[str, ...] = ()
    """Why no plan exists (when infeasible)."""
    nodes: int = 0


def _fmt(x: float) -> str:
    return f"{x:.4g}" if x < 1000 else f"{x:,.0f}"


def _infeasible(options: Sequence[Option], problems: list[str]) -> Solution:
    zero = tuple(0 for _ in options)
    return Solution(False, zero, 0.0, 0.0, True, math.inf, tuple(problems))


def max_capacity(caps: Sequence[float], bounds: Sequence[int], budget: int) -> float:
    """The most capacity ``budget`` replicas can add: the largest replicas first."""
    total = 0.0
    for cap, u in sorted(zip(caps, bounds, strict=True), reverse=True):
        if budget <= 0:
            break
        take = min(u, budget)
        total += take * cap
        budget -= take
    return total


def solve(
    options: Sequence[Option],
    target_rps: float,
    min_replicas: int,
    max_replicas: int,
    node_limit: int = NODE_LIMIT,
) -> Solution:
    """Replicas per option covering ``target_rps`` within the bounds at the least cost."""
    if target_rps < 0 or min_replicas < 0 or max_replicas < min_replicas:
        raise ValueError("need target >= 0 and 0 <= min_replicas <= max_replicas")
    live = [
        i for i, o in enumerate(options) if o.max_replicas > 0 and o.capacity_rps > 0
    ]
    bounds = {i: min(options[i].max_replicas, max_replicas) for i in live}
    eps = 1e-9 * max(1.0, target_rps)
    room = sum(bounds.values())
    if not live:
        if target_rps <= eps and min_replicas == 0:
            return Solution(True, tuple(0 for _ in options), 0.0, 0.0, True, 0.0)
        return _infeasible(options, ["no class can take a replica"])
    if room < min_replicas:
        fit = ", ".join(f"{options[i].name} {bounds[i]}" for i in live)
        return _infeasible(
            options,
            [f"minReplicas={min_replicas} but only {room} replicas fit in free allocatable "
             f"({fit})"],
        )
    caps = [options[i].capacity_rps for i in live]
    ub = [bounds[i] for i in live]
    reach = max_capacity(caps, ub, max_replicas)
    if reach < target_rps - eps:
        parts = ", ".join(
            f"{options[i].name} {bounds[i]} x {_fmt(options[i].capacity_rps)} rps" for i in live
        )
        unbounded = sum(c * u for c, u in zip(caps, ub, strict=True))
        msg = f"needs {_fmt(target_rps)} rps; at most {_fmt(reach)} rps can be placed ({parts})"
        if unbounded > reach + eps:
            msg += f"; maxReplicas={max_replicas} binds"
        else:
            msg += "; free allocatable binds"
        return _infeasible(options, [msg])
    return _branch_and_bound(options, live, bounds, target_rps, min_replicas, max_replicas,
                             eps, node_limit)


def _branch_and_bound(
    options: Sequence[Option],
    live: list[int],
    bounds: dict[int, int],
    target: float,
    m: int,
    big_m: int,
    eps: float,
    node_limit: int,
) -> Solution:
    order = sorted(
        live,
        key=lambda i: (
            options[i].cost_per_hour / options[i].capacity_rps,
            -options[i].capacity_rps,
            i,
        ),
    )
    k = len(order)
    cap = [options[i].capacity_rps for i in order]
    cost = [options[i].cost_per_hour for i in order]
    ub = [bounds[i] for i in order]
    # Suffix tables: replicas of options j.. sorted by cost (for the minReplicas bound) and
    # by capacity (for the feasibility bound).
    by_cost = [sorted(zip(cost[j:], ub[j:], strict=True)) for j in range(k + 1)]
    by_cap = [sorted(zip(cap[j:], ub[j:], strict=True), reverse=True) for j in range(k + 1)]

    best_cost = math.inf
    best_cnt = big_m + 1
    best: list[int] | None = None
    n = [0] * k
    nodes = 0
    truncated = False

    def lower(j: int, need: float, owed: int) -> float:
        frac = 0.0
        r = need
        t = j
        while r > eps and t < k:
            take = min(float(ub[t]), r / cap[t])
            frac += take * cost[t]
            r -= take * cap[t]
            t += 1
        if r > eps:
            return math.inf
        cheap = 0.0
        for c, u in by_cost[j]:
            if owed <= 0:
                break
            take = min(u, owed)
            cheap += take * c
            owed -= take
        return math.inf if owed > 0 else max(frac, cheap)

    def reachable(j: int, budget: int, need: float) -> tuple[bool, int]:
        """Whether ``need`` is coverable from j.. within ``budget`` replicas, and the fewest
        replicas that can cover it."""
        got = 0.0
        used = 0
        for c, u in by_cap[j]:
            if got >= need - eps or budget <= 0:
                break
            take = min(u, budget, math.ceil((need - got - eps) / c))
            got += take * c
            used += take
            budget -= take
        return got >= need - eps, used

    def visit(j: int, need: float, cnt: int, spent: float) -> None:
        nonlocal best_cost, best_cnt, best, nodes, truncated
        nodes += 1
        if nodes > node_limit:
            truncated = True
            return
        owed = m - cnt
        tol = 1e-9 * max(1.0, best_cost if best_cost < math.inf else 1.0)
        if need <= eps and owed <= 0:
            if spent < best_cost - tol or (spent <= best_cost + tol and cnt < best_cnt):
                best_cost, best_cnt, best = spent, cnt, n.copy()
            return
        if j == k:
            return
        budget = big_m - cnt
        ok, fewest = reachable(j, budget, need)
        if not ok:
            return
        bound = spent + lower(j, need, owed)
        if bound > best_cost + tol:
            return
        if bound >= best_cost - tol and cnt + max(fewest, owed) >= best_cnt:
            return
        useful = math.ceil((need - eps) / cap[j]) if need > eps else 0
        hi = min(ub[j], budget, max(useful, owed))
        for x in range(hi, -1, -1):
            n[j] = x
            visit(j + 1, need - x * cap[j], cnt + x, spent + x * cost[j])
            if truncated:
                break
        n[j] = 0

    visit(0, target, 0, 0.0)
    root_bound = lower(0, target, m)
    if best is None:
        why = "search limit reached before any plan was found" if truncated else (
            "no combination of replicas meets the target within the bounds"
        )
        return Solution(False, tuple(0 for _ in options), 0.0, 0.0, not truncated,
                        root_bound, (why,), nodes)
    replicas = [0] * len(options)
    for pos, i in enumerate(order):
        replicas[i] = best[pos]
    capacity = sum(options[i].capacity_rps * replicas[i] for i in range(len(options)))
    return Solution(
        True,
        tuple(replicas),
        best_cost,
        capacity,
        not truncated,
        best_cost if not truncated else min(root_bound, best_cost),
        (),
        nodes,
    )


def traffic_weights(capacities: Sequence[float]) -> tuple[int, ...]:
    """Percent of traffic per class, proportional to provisioned capacity, summing to 100
    (largest remainder), so every class runs at the same utilisation. A class with capacity
    never rounds down to 0 %."""
    total = sum(capacities)
    if total <= 0:
        return tuple(0 for _ in capacities)
    exact = [100 * c / total for c in capacities]
    weights = [math.floor(e) for e in exact]
    for i, c in enumerate(capacities):
        if c > 0 and weights[i] == 0:
            weights[i] = 1
    short = 100 - sum(weights)
    by_remainder = sorted(range(len(exact)), key=lambda i: (weights[i] - exact[i], i))
    while short > 0:
        for i in by_remainder:
            if short == 0:
                break
            if capacities[i] > 0:
                weights[i] += 1
                short -= 1
    while short < 0:
        # Give back from the class most over its exact share that stays above 1 %.
        i = max(
            (i for i in range(len(exact)) if weights[i] > 1),
            key=lambda i: (weights[i] - exact[i], -i),
        )
        weights[i] -= 1
        short += 1
    return tuple(weights)
