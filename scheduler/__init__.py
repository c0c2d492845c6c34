"""Pure placement decisions: node classes, backend and precision per class, capacity plans.

Nothing here performs I/O or imports a backend library: plain data in, plain data out (the
one exception is ``command.py``, the ``infleet plan`` entry point, which reads files and the
cluster and then calls the rest). The operator's path through it:

    nodes = nodes_from_objects(node_dicts, pod_dicts)        # inventory.py
    classes = derive_classes(nodes)                          # classes.py
    plan = plan_deployment(classes, spec, demand_rps=...,    # plan.py (policy.py, capacity.py)
                           profiles=..., policy=cluster_policy(config))   # settings.py
    status_classes = plan.class_statuses()

and, every tick of the autoscaler, from the serving pods' metrics:

    obs = observe_class(scrapes_before, scrapes_now, slo_ms)  # metrics.py (parse_exposition)
    decision = decide_scale(class_inputs, AutoscaleSettings.from_spec(spec),
                            state, now)                       # autoscale.py
    state = decision.state                                    # keep it (decision.state.to_json())
"""

from infleet.scheduler.autoscale import (
    AutoscaleSettings,
    AutoscaleState,
    ClassInput,
    Mode,
    ScaleDecision,
    decide_scale,
)
from infleet.scheduler.capacity import ClassProfile, Option, Solution, solve, traffic_weights
from infleet.scheduler.classes import NodeClass, derive_classes
from infleet.scheduler.hardware import HardwareKey, hardware_key, normalize_gpu_product
from infleet.scheduler.inventory import (
    NodeInfo,
    Resources,
    Taint,
    nodes_from_documents,
    nodes_from_objects,
)
from infleet.scheduler.metrics import ClassObservation, PodScrape, observe_class, parse_exposition
from infleet.scheduler.plan import ClassPlan, Plan, plan_deployment
from infleet.scheduler.policy import ClassDecision, ClassDefaults, ClusterPolicy, ModelFacts, decide

__all__ = [
    "AutoscaleSettings",
    "AutoscaleState",
    "ClassDecision",
    "ClassDefaults",
    "ClassInput",
    "ClassObservation",
    "ClassPlan",
    "ClassProfile",
    "ClusterPolicy",
    "HardwareKey",
    "Mode",
    "ModelFacts",
    "NodeClass",
    "NodeInfo",
    "Option",
    "Plan",
    "PodScrape",
    "Resources",
    "ScaleDecision",
    "Solution",
    "Taint",
    "decide",
    "decide_scale",
    "derive_classes",
    "hardware_key",
    "nodes_from_documents",
    "nodes_from_objects",
    "normalize_gpu_product",
    "observe_class",
    "parse_exposition",
    "plan_deployment",
    "solve",
    "traffic_weights",
]
