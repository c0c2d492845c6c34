"""Pod -> local process plan, for the local executor. Pure: no API calls, no processes.

A container becomes an argv list (never a shell string): ``command`` + ``args`` with Kubernetes'
``$(VAR)`` expansion, run with the container's env. There is no mount namespace, so a volume
is a local folder and paths are *mapped*: every argv element, env value and workingDir that
starts with a volume's ``mountPath`` is rewritten to that folder (also after ``--flag=``), and
the termination message path likewise points into the pod's folder. A process that opens a
mounted path it computed itself, not one it was given, will not find it; the pods infleet runs
take their paths from args and env.

Volumes: ``emptyDir`` -> a folder of the pod; ``hostPath`` -> that path; a
``persistentVolumeClaim`` -> the claim's folder ``<claims root>/<namespace>/<claim>``
(:func:`claim_dir`), shared by the executor's pods: the folder the dev cluster's provisioner
backs the claim's PersistentVolume with (:mod:`infleet.devcluster.volumes`), so engines written
by a build Job are there for the serving pod; ``configMap``, ``secret`` and the ``projected``
service-account volume -> folders the executor fills. A mount is read-only when its
``readOnly`` says so or the volume's ``persistentVolumeClaim.readOnly`` does; the pod runner
enforces that where it can (:mod:`infleet.devcluster.mounts`).

Not modelled: liveness and startup probes (only readiness is run), resource limits (no cgroups),
images (``command`` must name a program on this machine; the venv's bin comes first on PATH),
``hostNetwork`` and ports (a process binds ``$POD_IP`` itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from infleet.devcluster.cpus import exclusive_cpus

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ProbeKind(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"


class RestartPolicy(StrEnum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


class VolumeKind(StrEnum):
    EMPTY_DIR = "emptyDir"
    HOST_PATH = "hostPath"
    CLAIM = "persistentVolumeClaim"
    CONFIG_MAP = "configMap"
    SECRET = "secret"  # noqa: S105 - the volume type, not a password
    PROJECTED = "projected"


@dataclass(frozen=True)
class Probe:
    kind: ProbeKind
    host: str = ""
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    argv: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Volume:
    name: str
    kind: VolumeKind
    local_dir: Path
    source: str = ""  # configMap/secret/claim name, or the host path
    read_only: bool = False  # persistentVolumeClaim.readOnly: every mount of it is read-only


@dataclass(frozen=True)
class Mount:
    mount_path: str
    local_path: Path
    read_only: bool = False


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: Path
    mounts: tuple[Mount, ...]
    termination_message_path: Path
    fallback_to_logs: bool
    log_path: Path
    readiness: Probe | None = None
    cpus: int = 0
    """Whole CPUs of its own (a Guaranteed container's integer limit; 0: shared)."""


@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    uid: str
    ip: str
    pod_dir: Path
    restart_policy: RestartPolicy
    grace_seconds: float
    volumes: tuple[Volume, ...]
    init_containers: tuple[ContainerPlan, ...]
    containers: tuple[ContainerPlan, ...]
    # Why the pod cannot run here (a message for its status); empty when it can.
    problems: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Environment:
    """What the executor knows besides the pod: addresses, pre-read configMaps and secrets."""

    pod_ip: str
    host_ip: str
    api_host: str
    api_port: int
    base_path: str  # PATH for processes (the executor's, venv first)
    pods_root: Path
    claims_root: Path
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def claim_dir(claims_root: Path, namespace: str, claim: str) -> Path:
    """The folder of a PersistentVolumeClaim: what pods mount and what backs its volume."""
    return claims_root / namespace / claim


def pod_ip_for(uid: str, used: frozenset[str] = frozenset()) -> str:
    """A loopback address of the pod's own, stable for its uid: 127.A.B.C, never 127.0.x.x."""
    n = int(re.sub(r"[^0-9a-f]", "", uid.lower())[:8] or "1", 16)
    for step in range(1000):
        m = (n + step * 7919) % (254 * 256 * 254)
        a, rest = divmod(m, 256 * 254)
        b, c = divmod(rest, 254)
        ip = f"127.{a + 1}.{b}.{c + 1}"
        if ip not in used:
            return ip
    raise ValueError("no free loopback address")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` -> ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(replace, value)


def map_path(value: str, mounts: tuple[Mount, ...]) -> str:
    """Rewrite a value that names a mounted path (or ``--flag=<path>``, or a ``file://`` URI
    of one) to the local folder."""
    prefix, sep, rest = value.partition("=")
    if sep and prefix.startswith("-"):
        return f"{prefix}={map_path(rest, mounts)}"
    if value.startswith("file:///"):
        return "file://" + map_path(value.removeprefix("file://"), mounts)
    for mount in sorted(mounts, key=lambda m: len(m.mount_path), reverse=True):
        root = mount.mount_path.rstrip("/") or "/"
        if value == root:
            return str(mount.local_path)
        if value.startswith(root + "/"):
            return str(mount.local_path / value[len(root) + 1:])
    return value


def _field_ref(path: str, pod: Mapping[str, Any], env: Environment) -> str:
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": env.pod_ip,
        "status.podIPs": env.pod_ip,
        "status.hostIP": env.host_ip,
        "status.hostIPs": env.host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    raise KeyError(path)


def _resolve_env(
    container: Mapping[str, Any], pod: Mapping[str, Any], env: Environment, problems: list[str]
) -> dict[str, str]:
    meta = pod.get("metadata", {})
    values: dict[str, str] = {
        "PATH": env.base_path,
        "HOME": "/tmp",  # noqa: S108 - what most images have; overridden below to the pod folder
        "LANG": "C.UTF-8",
        "HOSTNAME": meta.get("name", ""),
        "POD_IP": env.pod_ip,
        "KUBERNETES_SERVICE_HOST": env.api_host,
        "KUBERNETES_SERVICE_PORT": str(env.api_port),
    }
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, table in (("configMapRef", env.config_maps), ("secretRef", env.secrets)):
            ref = source.get(kind)
            if ref is None:
                continue
            data = table.get(ref["name"])
            if data is None:
                if not ref.get("optional"):
                    problems.append(f"{kind} {ref['name']!r} not found")
                continue
            values.update({prefix + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            values[name] = expand(item.get("value", ""), values)
            continue
        source = item["valueFrom"]
        try:
            if "fieldRef" in source:
                values[name] = _field_ref(source["fieldRef"]["fieldPath"], pod, env)
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
                ref = source[kind]
                table = env.config_maps if kind == "configMapKeyRef" else env.secrets
                data = table.get(ref["name"], {})
                if ref["key"] in data:
                    values[name] = data[ref["key"]]
                elif not ref.get("optional"):
                    problems.append(f"env {name}: {kind} {ref['name']}/{ref['key']} not found")
            elif "resourceFieldRef" in source:
                values[name] = "0"
            else:
                problems.append(f"env {name}: unsupported valueFrom {sorted(source)}")
        except KeyError as e:
            problems.append(f"env {name}: unsupported fieldRef {e}")
    return values


def _probe(spec: Mapping[str, Any] | None, ports: Mapping[str, int], pod_ip: str,
           mounts: tuple[Mount, ...]) -> Probe | None:
    if not spec:
        return None
    timing: dict[str, Any] = {
        "initial_delay": float(spec.get("initialDelaySeconds", 0)),
        "period": float(spec.get("periodSeconds", 10)),
        "timeout": float(spec.get("timeoutSeconds", 1)),
        "success_threshold": int(spec.get("successThreshold", 1)),
        "failure_threshold": int(spec.get("failureThreshold", 3)),
    }

    def port_of(value: int | str) -> int:
        return int(value) if isinstance(value, int) or str(value).isdigit() else ports[str(value)]

    if "httpGet" in spec:
        get = spec["httpGet"]
        return Probe(ProbeKind.HTTP, host=get.get("host") or pod_ip, port=port_of(get["port"]),
                     path=get.get("path", "/"), scheme=get.get("scheme", "HTTP"), **timing)
    if "tcpSocket" in spec:
        tcp = spec["tcpSocket"]
        return Probe(ProbeKind.TCP, host=tcp.get("host") or pod_ip, port=port_of(tcp["port"]),
                     **timing)
    if "exec" in spec:
        argv = tuple(map_path(a, mounts) for a in spec["exec"].get("command", []))
        return Probe(ProbeKind.EXEC, argv=argv, **timing)
    return None


def _volumes(pod: Mapping[str, Any], pod_dir: Path, env: Environment,
             problems: list[str]) -> dict[str, Volume]:
    namespace = pod["metadata"].get("namespace", "default")
    volumes: dict[str, Volume] = {}
    for item in pod.get("spec", {}).get("volumes") or []:
        name = item["name"]
        local = pod_dir / "volumes" / name
        if "emptyDir" in item:
            volumes[name] = Volume(name, VolumeKind.EMPTY_DIR, local)
        elif "hostPath" in item:
            path = item["hostPath"]["path"]
            volumes[name] = Volume(name, VolumeKind.HOST_PATH, Path(path), path)
        elif "persistentVolumeClaim" in item:
            source = item["persistentVolumeClaim"]
            claim = source["claimName"]
            volumes[name] = Volume(name, VolumeKind.CLAIM,
                                   claim_dir(env.claims_root, namespace, claim), claim,
                                   read_only=bool(source.get("readOnly")))
        elif "configMap" in item:
            volumes[name] = Volume(name, VolumeKind.CONFIG_MAP, local, item["configMap"]["name"])
        elif "secret" in item:
            volumes[name] = Volume(name, VolumeKind.SECRET, local, item["secret"]["secretName"])
        elif "projected" in item:
            volumes[name] = Volume(name, VolumeKind.PROJECTED, local)
        else:
            kinds = sorted(k for k in item if k != "name")
            problems.append(f"volume {name}: unsupported type {kinds}")
    return volumes


def _container(
    c: Mapping[str, Any], pod: Mapping[str, Any], pod_dir: Path, volumes: Mapping[str, Volume],
    env: Environment, problems: list[str],
) -> ContainerPlan:
    name = c["name"]
    mounts: list[Mount] = []
    for m in c.get("volumeMounts") or []:
        volume = volumes.get(m["name"])
        if volume is None:
            problems.append(f"container {name}: mount of unknown volume {m['name']!r}")
            continue
        local = volume.local_dir / m["subPath"] if m.get("subPath") else volume.local_dir
        mounts.append(Mount(m["mountPath"], local, bool(m.get("readOnly")) or volume.read_only))
    termination = pod_dir / "termination" / name
    term_path = c.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    mounts.append(Mount(term_path, termination))
    all_mounts = tuple(mounts)
    values = _resolve_env(c, pod, env, problems)
    values["HOME"] = str(pod_dir / "home")
    # Only what the pod set names paths inside it: the executor's own values are this
    # machine's (its PATH starts with the venv's bin, which under a clone in /tmp would
    # otherwise be "mapped" into a pod's emptyDir at /tmp, and no program would be found).
    ours = {"PATH": env.base_path, "HOME": values["HOME"]}
    for key, value in list(values.items()):
        if ours.get(key) != value:
            values[key] = map_path(value, all_mounts)
    command = [expand(a, values) for a in c.get("command") or []]
    args = [expand(a, values) for a in c.get("args") or []]
    argv = tuple(map_path(a, all_mounts) for a in command + args)
    if not command:
        # Without an image there is no entrypoint to fall back on.
        problems.append(f"container {name}: no command (the image's entrypoint is not available "
                        "to the local executor)")
    working = c.get("workingDir")
    cwd = Path(map_path(working, all_mounts)) if working else pod_dir / "home"
    ports = {p["name"]: int(p["containerPort"]) for p in c.get("ports") or [] if p.get("name")}
    try:
        readiness = _probe(c.get("readinessProbe"), ports, env.pod_ip, all_mounts)
    except KeyError as e:
        problems.append(f"container {name}: readiness probe names unknown port {e}")
        readiness = None
    return ContainerPlan(
        name=name,
        argv=argv,
        env=tuple(sorted(values.items())),
        cwd=cwd,
        mounts=all_mounts,
        termination_message_path=termination,
        fallback_to_logs=c.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        log_path=pod_dir / "logs" / f"{name}.log",
        readiness=readiness,
        cpus=exclusive_cpus(c),
    )


def plan_pod(pod: Mapping[str, Any], env: Environment) -> PodPlan:
    """Translate one Pod (its JSON form) into what the executor runs."""
    meta = pod["metadata"]
    spec = pod.get("spec", {})
    pod_dir = env.pods_root / f"{meta.get('namespace', 'default')}_{meta['name']}_{meta['uid']}"
    problems: list[str] = []
    volumes = _volumes(pod, pod_dir, env, problems)
    init = tuple(_container(c, pod, pod_dir, volumes, env, problems)
                 for c in spec.get("initContainers") or [])
    main = tuple(_container(c, pod, pod_dir, volumes, env, problems)
                 for c in spec.get("containers") or [])
    grace = spec.get("terminationGracePeriodSeconds")
    return PodPlan(
        namespace=meta.get("namespace", "default"),
        name=meta["name"],
        uid=meta["uid"],
        ip=env.pod_ip,
        pod_dir=pod_dir,
        restart_policy=RestartPolicy(spec.get("restartPolicy", "Always")),
        grace_seconds=float(30 if grace is None else grace),
        volumes=tuple(volumes.values()),
        init_containers=init,
        containers=main,
        problems=tuple(problems),
    )


def exit_reason(code: int) -> str:
    """The container state reason for an exit code, as the kubelet reports it."""
    # No memory cgroup here, so never OOMKilled.
    return "Completed" if code == 0 else "Error"


def termination_message(message_file: str | None, log_tail: str, exit_code: int,
                        fallback_to_logs: bool) -> str:
    """What the kubelet puts in ``state.terminated.message`` (4096 bytes at most)."""
    message = message_file or ""
    if not message and fallback_to_logs and exit_code != 0:
        lines = log_tail.splitlines()[-80:]
        message = "\n".join(lines)[-2048:]
    return message[:4096]
