"""When a started fleet counts as settled: Ready, untainted, freshly renewed (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infleet.devcluster import health

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def node(name: str, ready: str = "True", taints: list | None = None) -> dict:
    return {"metadata": {"name": name}, "spec": {"taints": taints or []},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def lease(name: str, age: float) -> dict:
    stamp = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": name}, "spec": {"renewTime": stamp}}


def test_ready_untainted_and_freshly_renewed_nodes_are_settled() -> None:
    assert health.unsettled([node("a"), node("b")], [lease("a", 5), lease("b", 59)], NOW, 2) == []


def test_a_ready_node_whose_lease_is_stale_is_not_settled_yet() -> None:
    # Ready now, but the node lifecycle controller may turn it Unknown soon: the CI flake.
    problems = health.unsettled([node("a"), node("b")], [lease("a", 5), lease("b", 61)], NOW, 2)
    assert problems == ["1 Lease older than 60s (b)"]
    assert health.unsettled([node("a")], [], NOW, 1) == ["1 Lease older than 60s (a)"]


def test_unknown_tainted_and_missing_nodes_are_named() -> None:
    unreachable = [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]
    nodes = [node(f"n{i}", "Unknown") for i in range(5)] + [node("t", taints=unreachable)]
    leases = [lease(n["metadata"]["name"], 1) for n in nodes]
    problems = health.unsettled(nodes, leases, NOW, 10)
    assert problems == ["6 of 10 nodes exist", "5 not Ready (n0, n1, n2, ...)",
                        "1 tainted not-ready (t)"]


def test_the_grace_period_leaves_time_after_a_settled_start() -> None:
    renew = health.KWOK_LEASE_SECONDS / 4  # kwok renews every quarter of the duration
    assert 2 * renew <= health.SETTLED_LEASE_AGE
    assert 4 * renew <= health.NODE_GRACE_SECONDS - health.SETTLED_LEASE_AGE
