"""The simulated fleet of bench/autoscale_sim.py: pods, per-request queueing, batching as
`infleet serve` does it, routing by capacity, start-up delays, and the metrics each
autoscaler reads. No policy lives here.

Time moves in slices of ``dt`` seconds. In each slice every ready pod receives a Poisson
number of requests (the class's weighted share of the trace's rate, split evenly over its
ready pods), spread uniformly over the slice, and its engine runs them in time order:

- a request that finds ``max_queue`` requests waiting is refused (429; an SLO miss), and
  so is one whose expected time to run, the requests waiting ahead of it and its own at the
  pod's smoothed seconds per request of full batches, is over ``queue_wait_s``: the
  server's SLO-aware admission (``Batcher._admit``, ``--max-queue-wait-ms``, which the
  operator sets from the SLO);
- the engine runs one batch at a time (the server's default ``--batch-concurrency 1``);
  when it comes free it takes up to ``max_batch`` waiting requests in arrival order, and
  when it is idle a request that arrives starts at once, alone (the server's "start at
  once when no batch is running"; with one batch at a time the max queue delay never
  binds, because a partial batch only waits while another one runs);
- a batch of b requests takes a service time drawn from a lognormal distribution with the
  median and p99 the class's engine profile measured at batch b (linear in b between the
  measured sizes).

A request's latency is its completion minus its arrival. Each pod keeps the counters that
`infleet serve` exposes (requests by outcome, the latency histogram on the server's
buckets, queue depth, in flight), its busy time (CPU utilisation for HPA) and the time its
requests spent inside (concurrency for KPA).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from infleet.api import LatencyPoint
from infleet.runtime.server.batcher import ROW_SMOOTHING
from infleet.scheduler.metrics import Histogram, PodMetrics

# infleet serve's latency buckets (runtime-images/runtime/server/metrics.py, _LATENCY)
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BOUNDS = np.array(BUCKETS)
Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclass(frozen=True)
class SimClass:
    name: str
    cost_per_hour: float
    points: tuple[LatencyPoint, ...]
    startup_s: float
    room: int
    """Replicas that fit in the class's nodes."""
    source: str = ""

    @property
    def max_batch(self) -> int:
        return max(p.batch_size for p in self.points)


class ServiceTime:
    """Batch service times of one class, from its profile points."""

    def __init__(self, points: tuple[LatencyPoint, ...]) -> None:
        pts = sorted(points, key=lambda p: p.batch_size)
        self.sizes = np.array([p.batch_size for p in pts], dtype=float)
        self.p50 = np.array([p.p50_ms for p in pts]) / 1000
        self.p99 = np.maximum(np.array([p.p99_ms for p in pts]) / 1000, self.p50 * 1.0001)
        top = int(self.sizes[-1])
        b = np.arange(1, top + 1, dtype=float)
        med = np.interp(b, self.sizes, self.p50)
        hi = np.interp(b, self.sizes, self.p99)
        self.mu = np.concatenate([[0.0], np.log(med)])
        self.sigma = np.concatenate([[0.0], np.log(hi / med) / Z99])
        self.mean = np.exp(self.mu + self.sigma**2 / 2)
        self.top = top

        # plain lists: the serving loop indexes them once per batch
        self.mu_list: list[float] = self.mu.tolist()
        self.sigma_list: list[float] = self.sigma.tolist()

    def draw(self, b: int, rng: np.random.Generator) -> float:
        return float(np.exp(self.mu[b] + self.sigma[b] * rng.standard_normal()))


@dataclass
class Pod:
    cls: int
    created: float
    ready_at: float
    uid: int = 0
    """Unique in the fleet (a pod's name; ``id()`` is reused once a pod is gone)."""
    deleted_at: float | None = None
    queue: list[float] = field(default_factory=list)
    head: int = 0
    busy_until: float = 0.0
    running: int = 0
    # infleet serve's counters
    success: int = 0
    refused: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(BUCKETS) + 1))
    hist_sum: float = 0.0
    # what HPA and KPA read
    busy_s: float = 0.0
    inside_s: float = 0.0
    # the server's admission estimate: engine seconds per row, smoothed
    row_s: float = 0.0
    full_seen: bool = False

    def ready(self, now: float) -> bool:
        return self.deleted_at is None and now >= self.ready_at

    @property
    def depth(self) -> int:
        return len(self.queue) - self.head

    def metrics(self) -> PodMetrics:
        cumulative = tuple(float(x) for x in np.cumsum(self.hist))
        return PodMetrics(
            requests=MappingProxyType({"success": float(self.success),
                                       "overloaded": float(self.refused)}),
            latency=Histogram((*BUCKETS, math.inf), cumulative, self.hist_sum),
            queue_depth=float(self.depth),
            in_flight=float(self.depth + self.running),
            ready=True,
        )


@dataclass
class SliceResult:
    latencies: np.ndarray
    refused: int


class Fleet:
    """Pods of every class and the router in front of them."""

    def __init__(self, classes: list[SimClass], max_queue: int, rng: np.random.Generator,
                 max_batch: int, queue_wait_s: float | None = None) -> None:
        self.classes = classes
        self.service = [ServiceTime(c.points) for c in classes]
        self.max_batch = [min(max_batch, s.top) for s in self.service]
        self.max_queue = max_queue
        self.rng = rng
        self.pods: list[Pod] = []
        self.cost = 0.0  # replica-hours x cost
        self.serial = 0
        self.queue_wait_s = queue_wait_s
        self._z: list[float] = []
        self._zi = 0

    # --- scaling ------------------------------------------------------------------------

    def live(self, c: int) -> list[Pod]:
        return [p for p in self.pods if p.cls == c and p.deleted_at is None]

    def replicas(self, c: int) -> int:
        return len(self.live(c))

    def ready_count(self, c: int, now: float) -> int:
        return sum(1 for p in self.live(c) if p.ready(now))

    def scale(self, c: int, n: int, now: float, *, warm: bool = False) -> None:
        pods = self.live(c)
        if n > len(pods):
            delay = 0.0 if warm else self.classes[c].startup_s
            for _ in range(n - len(pods)):
                self.serial += 1
                self.pods.append(Pod(c, now, now + delay, busy_until=now + delay,
                                     uid=self.serial))
        elif n < len(pods):
            # like a ReplicaSet: pods not ready yet go first, then the newest
            for p in sorted(pods, key=lambda p: (p.ready(now), -p.created))[: len(pods) - n]:
                p.deleted_at = now

    # --- one slice ----------------------------------------------------------------------

    def run(self, t0: float, t1: float, rate: float, weights: list[float]) -> SliceResult:
        """Serve ``rate`` rps over [t0, t1), split over the classes by ``weights``."""
        dt = t1 - t0
        lat: list[np.ndarray] = []
        refused = 0
        total_w = sum(weights)
        for c in range(len(self.classes)):
            ready = [p for p in self.pods if p.cls == c and p.ready(t0)]
            share = weights[c] / total_w if total_w > 0 else 0.0
            if not ready:
                continue
            per_pod = rate * share * dt / len(ready)
            for p in ready:
                n = int(self.rng.poisson(per_pod)) if per_pod > 0 else 0
                arrivals = np.sort(self.rng.uniform(t0, t1, n)) if n else np.empty(0)
                got, r = self._serve(p, arrivals, t1)
                refused += r
                if len(got):
                    lat.append(got)
        # pods told to go finish what they hold, then leave
        for p in self.pods:
            if p.deleted_at is not None and (p.depth or p.busy_until > t0):
                got, _ = self._serve(p, np.empty(0), t1)
                if len(got):
                    lat.append(got)
        self.pods = [p for p in self.pods
                     if p.deleted_at is None or p.depth or p.busy_until > t1]
        for p in self.pods:
            if p.deleted_at is None:
                self.cost += self.classes[p.cls].cost_per_hour * dt / 3600
        everything = np.concatenate(lat) if lat else np.empty(0)
        return SliceResult(everything, refused)

    def _normals(self) -> list[float]:
        """Standard normal draws, fetched from the generator in blocks (one call per
        batch was most of the simulator's time)."""
        self._z = self.rng.standard_normal(1 << 16).tolist()
        self._zi = 0
        return self._z

    def _serve(self, p: Pod, arrivals: np.ndarray, t1: float) -> tuple[np.ndarray, int]:
        """Run the pod's engine over its queue and these arrivals until the first batch
        that would start at or after t1. Returns the latencies completed and refusals."""
        svc = self.service[p.cls]
        mu, sigma = svc.mu_list, svc.sigma_list
        top = self.max_batch[p.cls]
        limit = self.max_queue
        budget = self.queue_wait_s
        rs, seen = p.row_s, p.full_seen
        q = p.queue
        head = p.head
        f = p.busy_until
        arr = arrivals.tolist()
        i, n = 0, len(arr)
        out: list[float] = []
        refused = 0
        busy = 0.0
        z, zi = self._z, self._zi
        exp = math.exp
        while True:
            if i < n and arr[i] <= f:
                # everything that arrived while the engine ran: queued while there is room
                j = bisect_right(arr, f, i)
                cap = limit if budget is None or rs <= 0 else min(limit, max(1, int(budget / rs)))
                room = cap - (len(q) - head)
                if j - i > room:
                    if room > 0:
                        q.extend(arr[i:i + room])
                    refused += j - i - max(0, room)
                else:
                    q.extend(arr[i:j])
                i = j
            depth = len(q) - head
            if depth == 0:
                if i >= n:
                    break
                a = arr[i]  # the engine is idle: this request starts at once, alone
                f = max(f, a)
                q.append(a)
                i += 1
                depth = 1
            if f >= t1:
                break
            b = top if depth > top else depth
            if zi >= len(z):
                z = self._normals()
                zi = 0
            s = exp(mu[b] + sigma[b] * z[zi])
            zi += 1
            end = f + s
            for k in range(head, head + b):
                out.append(end - q[k])
            head += b
            busy += s
            # the server's estimate of its speed (Batcher._learn_speed): full batches only,
            # once one ran
            if b >= top and not seen:
                seen, rs = True, 0.0
            if b >= top or not seen:
                rs = s / b if rs <= 0 else rs + ROW_SMOOTHING * (s / b - rs)
            f = end
            if head > 4096:  # keep the list short
                del q[:head]
                head = 0
        self._zi = zi
        p.row_s, p.full_seen = rs, seen
        p.head = head
        p.busy_s += busy
        p.busy_until = f
        p.running = 0 if f <= t1 else 1
        p.refused += refused
        if out:
            got = np.array(out)
            p.success += len(got)
            p.hist += np.bincount(np.searchsorted(BOUNDS, got, side="left"),
                                  minlength=len(BUCKETS) + 1)
            p.hist_sum += float(got.sum())
            p.inside_s += float(got.sum())
            return got, refused
        return np.empty(0), refused
