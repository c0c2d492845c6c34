"""``infleet dev``: the local cluster a new user starts with.

    infleet dev tools                 build (once) or locate the control-plane binaries
    infleet dev up [--profile dev]    start a cluster with a simulated fleet, apply the CRD
    infleet dev operator [--stop]     run the operator (`infleet run -A`) against it in the
                                      background with the dev configuration; `down` stops it
    infleet dev status                what runs, where its kubeconfig is
    eval "$(infleet dev env)"         point kubectl and helm of the same build at it (and
                                      INFLEET_GATEWAY at the Gateway)
    infleet dev down                  stop it and delete its data

Heavy imports (the kubernetes client) happen inside ``run`` only.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# The dev cluster's operator configuration, beside the repository's examples.
DEV_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "dev" / "operator-config.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dev_command", metavar="ACTION", required=True)
    tools = sub.add_parser("tools", help="build or locate the cached Go binaries")
    tools.add_argument("--check", action="store_true",
                       help="only check that they are built (exit 1 if not)")
    up = sub.add_parser("up", help="start a local cluster with a simulated fleet")
    up.add_argument("--profile", default="dev",
                    help="fleet profile: dev, large, or a path to a profile YAML (default: dev)")
    up.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")
    operator = sub.add_parser(
        "operator", help="run the operator against the cluster in the background (idempotent)"
    )
    operator.add_argument("--config", type=Path, default=DEV_CONFIG,
                          help="operator configuration (default: the dev one, in examples/dev/)")
    operator.add_argument("--stop", action="store_true", help="stop it instead")
    operator.add_argument("--timeout", type=float, default=60.0,
                          help="seconds to wait for it to turn ready")
    status = sub.add_parser("status", help="show the cluster")
    env = sub.add_parser(
        "env", help="print shell exports (KUBECONFIG, PATH with kubectl and helm, "
        "INFLEET_GATEWAY) for eval"
    )
    down = sub.add_parser("down", help="stop the cluster and delete its data")
    for action in (up, operator, status, env, down):
        action.add_argument("--name", default="default",
                            help="cluster name, so several can run side by side (default: default)")


def _workdir(name: str) -> Path:
    from infleet.devcluster.tools import cache_root

    return cache_root() / "clusters" / name


def run(args: argparse.Namespace) -> int:
    action: str = args.dev_command
    if action == "tools":
        return _tools(args.check)
    if action == "up":
        return _up(args.name, args.profile, args.timeout)
    if action == "operator":
        return _operator(args.name, args.config, args.stop, args.timeout)
    if action == "status":
        return _status(args.name)
    if action == "env":
        return _env(args.name)
    return _down(args.name)


def _tools(check: bool) -> int:
    from infleet.devcluster import tools

    started = time.monotonic()
    found = tools.locate() if check else tools.build()
    print(f"control-plane binaries ({', '.join(f'{k} {v}' for k, v in tools.versions().items())})"
          f" in {found.bin_dir} [{time.monotonic() - started:.1f}s]")
    gw = found.gateway_tools()
    print(f"gateway: traefik {gw.traefik_version}, Gateway API {gw.gateway_api_version} CRDs "
          f"in {gw.traefik.parent}")
    s3 = tools.s3_server(build=not check)
    print(f"test S3 server: {s3}")
    return 0


def _up(name: str, profile_name: str, timeout: float) -> int:
    from infleet.api.render import render_crd, render_peering_crds
    from infleet.devcluster import fleet, tools
    from infleet.devcluster.cluster import LocalCluster, load_state
    from infleet.devcluster.errors import ClusterStartError, ClusterStateError

    workdir = _workdir(name)
    if load_state(workdir) is not None:
        raise ClusterStateError(
            f"cluster {name!r} is already up (kubeconfig {workdir / 'kubeconfig'}); "
            f"`infleet dev down --name {name}` first"
        )
    if workdir.exists():
        shutil.rmtree(workdir)
    profile = fleet.load_profile(profile_name)
    started = time.monotonic()
    print(f"starting cluster {name!r}: Kubernetes {tools.versions()['kubernetes']}, profile "
          f"{profile.name!r} ({profile.node_count()} nodes, {len(profile.classes)} classes)",
          flush=True)
    cluster = LocalCluster(workdir, tools.locate(), profile, name=f"infleet-{name}").start(timeout)
    crd_error = None
    try:
        cluster.apply_crd(render_crd())
        for peering in render_peering_crds():  # kopf's, for operator replicas that peer
            cluster.apply_crd(peering)
    except ClusterStartError as e:
        # Keep the cluster: whoever is fixing the CRD re-applies it with kubectl.
        crd_error = e
    except BaseException:
        cluster.stop()
        raise
    kubeconfig = cluster.kubeconfig
    print(f"cluster {name!r} is up in {time.monotonic() - started:.0f}s; "
          f"API server {cluster.state.server}\n"
          f"kubeconfig: {kubeconfig}\n"
          f"gateway: {cluster.state.gateway_url} (Gateway infleet-system/infleet; route "
          f"HTTPRoutes by hostname)\n\n"
          f"  export KUBECONFIG={kubeconfig}\n"
          f"  export PATH={cluster.tools.bin_dir}:$PATH   # kubectl and helm of the same build\n"
          f"  export INFLEET_GATEWAY={cluster.state.gateway_url}\n"
          f"  kubectl get nodes -L nvidia.com/gpu.product,node.kubernetes.io/instance-type\n"
          f"  kubectl get inferencedeployments -A\n\n"
          f"logs: {workdir / 'logs'}; stop with `infleet dev down"
          f"{'' if name == 'default' else ' --name ' + name}`")
    if crd_error is not None:
        print(f"\nerror: the cluster is up, but {crd_error}", file=sys.stderr)
        return 1
    return 0


def _operator(name: str, config: Path, stop: bool, timeout: float) -> int:
    import httpx

    from infleet import toolbox
    from infleet.api.config import load_operator_config
    from infleet.devcluster.cluster import STOP_GRACE_SECONDS, load_state, save_state

    workdir = _workdir(name)
    state = load_state(workdir)
    if state is None:
        print(f"cluster {name!r} is not running (start it with `infleet dev up`)", file=sys.stderr)
        return 1
    pid = state.pids.get("operator")
    running = pid is not None and toolbox.alive(pid)
    log = workdir / "logs" / "operator.log"
    if stop:
        if pid is not None and running:
            toolbox.stop_groups([pid], STOP_GRACE_SECONDS)
        state.pids.pop("operator", None)
        state.ports.pop("operator", None)
        save_state(state)
        print(f"operator of cluster {name!r} {'stopped' if running else 'was not running'}")
        return 0
    if running:
        print(f"operator of cluster {name!r} already running (pid {pid}, "
              f"http://127.0.0.1:{state.ports.get('operator')}/metrics; log {log})")
        return 0
    load_operator_config(config)  # refuse a bad configuration here, with its message
    port = toolbox.free_port()
    argv = [sys.executable, "-m", "infleet", "run", "--all-namespaces", "--standalone",
            "--config", str(config.resolve()), "--kubeconfig", str(state.kubeconfig),
            "--health-address", f"127.0.0.1:{port}"]
    proc = toolbox.spawn(argv, log)
    state.pids["operator"], state.ports["operator"] = proc.pid, port
    save_state(state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                print(f"operator of cluster {name!r} is running (pid {proc.pid}, config {config}, "
                      f"metrics http://127.0.0.1:{port}/metrics, log {log}); "
                      f"`infleet dev down` stops it with the cluster")
                return 0
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    toolbox.stop_groups([proc.pid], STOP_GRACE_SECONDS, {proc.pid: proc})
    state.pids.pop("operator", None)
    state.ports.pop("operator", None)
    save_state(state)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
    print(f"the operator did not turn ready within {timeout:.0f}s; its log:\n{tail}",
          file=sys.stderr)
    return 1


def _status(name: str) -> int:
    from infleet import toolbox
    from infleet.devcluster.cluster import ADDONS, COMPONENTS, load_state

    workdir = _workdir(name)
    state = load_state(workdir)
    if state is None:
        print(f"cluster {name!r} is not running (start it with `infleet dev up`)")
        return 1
    down = [c for c in COMPONENTS if c in state.pids and not toolbox.alive(state.pids[c])]
    print(f"cluster {name!r}: profile {state.profile!r}, Kubernetes {state.kubernetes_version}, "
          f"API server {state.server}\nkubeconfig: {state.kubeconfig}\n"
          f"gateway: {state.gateway_url or 'none'}")
    for component in COMPONENTS:
        pid = state.pids.get(component)
        alive = pid is not None and component not in down
        print(f"  {component:<24} {'running' if alive else 'STOPPED'}  pid {pid}")
    for addon in ADDONS:
        pid = state.pids.get(addon)
        if pid is not None:
            print(f"  {addon:<24} {'running' if toolbox.alive(pid) else 'STOPPED'}  pid {pid}")
    if down:
        print(f"components stopped: {', '.join(down)}; see {workdir / 'logs'}")
        return 1
    try:
        from kubernetes import client

        from infleet.devcluster.cluster import kube_client

        api = kube_client(state.kubeconfig)
        core: Any = client.CoreV1Api(api)
        nodes = core.list_node().items
        ready = sum(
            1 for n in nodes
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        )
        print(f"nodes: {ready}/{len(nodes)} Ready")
        if state.gateway_url:
            from infleet.devcluster import apply, gateway

            gw = apply.get(api, gateway.objects(state.ports["gateway"])[-1])
            print(f"Gateway {gateway.NAMESPACE}/{gateway.NAME}: "
                  f"{'Programmed' if gateway.programmed(gw) else 'NOT programmed'}")
        api.close()
    except Exception as e:
        print(f"API server not answering: {e}")
        return 1
    return 0


def _env(name: str) -> int:
    from infleet.devcluster import tools
    from infleet.devcluster.cluster import load_state

    state = load_state(_workdir(name))
    if state is None:
        print(f"cluster {name!r} is not running (start it with `infleet dev up`)", file=sys.stderr)
        return 1
    bin_dir = shlex.quote(str(tools.locate().bin_dir))
    print(f"export KUBECONFIG={shlex.quote(str(state.kubeconfig))}")
    print(f'export PATH={bin_dir}:"$PATH"')
    if state.gateway_url:
        print(f"export INFLEET_GATEWAY={shlex.quote(state.gateway_url)}")
    return 0


def _down(name: str) -> int:
    from infleet.devcluster.cluster import load_state, stop_pids

    workdir = _workdir(name)
    state = load_state(workdir)
    if state is None and not workdir.exists():
        print(f"cluster {name!r} is not running")
        return 0
    if state is not None:
        stop_pids(state.pids)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"cluster {name!r} stopped; its data is deleted")
    return 0
