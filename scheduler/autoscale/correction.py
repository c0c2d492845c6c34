"""Rule 1: a class's capacity per replica at the SLO, learnt from what it carried; and whether
it broke the SLO under load (the panic signal of rule 3)."""

from __future__ import annotations

from infleet.scheduler.autoscale.settings import AutoscaleSettings, ClassInput, fmt
from infleet.scheduler.autoscale.state import ClassMemory


def corrected(
    memory: ClassMemory, cls: ClassInput, settings: AutoscaleSettings
) -> tuple[float, str, float | None]:
    """The class's new correction factor, a note when it moved, and (when the class broke
    the SLO under load) the per-replica rate it carried while breaking it.

    What it carried is what it answered (``success_rps``), not what was asked of it: a
    saturated replica that refuses or queues the rest answers at its saturated rate, which
    is more than it holds at the SLO, so this is an upper bound known at the first tick of
    an overload, whatever the demand was."""
    prof = cls.profile
    obs = cls.observed
    k = memory.correction
    if prof is None or prof.capacity_rps <= 0 or obs is None or obs.pods == 0:
        return k, "", None
    base = prof.capacity_rps
    q = base * k
    per_pod = obs.rate_rps / obs.pods
    refused = obs.refused_rps / obs.rate_rps if obs.rate_rps > 0 else 0.0
    if obs.requests < settings.min_requests:
        return k, "", None
    breach_p99 = obs.p99_ms is not None and obs.p99_ms > settings.slo_ms
    breach = breach_p99 or refused > settings.refused_budget
    step = settings.correction_step
    lo, hi = settings.correction_floor, settings.correction_ceiling
    note = ""
    broke_at: float | None = None
    growing = (obs.queue_depth / max(1, obs.pods_known) > settings.max_batch
               and obs.queue_depth > memory.queue_depth)
    if (breach or growing) and per_pod >= settings.low_load * q:
        carried = min(per_pod, obs.success_rps / obs.pods)
        broke_at = carried
        if carried < q:
            # It broke carrying less than the estimate: capacity is under what it carried.
            k = min(k, (1 - step) * k + step * 0.95 * carried / base)
            note = f"capacity lowered: SLO broken carrying {fmt(carried)} rps per replica"
    elif not breach and per_pod > q:
        k = max(k, (1 - step) * k + step * per_pod / base)
        note = f"capacity raised: SLO held at {fmt(per_pod)} rps per replica"
    elif (
        not breach and k < 1 and per_pod >= settings.low_load * q and obs.p99_ms is not None
        and obs.p99_ms <= settings.slo_ms / 2
    ):
        k = min(1.0, k + step * (1 - k))
        note = "capacity recovering toward the profile: p99 under half the SLO under load"
    k = min(hi, max(lo, k))
    return k, note, broke_at



def panic_reason(
    cls: ClassInput, q: float, memory: ClassMemory, settings: AutoscaleSettings
) -> str | None:
    """Why the class needs capacity at once (``q``: its estimated capacity per replica
    before this tick), or None."""
    obs = cls.observed
    if obs is None or obs.pods == 0:
        return None
    per_pod = obs.rate_rps / obs.pods
    if (
        obs.requests >= settings.min_requests and obs.p99_ms is not None
        and obs.p99_ms > settings.slo_ms and per_pod >= settings.low_load * q
    ):
        return (f"{cls.name}: p99 {obs.p99_ms:.3g} ms > SLO {settings.slo_ms:g} ms at "
                f"{per_pod / q:.0%} of capacity")
    if obs.rate_rps > 0 and obs.refused_rps / obs.rate_rps > settings.refused_budget:
        return f"{cls.name}: {obs.refused_rps / obs.rate_rps:.1%} of requests refused"
    depth = obs.queue_depth / max(1, obs.pods_known)
    if depth > settings.max_batch and obs.queue_depth > memory.queue_depth:
        return f"{cls.name}: queue {fmt(obs.queue_depth)} and growing"
    return None
