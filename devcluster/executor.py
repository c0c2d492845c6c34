"""The local executor: a minimal kubelet for the nodes whose pods run on this machine (the
``local`` class, and the emulated ``qemu`` classes).

It keeps its nodes Ready (status + Lease heartbeat), watches the pods bound to them and runs
each pod's containers as local processes, planned by :mod:`infleet.devcluster.podspec` (argv
lists only, never a shell; read-only mounts enforced where this machine allows a mount
namespace: :mod:`infleet.devcluster.mounts`). Each pod gets its own 127.x.y.z address
(``POD_IP``, the downward API ``status.podIP``), its volumes as folders, readiness probes,
restarts per restartPolicy, the termination message read back into the status, and on deletion
SIGTERM, then SIGKILL after the grace period, then the final delete the kubelet would make.

On an emulated node (``--emulated NODE=CPU``) each plan is rewritten to run the pod's aarch64
programs under qemu-user with the arm64 root (:mod:`infleet.devcluster.emulation`); engine build
pods there stay host processes that cross-compile and gate under qemu. Without a usable root or
qemu, the pods of those nodes fail with the reason, and the other nodes run as ever.

Each pod runs in a :class:`~infleet.devcluster.podrunner.PodRunner`. Two threads of
:mod:`infleet.devcluster.controllers` go with it: the EndpointSlices of its pods, and the
provisioner of the ``infleet-local`` StorageClass (PVs backed by its claims folder). Run as its
own process by the cluster: ``python -m infleet.devcluster.executor``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import infleet
from infleet.devcluster import emulation, mounts, podspec
from infleet.devcluster.controllers import EndpointsController, VolumeProvisioner
from infleet.devcluster.cpus import CpuPool
from infleet.devcluster.podrunner import HOST_IP, PodRunner, now
from infleet.devcluster.podspec import PodPlan
from infleet.runtime import arm64root

log = logging.getLogger("infleet.devcluster.executor")
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10
MERGE = "application/merge-patch+json"


def _raw(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a kubernetes client method and return the JSON body as plain data."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data or b"null")


class Executor:
    """Keeps the local nodes Ready, watches their pods and runs one PodRunner per pod."""

    def __init__(self, kubeconfig: Path, workdir: Path, nodes: list[str],
                 read_only_mounts: bool = False, emulated: Mapping[str, str] | None = None
                 ) -> None:
        from kubernetes import client

        from infleet.devcluster.cluster import kube_client

        self.api = kube_client(kubeconfig)
        self.core: Any = client.CoreV1Api(self.api)
        self.coord: Any = client.CoordinationV1Api(self.api)
        self.workdir = workdir
        self.nodes = nodes
        server = urlparse(self.api.configuration.host)
        self.api_host = server.hostname or "127.0.0.1"
        self.api_port = server.port or 443
        self.runners: dict[str, PodRunner] = {}
        self.used_ips: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.endpoints = EndpointsController(self.api, self.stopping)
        self.provisioner = VolumeProvisioner(self.api, self.stopping, workdir / "claims")
        self.read_only_mounts = read_only_mounts
        self.cpu_pool = CpuPool()
        self.annotated: set[str] = set()
        venv_bin = str(Path(sys.executable).parent)
        self.base_path = os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")])
        self.emulated = dict(emulated or {})
        """Emulated node -> the core qemu emulates there."""
        self._arm64: tuple[Path, str] | None = None
        """(arm64 root, qemu path) once found; looked up when a pod needs it, so a root made
        after the cluster started (hack/arm64-sysroot.sh) is found."""
        if self.emulated and isinstance(problem := self.arm64(), str):
            log.warning("pods of the emulated nodes fail until this is fixed: %s", problem)

    # -- nodes ---------------------------------------------------------------------------------
    def heartbeat(self) -> bool:
        """Post Ready and renew the Lease of every node; False while a node does not exist yet."""
        from kubernetes.client.exceptions import ApiException

        everyone = True
        stamp = now()
        micro = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for node in self.nodes:
            conditions = [
                {"type": kind, "status": "False", "reason": f"KubeletHas{ok}",
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                for kind, ok in (("MemoryPressure", "SufficientMemory"),
                                 ("DiskPressure", "NoDiskPressure"),
                                 ("PIDPressure", "SufficientPID"))
            ] + [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                  "message": "infleet local executor is posting ready status",
                  "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]
            try:
                self.core.patch_node_status(node, {"status": {
                    "conditions": conditions,
                    "addresses": [{"type": "InternalIP", "address": HOST_IP},
                                  {"type": "Hostname", "address": node}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                }}, _content_type="application/strategic-merge-patch+json")
            except ApiException as e:
                if e.status != 404:
                    raise
                everyone = False  # created by the cluster after the executor started
                continue
            if node not in self.annotated:  # tell the truth about what is enforced here
                enforced = "enforced" if self.read_only_mounts else "not-enforced"
                self.core.patch_node(node, {"metadata": {"annotations": {
                    mounts.ANNOTATION: enforced}}})
                self.annotated.add(node)
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": node, "namespace": "kube-node-lease"},
                     "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS,
                              "renewTime": micro}}
            try:
                self.coord.patch_namespaced_lease(node, "kube-node-lease", lease,
                                                  _content_type=MERGE)
            except ApiException as e:
                if e.status != 404:
                    raise
                self.coord.create_namespaced_lease("kube-node-lease", lease)
        return everyone

    def _heartbeat_loop(self) -> None:
        complete = False
        while not self.stopping.wait(HEARTBEAT_SECONDS if complete else 0.5):
            try:
                complete = self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")
                complete = False

    # -- pods ----------------------------------------------------------------------------------
    def _watch_node(self, node: str) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        selector = f"spec.nodeName={node}"
        while not self.stopping.is_set():
            try:
                listed = _raw(self.core.list_pod_for_all_namespaces, field_selector=selector)
                self.endpoints.resync(node, listed["items"])
                for pod in listed["items"]:
                    self.on_pod(pod)
                w: Any = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(
                    self.core.list_pod_for_all_namespaces, field_selector=selector,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=60, deserialize=False,
                ):
                    if self.stopping.is_set():
                        w.stop()
                        break
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.endpoints.pod_event(event["type"], event["object"])
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.on_pod(event["object"])
            except ApiException as e:
                if e.status != 410:
                    log.warning("watch of %s failed: %s", node, e)
                    time.sleep(1)
            except Exception:
                if not self.stopping.is_set():
                    log.exception("watch of %s failed", node)
                    time.sleep(1)

    def on_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        phase = pod.get("status", {}).get("phase", "Pending")
        with self.lock:
            runner = self.runners.get(uid)
            if meta.get("deletionTimestamp"):
                if runner is not None:
                    runner.grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                    runner.deleting.set()
                    return
                # Not ours to run (finished before, or started by an earlier executor).
                threading.Thread(target=self._delete_raw, args=(meta,), daemon=True).start()
                return
            if runner is not None or phase in ("Succeeded", "Failed"):
                return
            ip = podspec.pod_ip_for(uid, frozenset(self.used_ips))
            self.used_ips.add(ip)
            env = self._environment(pod, ip)
            plan = podspec.plan_pod(pod, env)
            cpu = self.emulated.get(pod.get("spec", {}).get("nodeName", ""))
            if cpu is not None:
                plan = self._emulate(pod, plan, cpu)
            runner = PodRunner(self, pod, plan, grace=plan.grace_seconds)
            self.runners[uid] = runner
        log.info("running pod %s/%s at %s", plan.namespace, plan.name, ip)
        threading.Thread(target=runner.run, name=f"pod-{plan.name}", daemon=True).start()

    def arm64(self) -> tuple[Path, str] | str:
        """The arm64 root and qemu for emulated nodes, or why there are none."""
        if self._arm64 is None:
            found = _arm64(self.workdir)
            if isinstance(found, str):
                return found
            self._arm64 = found
        return self._arm64

    def _emulate(self, pod: dict[str, Any], plan: PodPlan, cpu: str) -> PodPlan:
        """The plan of a pod on an emulated node (emulation's rules; reads the root)."""
        found = self.arm64()
        if isinstance(found, str):
            return emulation.unavailable(plan, found)
        root, qemu = found
        if emulation.is_build(pod):
            return emulation.cross_build(plan, root, cpu)
        emulator = emulation.Emulator(
            qemu=qemu, root=root, cpu=cpu,
            python_path=(root / arm64root.SITE, self.workdir / "arm64-python"))
        programs = {name: emulation.find_program(root, name)
                    for name in emulation.programs_of(plan)}
        return emulation.emulate(plan, emulator, programs)

    def _environment(self, pod: dict[str, Any], ip: str) -> podspec.Environment:
        namespace = pod["metadata"].get("namespace", "default")
        config_maps: dict[str, dict[str, str]] = {}
        secrets: dict[str, dict[str, str]] = {}
        spec = pod.get("spec", {})
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            for source in c.get("envFrom") or []:
                if "configMapRef" in source:
                    self._read_config_map(namespace, source["configMapRef"]["name"], config_maps)
                if "secretRef" in source:
                    self._read_secret(namespace, source["secretRef"]["name"], secrets)
            for item in c.get("env") or []:
                source = item.get("valueFrom") or {}
                if "configMapKeyRef" in source:
                    self._read_config_map(namespace, source["configMapKeyRef"]["name"],
                                          config_maps)
                if "secretKeyRef" in source:
                    self._read_secret(namespace, source["secretKeyRef"]["name"], secrets)
        return podspec.Environment(
            pod_ip=ip, host_ip=HOST_IP, api_host=self.api_host, api_port=self.api_port,
            base_path=self.base_path, pods_root=self.workdir,
            claims_root=self.provisioner.claims_root,
            config_maps=config_maps, secrets=secrets,
        )

    def _read_config_map(self, namespace: str, name: str, out: dict[str, dict[str, str]]) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            body = _raw(self.core.read_namespaced_config_map, name, namespace)
            out[name] = body.get("data") or {}

    def _read_secret(self, namespace: str, name: str, out: dict[str, dict[str, str]]) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            data = _raw(self.core.read_namespaced_secret, name, namespace).get("data") or {}
            out[name] = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}

    def fill_volume(self, pod: dict[str, Any], volume: podspec.Volume) -> None:
        """Write the files of configMap, secret and projected volumes into their folder."""
        namespace = pod["metadata"].get("namespace", "default")
        spec = next(v for v in pod["spec"]["volumes"] if v["name"] == volume.name)
        files: dict[str, str] = {}
        if volume.kind is podspec.VolumeKind.CONFIG_MAP:
            maps: dict[str, dict[str, str]] = {}
            self._read_config_map(namespace, volume.source, maps)
            files = _items(maps.get(volume.source, {}), spec["configMap"].get("items"))
        elif volume.kind is podspec.VolumeKind.SECRET:
            secrets: dict[str, dict[str, str]] = {}
            self._read_secret(namespace, volume.source, secrets)
            files = _items(secrets.get(volume.source, {}), spec["secret"].get("items"))
        elif volume.kind is podspec.VolumeKind.PROJECTED:
            files = self._projected(pod, spec["projected"])
        for rel, content in files.items():
            path = volume.local_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)

    def _projected(self, pod: dict[str, Any], projected: dict[str, Any]) -> dict[str, str]:
        meta = pod["metadata"]
        namespace = meta.get("namespace", "default")
        files: dict[str, str] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                request = {"spec": {
                    "audiences": [sat["audience"]] if sat.get("audience") else None,
                    "expirationSeconds": sat.get("expirationSeconds", 3607),
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                       "name": meta["name"], "uid": meta["uid"]}}}
                token = _raw(self.core.create_namespaced_service_account_token,
                             pod["spec"].get("serviceAccountName", "default"), namespace, request)
                files[sat["path"]] = token["status"]["token"]
            elif "configMap" in source:
                maps: dict[str, dict[str, str]] = {}
                self._read_config_map(namespace, source["configMap"]["name"], maps)
                files.update(_items(maps.get(source["configMap"]["name"], {}),
                                    source["configMap"].get("items")))
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    if item.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                        files[item["path"]] = namespace
        return files

    def replan(self, pod: dict[str, Any], plan: PodPlan) -> PodPlan:
        """The pod's plan with its configMaps and Secrets read again (same address)."""
        return podspec.plan_pod(pod, self._environment(pod, plan.ip))

    def patch_status(self, plan: PodPlan, status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.patch_namespaced_pod_status(plan.name, plan.namespace, {"status": status},
                                                  _content_type=MERGE)
        except ApiException as e:
            if e.status != 404:
                log.warning("status of %s/%s: %s", plan.namespace, plan.name, e.body)

    def delete_pod_object(self, plan: PodPlan) -> None:
        self._delete_raw({"name": plan.name, "namespace": plan.namespace, "uid": plan.uid})

    def _delete_raw(self, meta: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], grace_period_seconds=0,
                body={"preconditions": {"uid": meta["uid"]}, "gracePeriodSeconds": 0},
            )

    def forget(self, uid: str, ip: str) -> None:
        with self.lock:
            self.runners.pop(uid, None)
            self.used_ips.discard(ip)

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.endpoints.start()
        self.provisioner.start()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        for node in self.nodes:
            threading.Thread(target=self._watch_node, args=(node,), name=f"watch-{node}",
                             daemon=True).start()
        while not self.stopping.wait(1.0):  # a timed wait lets signal handlers run
            pass
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop_all(grace=2.0)


def _arm64(workdir: Path) -> tuple[Path, str] | str:
    """The arm64 root and qemu for emulated nodes, or why there are none. Also links this
    checkout's infleet package where emulated processes import it from (it is pure Python:
    the same code the host runs, no second copy to fall out of step)."""
    from infleet.runtime.errors import BackendUnavailable

    qemu = shutil.which(arm64root.QEMU)
    if qemu is None:
        return f"{arm64root.QEMU} not found (apt-get install qemu-user-static)"
    try:
        root = arm64root.serving_root()
    except BackendUnavailable as e:
        return str(e)
    link = workdir / "arm64-python" / "infleet"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        # The package as this process imports it, not resolved: with the strict editable
        # install it is a folder of links that maps every subpackage (operator/, scheduler/...)
        # into one tree, which the source folder src/infleet alone is not.
        link.symlink_to(Path(infleet.__file__).parent, target_is_directory=True)
    return root, qemu


def _items(data: dict[str, str], items: list[dict[str, Any]] | None) -> dict[str, str]:
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infleet.devcluster.executor")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--nodes", required=True, help="comma-separated node names")
    parser.add_argument("--emulated", action="append", default=[], metavar="NODE=CPU",
                        help="a node (of --nodes) whose pods run under qemu-aarch64 emulating "
                             "CPU; repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    nodes = [n for n in args.nodes.split(",") if n]
    emulated = dict(e.split("=", 1) for e in args.emulated if "=" in e)
    unknown = sorted(set(emulated) - set(nodes))
    if unknown or len(emulated) != len(args.emulated):
        parser.error(f"--emulated takes NODE=CPU for nodes of --nodes (got {args.emulated})")
    # Probed before any thread starts: it forks.
    read_only = mounts.supported()
    if not read_only:
        log.warning("read-only mounts are not enforced: no mount namespace can be made here "
                    "(neither root nor an unprivileged user namespace that may mount)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    executor = Executor(args.kubeconfig, args.workdir, nodes, read_only, emulated)
    signal.signal(signal.SIGTERM, lambda *_: executor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: executor.stopping.set())
    if not nodes:  # no local class: no pods to run, but claims still get their volumes
        executor.provisioner.start()
        while not executor.stopping.wait(1.0):
            pass
        return 0
    executor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
