"""The capacity planner against brute force, and its promises as properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.api import LatencyPoint
from infleet.scheduler.capacity import (
    Option,
    profile_from_points,
    solve,
    traffic_weights,
)


def brute_force(
    options: list[Option], target: float, lo: int, hi: int
) -> tuple[float, int] | None:
    """Least cost (and fewest replicas at that cost) over every assignment, or None."""
    best: tuple[float, int] | None = None
    ranges = [range(min(o.max_replicas, hi) + 1) for o in options]
    for counts in itertools.product(*ranges):
        total = sum(counts)
        if not lo <= total <= hi:
            continue
        cap = sum(n * o.capacity_rps for n, o in zip(counts, options, strict=True))
        if cap < target - 1e-9 * max(1.0, target):
            continue
        cost = sum(n * o.cost_per_hour for n, o in zip(counts, options, strict=True))
        if best is None or cost < best[0] - 1e-9 or (abs(cost - best[0]) <= 1e-9 and total <
                                                       best[1]):
            best = (cost, total)
    return best


option = st.builds(
    Option,
    name=st.just("c"),
    capacity_rps=st.one_of(st.floats(0.5, 500, allow_nan=False),
                           st.sampled_from([10.0, 20.0, 30.0])),  # ties stress dominance
    cost_per_hour=st.one_of(st.just(0.0), st.floats(0.01, 20, allow_nan=False),
                            st.sampled_from([1.0, 2.0, 4.0])),
    max_replicas=st.integers(0, 5),
)


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[Option], float, int, int]:
    opts = draw(st.lists(option, min_size=1, max_size=4))
    opts = [Option(f"c{i}", o.capacity_rps, o.cost_per_hour, o.max_replicas)
            for i, o in enumerate(opts)]
    lo = draw(st.integers(0, 4))
    hi = draw(st.integers(max(lo, 1), 12))
    most = sum(o.capacity_rps * min(o.max_replicas, hi) for o in opts)
    target = draw(st.one_of(st.just(0.0), st.floats(0, max(most * 1.2, 1.0))))
    return opts, target, lo, hi


@settings(max_examples=400, deadline=None)
@given(instances())
def test_cost_equals_brute_force(inst: tuple[list[Option], float, int, int]) -> None:
    opts, target, lo, hi = inst
    sol = solve(opts, target, lo, hi)
    expected = brute_force(opts, target, lo, hi)
    if expected is None:
        assert not sol.feasible
        assert sol.problems and all(n == 0 for n in sol.replicas)
        return
    assert sol.feasible and sol.optimal
    assert sol.cost_per_hour == pytest.approx(expected[0], rel=1e-9, abs=1e-9)
    assert sum(sol.replicas) == expected[1]


@settings(max_examples=200, deadline=None)
@given(instances(), st.sampled_from([0.01, 0.1]))
def test_a_relative_gap_stays_within_its_promise(
    inst: tuple[list[Option], float, int, int], gap: float
) -> None:
    opts, target, lo, hi = inst
    expected = brute_force(opts, target, lo, hi)
    sol = solve(opts, target, lo, hi, rel_gap=gap)
    assert sol.feasible == (expected is not None)
    if expected is not None:
        assert sol.cost_per_hour <= expected[0] * (1 + gap) + 1e-9
        assert sol.lower_bound <= expected[0] + 1e-9  # the reported bound is a true bound


@settings(max_examples=300, deadline=None)
@given(instances())
def test_a_feasible_plan_covers_the_target_within_every_bound(
    inst: tuple[list[Option], float, int, int],
) -> None:
    opts, target, lo, hi = inst
    sol = solve(opts, target, lo, hi)
    if not sol.feasible:
        return
    capacity = sum(n * o.capacity_rps for n, o in zip(sol.replicas, opts, strict=True))
    assert capacity >= target - 1e-9 * max(1.0, target)  # the solver's float tolerance
    assert capacity == pytest.approx(sol.capacity_rps)
    assert lo <= sum(sol.replicas) <= hi
    for n, o in zip(sol.replicas, opts, strict=True):
        assert 0 <= n <= o.max_replicas


def test_prefers_the_cheapest_capacity_and_mixes_classes() -> None:
    opts = [
        Option("h100", 3000, 10.0, 4),  # 0.0033 $/rps
        Option("t4", 450, 0.6, 3),  # 0.0013 $/rps, but only 3 free
        Option("cpu", 100, 0.2, 100),  # 0.002 $/rps
    ]
    sol = solve(opts, 2000, 1, 40)
    assert sol.feasible and sol.optimal
    # 3 T4 (1350 rps, 1.8/h) then 7 CPU replicas (700 rps, 1.4/h) beat any H100 at 10/h.
    assert sol.replicas == (0, 3, 7)
    assert sol.cost_per_hour == pytest.approx(3.2)


def test_max_replicas_forces_bigger_replicas() -> None:
    opts = [Option("cpu", 100, 0.2, 100), Option("h100", 3000, 10.0, 4)]
    sol = solve(opts, 2000, 1, 5)
    assert sol.replicas == (0, 1)


def test_min_replicas_are_the_cheapest_ones() -> None:
    opts = [Option("big", 1000, 5.0, 10), Option("small", 10, 0.1, 10)]
    sol = solve(opts, 0, 3, 10)
    assert sol.replicas == (0, 3)


def test_infeasible_says_what_binds() -> None:
    opts = [Option("h100", 3000, 10.0, 2), Option("cpu", 100, 0.2, 50)]
    free = solve(opts, 20_000, 1, 100)
    assert not free.feasible and all(n == 0 for n in free.replicas)
    assert "needs 20,000 rps" in free.problems[0]
    assert "at most 11,000 rps" in free.problems[0]
    assert "free allocatable binds" in free.problems[0]
    capped = solve(opts, 8000, 1, 3)
    assert "maxReplicas=3 binds" in capped.problems[0]
    too_few = solve([Option("h100", 3000, 10.0, 2)], 0, 3, 10)
    assert "minReplicas=3 but only 2 replicas fit" in too_few.problems[0]


def test_zero_demand_and_zero_min_places_nothing() -> None:
    sol = solve([Option("a", 10, 1.0, 3)], 0.0, 0, 5)
    assert sol.feasible and sol.replicas == (0,) and sol.cost_per_hour == 0


def test_node_limit_reports_a_proven_gap() -> None:
    # Many near-equal options make the tree wide; a tiny limit cuts it short.
    opts = [Option(f"c{i}", 10 + i * 0.37, 1.0 + i * 0.041, 30) for i in range(12)]
    full = solve(opts, 1234.5, 0, 200)
    cut = solve(opts, 1234.5, 0, 200, node_limit=50)
    assert full.optimal
    if cut.feasible and not cut.optimal:
        assert cut.lower_bound <= full.cost_per_hour + 1e-9 <= cut.cost_per_hour + 1e-9


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=12))
def test_weights_sum_to_100_and_every_placed_class_gets_traffic(caps: list[float]) -> None:
    w = traffic_weights(caps)
    if sum(caps) <= 0:
        assert set(w) == {0}
        return
    assert sum(w) == 100
    for c, wi in zip(caps, w, strict=True):
        assert (wi > 0) == (c > 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.5, 1e4, allow_nan=False), min_size=1, max_size=4),
       st.integers(4, 12))
def test_weights_minimise_the_hottest_class(caps: list[float], total: int) -> None:
    w = traffic_weights(caps, total)

    def hottest(ws: tuple[int, ...]) -> float:
        return max(wi / c for wi, c in zip(ws, caps, strict=True))

    splits = [ws for ws in itertools.product(range(1, total + 1), repeat=len(caps))
              if sum(ws) == total]
    assert hottest(w) <= min(hottest(ws) for ws in splits) + 1e-12


def test_weights_exact_split() -> None:
    assert traffic_weights([3000.0, 1000.0, 0.0]) == (75, 25, 0)
    assert traffic_weights([1.0] * 120).count(1) == 100  # more classes than points


def point(b: int, p99: float, ips: float) -> LatencyPoint:
    return LatencyPoint(batch_size=b, p50_ms=p99 * 0.8, p99_ms=p99, throughput_ips=ips)


def test_profile_takes_the_best_batch_that_holds_the_slo_under_load() -> None:
    pts = [point(1, 2.0, 400), point(8, 6.0, 1200), point(32, 20.0, 1500)]
    prof = profile_from_points(pts, slo_ms=25, max_queue_delay_ms=2, max_batch=32)
    assert prof is not None
    assert prof.latency_b1_ms == 2.0
    assert prof.capacity_rps == 1200  # batch 32: 2 + 2 x 20 > 25
    assert profile_from_points(pts, 25, 2, max_batch=4).capacity_rps == 400  # type: ignore[union-attr]


def test_profile_when_only_batch_one_is_under_the_slo() -> None:
    prof = profile_from_points([point(1, 20.0, 50)], slo_ms=25, max_queue_delay_ms=2, max_batch=8)
    assert prof is not None and prof.capacity_rps == 25
    slow = profile_from_points([point(1, 30.0, 30)], slo_ms=25, max_queue_delay_ms=2, max_batch=8)
    assert slow is not None and slow.capacity_rps == 0 and slow.latency_b1_ms == 30


def test_solve_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        solve([], 1.0, 3, 2)
    assert math.isinf(solve([], 5.0, 0, 2).lower_bound)
