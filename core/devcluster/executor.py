"""The local executor: a minimal kubelet for the nodes of the ``local`` class.

It keeps its nodes Ready (status + Lease heartbeat), watches the pods bound to them and runs
each pod's containers as local processes, planned by :mod:`infleet.devcluster.podspec` (argv
lists only, never a shell). Each pod gets its own 127.x.y.z address (``POD_IP``, the downward
API ``status.podIP``), its volumes as folders, readiness probes, restarts per restartPolicy,
the termination message read back into the status, and on deletion SIGTERM, then SIGKILL after
the grace period, then the final delete the kubelet would make.

Run as its own process by the cluster: ``python -m infleet.devcluster.executor``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from infleet.devcluster import podspec
from infleet.devcluster.podspec import ContainerPlan, PodPlan, Probe, ProbeKind, RestartPolicy

log = logging.getLogger("infleet.devcluster.executor")
HOST_IP = "127.0.0.1"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10
MERGE = "application/merge-patch+json"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphans if the executor dies


def _raw(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a kubernetes client method and return the JSON body as plain data."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data or b"null")


@dataclass
class Container:
    plan: ContainerPlan
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    ready: bool = False
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    probe_due: float = 0.0
    probe_ok: int = 0
    probe_fail: int = 0
    restart_due: float = 0.0


@dataclass
class PodRunner:
    """One pod's processes and status. Runs in a thread of its own."""

    executor: Executor
    pod: dict[str, Any]
    plan: PodPlan
    deleting: threading.Event = field(default_factory=threading.Event)
    grace: float = 30.0
    containers: list[Container] = field(default_factory=list)
    init_statuses: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "Pending"
    started: str = field(default_factory=now)
    _last_status: str = ""

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            log.exception("pod %s/%s: executor error", self.plan.namespace, self.plan.name)
            self._fail("ExecutorError", str(e))
        finally:
            self.executor.forget(self.plan.uid, self.plan.ip)

    def _run(self) -> None:
        if self.plan.problems:
            self._fail("UnsupportedByLocalExecutor", "; ".join(self.plan.problems))
            return
        self._prepare()
        for plan in self.plan.init_containers:
            code = self._run_init(plan)
            if code is None:  # deleted meanwhile
                self._finish_deletion()
                return
            if code != 0:
                self.phase = "Failed"
                self._report()
                return
        self.containers = [Container(plan) for plan in self.plan.containers]
        for c in self.containers:
            self._spawn(c)
        self.phase = "Running"
        self._report()
        while not self.deleting.is_set():
            changed = self._tick()
            if self._all_done():
                self.phase = self._final_phase()
                self._report()
                self._wait_for_deletion()
                return
            if changed:
                self._report()
            self.deleting.wait(0.1)
        self._finish_deletion()

    def _prepare(self) -> None:
        p = self.plan
        for sub in ("home", "logs", "termination", "volumes"):
            (p.pod_dir / sub).mkdir(parents=True, exist_ok=True)
        for volume in p.volumes:
            if volume.kind is podspec.VolumeKind.HOST_PATH:
                continue
            volume.local_dir.mkdir(parents=True, exist_ok=True)
            self.executor.fill_volume(self.pod, volume)
        for c in (*p.init_containers, *p.containers):
            c.termination_message_path.parent.mkdir(parents=True, exist_ok=True)
            c.termination_message_path.unlink(missing_ok=True)

    def _run_init(self, plan: ContainerPlan) -> int | None:
        c = Container(plan)
        self._spawn(c)
        self.phase = "Pending"
        self._report(init=[self._container_status(c)])
        while c.proc is not None and c.proc.poll() is None:
            if self.deleting.wait(0.1):
                self._stop(c)
                return None
        self._collect(c)
        self.init_statuses.append(self._container_status(c))
        return int(c.terminated["exitCode"]) if c.terminated else 1

    # -- processes ------------------------------------------------------------------------------
    def _spawn(self, c: Container) -> None:
        plan = c.plan
        plan.log_path.parent.mkdir(parents=True, exist_ok=True)
        plan.cwd.mkdir(parents=True, exist_ok=True)
        c.ready = False
        c.probe_ok = c.probe_fail = 0
        c.terminated = None
        c.started_at = now()
        c.probe_due = time.monotonic() + (plan.readiness.initial_delay if plan.readiness else 0)
        with plan.log_path.open("ab") as out:
            try:
                c.proc = subprocess.Popen(
                    list(plan.argv), env=dict(plan.env), cwd=plan.cwd, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, preexec_fn=_pdeathsig,
                )
            except OSError as e:
                c.proc = None
                c.terminated = {"exitCode": 128, "reason": "StartError",
                                "message": f"{plan.argv[0]}: {e}"[:4096],
                                "startedAt": c.started_at, "finishedAt": now()}

    def _collect(self, c: Container) -> None:
        if c.proc is None or c.terminated is not None:
            return
        code = c.proc.returncode
        if code is None:
            return
        if code < 0:  # killed by a signal: report it as the shell would, 128 + signal
            code = 128 - code
        plan = c.plan
        message_file = None
        with contextlib.suppress(OSError):
            message_file = plan.termination_message_path.read_text(errors="replace")
        tail = ""
        if plan.fallback_to_logs:
            with contextlib.suppress(OSError):
                tail = plan.log_path.read_bytes()[-8192:].decode(errors="replace")
        c.terminated = {
            "exitCode": code,
            "reason": podspec.exit_reason(code),
            "message": podspec.termination_message(message_file, tail, code,
                                                   plan.fallback_to_logs),
            "startedAt": c.started_at,
            "finishedAt": now(),
            "containerID": f"local://{c.proc.pid}",
        }
        if not c.terminated["message"]:
            del c.terminated["message"]
        c.ready = False

    def _stop(self, c: Container, grace: float | None = None) -> None:
        proc = c.proc
        if proc is None or proc.poll() is not None:
            self._collect(c)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=max(grace if grace is not None else self.grace, 0.0))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._collect(c)

    def stop_all(self, grace: float) -> None:
        for c in self.containers:
            self._stop(c, grace)

    def _tick(self) -> bool:
        changed = False
        policy = self.plan.restart_policy
        for c in self.containers:
            if c.proc is not None and c.terminated is None and c.proc.poll() is not None:
                self._collect(c)
                changed = True
                code = c.terminated["exitCode"] if c.terminated else 1
                if policy is RestartPolicy.ALWAYS or (
                    policy is RestartPolicy.ON_FAILURE and code != 0
                ):
                    c.restart_due = time.monotonic() + min(10.0, 2.0 ** min(c.restarts, 4))
            if c.terminated is not None and c.restart_due and time.monotonic() >= c.restart_due:
                c.restart_due = 0.0
                c.restarts += 1
                c.last_terminated = c.terminated
                self._spawn(c)
                changed = True
            if c.terminated is None and c.proc is not None:
                changed |= self._probe(c)
        return changed

    def _probe(self, c: Container) -> bool:
        probe = c.plan.readiness
        if probe is None:
            if not c.ready:
                c.ready = True
                return True
            return False
        if time.monotonic() < c.probe_due:
            return False
        c.probe_due = time.monotonic() + probe.period
        ok = run_probe(probe, dict(c.plan.env), c.plan.cwd)
        before = c.ready
        if ok:
            c.probe_ok, c.probe_fail = c.probe_ok + 1, 0
            if c.probe_ok >= probe.success_threshold:
                c.ready = True
        else:
            c.probe_ok, c.probe_fail = 0, c.probe_fail + 1
            if c.probe_fail >= probe.failure_threshold:
                c.ready = False
        return c.ready != before

    def _all_done(self) -> bool:
        if self.plan.restart_policy is RestartPolicy.ALWAYS:
            return False
        return all(c.terminated is not None and not c.restart_due for c in self.containers)

    def _final_phase(self) -> str:
        codes = [c.terminated["exitCode"] if c.terminated else 1 for c in self.containers]
        return "Succeeded" if all(code == 0 for code in codes) else "Failed"

    # -- deletion -------------------------------------------------------------------------------
    def _wait_for_deletion(self) -> None:
        # A finished pod stays (Jobs read it) until someone deletes it.
        while not self.deleting.wait(1.0):
            pass
        self.executor.delete_pod_object(self.plan)

    def _finish_deletion(self) -> None:
        for c in self.containers:
            self._stop(c)
        if self.phase not in ("Succeeded", "Failed"):
            self.phase = "Failed" if self.plan.restart_policy is RestartPolicy.ALWAYS else (
                self._final_phase() if self.containers else "Failed")
        with contextlib.suppress(Exception):
            self._report()
        self.executor.delete_pod_object(self.plan)

    def _fail(self, reason: str, message: str) -> None:
        self.phase = "Failed"
        self.executor.patch_status(self.plan, {
            "phase": "Failed", "reason": reason, "message": message[:4096],
            "hostIP": HOST_IP, "startTime": self.started,
        })
        self._wait_for_deletion()

    # -- status ---------------------------------------------------------------------------------
    def _container_status(self, c: Container) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": c.plan.name, "image": self._image(c.plan.name), "imageID": "",
            "ready": c.ready, "restartCount": c.restarts,
            "started": c.terminated is None and c.proc is not None,
        }
        if c.proc is not None:
            status["containerID"] = f"local://{c.proc.pid}"
        if c.terminated is not None:
            status["state"] = {"terminated": c.terminated}
        elif c.proc is not None:
            status["state"] = {"running": {"startedAt": c.started_at}}
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        if c.last_terminated is not None:
            status["lastState"] = {"terminated": c.last_terminated}
        return status

    def _image(self, name: str) -> str:
        spec = self.pod.get("spec", {})
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            if c["name"] == name:
                return str(c.get("image", ""))
        return ""

    def _report(self, init: list[dict[str, Any]] | None = None) -> None:
        statuses = [self._container_status(c) for c in self.containers]
        all_ready = bool(statuses) and all(s["ready"] for s in statuses)
        initialized = init is None
        stamp = now()

        def condition(kind: str, value: bool) -> dict[str, str]:
            return {"type": kind, "status": "True" if value else "False",
                    "lastTransitionTime": stamp}

        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.plan.ip, "podIPs": [{"ip": self.plan.ip}],
            "startTime": self.started,
            "conditions": [
                condition("PodReadyToStartContainers", True),
                condition("Initialized", initialized),
                condition("ContainersReady", all_ready and self.phase == "Running"),
                condition("Ready", all_ready and self.phase == "Running"),
                condition("PodScheduled", True),
            ],
            "containerStatuses": statuses or [
                {"name": c.name, "image": self._image(c.name), "imageID": "", "ready": False,
                 "restartCount": 0, "started": False,
                 "state": {"waiting": {"reason": "PodInitializing"}}}
                for c in self.plan.containers
            ],
        }
        if self.init_statuses or init:
            status["initContainerStatuses"] = self.init_statuses + (init or [])
        # Only send when something other than timestamps changed.
        key = json.dumps({k: v for k, v in status.items() if k != "conditions"}, sort_keys=True)
        key += json.dumps([(c["type"], c["status"]) for c in status["conditions"]])
        if key == self._last_status:
            return
        self._last_status = key
        self.executor.patch_status(self.plan, status)


def run_probe(probe: Probe, env: dict[str, str], cwd: Path) -> bool:
    try:
        if probe.kind is ProbeKind.HTTP:
            url = f"{probe.scheme.lower()}://{probe.host}:{probe.port}{probe.path}"
            with urllib.request.urlopen(url, timeout=probe.timeout) as r:  # noqa: S310
                return bool(200 <= r.status < 400)
        if probe.kind is ProbeKind.TCP:
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
                return True
        result = subprocess.run(list(probe.argv), env=env, cwd=cwd, capture_output=True,
                                timeout=probe.timeout, check=False)
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError, ValueError):
        return False


class Executor:
    def __init__(self, kubeconfig: Path, workdir: Path, nodes: list[str]) -> None:
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
        venv_bin = str(Path(sys.executable).parent)
        self.base_path = os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")])

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
            runner = PodRunner(self, pod, plan, grace=plan.grace_seconds)
            self.runners[uid] = runner
        log.info("running pod %s/%s at %s", plan.namespace, plan.name, ip)
        threading.Thread(target=runner.run, name=f"pod-{plan.name}", daemon=True).start()

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
            base_path=self.base_path, pods_root=self.workdir, claims_root=self.workdir / "claims",
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


def _items(data: dict[str, str], items: list[dict[str, Any]] | None) -> dict[str, str]:
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infleet.devcluster.executor")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--nodes", required=True, help="comma-separated node names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    nodes = [n for n in args.nodes.split(",") if n]
    executor = Executor(args.kubeconfig, args.workdir, nodes)
    signal.signal(signal.SIGTERM, lambda *_: executor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: executor.stopping.set())
    if not nodes:  # a profile without a local class: nothing to do but wait to be stopped
        while not executor.stopping.wait(1.0):
            pass
        return 0
    executor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
