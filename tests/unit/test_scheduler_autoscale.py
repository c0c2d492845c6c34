"""The SLO autoscaler's decision function: rules as examples, promises as properties."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from infleet.api import InferenceDeploymentSpec
from infleet.scheduler.autoscale import (
    AutoscaleSettings,
    AutoscaleState,
    ClassInput,
    ClassMemory,
    Mode,
    ScaleDecision,
    corrected,
    decide_scale,
)
from infleet.scheduler.capacity import ClassProfile, max_capacity
from infleet.scheduler.errors import AutoscaleStateError
from infleet.scheduler.metrics import ClassObservation

SLO = 50.0
TICK = 5.0
BASE = AutoscaleSettings(slo_ms=SLO, min_replicas=1, max_replicas=40, max_batch=16)


def obs(rate: float, p99: float | None = 20.0, *, pods: int = 1, unknown: int = 0,
        queue: float = 0.0, refused: float = 0.0, window: float = TICK) -> ClassObservation:
    return ClassObservation(
        rate_rps=rate,
        success_rps=rate - refused,
        refused_rps=refused,
        error_rps=0.0,
        p99_ms=p99,
        requests=rate * window * pods / max(1, pods + unknown) if rate else 0.0,
        queue_depth=queue,
        in_flight=0.0,
        window_s=window,
        pods_known=pods,
        pods_unknown=unknown,
    )


def cpu(replicas: int = 0, free: int = 16, o: ClassObservation | None = None,
        ready: int | None = None, name: str = "x86") -> ClassInput:
    return ClassInput(name, ClassProfile(100.0, 10.0), 0.085, replicas,
                      replicas if ready is None else ready, free, o)


def gpu(replicas: int = 0, free: int = 4, o: ClassObservation | None = None,
        ready: int | None = None) -> ClassInput:
    return ClassInput("gpu", ClassProfile(5000.0, 1.0), 12.3, replicas,
                      replicas if ready is None else ready, free, o)


class Fleet:
    """Replays a demand trace through decide_scale, with pods ready at once and the load
    split by the decision's weights (what the operator and the router do)."""

    def __init__(self, classes: list[ClassInput], s: AutoscaleSettings = BASE) -> None:
        self.classes = classes
        self.settings = s
        self.state = AutoscaleState()
        self.t = 0.0
        self.decisions: list[ScaleDecision] = []

    def tick(self, demand: float, p99: float = 20.0) -> ScaleDecision:
        """One tick at ``demand`` rps; a class loaded beyond its profile's capacity shows
        a p99 of four times the SLO (the profiles are the truth here)."""
        self.t += TICK
        total = sum(c.replicas * (c.profile.capacity_rps if c.profile else 0)
                    for c in self.classes)
        inputs = []
        for c in self.classes:
            share = (c.replicas * c.profile.capacity_rps / total) if total and c.profile else 0
            o = None
            if c.replicas and c.profile:
                over = demand * share / c.replicas > c.profile.capacity_rps
                o = obs(demand * share, 4 * SLO if over else p99, pods=c.replicas)
            inputs.append(ClassInput(c.name, c.profile, c.cost_per_hour, c.replicas,
                                     c.replicas, c.free_replicas, o))
        d = decide_scale(inputs, self.settings, self.state, self.t)
        self.state = d.state
        self.classes = [
            ClassInput(c.name, c.profile, c.cost_per_hour, s.replicas, s.replicas,
                       c.free_replicas + c.replicas - s.replicas)
            for c, s in zip(inputs, d.classes, strict=True)
        ]
        self.decisions.append(d)
        return d


def mix(d: ScaleDecision) -> tuple[int, ...]:
    return tuple(c.replicas for c in d.classes)


# --- examples of each rule -----------------------------------------------------------------

def test_cheaper_class_filled_first_when_it_holds_the_slo() -> None:
    # CPU: 0.085/h for 100 rps; GPU: 12.3/h for 5000 rps. 1,000 rps with headroom, and the
    # 5% band above it that a scale-up provisions: 1,050 rps, CPU only.
    d = decide_scale([cpu(9, o=obs(1000 / 1.2, pods=9)), gpu()], BASE, AutoscaleState(), 0.0)
    assert d.mode is Mode.SCALE_UP
    assert d.replicas == {"x86": 11, "gpu": 0}
    assert d.weights == {"x86": 100, "gpu": 0}


def test_gpu_only_once_the_cheap_class_is_full() -> None:
    # 2,500 rps served by one GPU replica: with room for 10 CPU replicas the GPU stays ...
    d = decide_scale([cpu(0, free=10), gpu(1, o=obs(2500))], BASE, AutoscaleState(), 0.0)
    assert d.mode is Mode.HOLD and d.replicas == {"x86": 0, "gpu": 1}
    # ... with room for more, the cheaper mix takes over (no scale-up happened recently):
    # 3,000 rps + the 5% band against flapping = 32 CPU replicas
    d = decide_scale([cpu(0, free=39), gpu(1, o=obs(2500))], BASE, AutoscaleState(), 0.0)
    assert d.mode is Mode.SCALE_DOWN and d.replicas == {"x86": 32, "gpu": 0}


def test_faster_classes_bridge_the_start_up_of_a_slow_one() -> None:
    # 3,000 rps needs the GPU; its pod takes 40 s, the CPU pods 10 s: fill the CPU room too
    c = ClassInput("x86", ClassProfile(100.0, 10.0), 0.085, 5, 5, 15,
                   obs(2500, p99=400.0, pods=5), startup_s=10)
    g = ClassInput("gpu", ClassProfile(5000.0, 1.0), 12.3, 0, 0, 4, startup_s=40)
    d = decide_scale([c, g], BASE, AutoscaleState(), 0.0)
    assert d.replicas == {"x86": 20, "gpu": 1}
    assert "bridging the start-up of the slower replicas with x86 +15" in d.reason
    # without start-up times nothing bridges
    d = decide_scale([replace(c, startup_s=0), replace(g, startup_s=0)], BASE,
                     AutoscaleState(), 0.0)
    assert d.replicas == {"x86": 5, "gpu": 1}


def test_cheap_capacity_is_held_in_reserve_for_a_burst() -> None:
    # The CPU costs a third of the GPU per request here: cheap with a share of 0.5. 200 rps
    # (a target of 240) holds CPU replicas for four times the demand, 800 rps, plus the 5%
    # band of a scale-up: 9 replicas where the target alone needs 3; the GPU holds none
    cheap = replace(BASE, reserve_cost_share=0.5)
    d = decide_scale([cpu(3, free=13, o=obs(200, pods=3)), gpu()], cheap, AutoscaleState(), 0.0)
    assert d.mode is Mode.SCALE_UP and d.replicas == {"x86": 9, "gpu": 0}
    assert "cheap replicas held for 4x the demand: x86 9" in d.reason
    assert decide_scale([cpu(3, free=13, o=obs(200, pods=3)), gpu()], BASE, AutoscaleState(),
                        0.0).replicas == {"x86": 3, "gpu": 0}  # not cheap at the default 0.1
    # a fleet of one price holds no reserve
    one = decide_scale([cpu(3, free=13, o=obs(200, pods=3))], cheap, AutoscaleState(), 0.0)
    assert one.mode is Mode.HOLD and one.replicas == {"x86": 3}


def test_the_reserve_yields_to_the_target_within_max_replicas() -> None:
    # maxReplicas 4 cannot hold the reserve and 1,000 rps both: the target comes first
    s = replace(BASE, reserve_cost_share=0.5, max_replicas=4)
    d = decide_scale([cpu(2, free=14, o=obs(1000, p99=20.0, pods=2)), gpu()], s,
                     AutoscaleState(), 0.0)
    assert d.replicas["gpu"] >= 1 and sum(d.replicas.values()) <= 4
    assert d.capacity_rps >= d.inputs.target_rps


def test_class_that_cannot_meet_the_slo_at_batch_1_is_unused() -> None:
    slow = ClassInput("slow", ClassProfile(1000.0, SLO * 2), 0.01, 0, 0, 10)
    d = decide_scale([slow, cpu(1, o=obs(150))], BASE, AutoscaleState(), 0.0)
    assert d.replicas["slow"] == 0
    assert "batch-1 p99" in d.classes[0].note


def test_panic_on_slo_breach_scales_up_at_once() -> None:
    s = AutoscaleState()
    f = Fleet([cpu(2)])
    for _ in range(20):  # settle at 2 replicas for 150 rps
        f.tick(150)
    assert mix(f.decisions[-1]) == (2,)
    # same rate, p99 over the SLO at 75% of capacity and a queue: not a demand change
    breach = cpu(2, o=obs(150, p99=120.0, pods=2, queue=40))
    d = decide_scale([breach], BASE, f.state, f.t + TICK)
    assert d.mode is Mode.PANIC
    assert d.replicas["x86"] > 2
    assert "p99 120 ms > SLO 50 ms" in d.reason
    assert d.inputs.panic
    del s


def test_panic_on_refusals_and_on_a_growing_queue() -> None:
    d = decide_scale([cpu(2, o=obs(190, p99=30.0, pods=2, refused=5))], BASE, AutoscaleState(),
                     0.0)
    assert d.mode is Mode.PANIC and "refused" in d.reason
    first = decide_scale([cpu(2, o=obs(150, p99=30, pods=2, queue=20))], BASE,
                         AutoscaleState(), 0.0)
    assert first.mode is Mode.HOLD  # 10 waiting per pod: less than a batch
    grown = decide_scale([cpu(2, o=obs(150, p99=30, pods=2, queue=80))], BASE, first.state,
                         TICK)
    assert grown.mode is Mode.PANIC and "queue 80 and growing" in grown.reason
    assert grown.replicas["x86"] > first.replicas["x86"]


def test_a_breach_at_low_load_is_not_a_capacity_problem() -> None:
    d = decide_scale([cpu(4, o=obs(60, p99=90.0, pods=4))], BASE, AutoscaleState(), 0.0)
    assert d.mode is not Mode.PANIC and not d.inputs.panic


def test_scale_down_only_after_the_stabilization_window() -> None:
    f = Fleet([cpu(1)])
    for _ in range(20):
        f.tick(800)
    high = mix(f.decisions[-1])
    assert high == (11,)  # 960 rps + the 5% band
    dropped_at = f.t
    # the smoothed demand falls over the stable window; then the window of targets holds
    while f.t - dropped_at < BASE.stabilization_s - TICK:
        d = f.tick(100)
        assert mix(d) == high, (f.t - dropped_at, d.reason)
    while f.t - dropped_at < BASE.stabilization_s + BASE.stable_window_s + TICK:
        d = f.tick(100)
    assert mix(d) == (2,)
    assert all(x.mode in (Mode.HOLD, Mode.SCALE_DOWN) for x in f.decisions[-20:])


def test_unknown_pods_are_never_zero_load() -> None:
    f = Fleet([cpu(1)])
    for _ in range(70):
        f.tick(800)
    state = f.state
    # half the pods did not answer: the class's rate is extrapolated inside the observation
    # (observe_class); a class with no answer at all is extrapolated from the others ...
    a = ClassInput("a", ClassProfile(100.0, 10.0), 0.085, 5, 5, 10, obs(400, pods=5))
    b = ClassInput("b", ClassProfile(100.0, 10.0), 0.085, 5, 5, 10, None)
    d = decide_scale([a, b], BASE, state, f.t + TICK)
    assert d.inputs.demand_now_rps == pytest.approx(800)
    assert "did not answer" in d.reason
    assert sum(d.replicas.values()) >= 10
    # ... and with nothing answering, every replica is kept
    blind = decide_scale([ClassInput("a", ClassProfile(100.0, 10.0), 0.085, 10, 10, 10, None)],
                         BASE, state, f.t + 2 * TICK)
    assert blind.mode is Mode.BLIND and blind.replicas == {"a": 10}
    assert "unknown, not zero" in blind.reason


def test_min_max_and_free_room_respected_when_demand_is_too_high() -> None:
    s = AutoscaleSettings(slo_ms=SLO, min_replicas=2, max_replicas=6)
    hot = obs(5000, p99=400.0, pods=2)
    d = decide_scale([cpu(2, free=3, o=hot)], s, AutoscaleState(), 0.0)
    assert d.mode is Mode.INFEASIBLE and not d.feasible
    assert d.replicas == {"x86": 5}  # all that fits
    d = decide_scale([cpu(2, free=30, o=hot)], s, AutoscaleState(), 0.0)
    assert d.replicas == {"x86": 6}  # maxReplicas
    assert "at most 600 rps can be placed" in d.reason


def test_pinned_replicas_fix_both_bounds() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {"model": {"uri": "file:///m.onnx"}, "slo": {"latencyP99Ms": 25}, "replicas": 3,
         "scaling": {"minReplicas": 1, "maxReplicas": 10}})
    s = AutoscaleSettings.from_spec(spec)
    assert (s.min_replicas, s.max_replicas, s.slo_ms) == (3, 3, 25)
    d = decide_scale([cpu(1, o=obs(10))], s, AutoscaleState(), 0.0)
    assert d.replicas == {"x86": 3}


def test_every_decision_says_why_with_its_inputs() -> None:
    d = decide_scale([cpu(5, o=obs(500, pods=5)), gpu()], BASE, AutoscaleState(), 0.0)
    assert d.reason.startswith("scaling up: demand 500 rps")
    assert "target 600 rps with 20% headroom" in d.reason
    assert "x86 5->7" in d.reason  # 600 rps + the 5% band
    assert d.inputs.demand_now_rps == 500 and d.inputs.target_rps == pytest.approx(600)
    assert d.changed and d.classes[0].observed_rps == 500


def test_weights_follow_ready_capacity() -> None:
    d = decide_scale([cpu(4, o=obs(300, pods=4)), gpu(1, ready=0)], BASE, AutoscaleState(), 0.0)
    assert d.weights == {"x86": 100, "gpu": 0}  # the GPU replica is not ready yet


# --- the capacity correction ---------------------------------------------------------------

def test_correction_lowers_capacity_after_a_breach_under_load_and_raises_it_after_success() -> None:
    c = cpu(2, o=obs(160, p99=90.0, pods=2))  # 80 per replica broke the SLO (profile: 100)
    k, note, broke = corrected(ClassMemory(), c, BASE)
    assert k < 1 and "lowered" in note and broke == 80
    c = cpu(2, o=obs(300, p99=30.0, pods=2))  # 150 per replica held it
    k, note, _ = corrected(ClassMemory(), c, BASE)
    assert k > 1 and "raised" in note
    few = cpu(1, o=ClassObservation(90, 90, 0, 0, 200.0, 10, 0, 0, TICK, 1, 0))
    assert corrected(ClassMemory(), few, BASE)[0] == 1.0  # 10 requests: p99 is noise


def test_a_saturated_class_is_planned_at_what_it_answered_not_what_it_was_asked() -> None:
    # 2 replicas asked for 200 rps each answer 70 each and refuse the rest: from the first
    # tick of the overload they count at no more than 0.95 x 70, whatever the profile says
    # (100), so the scale-up covers the demand at once instead of a tick per correction step
    saturated = cpu(2, o=obs(400, p99=45.0, pods=2, refused=260))
    k, note, carried = corrected(ClassMemory(), saturated, BASE)
    assert carried == pytest.approx(70) and k < 1 and "carrying 70 rps" in note
    d = decide_scale([saturated], BASE, AutoscaleState(), 0.0)
    assert d.mode is Mode.PANIC and "refused" in d.reason
    assert d.replicas["x86"] >= math.ceil((1 + BASE.headroom) * 400 / (0.95 * 70))
    assert d.capacity_rps >= (1 + BASE.headroom) * 400
    # asked for no more than it answered, the same breach keeps the profile's figure
    slow = cpu(2, o=obs(140, p99=120.0, pods=2))
    assert corrected(ClassMemory(), slow, BASE)[0] == pytest.approx(
        (1 - BASE.correction_step) + BASE.correction_step * 0.95 * 70 / 100)


@given(st.lists(st.tuples(st.floats(0, 1e5), st.one_of(st.none(), st.floats(0.1, 1e4)),
                          st.floats(0, 1e3), st.integers(1, 20)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_correction_stays_within_its_bounds(steps: list[tuple[float, float | None, float,
                                                              int]]) -> None:
    memory = ClassMemory()
    for rate, p99, refused, pods in steps:
        c = cpu(pods, o=obs(rate, p99, pods=pods, refused=min(refused, rate)))
        k, _, _ = corrected(memory, c, BASE)
        assert BASE.correction_floor <= k <= BASE.correction_ceiling
        memory = ClassMemory(k)


# --- properties ----------------------------------------------------------------------------

profiles = st.builds(
    ClassProfile,
    capacity_rps=st.floats(5, 5000),
    latency_b1_ms=st.floats(0.5, SLO),
)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[ClassInput], AutoscaleSettings]:
    n = draw(st.integers(1, 4))
    classes = [
        ClassInput(f"c{i}", draw(profiles), draw(st.floats(0.01, 20)), 0, 0,
                   draw(st.integers(0, 12)))
        for i in range(n)
    ]
    lo = draw(st.integers(0, 3))
    hi = draw(st.integers(max(1, lo), 30))
    return classes, AutoscaleSettings(slo_ms=SLO, min_replicas=lo, max_replicas=hi)


def with_demand(classes: list[ClassInput], demand: float) -> list[ClassInput]:
    """Demand seen on the first class as if it were serving it (one ready replica)."""
    first = classes[0]
    seen = ClassInput(first.name, first.profile, first.cost_per_hour, 0, 1,
                      first.free_replicas, obs(demand, 10.0))
    return [seen, *classes[1:]]


@given(fleets(), st.floats(0, 50_000), st.floats(0, 50_000))
@settings(max_examples=200, deadline=None)
def test_cost_is_monotone_in_demand(fleet: tuple[list[ClassInput], AutoscaleSettings],
                                    d1: float, d2: float) -> None:
    classes, s = fleet
    lo, hi = sorted((d1, d2))
    a = decide_scale(with_demand(classes, lo), s, AutoscaleState(), 0.0)
    b = decide_scale(with_demand(classes, hi), s, AutoscaleState(), 0.0)
    if a.feasible and b.feasible:
        assert a.cost_per_hour <= b.cost_per_hour + 1e-9
    if b.feasible:
        assert b.capacity_rps >= b.inputs.target_rps - 1e-9 * max(1.0, b.inputs.target_rps)
    if not b.feasible and a.feasible:
        assert a.capacity_rps <= b.capacity_rps + 1e-6  # best effort holds the most


@given(st.floats(0, 5000), st.floats(0, 5000), st.integers(0, 10), st.integers(0, 20))
@settings(max_examples=200, deadline=None)
def test_one_class_capacity_is_monotone_in_demand(d1: float, d2: float, running: int,
                                                  free: int) -> None:
    lo, hi = sorted((d1, d2))
    s = AutoscaleSettings(slo_ms=SLO, min_replicas=0, max_replicas=40)
    cap = [
        decide_scale([cpu(running, free, obs(d, pods=max(running, 1)), ready=max(running, 1))],
                     s, AutoscaleState(), 0.0).replicas["x86"]
        for d in (lo, hi)
    ]
    assert cap[0] <= cap[1]


@given(fleets(), st.lists(st.floats(0, 50_000), min_size=1, max_size=30))
@settings(max_examples=150, deadline=None)
def test_never_above_max_or_free_never_below_min(
    fleet: tuple[list[ClassInput], AutoscaleSettings], trace: list[float]
) -> None:
    classes, s = fleet
    f = Fleet(classes, s)
    room = {c.name: c.free_replicas for c in classes}
    for demand in trace:
        d = f.tick(demand)
        total = sum(d.replicas.values())
        assert total <= s.max_replicas
        for c in d.classes:
            assert c.replicas <= room[c.name]
        if sum(room.values()) >= s.min_replicas and any(
            c.profile and c.profile.latency_b1_ms <= SLO for c in classes
        ):
            assert total >= s.min_replicas, d.reason
        assert sum(c.weight for c in d.classes) in (0, 100)


def fits(classes: list[ClassInput], s: AutoscaleSettings, demand: float) -> bool:
    """The fleet holds the demand with headroom and the band (no best-effort regime)."""
    usable = [c for c in classes if c.profile and c.profile.latency_b1_ms <= SLO]
    reach = max_capacity([c.profile.capacity_rps for c in usable if c.profile],
                         [c.free_replicas for c in usable], s.max_replicas)
    return demand * (1 + s.headroom) * (1 + s.scale_down_tolerance) * 1.05 <= reach


@given(fleets(), st.floats(1, 20_000))
@settings(max_examples=100, deadline=None)
def test_a_steady_load_gives_a_constant_mix_after_warm_up(
    fleet: tuple[list[ClassInput], AutoscaleSettings], demand: float
) -> None:
    """Warm-up: the scale-ups, then (a stabilization window later) at most one move to the
    cheapest mix for the target; from then on nothing changes."""
    classes, s = fleet
    assume(fits(classes, s, demand))
    f = Fleet(classes, s)
    warm_up = 2 * int((s.stabilization_s + s.stable_window_s) / TICK) + 2
    for _ in range(warm_up):
        f.tick(demand)
    settled = mix(f.decisions[-1])
    for _ in range(warm_up):
        d = f.tick(demand)
        assert mix(d) == settled, d.reason


@given(fleets(), st.floats(1, 20_000), st.floats(0, 0.03), st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_a_noisy_steady_load_does_not_oscillate(
    fleet: tuple[list[ClassInput], AutoscaleSettings], demand: float, noise: float, rnd
) -> None:
    """With up to 3% noise per window, after the warm-up the mix changes at most once (the
    window's highest target moving within the noise), and never goes back."""
    classes, s = fleet
    assume(fits(classes, s, demand))
    f = Fleet(classes, s)
    warm_up = 2 * int((s.stabilization_s + s.stable_window_s) / TICK) + 2
    for _ in range(warm_up):
        f.tick(demand * (1 + rnd.uniform(-noise, noise)))
    seen = [mix(f.decisions[-1])]
    for _ in range(2 * warm_up):
        d = f.tick(demand * (1 + rnd.uniform(-noise, noise)))
        if mix(d) != seen[-1]:
            assert mix(d) not in seen, f"went back to an earlier mix: {d.reason}"
            seen.append(mix(d))
    assert len(seen) <= 2, seen


@given(fleets(), st.lists(st.floats(0, 20_000), min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_state_survives_json(fleet: tuple[list[ClassInput], AutoscaleSettings],
                             trace: list[float]) -> None:
    classes, s = fleet
    f = Fleet(classes, s)
    g = Fleet(classes, s)
    for demand in trace:
        a = f.tick(demand)
        g.state = AutoscaleState.from_json(g.state.to_json())  # a restarted operator
        b = g.tick(demand)
        assert mix(a) == mix(b) and a.reason == b.reason


def test_state_json_refuses_bad_input_with_a_clear_error() -> None:
    with pytest.raises(AutoscaleStateError, match="Invalid JSON"):
        AutoscaleState.from_json("{")
    with pytest.raises(AutoscaleStateError, match="version 9"):
        AutoscaleState.from_json(json.dumps({"version": 9}))
    with pytest.raises(AutoscaleStateError, match=r"classes\.x\.correction"):
        AutoscaleState.from_json(json.dumps({"version": 1, "classes": {"x": {"correction": -1}}}))
    with pytest.raises(AutoscaleStateError, match="demand"):
        AutoscaleState.from_json(json.dumps({"version": 1, "demand": [[1.0, math.inf]]}))


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="SLO"):
        AutoscaleSettings(slo_ms=0)
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscaleSettings(slo_ms=1, min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="unique"):
        decide_scale([cpu(), cpu()], BASE, AutoscaleState(), 0.0)
