"""SLO autoscaling: replicas per class from observed load, one pure decision per tick.

:func:`decide_scale` takes the classes (profile, cost, replicas, free room, the window's
:class:`~infleet.scheduler.metrics.ClassObservation`), the deployment's
:class:`AutoscaleSettings`, the :class:`AutoscaleState` of the last tick and the time, and
returns a :class:`ScaleDecision`: replicas and traffic weight per class, the inputs it used,
a sentence saying why, and the state to keep for the next tick (JSON-serialisable, so a
restarted operator resumes where it stopped). No I/O, no clock: ``now`` is an argument.

The rules, per tick:

1. *Capacity per replica at the SLO*: the engine profile's (:func:`profile_from_points`)
   times a per-class correction factor learnt from observation (:func:`corrected`): it
   falls when the class broke the SLO while asked for at least half its estimated capacity,
   toward what it answered (a saturated class answers its saturated rate and refuses or
   queues the rest, so that is an upper bound from the first tick of an overload), rises
   when it held the SLO above it, and creeps back toward the profile when p99 stays
   under half the SLO under load; bounded to [``correction_floor``, ``correction_ceiling``]
   x profile, moved a fraction ``correction_step`` of the way per tick, never from a window
   with fewer than ``min_requests`` requests. It cannot run away: each move is toward a rate
   the class really carried, a lowered estimate adds replicas, which lowers the per-replica
   rate below the threshold that moved it, and the bounds hold whatever the inputs.
2. *Demand*: the requests that wanted the engine (success, refused, server errors) over
   the classes; a pod or class that did not answer is extrapolated from those that did
   (the router gives each the same load per unit of capacity), never taken as idle; when
   nothing answered, the decision holds. The target is ``(1 + headroom)`` x the mean over
   ``stable_window_s``, or x the latest window's demand when that needs more than the mix
   has (scale-up does not wait for the average to catch up).
3. *Panic*: when a class's p99 breaks the SLO at >= half its capacity, it refuses more
   than ``refused_budget`` of its requests, or its queue holds more than a full batch per
   pod and grows, the target becomes the latest demand plus the backlog cleared within
   ``drain_s``, and the breaching class is planned at what it answered, at once.
4. *Stabilization*: the target in force is the highest of every tick's target over the
   last ``stabilization_s``, so capacity falls only when the smoothed demand stayed lower
   that long; and no class shrinks within ``stabilization_s`` of the last scale-up.
5. *The mix*: scale-up adds the cheapest replicas that cover the shortfall (to the target
   plus ``scale_down_tolerance`` when that fits) on top of those running (the exact branch
   and bound, :func:`solve`, within min/max and each class's free room), and when those
   include a class that starts slower than others (a GPU pod), replicas of the faster
   classes bridge its start-up; scale-down moves to the cheapest
   mix for the stabilized target plus ``scale_down_tolerance``, when that is cheaper than
   the running mix. Traffic weights follow the ready capacity of the mix
   (:func:`traffic_weights`).
6. *The reserve*: classes whose cost per request is at most ``reserve_cost_share`` of the
   dearest usable class's hold, on their own, ``(1 + reserve)`` x the demand the target
   stands for (within room and maxReplicas; the target comes first): floors that rule 5
   plans above, with the same band. A burst then finds Ready capacity where it costs little
   instead of waiting for pods to start; a fleet of one price holds none.

The serving pods' own admission (``infleet serve --max-queue-wait-ms``, see
:func:`~infleet.scheduler.capacity.queue_wait_budget_ms`) refuses at once what could only
answer late: an overload shows as refusals (rule 3's ``refused_budget``) while the requests
admitted still answer in time.

The package, by job: :mod:`.settings` (the rules' knobs and the classes as told),
:mod:`.state` (the memory between ticks and its JSON), :mod:`.correction` (rule 1 and the
panic signal), :mod:`.demand` (rules 2-4), :mod:`.mix` (rules 5-6), :mod:`.decision` (what a
decision says) and :mod:`.decide` (one tick, the rules in order).
"""

from infleet.scheduler.autoscale.correction import corrected
from infleet.scheduler.autoscale.decide import decide_scale
from infleet.scheduler.autoscale.decision import ClassScale, Mode, ScaleDecision, ScaleInputs
from infleet.scheduler.autoscale.settings import AutoscaleSettings, ClassInput
from infleet.scheduler.autoscale.state import STATE_VERSION, AutoscaleState, ClassMemory

__all__ = [
    "STATE_VERSION",
    "AutoscaleSettings",
    "AutoscaleState",
    "ClassInput",
    "ClassMemory",
    "ClassScale",
    "Mode",
    "ScaleDecision",
    "ScaleInputs",
    "corrected",
    "decide_scale",
]
