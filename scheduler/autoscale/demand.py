"""Rules 2-4: the demand over the classes, this tick's target, and the target in force."""

from __future__ import annotations

from collections.abc import Sequence

from infleet.scheduler.autoscale.settings import AutoscaleSettings, ClassInput


def measure_demand(
    classes: Sequence[ClassInput], caps: Sequence[float]
) -> tuple[float | None, float, str]:
    """Demand over the classes (rps), the backlog, and a note on what was extrapolated.

    A class that did not answer is taken to carry the others' load per unit of ready
    capacity (the router splits by capacity); None when nothing answered at all."""
    known_rate = known_cap = all_cap = backlog = 0.0
    missing: list[str] = []
    for cls, q in zip(classes, caps, strict=True):
        ready_cap = cls.ready_replicas * q
        if cls.ready_replicas == 0 and cls.observed is None:
            continue  # serves nothing, so carries nothing
        all_cap += ready_cap
        if cls.observed is None:
            missing.append(cls.name)
            continue
        known_rate += cls.observed.rate_rps
        known_cap += ready_cap
        backlog += cls.observed.queue_depth * cls.observed.pods / max(1, cls.observed.pods_known)
    if missing and known_cap <= 0:
        return None, 0.0, "no metrics from " + ", ".join(missing)
    if not missing:
        return known_rate, backlog, ""
    scale = all_cap / known_cap
    return (known_rate * scale, backlog * scale,
            f"{', '.join(missing)} did not answer: their load taken at the others' rate")


def tick_target(
    settings: AutoscaleSettings,
    stable: float,
    demand_now: float,
    backlog: float,
    capacity: float,
    panic: bool,
) -> float:
    """This tick's target (rps): ``(1 + headroom)`` x the demand to plan for.

    That is the smoothed demand (``stable``), so that the noise of one short window never
    becomes capacity; or the latest window's when that needs more than the mix has
    (``capacity``): scale-up does not wait for the mean to catch up. In panic, the latest
    demand plus the queued backlog cleared within ``drain_s``."""
    grow = (1 + settings.headroom) * demand_now > capacity
    load = max(stable, demand_now) if grow else stable
    if panic:
        load = max(stable, demand_now + backlog / settings.drain_s)
    target = load * (1 + settings.headroom)
    if settings.max_throughput_rps is not None:
        target = min(target, settings.max_throughput_rps)
    return target
