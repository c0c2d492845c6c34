"""What the serving pods' metrics say about a class, from their Prometheus text (pure).

``infleet serve`` exposes cumulative counters and histograms at ``/metrics``
(:mod:`infleet.runtime.server.metrics`). One scrape says nothing about load; two scrapes of
the same pod do: the differences of their counters over the time between them. This module
turns the text of one scrape into a :class:`PodMetrics` (:func:`parse_exposition`), and the
scrapes of a class's pods at the start and the end of a window into one
:class:`ClassObservation` (:func:`observe_class`): request rate, p99 latency from the
summed histogram buckets (Prometheus' ``histogram_quantile`` rule), refusals, server errors,
queue depth and requests in flight. The autoscaler (:mod:`infleet.scheduler.autoscale`)
decides from observations only, never from the text.

A pod that did not answer is *unknown*, never idle: it is counted in ``pods_unknown``, and
the class's rate is extrapolated from the pods that did answer (the router gives every pod of
a class the same share), so a scrape failure can never look like a drop in load.

Fetching is not done here (no I/O at import or anywhere): see
:mod:`infleet.operator.metrics_source`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from types import MappingProxyType

from infleet.scheduler.errors import MetricsError

# The names infleet serve exposes (runtime-images/runtime/server/metrics.py; a unit test
# keeps them in step). The parser reports a counter's family without its `_total`.
REQUESTS = "infleet_serve_requests"
LATENCY = "infleet_serve_request_duration_seconds"
QUEUE_DEPTH = "infleet_serve_queue_depth_requests"
IN_FLIGHT = "infleet_serve_requests_in_flight"
READY = "infleet_serve_ready"
MODEL_LOAD = "infleet_serve_model_load_duration_seconds"

# Values of the `outcome` label. Requests the client got wrong (a bad tensor, an unknown
# model, a body over the cap) cost no engine time, so they are not demand; refusals
# (queue full, draining) are demand the class could not take.
SUCCESS = "success"
REFUSED = frozenset({"overloaded", "unavailable"})
SERVER_ERROR = "server_error"
CLIENT_SIDE = frozenset({"client_error", "not_found", "too_large"})


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative Prometheus histogram: counts of observations <= each upper bound."""

    bounds: tuple[float, ...]
    """Upper bounds, ascending; the last is +Inf."""
    counts: tuple[float, ...]
    """Cumulative counts per bound (non-decreasing; the last is the total count)."""
    sum: float = 0.0

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.counts) or not self.bounds:
            raise MetricsError("a histogram needs one cumulative count per bucket bound")
        if self.bounds[-1] != math.inf:
            raise MetricsError("a histogram's last bucket must be +Inf")
        if any(b <= a for a, b in pairwise(self.bounds)):
            raise MetricsError("histogram bucket bounds must be strictly ascending")

    @property
    def count(self) -> float:
        return self.counts[-1]

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Histogram:
        return cls(tuple(bounds), tuple(0.0 for _ in bounds))

    def since(self, earlier: Histogram) -> Histogram:
        """Observations made after ``earlier`` (a scrape of the same series). A count lower
        than before means the process restarted and its counters began again from zero:
        then the whole of this histogram is new (Prometheus' ``rate`` rule)."""
        if earlier.count == 0 or self.count == 0:
            return self  # an empty series has no buckets to agree on yet
        if earlier.bounds != self.bounds:
            raise MetricsError("histogram buckets changed between two scrapes of one pod")
        if any(now < then for now, then in zip(self.counts, earlier.counts, strict=True)):
            return self
        counts = tuple(now - then for now, then in zip(self.counts, earlier.counts, strict=True))
        return Histogram(self.bounds, counts, max(0.0, self.sum - earlier.sum))

    def plus(self, other: Histogram) -> Histogram:
        if other.count == 0 and other.sum == 0:
            return self
        if self.count == 0 and self.sum == 0:
            return other
        if other.bounds != self.bounds:
            raise MetricsError("cannot add histograms with different buckets")
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return Histogram(self.bounds, counts, self.sum + other.sum)

    def quantile(self, q: float) -> float | None:
        """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket that
        holds rank ``q x count`` (the first bucket from 0); a rank in the +Inf bucket answers
        the highest finite bound. None without observations."""
        if not 0 <= q <= 1:
            raise ValueError("a quantile lies between 0 and 1")
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count >= rank:
                if bound == math.inf:
                    return self.bounds[-2] if len(self.bounds) > 1 else None
                in_bucket = count - lower_count
                if in_bucket <= 0:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
            lower_bound, lower_count = bound, count
        return self.bounds[-2] if len(self.bounds) > 1 else None

    def share_within(self, limit: float) -> float | None:
        """The fraction of observations at or under ``limit``, interpolated inside its
        bucket like :meth:`quantile` (None without observations)."""
        total = self.count
        if total <= 0:
            return None
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if limit <= bound:
                if bound == math.inf:
                    return lower_count / total
                frac = (limit - lower_bound) / (bound - lower_bound)
                return (lower_count + frac * (count - lower_count)) / total
            lower_bound, lower_count = bound, count
        return 1.0


@dataclass(frozen=True, slots=True)
class PodMetrics:
    """One scrape of one pod, for one served model: cumulative values and gauges."""

    requests: Mapping[str, float]
    """Requests answered so far, by outcome."""
    latency: Histogram
    """Request duration in seconds (every outcome)."""
    queue_depth: float
    """Requests waiting in the model's batch queue now."""
    in_flight: float
    """Inference requests in the server now (every model)."""
    ready: bool

    def count(self, outcomes: frozenset[str] | None = None) -> float:
        """Requests of these outcomes (all but the client's own mistakes when None)."""
        if outcomes is None:
            return sum(v for k, v in self.requests.items() if k not in CLIENT_SIDE)
        return sum(v for k, v in self.requests.items() if k in outcomes)


def _number(value: float, what: str) -> float:
    if math.isnan(value) or value < 0:
        raise MetricsError(f"{what} is {value}, not a count")
    return value


def parse_exposition(text: str, model: str) -> PodMetrics:
    """The values of ``model`` in the Prometheus text exposition of ``infleet serve``.

    Raises :class:`MetricsError` naming the problem when the text is not an exposition or
    does not serve ``model`` (neither its latency histogram nor its load time is there; a
    loaded model that has not been asked yet has only the load time, and reads as idle).
    """
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    latency_sum = 0.0
    queue_depth = 0.0
    in_flight = 0.0
    ready = False
    seen_latency = loaded = False
    # imported here: `infleet serve` must choose prometheus_client's multiprocess mode
    # before anything imports it, and the CLI imports the scheduler
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, IndexError, TypeError) as e:
        raise MetricsError(f"not a Prometheus text exposition: {e}") from e
    for family in families:
        for s in family.samples:
            labels = s.labels
            if family.name == IN_FLIGHT:
                in_flight = _number(s.value, IN_FLIGHT)
            elif family.name == READY:
                ready = s.value >= 1
            elif labels.get("model") != model:
                continue
            elif family.name == REQUESTS and s.name == REQUESTS + "_total":
                outcome = labels.get("outcome", "")
                requests[outcome] = requests.get(outcome, 0.0) + _number(s.value, s.name)
            elif family.name == LATENCY:
                seen_latency = True
                if s.name == LATENCY + "_bucket":
                    try:
                        bound = float(labels["le"])
                    except (KeyError, ValueError) as e:
                        raise MetricsError(f"{s.name} without a numeric `le` label") from e
                    buckets[bound] = _number(s.value, s.name)
                elif s.name == LATENCY + "_sum":
                    latency_sum = s.value
            elif family.name == QUEUE_DEPTH:
                queue_depth = _number(s.value, QUEUE_DEPTH)
            elif family.name == MODEL_LOAD:
                loaded = True
    if not seen_latency or not buckets:
        if not loaded:
            raise MetricsError(
                f"no {LATENCY} or {MODEL_LOAD} series for model {model!r}: "
                "the server does not serve it"
            )
        # loaded, not asked yet: the server creates a model's series at its first request
        buckets = {math.inf: 0.0}
    bounds = tuple(sorted(buckets))
    counts = tuple(buckets[b] for b in bounds)
    if any(b < a for a, b in pairwise(counts)):
        raise MetricsError(f"{LATENCY} buckets are not cumulative")
    return PodMetrics(
        requests=MappingProxyType(requests),
        latency=Histogram(bounds, counts, latency_sum),
        queue_depth=queue_depth,
        in_flight=in_flight,
        ready=ready,
    )


@dataclass(frozen=True, slots=True)
class PodScrape:
    """One attempt to read one pod: its metrics, or why there are none (unknown load)."""

    pod: str
    at: float
    """When the answer came, in seconds on the caller's clock (monotonic is best)."""
    metrics: PodMetrics | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ClassObservation:
    """A class's load over one window, from its pods' scrapes at both ends."""

    rate_rps: float
    """Demand: requests per second that wanted the engine (success, refused, server
    errors), extrapolated over pods that did not answer."""
    success_rps: float
    refused_rps: float
    """Refused for lack of room (queue full, draining): demand the class could not take."""
    error_rps: float
    """Server errors per second."""
    p99_ms: float | None
    """99th-percentile request latency over the window (None without requests)."""
    requests: float
    """Requests in the window over the pods that answered (how much the p99 rests on)."""
    queue_depth: float
    """Requests waiting in the batch queues now, summed over the pods that answered."""
    in_flight: float
    window_s: float
    pods_known: int
    """Pods whose load was measured: both scrapes answered, or new since the last round."""
    pods_unknown: int
    """Pods that did not answer at one end or the other: load unknown, not zero."""
    within_slo: float | None = None
    """Share of the window's requests within ``slo_ms`` when one was given."""
    latency: Histogram | None = field(default=None, compare=False, repr=False)

    @property
    def pods(self) -> int:
        return self.pods_known + self.pods_unknown


def observe_class(
    before: Sequence[PodScrape],
    after: Sequence[PodScrape],
    slo_ms: float | None = None,
    since: float | None = None,
) -> ClassObservation | None:
    """The class's load between two rounds of scrapes of its pods (matched by pod name).

    A pod whose scrapes both answered is known. A pod that answered now but is absent from
    ``before`` is new (it was not serving at the last round): its counters began at zero
    within the window, so all of them count, over the time since ``since`` (the last
    round; by default the earliest scrape in ``before``). Every other pod in ``after`` is
    unknown: it failed to answer at one end. Rates are summed over known and new pods, then
    scaled by ``pods / answered`` so that the unknown pods are taken to carry the same load
    as the others. None when no pod answered: the class's load cannot be measured.
    """
    earlier = {s.pod: s for s in before}
    if since is None and before:
        since = min(s.at for s in before)
    known: list[tuple[PodScrape | None, PodScrape]] = []
    unknown = 0
    for s in after:
        prev = earlier.get(s.pod)
        if s.metrics is None:
            unknown += 1
        elif prev is None:
            if since is None or s.at <= since:
                unknown += 1
            else:
                known.append((None, s))  # new: everything it counted is in the window
        elif prev.metrics is None or s.at <= prev.at:
            unknown += 1
        else:
            known.append((prev, s))
    if not known:
        return None
    rate = success = refused = errors = requests = 0.0
    queue = in_flight = 0.0
    window = 0.0
    hist: Histogram | None = None
    for prev, cur in known:
        assert cur.metrics is not None
        b = cur.metrics
        if prev is None:
            assert since is not None
            dt = cur.at - since
            a = PodMetrics(MappingProxyType({}), Histogram.empty((math.inf,)), 0.0, 0.0, False)
        else:
            assert prev.metrics is not None
            dt = cur.at - prev.at
            a = prev.metrics
        window = max(window, dt)

        def delta(outcomes: frozenset[str] | None, a: PodMetrics = a, b: PodMetrics = b) -> float:
            now, then = b.count(outcomes), a.count(outcomes)
            return now if now < then else now - then  # a restart began again from zero

        served = delta(None)
        rate += served / dt
        requests += served
        success += delta(frozenset({SUCCESS})) / dt
        refused += delta(REFUSED) / dt
        errors += delta(frozenset({SERVER_ERROR})) / dt
        part = b.latency.since(a.latency)
        hist = part if hist is None else hist.plus(part)
        queue += b.queue_depth
        in_flight += b.in_flight
    scale = (len(known) + unknown) / len(known)
    p99 = hist.quantile(0.99) if hist is not None else None
    within = (
        hist.share_within(slo_ms / 1000) if hist is not None and slo_ms is not None else None
    )
    return ClassObservation(
        rate_rps=rate * scale,
        success_rps=success * scale,
        refused_rps=refused * scale,
        error_rps=errors * scale,
        p99_ms=None if p99 is None else p99 * 1000,
        requests=requests,
        queue_depth=queue,
        in_flight=in_flight,
        window_s=window,
        pods_known=len(known),
        pods_unknown=unknown,
        within_slo=within,
        latency=hist,
    )
