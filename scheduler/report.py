"""A :class:`~infleet.scheduler.plan.Plan` as plain data (for JSON/YAML) and as a table."""

from __future__ import annotations

from typing import Any

from infleet.scheduler.classes import NodeClass
from infleet.scheduler.inventory import Resources
from infleet.scheduler.plan import ClassPlan, Plan

GIB = 2**30


def _res(r: Resources) -> dict[str, Any]:
    return {"cpu": f"{r.cpu_millis}m", "memory": f"{r.memory_bytes // 2**20}Mi", "gpu": r.gpus}


def _hardware(c: NodeClass) -> dict[str, Any]:
    k = c.key
    out: dict[str, Any] = {"accelerator": k.accelerator.value, "arch": k.arch}
    if k.is_gpu:
        out.update(
            gpuModel=k.gpu_model,
            gpuMemoryGB=k.gpu_memory_gb or None,
            computeCapability=f"{k.compute[0]}.{k.compute[1]}" if k.compute else None,
            mig=k.mig or None,
            gpusPerNode=list(c.gpus_per_node),
        )
    else:
        out.update(cpuTier=k.cpu_tier or None, cpuFeatures=list(k.cpu_features))
    out["instanceType"] = k.instance_type or None
    return out


def _class(cp: ClassPlan) -> dict[str, Any]:
    c, d = cp.node_class, cp.decision
    return {
        "name": c.name,
        "fingerprint": c.fingerprint,
        "hardware": _hardware(c),
        "nodes": {
            "total": len(c.nodes),
            "usable": c.usable_nodes,
            "unschedulable": c.unschedulable_nodes,
            "notReady": c.not_ready_nodes,
            "tainted": c.tainted_nodes,
        },
        "allocatable": _res(c.allocatable),
        "free": _res(c.free),
        "backend": d.backend.value if d.backend else None,
        "precisionLadder": [p.value for p in d.ladder],
        "reasons": list(d.reasons),
        "excluded": d.exclusion,
        "replica": _res(d.replica),
        "costPerReplicaHour": d.cost_per_hour,
        "costEstimated": d.cost_estimated,
        "profile": None
        if cp.profile is None
        else {
            "capacityRps": cp.profile.capacity_rps,
            "latencyBatch1Ms": cp.profile.latency_b1_ms,
            "source": cp.profile.source,
        },
        "freeReplicas": cp.free_replicas,
        "unused": cp.unused_reason,
        "replicas": cp.replicas,
        "weight": cp.weight,
        "capacityRps": cp.capacity_rps,
        "costPerHour": cp.cost_per_hour,
        "tolerations": [t.as_toleration() for t in c.tolerations],
        "nodeAffinity": c.affinity.to_k8s(),
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "deployment": plan.deployment,
        "feasible": plan.feasible,
        "optimal": plan.optimal,
        "demandRps": plan.demand_rps,
        "headroom": plan.headroom,
        "targetRps": plan.target_rps,
        "sloP99Ms": plan.slo_ms,
        "minReplicas": plan.min_replicas,
        "maxReplicas": plan.max_replicas,
        "replicas": plan.replicas,
        "capacityRps": plan.capacity_rps,
        "costPerHour": plan.cost_per_hour,
        "problems": list(plan.problems),
        "notes": list(plan.notes),
        "classes": [_class(c) for c in plan.classes],
    }


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def plan_to_table(plan: Plan) -> str:
    """The human view: one row per class, then why each class got what it got."""
    lines = []
    demand = (
        f"demand {_num(plan.demand_rps)} rps + {plan.headroom:.0%} headroom = "
        f"{_num(plan.target_rps)} rps"
        if plan.demand_rps is not None
        else f"target {_num(plan.target_rps)} rps"
    )
    lines.append(
        f"InferenceDeployment {plan.deployment or '(unnamed)'}: SLO p99 {plan.slo_ms:g} ms, "
        f"{demand}, replicas {plan.min_replicas}..{plan.max_replicas}"
    )
    lines.append("")
    header = ("CLASS", "NODES", "BACKEND", "PRECISION LADDER", "RPS/REPLICA", "$/REPLICA-H",
              "FREE", "REPLICAS", "WEIGHT")
    rows = [header]
    for cp in plan.classes:
        c, d = cp.node_class, cp.decision
        rows.append((
            c.name,
            f"{c.usable_nodes}/{len(c.nodes)}",
            d.backend.value if d.backend and not d.excluded else "-",
            " > ".join(p.value for p in d.ladder) if not d.excluded else "excluded",
            _num(cp.profile.capacity_rps) if cp.profile else "-",
            f"{d.cost_per_hour:.2f}{'~' if d.cost_estimated else ''}",
            str(cp.free_replicas),
            str(cp.replicas),
            f"{cp.weight}%",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {4, 5, 6, 7, 8}
    for r in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(r)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    if plan.feasible:
        quality = "optimal" if plan.optimal else "near-optimal, see note"
        lines.append(
            f"PLAN: {plan.replicas} replicas, {_num(plan.capacity_rps)} rps capacity, "
            f"{plan.cost_per_hour:.2f}/h ({quality})"
        )
    else:
        lines.append("NO FEASIBLE PLAN:")
        lines += [f"  - {p}" for p in plan.problems]
    for n in plan.notes:
        lines.append(f"note: {n}")
    lines.append("")
    lines.append("WHY")
    for cp in plan.classes:
        c = cp.node_class
        lines.append(f"  {c.name}:")
        for reason in cp.decision.reasons:
            lines.append(f"    - {reason}")
        if cp.unused_reason and not cp.decision.excluded:
            lines.append(f"    - unused: {cp.unused_reason}")
        idle = []
        if c.unschedulable_nodes:
            idle.append(f"{c.unschedulable_nodes} cordoned")
        if c.not_ready_nodes:
            idle.append(f"{c.not_ready_nodes} NotReady")
        if c.tainted_nodes:
            idle.append(f"{c.tainted_nodes} with taints the class does not tolerate")
        if idle:
            lines.append(f"    - nodes not counted: {', '.join(idle)}")
    if any(cp.decision.cost_estimated for cp in plan.classes):
        lines.append("")
        lines.append("~ cost estimated from list prices; set classes.<name>.costPerHour in the "
                     "operator config")
    return "\n".join(lines) + "\n"
