"""The operator as tests run it: ``infleet run`` in a process of its own, against the dev
cluster, as a user starts it; plus what a deployment needs around it (a namespace with its
engine store and model claims, a real model on the claim).

- ``Operator``: start, stop (SIGTERM), kill (SIGKILL), ``metrics()``, ``write_counts()``, logs.
- ``claim()``: a PersistentVolumeClaim bound to a PersistentVolume whose folder is the one
  the local executor mounts for that claim (static provisioning, as a cluster admin does it).
- ``put_model()``: writes a model file onto a claim, returns its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from infleet.api import GROUP, PLURAL, VERSION
from support.cluster import Kube, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEV_CONFIG = ROOT / "examples" / "dev" / "operator-config.yaml"
LOCAL_CLASS_LABEL = "dev.infleet.dev/fleet-class"


@dataclass
class Operator:
    kube: Kube
    workdir: Path
    args: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "operator.log"

    def start(self, timeout: float = 60) -> Operator:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "infleet", "run", *self.args,
                "--kubeconfig", str(self.kube.kubeconfig), "--health-address", "127.0.0.1:0",
                "--port-file", str(port_file)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT,
                                         start_new_session=True)
        self.port = int(wait_until(lambda: self._alive() and port_file.exists() and
                                   port_file.read_text().strip(), timeout,
                                   "the operator to listen", self.tail))
        wait_until(lambda: self._alive() and self._get("/readyz").status_code == 200, timeout,
                   "the operator to turn ready", self.tail)
        return self

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.tail()}")
        return True

    def _get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self._get("/metrics").text.splitlines():
            if line.startswith("infleet_operator_") and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def write_counts(self) -> dict[str, float]:
        """The operator's API writes so far, per series (verb and kind)."""
        return {k: v for k, v in self.metrics().items()
                if k.startswith("infleet_operator_api_writes_total")}

    def reconciles(self) -> float:
        return self.metrics().get('infleet_operator_reconciles_total{outcome="ok"}', 0.0)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the operator dies mid-whatever, as a node failure or OOM kill does."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_operator(kube: Kube, workdir: Path, *args: str,
                     config: Path = DEV_CONFIG) -> Iterator[Operator]:
    op = Operator(kube, workdir, [*args, "--config", str(config)]).start()
    try:
        yield op
    finally:
        op.stop()


# --- what a deployment needs around it ------------------------------------------------------


def claim(kube: Kube, namespace: str, name: str) -> Path:
    """A bound ReadWriteMany claim of the cluster's default class (the dev cluster's
    provisioner backs it with the folder the local executor mounts); returns that folder."""
    from infleet.devcluster.podspec import claim_dir

    kube.core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "10Gi"}}},
    })
    wait_until(lambda: kube.core.read_namespaced_persistent_volume_claim(name, namespace)
               .status.phase == "Bound", 60, f"claim {namespace}/{name} to bind")
    assert kube.cluster is not None, "tests of the operator need a cluster they started"
    folder: Path = claim_dir(kube.cluster.workdir / "pods" / "claims", namespace, name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def put_model(folder: Path, name: str, writer: Any) -> str:
    """Write a model with ``writer(path)`` onto a claim folder; its sha256."""
    path = folder / name
    writer(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deployment(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def apply_deployment(kube: Kube, body: dict[str, Any]) -> None:
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"],
                                                PLURAL, body)


def read_deployment(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                   PLURAL, name)
    return got


def status_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = read_deployment(kube, namespace, name).get("status") or {}
    return status


def describe(kube: Kube, namespace: str, name: str) -> str:
    """The deployment's status in short (conditions, one line per class) and its pods, for a
    failed wait's message."""
    status = status_of(kube, namespace, name)
    lines = [f"phase={status.get('phase')} generation={status.get('observedGeneration')}"]
    lines += [f"  {c['type']}={c['status']} {c.get('reason')}: {c.get('message', '')[:400]}"
              for c in status.get("conditions") or []]
    for c in status.get("classes") or []:
        e = c.get("engine") or {}
        lines.append(
            f"  class {c['name']}: excluded={c.get('excluded')} engine={e.get('state')} "
            f"simulated={c.get('simulated')} replicas={c.get('replicas')}/"
            f"{c.get('readyReplicas')}/{c.get('desiredReplicas')} weight={c.get('weight')} "
            f"verified={c.get('verified')} | {c.get('reason', '')[:200]} | "
            f"{e.get('message', '')[:300]}")
    pods = kube.core.list_namespaced_pod(namespace).items
    lines += [f"  pod {p.metadata.name} on {p.spec.node_name}: {p.status.phase}" for p in pods]
    return "\n".join(lines)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def wait_available(kube: Kube, namespace: str, name: str, timeout: float = 240
                   ) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        s = status_of(kube, namespace, name)
        # A Failed phase ends the wait too: no point in waiting out the deadline.
        done = s.get("phase") == "Failed" or condition(s, "Available").get("status") == "True"
        return s if done else None

    status = wait_until(settled, timeout, f"{namespace}/{name} to become Available",
                        lambda: describe(kube, namespace, name))
    assert status.get("phase") != "Failed", describe(kube, namespace, name)
    return status


def local_class(kube: Kube, fleet_class: str = "x86-local") -> str:
    """The node class name of a fleet class that runs for real on this machine: the local
    executor's x86 class (named from this machine's CPU), or ``arm64-qemu``, the emulated one."""
    from infleet.scheduler.classes import derive_classes
    from infleet.scheduler.inventory import nodes_from_objects

    raw = kube.api.sanitize_for_serialization(kube.core.list_node().items)
    local = [n for n in raw if n["metadata"]["labels"].get(LOCAL_CLASS_LABEL) == fleet_class]
    classes = derive_classes(nodes_from_objects(local))
    assert len(classes) == 1, [c.name for c in classes]
    return classes[0].name


def events_of(kube: Kube, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = kube.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason, e.message) for e in items]


def wait_event_reasons(kube: Kube, namespace: str, name: str, reasons: set[str],
                       timeout: float = 30) -> set[str]:
    """Wait until the deployment's Events include every reason in ``reasons``: a reconcile
    writes the status first and its Events after, so a status just seen may be ahead."""
    def seen() -> set[str] | None:
        got = {r for _, r, _ in events_of(kube, namespace, name)}
        return got if reasons <= got else None

    found: set[str] = wait_until(seen, timeout, f"Events {sorted(reasons)} on {name}",
                                 lambda: str(events_of(kube, namespace, name)))
    return found


def wait_gone(kube: Kube, call: Any, *args: Any, what: str, timeout: float = 60) -> None:
    from kubernetes.client.exceptions import ApiException

    def gone() -> bool:
        try:
            call(*args)
        except ApiException as e:
            return e.status == 404
        return False

    wait_until(gone, timeout, what)


def writes_over_idle_reconciles(op: Operator, count: int = 3, timeout: float = 60
                                ) -> dict[str, float]:
    """The writes the operator makes while it reconciles ``count`` more times with nothing
    changing (it reconciles on its drift interval even when nothing wakes it), by metric
    series; the operator's log names each one (``wrote: ...``)."""
    before, reconciles = op.write_counts(), op.reconciles()
    wait_until(lambda: op.reconciles() >= reconciles + count, timeout,
               f"{count} more reconciles", op.tail)
    after = op.write_counts()
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def settled_autoscaler(kube: Kube, namespace: str, name: str, timeout: float = 90
                       ) -> dict[str, Any]:
    """Wait until the autoscaler has decided on measured load (mode ``hold``): until then a
    tick may rightly rewrite the status (``no-metrics`` while the pods were starting)."""
    def held() -> dict[str, Any] | None:
        auto = status_of(kube, namespace, name).get("autoscaler") or {}
        return auto if auto.get("mode") == "hold" else None

    auto: dict[str, Any] = wait_until(held, timeout, f"the autoscaler of {name} to hold",
                                      lambda: str(status_of(kube, namespace, name)
                                                  .get("autoscaler")))
    return auto


def claims(kube: Kube, namespace: str) -> dict[str, Path]:
    """The engine store's and the models' claims of a namespace; their folders."""
    return {"engines": claim(kube, namespace, "infleet-engines"),
            "models": claim(kube, namespace, "infleet-models")}


@pytest.fixture
def store(kube: Kube, crd: Path, namespace: str) -> dict[str, Path]:
    """A test's namespace with its engine store and model claims."""
    return claims(kube, namespace)


def short_interval_config() -> dict[str, Any]:
    """The dev cluster's operator configuration, with a short drift interval: tests count
    reconciles, and the shorter interval gets them sooner."""
    raw: dict[str, Any] = yaml.safe_load(DEV_CONFIG.read_text())
    raw["reconcileIntervalSeconds"] = 3
    return raw


def write_config(folder: Path, raw: dict[str, Any]) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def op_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("operator-config"), short_interval_config())
