"""Cluster lifecycle: side by side with the session cluster, stop frees everything, and the
``large`` profile comes up with every node Ready."""

from __future__ import annotations

import resource
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.cluster import (
    Kube,
    process_alive,
    rss_kib,
    start_cluster,
    wait_for_pod_phase,
)

from infleet.devcluster import health
from infleet.devcluster.cluster import COMPONENTS, LocalCluster

pytestmark = pytest.mark.integration

TINY = """\
name: tiny
classes:
  - {name: gpu, count: 1, arch: amd64, instanceType: g, cpu: "8", memory: 32Gi,
     gpu: {product: Tesla-T4, family: turing, count: 1, memoryMiB: 15360, computeMajor: 7,
           computeMinor: 5}}
  - {name: x86-local, count: 1, arch: amd64, instanceType: infleet-local, executor: local}
"""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As a server binds: TIME_WAIT leftovers of closed connections do not hold the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_second_cluster_runs_beside_the_first_and_stop_frees_everything(
    kube: Kube, tmp_path: Path
) -> None:
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY)
    second = start_cluster(tmp_path / "second", str(profile), timeout=180)
    try:
        if kube.cluster is not None:  # really side by side with the session's cluster
            assert set(second.state.ports.values()).isdisjoint(kube.cluster.state.ports.values())
            assert second.workdir != kube.cluster.workdir
        other = Kube.connect(second.kubeconfig, second)
        nodes = sorted(n.metadata.name for n in other.core.list_node().items)
        assert nodes == ["gpu-0", "x86-local-0"]
        other.core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "sleeper"},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "x86-local-0"},
                    "containers": [
                        {
                            "name": "c",
                            "image": "x",
                            "command": ["python", "-c", "import time; time.sleep(600)"],
                        }
                    ],
                },
            },
        )
        pod = wait_for_pod_phase(other, "default", "sleeper", ("Running",))
        pod_pid = int(pod.status.container_statuses[0].container_id.removeprefix("local://"))
        other.api.close()
        pids = dict(second.state.pids)
        ports = dict(second.state.ports)
    finally:
        second.stop()
    assert set(pids) == set(COMPONENTS)
    assert not [c for c, pid in pids.items() if process_alive(pid)]
    assert not process_alive(pod_pid), "the executor left its pod's process running"
    assert all(_port_free(port) for port in ports.values()), ports
    assert not (second.workdir / "state.json").exists()


@pytest.mark.slow
def test_large_profile_comes_up_with_every_node_ready(tmp_path: Path) -> None:
    # start() returns only once every node is Ready with a Lease fresh enough that none can
    # turn Unknown for two minutes (infleet.devcluster.health): the once-flaky check below
    # (2100 of 2151 Ready, CI) is what that guarantees.
    started = time.monotonic()
    cluster: LocalCluster = start_cluster(tmp_path / "large", "large", timeout=900)
    try:
        elapsed = time.monotonic() - started
        k = Kube.connect(cluster.kubeconfig, cluster)
        nodes = k.core.list_node().items
        leases = k.api.sanitize_for_serialization(
            k.coordination.list_namespaced_lease("kube-node-lease").items)
        k.api.close()
        oldest = max((datetime.now(UTC) - datetime.fromisoformat(
            lease["spec"]["renewTime"].replace("Z", "+00:00"))).total_seconds()
            for lease in leases)
        ready = [
            n
            for n in nodes
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
        ]
        assert len(nodes) == cluster.profile.node_count() >= 2000
        assert len(ready) == len(nodes)
        assert oldest < health.NODE_GRACE_SECONDS - 60, oldest  # none close to turning Unknown
        classes = {n.metadata.labels["dev.infleet.dev/fleet-class"] for n in nodes}
        assert len(classes) >= 10
        rss = {c: rss_kib(pid) for c, pid in cluster.state.pids.items()}
        # Numbers for the issue note (pytest -s shows them); never asserted.
        print(
            f"\nlarge profile: {len(nodes)} nodes in {len(classes)} classes Ready in "
            f"{elapsed:.1f}s (oldest Lease {oldest:.0f}s); RSS MiB: "
            + ", ".join(f"{c}={v / 1024:.0f}" for c, v in rss.items())
            + f"; total={sum(rss.values()) / 1024:.0f} MiB; test process max RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
    finally:
        cluster.stop()
