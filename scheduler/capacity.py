"""The capacity planner: replicas per class that cover demand at the least cost.

The problem, for classes c with per-replica capacity q_c (requests/s at the SLO), cost p_c
and room for at most u_c replicas (free allocatable):

    minimise  sum p_c n_c
    such that sum q_c n_c >= target,   min <= sum n_c <= max,   0 <= n_c <= u_c integer

A bounded covering knapsack with a cardinality constraint. :func:`solve` is an exact
depth-first branch and bound over the classes, in order of cost per capacity (priced with a
Lagrange multiplier on the replica budget when ``max`` binds), counts tried from the largest
useful one down, so the first plan found is the greedy one. Each child is bounded before it
is entered, by the largest of three valid lower bounds: the fractional cover of the remaining
capacity, the same with the replica budget priced in (Lagrangian), and the cheapest replicas
still owed to ``min``; children that cannot cover the target within the budget are cut. The
child bound is convex in the count, so the loop over counts stops as soon as it is too high
and rising. A class that is not used up forbids the later classes it dominates (no more
capacity, no lower cost): swapping their replicas for its own never costs more. Among plans of
equal cost the one with fewer replicas wins.

Subset-sum-like rounding makes the worst case exponential; a node limit guards it, and
``rel_gap`` may trade a proven gap for time: a plan that is not proven optimal says so
(``optimal=False``) and carries its proven ``lower_bound``. Brute force agrees on random small
instances (tests/unit/test_scheduler_capacity.py); bench/bench_scheduler.py times it on 50
classes.
"""

from __future__ import annotations

import heapq
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


QUEUE_WAIT_SHARE = 0.7
"""Share of the SLO a request may expect to wait and run for when the server admits it."""


def queue_wait_budget_ms(slo_ms: float) -> float:
    """The serving pods' admission budget (``infleet serve --max-queue-wait-ms``): a request
    whose expected time to run, the rows ahead of it and its own at the engine's recent mean
    speed, is over this is refused at once instead of queueing to answer late.

    A share of the SLO, not all of it: the estimate is a mean, and the request's own batch
    runs with the engine's tail (p99 is 2-6x the median on the CPU engines profiled here).
    One simulated replica of either CPU class of bench/autoscale_sim.py, 120 s of Poisson
    load, answered within the SLO: at 60% of its profiled capacity 97.5-98.4% of requests
    with a share of 0.5, 98.9-99.3% with 0.7 or 0.9, as many as with no admission; at 75%
    91.5-95.2%, 92.6-96.8%, 90.7-96.7% (18.5-92.1% with none); at 100%, past saturation,
    73.6-81.3%, 71.4-80.8%, 61.6-72.5% (0.2-0.6% with none: a full queue makes every
    answer late).
    """
    return QUEUE_WAIT_SHARE * slo_ms


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
    rel_gap: float = 0.0,
) -> Solution:
    """Replicas per option covering ``target_rps`` within the bounds at the least cost.

    ``rel_gap`` > 0 stops proving once no better plan can be cheaper by more than that
    fraction of the best found: the result is then within ``rel_gap`` of optimal (and says so
    through ``lower_bound``). 0 means exact.
    """
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
                             eps, node_limit, rel_gap)


def _frac_cover(
    order: Sequence[int], cap: Sequence[float], cost: Sequence[float], ub: Sequence[int],
    skip_below: int, forbid: Sequence[int], need: float, mu: float, eps: float,
) -> tuple[float, float]:
    """Fractional cover of ``need`` by the options in ``order`` from index ``skip_below`` on
    and not forbidden, each replica priced ``cost + mu``: (cost, replicas used), cost inf
    when ``need`` cannot be covered."""
    total = used = 0.0
    r = need
    for i in order:
        if r <= eps:
            break
        if i < skip_below or forbid[i]:
            continue
        take = min(float(ub[i]), r / cap[i])
        total += take * (cost[i] + mu)
        used += take
        r -= take * cap[i]
    return (total, used) if r <= eps else (math.inf, used)


def _best_multiplier(
    cap: Sequence[float], cost: Sequence[float], ub: Sequence[int], need: float, budget: int,
    eps: float,
) -> float:
    """The multiplier of the replica budget that maximises the Lagrangian bound
    ``cover(cost + mu) - mu * budget`` (concave in mu): 0 unless the cheapest fractional cover
    uses more replicas than the budget allows. Bisection on the sign of its slope."""
    idx = list(range(len(cap)))
    none = [0] * len(cap)

    def replicas(mu: float) -> float:
        order = sorted(idx, key=lambda i: ((cost[i] + mu) / cap[i], -cap[i]))
        return _frac_cover(order, cap, cost, ub, 0, none, need, mu, eps)[1]

    if replicas(0.0) <= budget:
        return 0.0
    lo, hi = 0.0, max(cost) * 2 + 1.0
    for _ in range(60):
        if replicas(hi) <= budget:
            break
        hi *= 4
    for _ in range(20):
        mid = (lo + hi) / 2
        if replicas(mid) > budget:
            lo = mid
        else:
            hi = mid
    return hi


def _branch_and_bound(
    options: Sequence[Option],
    live: list[int],
    bounds: dict[int, int],
    target: float,
    m: int,
    big_m: int,
    eps: float,
    node_limit: int,
    rel_gap: float,
) -> Solution:
    caps0 = [options[i].capacity_rps for i in live]
    costs0 = [options[i].cost_per_hour for i in live]
    ub0 = [bounds[i] for i in live]
    # When the replica budget binds, price its scarcity into the order and the bound.
    mu = _best_multiplier(caps0, costs0, ub0, target, big_m, eps)
    branch = sorted(
        range(len(live)), key=lambda t: ((costs0[t] + mu) / caps0[t], -caps0[t], t)
    )
    order = [live[t] for t in branch]
    k = len(order)
    cap = [caps0[t] for t in branch]
    cost = [costs0[t] for t in branch]
    ub = [ub0[t] for t in branch]
    by_eff = sorted(range(k), key=lambda t: (cost[t] / cap[t], -cap[t]))
    by_adj = list(range(k))  # branching order is the mu-adjusted efficiency order
    by_cost = sorted(range(k), key=lambda t: cost[t])
    by_capacity = sorted(range(k), key=lambda t: -cap[t])
    # dominated[j]: later options no better than j in both capacity and cost. While j is not
    # exhausted, using one of them is never better than another replica of j, so they are
    # forbidden in that subtree (a swap argument: capacity and count kept, cost not raised).
    dominated = [
        [t for t in range(j + 1, k) if cap[t] <= cap[j] and cost[t] >= cost[j]]
        for j in range(k)
    ]
    forbid = [0] * k

    best_cost = math.inf
    best_cnt = big_m + 1
    best: list[int] | None = None
    n = [0] * k
    nodes = 0
    truncated = False
    gap_floor = math.inf  # the least bound among subtrees skipped for rel_gap

    def lower(j: int, need: float, owed: int, budget: int) -> float:
        plain = _frac_cover(by_eff, cap, cost, ub, j, forbid, need, 0.0, eps)[0]
        if plain == math.inf:
            return plain
        bound = plain
        if mu > 0:
            adjusted = _frac_cover(by_adj, cap, cost, ub, j, forbid, need, mu, eps)[0]
            bound = max(bound, adjusted - mu * budget)
        cheap = 0.0
        for t in by_cost:
            if owed <= 0:
                break
            if t < j or forbid[t]:
                continue
            take = min(ub[t], owed)
            cheap += take * cost[t]
            owed -= take
        return math.inf if owed > 0 else max(bound, cheap)

    def reachable(j: int, budget: int, need: float) -> tuple[bool, int]:
        """Whether ``need`` is coverable from j.. within ``budget`` replicas, and the fewest
        replicas that can cover it."""
        got = 0.0
        used = 0
        for t in by_capacity:
            if got >= need - eps or budget <= 0:
                break
            if t < j or forbid[t]:
                continue
            take = min(ub[t], budget, math.ceil((need - got - eps) / cap[t]))
            got += take * cap[t]
            used += take
            budget -= take
        return got >= need - eps, used

    def assess(j: int, need: float, cnt: int, spent: float) -> tuple[float, int]:
        """A lower bound on the cost of any plan in the subtree (inf: it holds none), and the
        fewest replicas that could still cover ``need``."""
        nonlocal nodes
        nodes += 1
        owed = m - cnt
        if need <= eps and owed <= 0:
            return spent, 0  # a plan: more replicas would only cost more
        if j == k:
            return math.inf, 0
        budget = big_m - cnt
        ok, fewest = reachable(j, budget, need)
        if not ok:
            return math.inf, 0
        return spent + lower(j, need, owed, budget), fewest

    def tol() -> float:
        return 1e-9 * max(1.0, best_cost if best_cost < math.inf else 1.0)

    def worse(bound: float) -> bool:
        """No plan below cannot beat the incumbent (by more than rel_gap)."""
        nonlocal gap_floor
        if bound > best_cost + tol():
            return True
        if rel_gap > 0 and bound >= best_cost * (1 - rel_gap):
            gap_floor = min(gap_floor, bound)  # might be cheaper, by less than rel_gap
            return True
        return False

    def expand(j: int, need: float, cnt: int, spent: float) -> None:
        """Try every useful count of option j, most first. The children's bound is convex in
        the count (a sum of convex piecewise-linear parts; the forbidden set is fixed below
        ub[j]), so once it is too high and rising, every smaller count is too high as well."""
        nonlocal best_cost, best_cnt, best, truncated
        budget = big_m - cnt
        owed = m - cnt
        useful = math.ceil((need - eps) / cap[j]) if need > eps else 0
        hi = 0 if forbid[j] else min(ub[j], budget, max(useful, owed))
        restricted = False
        prev = math.inf
        for x in range(hi, -1, -1):
            if nodes > node_limit:
                truncated = True
                break
            if x < ub[j] and not restricted:
                for t in dominated[j]:
                    forbid[t] += 1
                restricted = True
                prev = math.inf  # a new regime: convexity holds within it
            n[j] = x
            c_need, c_cnt, c_spent = need - x * cap[j], cnt + x, spent + x * cost[j]
            bound, fewest = assess(j + 1, c_need, c_cnt, c_spent)
            if bound == math.inf:
                if prev < math.inf:
                    break  # the feasible counts form an interval: left it
                continue
            if c_need <= eps and c_cnt >= m:
                slack = tol()
                if c_spent < best_cost - slack or (
                    c_spent <= best_cost + slack and c_cnt < best_cnt
                ):
                    best_cost, best_cnt, best = c_spent, c_cnt, n.copy()
            elif worse(bound):
                if bound >= prev:
                    break
            elif not (bound >= best_cost - tol() and c_cnt + max(fewest, m - c_cnt) >= best_cnt):
                expand(j + 1, c_need, c_cnt, c_spent)
                if truncated:
                    break
            prev = bound
        if restricted:
            for t in dominated[j]:
                forbid[t] -= 1
        n[j] = 0

    root, _ = assess(0, target, 0, 0.0)
    if root < math.inf:
        if target <= eps and m <= 0:
            best_cost, best_cnt, best = 0.0, 0, [0] * k
        else:
            expand(0, target, 0, 0.0)
    root_bound = lower(0, target, m, big_m)
    if best is None:
        why = "search limit reached before any plan was found" if truncated else (
            "no combination of replicas meets the target within the bounds"
        )
        return Solution(False, tuple(0 for _ in options), 0.0, 0.0, not truncated,
                        root_bound, (why,), nodes)
    replicas = [0] * len(options)
    for p, i in enumerate(order):
        replicas[i] = best[p]
    capacity = sum(options[i].capacity_rps * replicas[i] for i in range(len(options)))
    proven = min(root_bound, best_cost) if truncated else min(best_cost, gap_floor)
    return Solution(
        True,
        tuple(replicas),
        best_cost,
        capacity,
        proven >= best_cost - 1e-9 * max(1.0, best_cost),
        proven,
        (),
        nodes,
    )


def traffic_weights(capacities: Sequence[float], total: int = 100) -> tuple[int, ...]:
    """Whole points of traffic per class (percent by default), summing to ``total``.

    Every class with capacity gets at least one point (when there are no more such classes
    than points), so no placed replica sits idle; the rest go by the highest-averages
    (D'Hondt) rule, each point to the class with the most capacity per point it would then
    carry. That minimises the highest load per unit of capacity, max(w_c / capacity_c), among
    all such splits: no class runs hotter than rounding forces.
    """
    weights = [0] * len(capacities)
    live = [i for i, c in enumerate(capacities) if c > 0]
    if not live:
        return tuple(weights)
    if len(live) <= total:
        for i in live:
            weights[i] = 1
    heap = [(-capacities[i] / (weights[i] + 1), i) for i in live]
    heapq.heapify(heap)
    for _ in range(total - sum(weights)):
        _, i = heapq.heappop(heap)
        weights[i] += 1
        heapq.heappush(heap, (-capacities[i] / (weights[i] + 1), i))
    return tuple(weights)
