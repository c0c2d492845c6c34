"""pytest fixtures and wait helpers for tests on the real local control plane.

Loaded by ``tests/conftest.py`` (``pytest_plugins``). Fixtures start nothing until a test asks:

- ``dev_cluster`` (session): the ``dev`` profile up. When the Go binaries are missing it
  *fails* saying how to build them (CI builds them first); it never skips.
- ``crd`` (session): the committed InferenceDeployment CRD applied and Established.
- ``kube`` (session): typed API groups of the kubernetes client against it.
- ``namespace`` (per test): a fresh namespace, deleted afterwards.

- ``gateway_url`` (session): where the cluster's Gateway (Traefik) listens.

``INFLEET_TEST_KUBECONFIG`` points the fixtures at a cluster that is already up (for example
``infleet dev up``) instead of starting one, which saves the start-up while iterating; then
``INFLEET_GATEWAY`` (what ``infleet dev env`` exports) names its gateway.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infleet.api.render import CRD_FILE, render_crd, render_peering_crds
from infleet.devcluster import fleet, tools
from infleet.devcluster.cluster import LocalCluster
from infleet.devcluster.errors import ClusterStartError, ToolsMissingError
from infleet.toolbox import rss_kib, wait_until

__all__ = ["Kube", "pod_summary", "process_alive", "rss_kib", "start_cluster",
           "wait_for_pod_phase", "wait_until"]


@dataclass(frozen=True)
class Kube:
    """The API groups tests use, sharing one authenticated client."""

    api: Any
    core: Any
    apps: Any
    batch: Any
    rbac: Any
    custom: Any
    coordination: Any
    kubeconfig: Path
    cluster: LocalCluster | None

    @staticmethod
    def connect(kubeconfig: Path, cluster: LocalCluster | None = None) -> Kube:
        from kubernetes import client

        from infleet.devcluster.cluster import kube_client

        api = kube_client(kubeconfig)
        return Kube(api, client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api),
                    client.RbacAuthorizationV1Api(api), client.CustomObjectsApi(api),
                    client.CoordinationV1Api(api), kubeconfig, cluster)


def pod_summary(kube: Kube, namespace: str, name: str) -> str:
    pod = kube.core.read_namespaced_pod(name, namespace)
    conditions = [(c.type, c.status, c.reason, c.message) for c in pod.status.conditions or []]
    return (f"phase={pod.status.phase} node={pod.spec.node_name} conditions={conditions} "
            f"containers={[s.state for s in pod.status.container_statuses or []]}")


def wait_for_pod_phase(kube: Kube, namespace: str, name: str, phases: tuple[str, ...],
                       timeout: float = 60) -> Any:
    return wait_until(
        lambda: (p := kube.core.read_namespaced_pod(name, namespace)).status.phase in phases and p,
        timeout, f"pod {namespace}/{name} to reach {'/'.join(phases)}",
        lambda: pod_summary(kube, namespace, name),
    )


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone). The tests' own check, kept apart from
    the cluster's, so a wrong liveness check in the cluster cannot pass its own tests."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def start_cluster(workdir: Path, profile: str, timeout: float = 300) -> LocalCluster:
    """A cluster for a test session; pytest.fail (never skip) with the reason when it cannot."""
    try:
        found = tools.locate()
    except ToolsMissingError as e:
        pytest.fail(f"{e}\n(CI runs `infleet dev tools` before pytest)", pytrace=False)
    cluster = LocalCluster(workdir, found, fleet.load_profile(profile),
                           name=f"infleet-test-{Path(profile).stem}", die_with_parent=True)
    try:
        cluster.start(timeout)
    except ClusterStartError as e:
        pytest.fail(f"the local control plane did not start: {e}", pytrace=False)
    return cluster


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | None]:
    if os.environ.get("INFLEET_TEST_KUBECONFIG"):
        yield None
        return
    cluster = start_cluster(tmp_path_factory.mktemp("dev-cluster"), "dev")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube(dev_cluster: LocalCluster | None) -> Iterator[Kube]:
    existing = os.environ.get("INFLEET_TEST_KUBECONFIG")
    path = Path(existing) if existing else dev_cluster.kubeconfig  # type: ignore[union-attr]
    k = Kube.connect(path, dev_cluster)
    yield k
    k.api.close()


@pytest.fixture(scope="session")
def crd(kube: Kube) -> Path:
    """The committed InferenceDeployment CRD, applied once (its own fixture, so a CRD the API
    server refuses fails the tests that need it, not every test on the cluster)."""
    path = CRD_FILE
    if kube.cluster is None:  # an existing cluster (`infleet dev up` applied it)
        return path
    try:
        kube.cluster.apply_crd(render_crd())
        for peering in render_peering_crds():  # for operator replicas that peer
            kube.cluster.apply_crd(peering)
    except ClusterStartError as e:
        pytest.fail(str(e), pytrace=False)
    return path


@pytest.fixture(scope="session")
def gateway_url(kube: Kube) -> str:
    if kube.cluster is not None:
        return kube.cluster.state.gateway_url
    url = os.environ.get("INFLEET_GATEWAY")
    if not url:
        pytest.fail("INFLEET_TEST_KUBECONFIG is set but INFLEET_GATEWAY is not; "
                    'eval "$(infleet dev env)" sets both', pytrace=False)
    return url


@contextlib.contextmanager
def fresh_namespace(kube: Kube) -> Iterator[str]:
    """A namespace of a random name, deleted afterwards."""
    name = f"t-{secrets.token_hex(4)}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": {"infleet.dev/test": "1"}}})
    # The ServiceAccount admission plugin refuses pods until the `default` SA exists.
    wait_until(lambda: kube.core.read_namespaced_service_account("default", name), 30,
               f"the default ServiceAccount of {name}")
    try:
        yield name
    finally:
        kube.core.delete_namespace(name)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    with fresh_namespace(kube) as name:
        yield name
