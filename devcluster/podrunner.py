"""One pod of the local executor: its processes, probes, restarts and status.

A :class:`PodRunner` runs in a thread of its own. It talks to the API only through its
:class:`PodHost` (the executor), so process handling stays apart from watching and patching.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from infleet import toolbox
from infleet.devcluster import mounts, podspec
from infleet.devcluster.cpus import CpuPool
from infleet.devcluster.podspec import ContainerPlan, PodPlan, Probe, ProbeKind, RestartPolicy

log = logging.getLogger("infleet.devcluster.executor")
HOST_IP = "127.0.0.1"


class PodHost(Protocol):
    """What a pod runner needs from the executor."""

    read_only_mounts: bool  # whether read-only mounts can be enforced here (mounts.supported)
    cpu_pool: CpuPool  # exclusive CPUs of Guaranteed containers

    def patch_status(self, plan: PodPlan, status: dict[str, Any]) -> None: ...
    def delete_pod_object(self, plan: PodPlan) -> None: ...
    def fill_volume(self, pod: dict[str, Any], volume: podspec.Volume) -> None: ...
    def replan(self, pod: dict[str, Any], plan: PodPlan) -> PodPlan: ...
    def forget(self, uid: str, ip: str) -> None: ...


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _child_setup(read_only: tuple[str, ...], cpus: tuple[int, ...] = ()) -> Any:
    def setup() -> None:  # runs in the child between fork and exec
        toolbox.die_with_parent(signal.SIGKILL)  # no orphans if the executor dies
        if read_only:
            mounts.make_read_only(read_only)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


@dataclass
class Container:
    plan: ContainerPlan
    proc: subprocess.Popen[bytes] | None = None
    cpus: tuple[int, ...] = ()
    """The CPUs it holds from the executor's pool while it runs."""
    started_at: str = ""
    restarts: int = 0
    ready: bool = False
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    probe_due: float = 0.0
    probe_ok: int = 0
    probe_fail: int = 0
    restart_due: float = 0.0
    backoff_s: float = 0.0
    """An init container waiting to run again after failing (its state is CrashLoopBackOff)."""


@dataclass
class PodRunner:
    """One pod's processes and status. Runs in a thread of its own."""

    executor: PodHost
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
        """Run one init container to its end; its exit code, None when the pod was deleted.
        As the kubelet does, a failed init container of a pod that restarts (``Always``,
        ``OnFailure``) runs again after a back-off, the pod Pending meanwhile and the
        container's state ``CrashLoopBackOff`` with the failure as its last state."""
        c = Container(plan)
        self.phase = "Pending"
        while True:
            self._spawn(c)
            self._report(init=[self._container_status(c)])
            while c.proc is not None and c.proc.poll() is None:
                if self.deleting.wait(0.1):
                    self._stop(c)
                    return None
            self._collect(c)
            code = int(c.terminated["exitCode"]) if c.terminated else 1
            if code == 0 or self.plan.restart_policy is RestartPolicy.NEVER:
                self.init_statuses.append(self._container_status(c))
                return code
            c.last_terminated, c.terminated = c.terminated, None
            c.backoff_s = min(10.0, 2.0 ** min(c.restarts, 4))
            self._report(init=[self._container_status(c)])
            if self.deleting.wait(c.backoff_s):
                return None
            c.backoff_s = 0.0
            c.restarts += 1
            # The kubelet resolves env (a Secret's keys, say) anew for each container it
            # creates, so a Secret fixed meanwhile is seen by the next attempt.
            fresh = self.executor.replan(self.pod, self.plan)
            if not fresh.problems:
                self.plan = fresh
                c.plan = next(p for p in fresh.init_containers if p.name == plan.name)

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
        read_only: tuple[str, ...] = ()
        if self.executor.read_only_mounts:
            read_only = tuple(str(m.local_path) for m in plan.mounts if m.read_only)
            for path in read_only:  # a bind mount needs its target (a subPath may be new)
                if not os.path.lexists(path):
                    Path(path).mkdir(parents=True)
        if plan.cpus and not c.cpus:
            c.cpus = self.executor.cpu_pool.take(plan.cpus)
        try:
            c.proc = toolbox.spawn(plan.argv, plan.log_path, env=dict(plan.env), cwd=plan.cwd,
                                   preexec=_child_setup(read_only, c.cpus))
        except (OSError, subprocess.SubprocessError) as e:
            self._release(c)
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
        self._release(c)
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

    def _release(self, c: Container) -> None:
        if c.cpus:
            self.executor.cpu_pool.give(c.cpus)
            c.cpus = ()

    def _stop(self, c: Container, grace: float | None = None) -> None:
        proc = c.proc
        if proc is None or proc.poll() is not None:
            self._collect(c)
            return
        # Every process the container started, read before any is signalled (a dead parent's
        # children are re-parented and no longer found): one that left the container's
        # process group (a session of its own) is not reached by stop_groups, and a pod's
        # stop must end it all the same, as a container's cgroup would.
        family = toolbox.descendants(proc.pid)
        toolbox.stop_groups([proc.pid], max(grace if grace is not None else self.grace, 0.0),
                            {proc.pid: proc})
        for pid in family:
            if toolbox.alive(pid):
                toolbox.kill_tree(pid)
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
            "started": c.terminated is None and c.proc is not None and not c.backoff_s,
        }
        if c.proc is not None:
            status["containerID"] = f"local://{c.proc.pid}"
        if c.terminated is not None:
            status["state"] = {"terminated": c.terminated}
        elif c.backoff_s:
            status["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off {c.backoff_s:g}s restarting failed container={c.plan.name} "
                f"pod={self.plan.name}")}}
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
            # Like the kubelet: 200-399 is success, redirects are not followed and an HTTPS
            # probe does not verify the certificate.
            url = f"{probe.scheme.lower()}://{probe.host}:{probe.port}{probe.path}"
            status = httpx.get(url, timeout=probe.timeout, verify=False).status_code  # noqa: S501
            return 200 <= status < 400
        if probe.kind is ProbeKind.TCP:
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
                return True
        result = subprocess.run(list(probe.argv), env=env, cwd=cwd, capture_output=True,
                                timeout=probe.timeout, check=False)
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError, ValueError, httpx.HTTPError):
        return False
