"""Restart safety: an operator killed at any point, an API server restarted, two replicas.

Killing is SIGKILL (no cleanup, as a node failure or an OOM kill ends a pod). After each
interruption the deployment must converge to the children an uninterrupted run makes, with
no second build Job for a key (Jobs are watched for the whole test: every Job ever created
is counted, even one created and deleted between two looks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Kube, wait_until
from support.operator import (
    Operator,
    apply_deployment,
    deployment,
    describe,
    local_class,
    put_model,
    status_of,
    wait_available,
)
from test_operator import cnn_spec

from infleet.api import GROUP, PLURAL, VERSION
from infleet.runtime.server.samples import small_cnn

pytestmark = pytest.mark.integration


class JobWatch:
    """Every Job created in a namespace while it runs: uid -> build key."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        from kubernetes import watch

        self.seen: dict[str, str] = {}
        self._stopped = False
        self.broken = False
        self._watch: Any = watch.Watch()  # type: ignore[no-untyped-call]
        self._kube, self._namespace = kube, namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._watch.stream(self._kube.batch.list_namespaced_job,
                                            self._namespace, timeout_seconds=900):
                job = event["object"]
                labels = job.metadata.labels or {}
                self.seen[job.metadata.uid] = labels.get("infleet.dev/build-key", "")
        except Exception:
            if not self._stopped:  # a watch that breaks mid-test leaves the count unproven
                self.broken = True
                raise

    def per_key(self) -> dict[str, int]:
        assert not self.broken, "the Job watch broke: the count of Jobs is not complete"
        out: dict[str, int] = {}
        for key in self.seen.values():
            out[key] = out.get(key, 0) + 1
        return out

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


@pytest.fixture
def jobs(kube: Kube, namespace: str) -> Iterator[JobWatch]:
    watch = JobWatch(kube, namespace)
    yield watch
    watch.stop()


def start(kube: Kube, workdir: Path, namespace: str, config: Path, *extra: str) -> Operator:
    return Operator(kube, workdir, ["-n", namespace, "--config", str(config), *extra]).start()


def children(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """What converged looks like: the serving objects and what they serve."""
    selector = f"infleet.dev/deployment={name}"
    deployments = kube.apps.list_namespaced_deployment(namespace, label_selector=selector).items
    services = kube.core.list_namespaced_service(namespace, label_selector=selector).items
    return {
        "deployments": sorted(
            (d.metadata.name, d.spec.replicas,
             d.spec.template.metadata.annotations["infleet.dev/engine-key"])
            for d in deployments),
        "services": sorted(s.metadata.name for s in services),
        "jobs": sorted(j.metadata.name for j in kube.batch.list_namespaced_job(namespace).items),
    }


def test_an_operator_killed_mid_build_converges_without_a_second_job(
    kube: Kube, namespace: str, store: dict[str, Path], jobs: JobWatch, tmp_path: Path,
    op_config: Path,
) -> None:
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    op = start(kube, tmp_path / "a", namespace, op_config)
    try:
        apply_deployment(kube, deployment("cnn", namespace, cnn_spec(sha, local)))
        wait_until(lambda: kube.batch.list_namespaced_job(namespace).items, 60,
                   "the build Job", op.tail)
        op.kill()  # mid-build: the Job runs on without anyone watching it
        op = start(kube, tmp_path / "b", namespace, op_config)
        wait_available(kube, namespace, "cnn")
        assert set(jobs.per_key().values()) == {1}, jobs.seen
        converged = children(kube, namespace, "cnn")
        assert len(converged["deployments"]) == 1 and converged["jobs"] == []
    finally:
        op.stop()


def test_an_operator_killed_mid_rollout_converges_to_the_new_engine(
    kube: Kube, namespace: str, store: dict[str, Path], jobs: JobWatch, tmp_path: Path,
    op_config: Path,
) -> None:
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    op = start(kube, tmp_path / "a", namespace, op_config)
    try:
        apply_deployment(kube, deployment("cnn", namespace, cnn_spec(sha, local)))
        before = wait_available(kube, namespace, "cnn")
        old_engine = next(c["engine"]["key"] for c in before["classes"] if c["name"] == local)
        # A new max batch size is a new engine: a build, then a rollout of the class.
        body = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn")
        body["spec"]["batching"]["maxBatchSize"] = 2
        kube.custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn",
                                                     body)

        def rolling() -> bool:
            pods = kube.core.list_namespaced_pod(
                namespace, label_selector="infleet.dev/deployment=cnn").items
            keys = {(p.metadata.annotations or {}).get("infleet.dev/engine-key") for p in pods}
            return len(keys) > 1  # old and new engine side by side: mid-rollout

        wait_until(rolling, 180, "the rollout to start", lambda: describe(kube, namespace, "cnn"))
        op.kill()
        op = start(kube, tmp_path / "b", namespace, op_config)

        def rolled() -> dict[str, Any] | None:
            s = status_of(kube, namespace, "cnn")
            cls = next((c for c in s.get("classes", []) if c["name"] == local), {})
            new = cls.get("engine", {}).get("key")
            done = (s.get("observedGeneration") == 2 and new and new != old_engine and
                    cls.get("verified"))
            return s if done else None

        wait_until(rolled, 240, "the new engine to serve",
                   lambda: describe(kube, namespace, "cnn"))
        converged = children(kube, namespace, "cnn")
        ((_, _, engine),) = converged["deployments"]
        assert engine != old_engine
        assert set(jobs.per_key().values()) == {1}, jobs.seen  # one Job per key, two keys
        assert len(jobs.per_key()) == 2
    finally:
        op.stop()


def test_the_operator_survives_an_api_server_restart(
    kube: Kube, namespace: str, store: dict[str, Path], tmp_path: Path, op_config: Path,
) -> None:
    assert kube.cluster is not None
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    op = start(kube, tmp_path / "a", namespace, op_config)
    try:
        kube.cluster.restart_component("kube-apiserver")
        # Nothing was applied before the restart: everything below is the operator's work
        # on watches it had to re-establish.
        apply_deployment(kube, deployment("cnn", namespace, cnn_spec(sha, local)))
        wait_available(kube, namespace, "cnn")
        assert op.proc is not None and op.proc.poll() is None
    finally:
        op.stop()


def test_of_two_replicas_with_distinct_priorities_one_acts(
    kube: Kube, namespace: str, store: dict[str, Path], jobs: JobWatch, tmp_path: Path,
    op_config: Path,
) -> None:
    kube.custom.create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
         "metadata": {"name": "infleet", "namespace": namespace}})
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    local = local_class(kube)
    high = start(kube, tmp_path / "high", namespace, op_config, "--peering", "infleet",
                 "--priority", "100")
    low = start(kube, tmp_path / "low", namespace, op_config, "--peering", "infleet",
                "--priority", "50")
    try:
        apply_deployment(kube, deployment("cnn", namespace, cnn_spec(sha, local)))
        wait_available(kube, namespace, "cnn")
        assert high.reconciles() > 0 and low.reconciles() == 0, (high.tail(), low.tail())
        # The active one goes away: the other takes over and keeps it converged.
        high.kill()
        body = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn")
        body["spec"]["scaling"]["minReplicas"] = 2
        kube.custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cnn",
                                                     body)
        wait_until(lambda: status_of(kube, namespace, "cnn").get("observedGeneration") == 2,
                   180, "the standby replica to take over", low.tail)
        assert low.reconciles() > 0
        assert set(jobs.per_key().values()) == {1}
    finally:
        high.stop()
        low.stop()
