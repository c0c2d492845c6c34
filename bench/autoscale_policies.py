"""The autoscalers bench/autoscale_sim.py compares, each over the same simulated fleet.

- :class:`Infleet`: the real decision function (``infleet.scheduler.decide_scale``), fed by
  the real metrics reader (``observe_class`` over two rounds of the pods' counters) every
  ``interval_s``. As the operator does, it adds replicas at once and takes replicas away
  only while no new replica is still starting (old capacity shrinks after new is Ready).
- :class:`HpaCpu`: a HorizontalPodAutoscaler on CPU utilisation per class, with the
  controller's documented defaults: 15 s sync period, 10% tolerance, 80% target utilisation
  (autoscaling/v1's default), 300 s scale-down stabilization (the highest recommendation of
  the window), scale-up at most max(100%, 4 pods) per 15 s, scale-down at most 100% per
  15 s, pods not yet ready counted at 0% when scaling up. CPU utilisation is the engine's
  busy fraction over the sync period (metrics-server's lag is not modelled).
- :class:`KpaConcurrency`: Knative's KPA per class with its defaults: 2 s tick, stable
  window 60 s, panic window 6 s (10%), panic threshold 200%, target utilisation 70%, max
  scale-up rate 1000x, max scale-down rate 2x, panic ends after a stable window without a
  trigger. The per-pod concurrency target is what a load test of one pod shows at the
  highest load that holds the SLO (Knative's default of 100 would never scale these
  pods).

Each baseline runs one autoscaler per class with minReplicas 1 (neither can scale a class
to zero on its own) and maxReplicas the class's room; the router splits traffic by ready
capacity for every policy (the split infleet computes; the most favourable for the
baselines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from autoscale_fleet import Fleet, Pod

from infleet.scheduler.autoscale import (
    AutoscaleSettings,
    AutoscaleState,
    ClassInput,
    ScaleDecision,
    decide_scale,
)
from infleet.scheduler.capacity import ClassProfile, Option, solve
from infleet.scheduler.metrics import PodScrape, observe_class


def initial_mix(fleet: Fleet, profiles: list[ClassProfile], rate: float,
                headroom: float = 0.2) -> list[int]:
    """The cheapest mix for ``rate`` plus headroom: where every policy starts (warm), before
    the warm-up lets it settle to its own steady state."""
    options = [Option(c.name, p.capacity_rps, c.cost_per_hour, c.room)
               for c, p in zip(fleet.classes, profiles, strict=True)]
    sol = solve(options, rate * (1 + headroom), 1, sum(c.room for c in fleet.classes))
    return list(sol.replicas) if sol.feasible else [c.room for c in fleet.classes]


class Policy:
    name = ""
    interval_s = 1.0

    def start(self, fleet: Fleet, now: float, rate: float) -> None:
        raise NotImplementedError

    def tick(self, fleet: Fleet, now: float) -> None:
        raise NotImplementedError

    def capacities(self) -> list[float]:
        """Capacity per replica the router weighs each class's ready pods by."""
        raise NotImplementedError


def _ready(fleet: Fleet, c: int, now: float) -> list[Pod]:
    return [p for p in fleet.live(c) if p.ready(now)]


@dataclass
class Infleet(Policy):
    profiles: list[ClassProfile]
    settings: AutoscaleSettings
    interval_s: float = 5.0
    name: str = "infleet"
    state: AutoscaleState = field(default_factory=AutoscaleState)
    scrapes: dict[int, list[PodScrape]] = field(default_factory=dict)
    caps: list[float] = field(default_factory=list)
    decisions: list[ScaleDecision] = field(default_factory=list)
    last_t: float | None = None

    def start(self, fleet: Fleet, now: float, rate: float) -> None:
        self.caps = [p.capacity_rps for p in self.profiles]
        for c, n in enumerate(initial_mix(fleet, self.profiles, rate)):
            fleet.scale(c, n, now, warm=True)

    def tick(self, fleet: Fleet, now: float) -> None:
        inputs = []
        for c, cls in enumerate(fleet.classes):
            pods = _ready(fleet, c, now)
            scrapes = [PodScrape(f"pod-{p.uid}", now, p.metrics()) for p in pods]
            obs = observe_class(self.scrapes.get(c, []), scrapes, self.settings.slo_ms,
                                since=self.last_t)
            self.scrapes[c] = scrapes
            n = fleet.replicas(c)
            inputs.append(ClassInput(cls.name, self.profiles[c], cls.cost_per_hour, n,
                                     len(pods), max(0, cls.room - n), obs,
                                     startup_s=cls.startup_s))
        d = decide_scale(inputs, self.settings, self.state, now)
        self.last_t = now
        self.state = d.state
        self.decisions.append(d)
        self.caps = [cs.capacity_rps for cs in d.classes]
        starting = any(not p.ready(now) for p in fleet.pods if p.deleted_at is None)
        for c, cs in enumerate(d.classes):
            if cs.replicas > fleet.replicas(c) or not starting:
                fleet.scale(c, cs.replicas, now)

    def capacities(self) -> list[float]:
        return self.caps


@dataclass
class HpaCpu(Policy):
    profiles: list[ClassProfile]
    target: float = 0.8
    tolerance: float = 0.1
    stabilization_s: float = 300.0
    interval_s: float = 15.0
    name: str = "hpa-cpu"
    recs: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    seen: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Per pod: (time, busy seconds) at the last sync."""

    def start(self, fleet: Fleet, now: float, rate: float) -> None:
        for c, n in enumerate(initial_mix(fleet, self.profiles, rate)):
            fleet.scale(c, max(1, n), now, warm=True)

    def _util(self, p: Pod, now: float) -> float:
        t, busy = self.seen.get(p.uid, (max(p.ready_at, p.created), 0.0))
        self.seen[p.uid] = (now, p.busy_s)
        return min(1.0, (p.busy_s - busy) / (now - t)) if now > t else 0.0

    def tick(self, fleet: Fleet, now: float) -> None:
        for c, cls in enumerate(fleet.classes):
            current = fleet.replicas(c)
            ready = _ready(fleet, c, now)
            if not ready:
                continue
            utils = [self._util(p, now) for p in ready]
            unready = current - len(ready)
            ratio = sum(utils) / len(utils) / self.target
            if ratio > 1 + self.tolerance and unready > 0:
                # not-ready pods are taken at 0% when scaling up
                ratio2 = sum(utils) / (self.target * current)
                rec = current if ratio2 <= 1 + self.tolerance else math.ceil(ratio2 * current)
            elif abs(ratio - 1) <= self.tolerance:
                rec = current
            else:
                rec = math.ceil(ratio * len(ready))
            rec = min(max(rec, 1), cls.room)
            window = [(t, r) for t, r in self.recs.get(c, []) if now - t < self.stabilization_s]
            window.append((now, rec))
            self.recs[c] = window
            if rec > current:
                desired = min(rec, max(2 * current, current + 4))
            else:
                desired = min(current, max(r for _, r in window))  # 100% per period
            fleet.scale(c, max(1, min(desired, cls.room)), now)

    def capacities(self) -> list[float]:
        return [p.capacity_rps for p in self.profiles]


@dataclass
class KpaConcurrency(Policy):
    profiles: list[ClassProfile]
    targets: list[float]
    """Concurrency per pod (what a load test at the highest load holding the SLO shows)."""
    utilization: float = 0.7
    stable_s: float = 60.0
    panic_s: float = 6.0
    panic_threshold: float = 2.0
    max_up: float = 1000.0
    max_down: float = 2.0
    interval_s: float = 2.0
    name: str = "kpa-concurrency"
    series: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    last: dict[int, tuple[float, float]] = field(default_factory=dict)
    panic_since: dict[int, float | None] = field(default_factory=dict)
    max_panic: dict[int, int] = field(default_factory=dict)

    def start(self, fleet: Fleet, now: float, rate: float) -> None:
        for c, n in enumerate(initial_mix(fleet, self.profiles, rate)):
            fleet.scale(c, max(1, n), now, warm=True)

    def tick(self, fleet: Fleet, now: float) -> None:
        for c, cls in enumerate(fleet.classes):
            pods = fleet.live(c)
            inside = sum(p.inside_s for p in pods)
            t, before = self.last.get(c, (now - self.interval_s, inside))
            self.last[c] = (now, inside)
            conc = max(0.0, (inside - before) / (now - t)) if now > t else 0.0
            series = [(s, v) for s, v in self.series.get(c, []) if now - s < self.stable_s]
            series.append((now, conc))
            self.series[c] = series
            stable = sum(v for _, v in series) / len(series)
            recent = [v for s, v in series if now - s < self.panic_s]
            panic = sum(recent) / len(recent)
            per_pod = self.targets[c] * self.utilization
            ready = max(1, len(_ready(fleet, c, now)))
            want_stable = math.ceil(stable / per_pod)
            want_panic = math.ceil(panic / per_pod)
            since = self.panic_since.get(c)
            if panic / per_pod / ready >= self.panic_threshold:
                if since is None:
                    self.panic_since[c] = now
                    self.max_panic[c] = fleet.replicas(c)
                since = self.panic_since[c]
            elif since is not None and now - since >= self.stable_s:
                self.panic_since[c] = since = None
            if since is not None:
                desired = max(want_panic, self.max_panic.get(c, 0))
                self.max_panic[c] = desired
            else:
                desired = want_stable
            desired = min(desired, math.ceil(self.max_up * ready))
            desired = max(desired, math.floor(ready / self.max_down))
            fleet.scale(c, max(1, min(desired, cls.room)), now)

    def capacities(self) -> list[float]:
        return [p.capacity_rps for p in self.profiles]
