"""When the fleet's nodes count as up and staying up (pure).

A simulated node is Ready while the controller manager's node lifecycle controller sees its
Lease renewed within ``--node-monitor-grace-period``; otherwise it turns the node Unknown (and
taints it unreachable) until kwok's next renewal. Renewing 2,151 Leases every 10 s (a kubelet's
40 s lease) is 215 writes a second: on 2 busy cores kwok fell up to 25 s behind right after
start (measured: the oldest Lease 36 s old with the 50 s default grace period), and in one CI
run past it, so 51 nodes turned Unknown just after every node had been seen Ready. The dev
cluster therefore scales kubelet's ratios up (:data:`KWOK_LEASE_SECONDS`, renewed every
quarter of it; :data:`NODE_GRACE_SECONDS`, six renewals), and a cluster counts as started only
when every node is Ready, untainted and renewed within :data:`SETTLED_LEASE_AGE`: then no node
can turn Unknown for ``NODE_GRACE_SECONDS - SETTLED_LEASE_AGE`` seconds even if renewals
stopped, and they keep up with a third of the write rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

KWOK_LEASE_SECONDS = 120  # kwok renews every quarter of it: 30 s
NODE_GRACE_SECONDS = 180  # --node-monitor-grace-period and --node-startup-grace-period
SETTLED_LEASE_AGE = 60.0  # two renewals: at least 120 s before any node could turn Unknown
NOT_READY_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def unsettled(
    nodes: Iterable[Mapping[str, Any]], leases: Iterable[Mapping[str, Any]], now: datetime,
    want: int,
) -> list[str]:
    """Why the fleet is not settled yet (empty when it is): counts, then a few node names."""
    renewed = {
        (lease.get("metadata") or {}).get("name"): (now - _time(spec["renewTime"])).total_seconds()
        for lease in leases if (spec := lease.get("spec") or {}).get("renewTime")
    }
    problems: dict[str, list[str]] = {"not Ready": [], "tainted not-ready": [],
                                      f"Lease older than {SETTLED_LEASE_AGE:.0f}s": []}
    count = 0
    for node in nodes:
        count += 1
        name = node["metadata"]["name"]
        conditions = (node.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            problems["not Ready"].append(name)
        taints = (node.get("spec") or {}).get("taints") or []
        if any(t.get("key") in NOT_READY_TAINTS for t in taints):
            problems["tainted not-ready"].append(name)
        age = renewed.get(name)
        if age is None or age > SETTLED_LEASE_AGE:
            problems[f"Lease older than {SETTLED_LEASE_AGE:.0f}s"].append(name)
    found = [f"{len(names)} {what} ({', '.join(sorted(names)[:3])}"
             f"{', ...' if len(names) > 3 else ''})" for what, names in problems.items() if names]
    if count < want:
        found.insert(0, f"{count} of {want} nodes exist")
    return found
