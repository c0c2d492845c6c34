"""One deployment's placement: classes, decisions, replicas, weights and cost, in one result.

:func:`plan_deployment` is what the operator and ``infleet plan`` call. Every class appears in
the plan, with the reason it gets replicas or does not; an infeasible plan places nothing
and says precisely why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from infleet.api import ClassStatus, InferenceDeploymentSpec
from infleet.scheduler.capacity import (
    ClassProfile,
    Option,
    Solution,
    max_capacity,
    solve,
    traffic_weights,
)
from infleet.scheduler.classes import NodeClass
from infleet.scheduler.policy import (
    ClassDecision,
    ClusterPolicy,
    ModelFacts,
    decide,
    most_specific,
)

# Exact by default: the branch and bound proves optimality within milliseconds on fleets of
# 50 classes (bench/bench_scheduler.py). A caller may trade a proven gap for time.
PLAN_REL_GAP = 0.0


@dataclass(frozen=True, slots=True)
class ClassPlan:
    node_class: NodeClass
    decision: ClassDecision
    profile: ClassProfile | None
    free_replicas: int
    """Replicas of this deployment that fit in the class's free allocatable resources."""
    unused_reason: str | None
    """Why the class cannot take replicas in this plan; None when it can."""
    replicas: int
    weight: int
    """Percent of traffic."""

    @property
    def name(self) -> str:
        return self.node_class.name

    @property
    def capacity_rps(self) -> float:
        return self.replicas * self.profile.capacity_rps if self.profile else 0.0

    @property
    def cost_per_hour(self) -> float:
        return self.replicas * self.decision.cost_per_hour


@dataclass(frozen=True, slots=True)
class Plan:
    deployment: str
    demand_rps: float | None
    target_rps: float
    """Capacity to provision: demand x (1 + headroom), capped by slo.maxThroughputRps."""
    headroom: float
    min_replicas: int
    max_replicas: int
    slo_ms: float
    classes: tuple[ClassPlan, ...]
    feasible: bool
    optimal: bool
    lower_bound: float
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def replicas(self) -> int:
        return sum(c.replicas for c in self.classes)

    @property
    def capacity_rps(self) -> float:
        return sum(c.capacity_rps for c in self.classes)

    @property
    def cost_per_hour(self) -> float:
        return sum(c.cost_per_hour for c in self.classes)

    def class_statuses(self) -> list[ClassStatus]:
        """What the operator writes to ``status.classes`` for this plan."""
        return [
            ClassStatus(
                name=c.name,
                nodes=c.node_class.usable_nodes,
                backend=c.decision.backend,
                reason=c.decision.reason
                + (f"; unused: {c.unused_reason}" if c.unused_reason and not
                   c.decision.excluded else ""),
                desired_replicas=c.replicas,
                weight=c.weight,
            )
            for c in self.classes
        ]


def _target(
    spec: InferenceDeploymentSpec, demand: float | None, notes: list[str]
) -> float:
    headroom = spec.scaling.headroom_fraction
    cap = spec.slo.max_throughput_rps
    if demand is None:
        if cap is not None:
            notes.append(f"no demand given: planning the fixed capacity maxThroughput={cap:g} rps")
            return cap
        notes.append("no demand given: planning minReplicas only")
        return 0.0
    target = demand * (1 + headroom)
    if cap is not None and target > cap:
        notes.append(
            f"target capped at slo.maxThroughput={cap:g} rps "
            f"(demand {demand:g} rps x {1 + headroom:g} headroom = {target:g} rps)"
        )
        return cap
    return target


def plan_deployment(
    classes: Sequence[NodeClass],
    spec: InferenceDeploymentSpec,
    *,
    name: str = "",
    demand_rps: float | None = None,
    profiles: Mapping[str, ClassProfile] = MappingProxyType({}),
    policy: ClusterPolicy | None = None,
    model: ModelFacts | None = None,
    rel_gap: float = PLAN_REL_GAP,
    best_effort: bool = False,
) -> Plan:
    """Plan ``spec`` on ``classes``. ``profiles`` is keyed by class selector (a class name or
    a dash-bounded prefix of one); the most specific selector wins. ``rel_gap`` is the cost
    fraction the search may leave unproven (0: exact); the plan reports the proven bound.
    ``best_effort`` (the operator): when the target cannot be placed, place the most capacity
    that can be, and say so in the notes, instead of nothing."""
    policy = policy or ClusterPolicy()
    notes: list[str] = []
    slo = spec.slo.latency_p99_ms
    target = _target(spec, demand_rps, notes)
    lo, hi = spec.scaling.min_replicas, spec.scaling.max_replicas
    if spec.replicas is not None:
        lo = hi = spec.replicas
        notes.append(f"replica count pinned by spec.replicas={spec.replicas}")

    decisions = [decide(c, spec, policy, model) for c in classes]
    entries: list[tuple[NodeClass, ClassDecision, ClassProfile | None, int, str | None]] = []
    options: list[Option] = []
    for cls, dec in zip(classes, decisions, strict=True):
        sel = most_specific(profiles, cls.name)
        prof = profiles[sel] if sel else None
        free = cls.replicas_that_fit(dec.replica) if not dec.excluded else 0
        why: str | None = None
        if dec.excluded:
            why = dec.exclusion
        elif prof is None:
            why = "no latency profile (build the engine or pass --profiles)"
        elif prof.latency_b1_ms > slo:
            why = f"batch-1 p99 {prof.latency_b1_ms:g} ms > SLO {slo:g} ms"
        elif prof.capacity_rps <= 0:
            why = f"no batch size holds the {slo:g} ms SLO under load"
        elif cls.usable_nodes == 0:
            why = "no ready, schedulable node"
        elif free == 0:
            why = f"no free room for a replica ({_req(dec)})"
        entries.append((cls, dec, prof, free, why))
        if why is None and prof is not None:
            options.append(Option(cls.name, prof.capacity_rps, dec.cost_per_hour, free))

    if options:
        sol = solve(options, target, lo, hi, rel_gap=rel_gap)
        if not sol.feasible and best_effort and target > 0:
            # Serve what can be served: the most capacity the bounds and free room allow.
            reach = max_capacity([o.capacity_rps for o in options],
                                 [min(o.max_replicas, hi) for o in options], hi)
            capped = solve(options, min(target, reach * (1 - 1e-9)), lo, hi, rel_gap=rel_gap)
            if capped.feasible:
                notes.append(f"best effort: {_fmt_rps(reach)} rps of the {_fmt_rps(target)} "
                             f"rps target fit ({'; '.join(sol.problems)})")
                sol = capped
    else:
        sol = Solution(False, (), 0.0, 0.0, True, float("inf"), ())
    problems = list(sol.problems)
    feasible = sol.feasible
    if not options and (target > 0 or lo > 0):
        problems = ["no class can serve this deployment: " + _why_none(entries)]
    elif not options:
        feasible = True
    if not feasible and options:
        unusable = [e for e in entries if e[4] is not None]
        if unusable:
            problems.append("classes not usable: " + _why_none(unusable))
    chosen = dict(zip((o.name for o in options), sol.replicas, strict=False)) if feasible else {}
    caps = [
        chosen.get(cls.name, 0) * (prof.capacity_rps if prof else 0.0)
        for cls, _, prof, _, _ in entries
    ]
    weights = traffic_weights(caps)
    plans = tuple(
        ClassPlan(cls, dec, prof, free, why, chosen.get(cls.name, 0), w)
        for (cls, dec, prof, free, why), w in zip(entries, weights, strict=True)
    )
    if feasible and demand_rps:
        for cp in plans:
            if cp.weight and cp.capacity_rps:
                load = demand_rps * cp.weight / 100 / cp.capacity_rps
                if load > 1 + 1e-9:
                    notes.append(
                        f"{cp.name}: whole-percent weights send it {load:.0%} of its capacity"
                    )
    if feasible and not sol.optimal:
        notes.append(
            f"cost proven within {sol.cost_per_hour - sol.lower_bound:.4g}/h "
            f"({(sol.cost_per_hour - sol.lower_bound) / sol.cost_per_hour:.2%}) of optimal"
        )
    return Plan(
        deployment=name,
        demand_rps=demand_rps,
        target_rps=target,
        headroom=spec.scaling.headroom_fraction,
        min_replicas=lo,
        max_replicas=hi,
        slo_ms=slo,
        classes=plans,
        feasible=feasible,
        optimal=sol.optimal,
        lower_bound=sol.lower_bound,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def _fmt_rps(x: float) -> str:
    return f"{x:,.0f}"


def _req(dec: ClassDecision) -> str:
    r = dec.replica
    out = f"needs {r.cpu_millis / 1000:g} CPU, {r.memory_bytes / 2**30:.1f} GiB"
    return out + (f", {r.gpus} GPU" if r.gpus else "")


def _why_none(
    entries: Sequence[tuple[NodeClass, ClassDecision, ClassProfile | None, int, str | None]],
) -> str:
    if not entries:
        return "the inventory has no nodes"
    return "; ".join(f"{cls.name}: {why}" for cls, _, _, _, why in entries)
