"""``infleet run``: the operator, in this process.

    infleet run [--namespace NS ... | --all-namespaces] [--config FILE]
                [--kubeconfig FILE [--context NAME]] [--peering NAME --priority N | --standalone]
                [--health-address HOST:PORT]

The configuration is validated before anything connects (a typo stops the operator with the
field's name). Clients are built at startup and closed at exit; kopf runs in this event loop;
``/healthz``, ``/readyz`` and ``/metrics`` are served beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger("infleet.operator")


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (cluster-wide)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="operator configuration (YAML; the Helm chart's ConfigMap)")
    parser.add_argument("--kubeconfig", type=Path, metavar="FILE",
                        help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the pod's "
                        "service account in a cluster)")
    parser.add_argument("--context", help="kubeconfig context")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME",
                         help="kopf peering object shared by the replicas (the one with the "
                         "highest --priority is active, the others stand by)")
    peering.add_argument("--standalone", action="store_true",
                         help="run without peering (one replica only)")
    parser.add_argument("--priority", type=int, default=0,
                        help="peering priority; replicas must differ (default: 0)")
    parser.add_argument("--health-address", default="0.0.0.0:8080", metavar="HOST:PORT",
                        help="where /healthz, /readyz and /metrics are served; port 0 picks "
                        "one (default: 0.0.0.0:8080)")
    parser.add_argument("--port-file", type=Path, metavar="FILE",
                        help="write the health port there once listening (for tests)")


def run(args: argparse.Namespace) -> int:
    from infleet.api.config import load_operator_config

    config = load_operator_config(args.config)  # validated before anything connects
    if not args.verbose:
        # kopf logs every handler call at INFO; infleet logs what it decides.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.standalone and not args.peering:
        args.standalone = True
    host, _, port = args.health_address.rpartition(":")
    try:
        health = (host or "0.0.0.0", int(port))  # noqa: S104
    except ValueError:
        from infleet.operator.errors import OperatorError

        raise OperatorError(f"--health-address {args.health_address!r} is not HOST:PORT") from None
    asyncio.run(_main(args, config, health))
    return 0


async def _main(args: argparse.Namespace, config: Any, health: tuple[str, int]) -> None:
    import httpx
    import kopf

    from infleet.operator import handlers
    from infleet.operator.kube import KubeClient, load_credentials
    from infleet.operator.metrics import HealthServer
    from infleet.operator.state import OperatorState
    from infleet.scheduler.settings import cluster_policy

    creds = load_credentials(args.kubeconfig, args.context)
    identity = f"{socket.gethostname()}-{os.getpid()}"
    state = OperatorState(
        config=config, policy=cluster_policy(config), kube=KubeClient(creds),
        http=httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0)), identity=identity,
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        token = creds.bearer()
        return kopf.ConnectionInfo(
            server=creds.server, ca_path=creds.ca_file, insecure=creds.insecure,
            scheme="Bearer" if token else None, token=token, certificate_path=creds.cert_file,
            private_key_path=creds.key_file, default_namespace=creds.namespace,
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress and the last handled spec in annotations, never in status: the status
        # is infleet's, written whole, and a structural schema would prune kopf's fields.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="infleet.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="infleet.dev", key="last-handled-spec")
        settings.persistence.finalizer = "infleet.dev/finalizer"
        # Only warnings become Events (a spec that fails for good); infleet posts its own.
        settings.posting.level = logging.WARNING
        settings.peering.priority = args.priority
        settings.peering.name = args.peering or "infleet"
        settings.peering.standalone = bool(args.standalone)
        # A replica that dies without a goodbye is taken for gone after this long, and the
        # next one in priority takes over.
        settings.peering.lifetime = 20
        settings.watching.server_timeout = 300
        settings.watching.reconnect_backoff = 1.0
        settings.networking.request_timeout = 60
        settings.execution.max_workers = 8
        # The CRDs exist before the operator starts (the chart installs them), so kopf need not
        # watch CustomResourceDefinitions and Namespaces for new ones: the chart's RBAC grants
        # neither, and kopf would warn about the missing permission at every start.
        settings.scanning.disabled = True

    ready = asyncio.Event()
    stop = asyncio.Event()
    server = HealthServer(health[0], health[1], ready.is_set)
    port = await server.start()
    if args.port_file:
        args.port_file.write_text(f"{port}\n")
    log.info("infleet operator %s: health and metrics on %s:%d", identity, health[0], port)

    async def mark_started() -> None:
        await ready.wait()
        state.started = True

    watcher = asyncio.create_task(mark_started())
    try:
        await kopf.operator(
            registry=registry,
            memo=kopf.Memo(infleet=state),
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            standalone=bool(args.standalone),
            priority=args.priority,
            peering_name=args.peering,
            ready_flag=ready,
            stop_flag=stop,
        )
    finally:
        watcher.cancel()
        await server.stop()
        await state.http.aclose()
        await state.kube.close()
