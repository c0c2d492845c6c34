"""Start, check and stop one local cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, the kwok controller, the local executor and Traefik (the Gateway API
implementation, :mod:`infleet.devcluster.gateway`), each a process of its own.

Everything a cluster owns lives in one work directory (PKI, etcd data, kubeconfigs, logs and
``state.json`` with the pids and ports), so two clusters run side by side and ``infleet dev
down`` in another process can stop what ``infleet dev up`` started. Ports are picked free at
start. On a failed start the tail of every component's log is put in the error.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from infleet import toolbox
from infleet.devcluster import apply, fleet, gateway, health, pki, stages, volumes
from infleet.devcluster.errors import ClusterStartError, ClusterStateError
from infleet.devcluster.tools import Tools
from infleet.toolbox import free_port  # noqa: F401 - other modules import it from here

SERVICE_CIDR = "10.96.0.0/16"
STOP_GRACE_SECONDS = 10.0
# Order of start; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
              "executor", "traefik")
# Started on demand after the cluster is up (`infleet dev operator`), stopped first.
ADDONS = ("operator",)


@dataclass
class ClusterState:
    """What `state.json` records: enough for another process to check or stop the cluster."""

    name: str
    workdir: str
    profile: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    kubernetes_version: str = ""

    @property
    def kubeconfig(self) -> Path:
        return Path(self.workdir) / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def gateway_url(self) -> str:
        """Where the Gateway `infleet-system/infleet` listens (route by the Host header); empty
        for a cluster started by an infleet without a gateway."""
        port = self.ports.get("gateway")
        return f"http://127.0.0.1:{port}" if port else ""


def kube_client(kubeconfig: Path) -> Any:
    """A kubernetes ApiClient for a kubeconfig file (typed Any: the client is untyped)."""
    from kubernetes import config

    return config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )


def kubeconfig_yaml(server: str, ca: Path, token: str, user: str, context: str) -> str:
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server,
                                                   "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
    }
    return yaml.safe_dump(config, sort_keys=False)


class LocalCluster:
    """One local control plane with a simulated fleet. ``start()`` then ``stop()``."""

    def __init__(
        self,
        workdir: Path,
        tools: Tools,
        profile: fleet.Profile,
        *,
        name: str = "infleet-dev",
        die_with_parent: bool = False,
    ) -> None:
        self.workdir = workdir
        self.tools = tools
        self.profile = profile
        self.name = name
        self.die_with_parent = die_with_parent
        self.logs = workdir / "logs"
        self.state = ClusterState(
            name=name, workdir=str(workdir), profile=profile.name,
            ports={c: 0 for c in ("etcd", "etcd-peer", *COMPONENTS[1:5], "gateway",
                                  "gateway-ping")},
            kubernetes_version=tools.kubernetes_version,
        )
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pki: pki.Pki | None = None

    # -- public -------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state.kubeconfig

    def start(self, timeout: float = 120.0) -> LocalCluster:
        deadline = time.monotonic() + timeout
        if (self.workdir / "state.json").exists():
            raise ClusterStateError(
                f"{self.workdir} already holds a cluster; stop it first (infleet dev down)"
            )
        try:
            self._prepare()
            self._start("etcd", self._etcd_argv())
            self._wait(f"http://127.0.0.1:{self.state.ports['etcd']}/health", "etcd", deadline)
            self._start("kube-apiserver", self._apiserver_argv())
            self._wait(f"{self.state.server}/readyz", "kube-apiserver", deadline)
            self._create_nodes()
            self._install_gateway_api(deadline)
            self._start("kube-controller-manager", self._controller_manager_argv())
            self._start("kube-scheduler", self._scheduler_argv())
            self._start("kwok", self._kwok_argv())
            self._start("executor", self._executor_argv())
            self._start("traefik", self._traefik_argv(),
                        env={**_without_in_cluster(os.environ),
                             "KUBECONFIG": str(self.workdir / "gateway.kubeconfig")})
            for component in ("kube-controller-manager", "kube-scheduler"):
                port = self.state.ports[component]
                self._wait(f"https://127.0.0.1:{port}/healthz", component, deadline, verify=False)
            self._wait_nodes_ready(deadline)
            self._wait(f"http://127.0.0.1:{self.state.ports['gateway-ping']}/ping", "traefik",
                       deadline)
            self._wait_gateway_programmed(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this cluster started (SIGTERM, then SIGKILL) and forget them."""
        pids = dict(self.state.pids)
        stop_pids(pids, self._procs)
        self._procs.clear()
        self.state.pids.clear()
        (self.workdir / "state.json").unlink(missing_ok=True)

    def apply_crd(self, crd: dict[str, Any]) -> None:
        """Create a CustomResourceDefinition and wait until the API serves it."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        name = crd["metadata"]["name"]
        ext: Any = client.ApiextensionsV1Api(self.api_client())
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as e:
            try:
                reason = json.loads(e.body or "")["message"]
            except (TypeError, ValueError, KeyError):
                reason = str(e)
            raise ClusterStartError(f"the API server refused the CRD {name}: {reason}") from e
        try:
            toolbox.wait_until(
                lambda: any(
                    c.type == "Established" and c.status == "True"
                    for c in (ext.read_custom_resource_definition(name).status.conditions or [])
                ),
                30, f"CRD {name} to become Established",
            )
        finally:
            ext.api_client.close()

    def restart_component(self, component: str, timeout: float = 60.0) -> None:
        """Stop one component (SIGTERM, then SIGKILL) and start it again with the same command
        line, waiting until it is healthy: what survives an API server restart is tested so."""
        argv = {
            "kube-apiserver": self._apiserver_argv,
            "kube-controller-manager": self._controller_manager_argv,
            "kube-scheduler": self._scheduler_argv,
        }[component]()
        proc = self._procs.get(component)
        stop_pids({component: self.state.pids[component]},
                  {component: proc} if proc is not None else None)
        self._start(component, argv)
        deadline = time.monotonic() + timeout
        if component == "kube-apiserver":
            self._wait(f"{self.state.server}/readyz", component, deadline)
        else:
            port = self.state.ports[component]
            self._wait(f"https://127.0.0.1:{port}/healthz", component, deadline, verify=False)

    def api_client(self) -> Any:
        return kube_client(self.kubeconfig)

    def component_logs(self, lines: int = 40) -> str:
        parts = []
        for component in COMPONENTS:
            log = self.logs / f"{component}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {component} ({log}) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- setup ---------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for key in self.state.ports:
            self.state.ports[key] = toolbox.free_port()
        self._pki = pki.create(self.workdir / "pki")
        server = self.state.server
        users = {
            "kubeconfig": "admin",
            "controller-manager.kubeconfig": "system:kube-controller-manager",
            "scheduler.kubeconfig": "system:kube-scheduler",
            "kwok.kubeconfig": "infleet:kwok",
            "executor.kubeconfig": "infleet:executor",
            "gateway.kubeconfig": gateway.USER,
        }
        for filename, user in users.items():
            path = self.workdir / filename
            path.write_text(kubeconfig_yaml(server, self._pki.ca, self._pki.tokens[user], user,
                                            self.name))
            path.chmod(0o600)
        (self.workdir / "scheduler.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.workdir / "scheduler.kubeconfig"),
                                 "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
        }))
        # kwok's stages for this profile (the simulated build reports the profile's figures).
        (self.workdir / "kwok-stages.yaml").write_text(stages.render(self.profile))
        (self.workdir / "traefik.yaml").write_text(yaml.safe_dump(gateway.static_config(
            self.state.ports["gateway"], self.state.ports["gateway-ping"])))
        self._save_state()

    def _save_state(self) -> None:
        save_state(self.state)

    def _start(self, component: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        # die_with_parent: SIGTERM when the starting process exits, so a crashed test session
        # leaves nothing behind.
        proc = toolbox.spawn(argv, self.logs / f"{component}.log", env=env, cwd=self.workdir,
                             preexec=toolbox.die_with_parent if self.die_with_parent else None)
        self._procs[component] = proc
        self.state.pids[component] = proc.pid
        self._save_state()

    def _failed(self, message: str) -> ClusterStartError:
        logs = self.component_logs()
        return ClusterStartError(f"{message}\ncomponent logs (last lines):\n{logs}")

    def _check_alive(self) -> None:
        for component, proc in self._procs.items():
            if proc.poll() is not None:
                raise self._failed(f"{component} exited with code {proc.returncode}")

    def _wait(self, url: str, component: str, deadline: float, verify: bool = True) -> None:
        assert self._pki is not None
        context = ssl.create_default_context(cafile=str(self._pki.ca))
        if not verify:  # the component's self-signed serving certificate
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {self._pki.tokens['admin']}"}
        with httpx.Client(verify=context, headers=headers, timeout=2) as client:
            try:
                toolbox.wait_until(lambda: client.get(url).status_code == 200,
                                   toolbox.remaining(deadline), f"{component} to answer {url}",
                                   interval=0.2, abort=self._check_alive)
            except toolbox.WaitTimeout as e:
                raise self._failed(f"{component} not healthy in time: {e}") from None

    # -- component command lines -------------------------------------------------------------
    def _etcd_argv(self) -> list[str]:
        client_url = f"http://127.0.0.1:{self.state.ports['etcd']}"
        peer_url = f"http://127.0.0.1:{self.state.ports['etcd-peer']}"
        return [
            str(self.tools.path("etcd")),
            "--name", "infleet", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"infleet={peer_url}",
            "--listen-metrics-urls", f"http://127.0.0.1:{toolbox.free_port()}",
            # A throwaway cluster: no fsync, smaller snapshots, quiet logs.
            "--unsafe-no-fsync", "--snapshot-count", "10000", "--log-level", "warn",
            "--quota-backend-bytes", str(4 * 1024**3),
        ]

    def _apiserver_argv(self) -> list[str]:
        p = self.workdir / "pki"
        return [
            str(self.tools.path("kube-apiserver")),
            "--etcd-servers", f"http://127.0.0.1:{self.state.ports['etcd']}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.state.ports["kube-apiserver"]),
            "--tls-cert-file", str(p / "apiserver.crt"),
            "--tls-private-key-file", str(p / "apiserver.key"),
            "--client-ca-file", str(p / "ca.crt"),
            "--token-auth-file", str(p / "tokens.csv"),
            "--authorization-mode", "RBAC",
            # Explicit, so a changed default never turns Pod Security or the SA plugin off.
            "--enable-admission-plugins",
            "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,DefaultTolerationSeconds,"
            "TaintNodesByCondition,Priority,RuntimeClass,DefaultStorageClass,"
            "StorageObjectInUseProtection,MutatingAdmissionWebhook,"
            "ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,ResourceQuota",
            "--allow-privileged=true",  # so a privileged pod is refused by Pod Security only
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(p / "sa.pub"),
            "--service-account-signing-key-file", str(p / "sa.key"),
            "--service-cluster-ip-range", SERVICE_CIDR,
            # The `kubernetes` Service endpoint would be 127.0.0.1, which endpoints refuse.
            "--endpoint-reconciler-type", "none",
            "--profiling=false", "-v", "1",
        ]

    def _controller_manager_argv(self) -> list[str]:
        kubeconfig = str(self.workdir / "controller-manager.kubeconfig")
        return [
            str(self.tools.path("kube-controller-manager")),
            "--kubeconfig", kubeconfig,
            "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
            "--bind-address", "127.0.0.1",
            "--secure-port", str(self.state.ports["kube-controller-manager"]),
            "--leader-elect=false", "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(self.workdir / "pki" / "sa.key"),
            "--root-ca-file", str(self.workdir / "pki" / "ca.crt"),
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--kube-api-qps", "500", "--kube-api-burst", "1000",
            # kwok's Leases last longer than a kubelet's (infleet.devcluster.health): a node is
            # Unknown only after six missed renewals, not after a slow moment of a busy machine.
            "--node-monitor-grace-period", f"{health.NODE_GRACE_SECONDS}s",
            "--node-startup-grace-period", f"{health.NODE_GRACE_SECONDS}s",
            "--profiling=false", "-v", "1",
        ]

    def _scheduler_argv(self) -> list[str]:
        kubeconfig = str(self.workdir / "scheduler.kubeconfig")
        return [
            str(self.tools.path("kube-scheduler")),
            "--config", str(self.workdir / "scheduler.yaml"),
            "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
            "--bind-address", "127.0.0.1",
            "--secure-port", str(self.state.ports["kube-scheduler"]),
            "-v", "1",
        ]

    def _kwok_argv(self) -> list[str]:
        return [
            str(self.tools.path("kwok")),
            "--kubeconfig", str(self.workdir / "kwok.kubeconfig"),
            "--config", str(self.workdir / "kwok-stages.yaml"),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector", f"{fleet.KWOK_ANNOTATION}=fake",
            "--cidr", "10.0.0.1/16", "--node-ip", "10.255.0.1",
            "--node-lease-duration-seconds", str(health.KWOK_LEASE_SECONDS),
            "--server-address", f"127.0.0.1:{self.state.ports['kwok']}",
        ]

    def _traefik_argv(self) -> list[str]:
        return [str(self.tools.gateway_tools().traefik),
                f"--configFile={self.workdir / 'traefik.yaml'}"]

    def _executor_argv(self) -> list[str]:
        nodes = self.profile.local_nodes()
        emulated = [f"--emulated={node}={cpu}"
                    for node, cpu in self.profile.emulated_nodes().items()]
        return [
            sys.executable, "-m", "infleet.devcluster.executor",
            "--kubeconfig", str(self.workdir / "executor.kubeconfig"),
            "--workdir", str(self.workdir / "pods"),
            "--nodes", ",".join(nodes),
            *emulated,
        ]

    # -- the Gateway API ----------------------------------------------------------------------
    def _install_gateway_api(self, deadline: float) -> None:
        """The pinned standard-channel CRDs (Established), Traefik's RBAC and the Gateway, and
        the default StorageClass (infleet.devcluster.volumes)."""
        api = self.api_client()
        try:
            names = []
            for path in self.tools.gateway_tools().crds:
                for doc in yaml.safe_load_all(path.read_text()):
                    if doc:
                        apply.apply(api, doc)
                        if doc["kind"] == "CustomResourceDefinition":
                            names.append(doc["metadata"]["name"])
            for name in names:
                crd = {"apiVersion": "apiextensions.k8s.io/v1",
                       "kind": "CustomResourceDefinition", "metadata": {"name": name}}
                toolbox.wait_until(lambda crd=crd: any(  # type: ignore[misc]
                    c["type"] == "Established" and c["status"] == "True"
                    for c in apply.get(api, crd).get("status", {}).get("conditions", [])
                ), toolbox.remaining(deadline, 1), f"CRD {name} to become Established",
                    interval=0.2)
            for obj in [volumes.storage_class(), *gateway.objects(self.state.ports["gateway"])]:
                apply.apply(api, obj)
        finally:
            api.close()

    def _wait_gateway_programmed(self, deadline: float) -> None:
        api = self.api_client()
        probe = gateway.objects(self.state.ports["gateway"])[-1]
        try:
            toolbox.wait_until(
                lambda: gateway.programmed(apply.get(api, probe)), toolbox.remaining(deadline),
                f"Traefik to program the Gateway {gateway.NAMESPACE}/{gateway.NAME}",
                lambda: str(apply.get(api, probe).get("status", {}).get("conditions")),
                interval=0.2, abort=self._check_alive)
        except toolbox.WaitTimeout as e:
            raise self._failed(str(e)) from None
        finally:
            api.close()

    # -- nodes ---------------------------------------------------------------------------------
    def _create_nodes(self) -> None:
        from kubernetes import client

        nodes = fleet.render_nodes(self.profile, fleet.HostFacts.detect())
        api = self.api_client()
        core: Any = client.CoreV1Api(api)

        def create(node: dict[str, Any]) -> None:
            core.create_node(node)

        try:
            # Creating 2,000 nodes one by one takes a minute; the API server takes them in
            # parallel happily.
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(create, nodes))
        finally:
            api.close()

    def _wait_nodes_ready(self, deadline: float) -> None:
        """Every node Ready, untainted and freshly renewed (infleet.devcluster.health)."""
        from kubernetes import client

        api = self.api_client()
        core: Any = client.CoreV1Api(api)
        coord: Any = client.CoordinationV1Api(api)
        want = self.profile.node_count()
        problems: list[str] = ["not listed yet"]

        def settled() -> bool:
            nonlocal problems
            # Raw JSON: the client's models take seconds of CPU for 2,000 nodes, CPU the
            # cluster being waited for needs.
            nodes = json.loads(core.list_node(_preload_content=False).data)["items"]
            leases = json.loads(coord.list_namespaced_lease(
                "kube-node-lease", _preload_content=False).data)["items"]
            problems = health.unsettled(nodes, leases, datetime.now(UTC), want)
            return not problems

        try:
            toolbox.wait_until(settled, toolbox.remaining(deadline),
                               f"the {want} nodes to be Ready", lambda: "; ".join(problems),
                               interval=1.0, abort=self._check_alive)
        except toolbox.WaitTimeout as e:
            raise self._failed(str(e)) from None
        finally:
            api.close()


def _without_in_cluster(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    # Traefik picks its in-cluster client when these are set (inside a pod, say), and must use
    # the kubeconfig of its own user instead.
    return {k: v for k, v in env.items()
            if k not in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}


def stop_pids(
    pids: dict[str, int], procs: dict[str, subprocess.Popen[bytes]] | None = None
) -> None:
    """SIGTERM every component's process group (reverse start order; children such as the
    executor's pods go too), then SIGKILL what is left after the grace period."""
    procs = procs or {}
    order = [pids[c] for c in (*reversed(ADDONS), *reversed(COMPONENTS)) if c in pids]
    by_pid = {pids[c]: proc for c, proc in procs.items() if c in pids}
    toolbox.stop_groups(order, STOP_GRACE_SECONDS, by_pid)


def load_state(workdir: Path) -> ClusterState | None:
    path = workdir / "state.json"
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def save_state(state: ClusterState) -> None:
    (Path(state.workdir) / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
