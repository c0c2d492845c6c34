"""``infleet plan``: what infleet would do for a deployment, without doing it.

The only module of the package that performs I/O: it reads the deployment, the inventory
(a file, or Nodes and Pods from the cluster through the kubernetes client), the optional
profiles and operator configuration, then calls the pure planner and prints the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

EXIT_INFEASIBLE = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", required=True, type=Path,
        help="InferenceDeployment manifest (YAML or JSON); its status' engine profiles are used",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--inventory", type=Path,
        help="nodes from a file: a NodeInventory, or Node/Pod objects (kubectl get -o yaml)",
    )
    source.add_argument(
        "--kubeconfig", type=Path,
        help="read Nodes and Pods from this cluster (default when --inventory is absent: "
        "$KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--demand", type=float, metavar="RPS", help="demand in requests/s")
    parser.add_argument(
        "--profiles", type=Path,
        help="ClassProfiles file: capacity per replica and batch-1 latency per class",
    )
    parser.add_argument(
        "--config", type=Path, help="operator configuration (class costs and overrides)"
    )
    parser.add_argument(
        "--model-size", metavar="BYTES",
        help="model size (e.g. 2.5Gi) for the GPU memory check; read from file:// URIs",
    )
    parser.add_argument(
        "--model-file", type=Path, metavar="PATH",
        help="a local copy of the model (default: the spec's file:// URI): its size drives the "
        "GPU memory check, its operators are checked against each backend installed here",
    )
    parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")


def _load_documents(path: Path) -> list[Any]:
    import yaml

    from infleet.scheduler.errors import InventoryError

    try:
        text = path.read_text()
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise InventoryError(f"cannot read {path}: {e}") from e


def _deployment(path: Path) -> dict[str, Any]:
    from infleet.api import KIND
    from infleet.api.errors import SpecError

    docs = _load_documents(path)
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == KIND:
            return d
    raise SpecError([f"{path}: no {KIND} document found"])


def _cluster_objects(
    kubeconfig: Path | None, context: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    from infleet.scheduler.errors import ClusterReadError

    # The client's generated signatures do not describe _preload_content=False (it returns
    # the raw urllib3 response), so the calls go through Any.
    loader: Any = config
    try:
        api_client = loader.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context
        )
    except (ConfigException, OSError) as e:
        raise ClusterReadError(f"cannot load kubeconfig: {e}") from e
    core: Any = client.CoreV1Api(api_client)
    try:
        # Raw JSON: the adapters read the wire's camelCase dicts, and 10k Nodes parse faster
        # without building the client's model objects.
        nodes = _list_all(core.list_node)
        pods = _list_all(
            core.list_pod_for_all_namespaces,
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
        )
    except ApiException as e:
        raise ClusterReadError(f"reading Nodes/Pods failed: {e.status} {e.reason}") from e
    except (HTTPError, OSError) as e:
        raise ClusterReadError(
            f"cannot reach the API server {api_client.configuration.host}: {e}"
        ) from e
    finally:
        api_client.close()
    return nodes, pods


def _list_all(call: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a list call, in pages (big clusters hold 100k pods)."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = json.loads(
            call(limit=500, _continue=token, _preload_content=False, _request_timeout=60,
                 **kwargs).data
        )
        items += page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items


def _model_file(arg: Path | None, uri: str) -> Path | None:
    if arg is not None:
        if not arg.is_file():
            from infleet.scheduler.errors import SchedulerError

            raise SchedulerError(f"--model-file: {arg} is not a file")
        return arg
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        if path.is_file():
            return path
    return None


def _model_size(arg: str | None, path: Path | None) -> int | None:
    from infleet.scheduler.inventory import parse_quantity

    if arg is not None:
        try:
            return int(parse_quantity(arg))
        except ValueError as e:
            from infleet.scheduler.errors import SchedulerError

            raise SchedulerError(f"--model-size: {e}") from e
    return path.stat().st_size if path is not None else None


def _model_facts(size_arg: str | None, path: Path | None) -> tuple[Any, list[str]]:
    """What is known about the model, and notes on what could not be checked."""
    from types import MappingProxyType

    from infleet.scheduler.policy import ModelFacts

    size = _model_size(size_arg, path)
    notes = [] if size is not None else [
        "model size unknown: GPU memory not checked (pass --model-size or --model-file)"
    ]
    if path is None:
        notes.append("operators not checked: the model is not a local file (pass --model-file)")
        return ModelFacts(size_bytes=size), notes
    # The backends' own tables, loaded only here: the scheduler itself never imports them.
    from infleet.runtime.errors import BackendUnavailable
    from infleet.runtime.opsupport import check

    try:
        support = check(path)
    except BackendUnavailable as e:
        notes.append(f"operators not checked: {e}")
        return ModelFacts(size_bytes=size), notes
    notes += [f"{b.value} operators not checked: {why}" for b, why in support.unchecked.items()]
    facts = ModelFacts(size_bytes=size, unsupported_ops=MappingProxyType(support.unsupported))
    return facts, notes


def run(args: argparse.Namespace) -> int:
    import yaml

    from infleet.api import parse_spec
    from infleet.api.config import load_operator_config
    from infleet.scheduler.classes import derive_classes
    from infleet.scheduler.inventory import nodes_from_documents, nodes_from_objects
    from infleet.scheduler.plan import plan_deployment
    from infleet.scheduler.profiles import profiles_from_data, profiles_from_status
    from infleet.scheduler.report import plan_to_dict, plan_to_table
    from infleet.scheduler.settings import cluster_policy

    obj = _deployment(args.filename)
    spec = parse_spec(obj.get("spec") or {})
    name = str((obj.get("metadata") or {}).get("name", ""))

    if args.inventory is not None:
        nodes = nodes_from_documents(_load_documents(args.inventory))
    else:
        node_objs, pod_objs = _cluster_objects(args.kubeconfig, args.context)
        nodes = nodes_from_objects(node_objs, pod_objs)

    profiles = profiles_from_status(obj.get("status") or {}, spec)
    if args.profiles is not None:
        docs = _load_documents(args.profiles)
        profiles.update(profiles_from_data(docs[0] if docs else {}, spec, str(args.profiles)))

    policy = cluster_policy(load_operator_config(args.config))
    model, notes = _model_facts(args.model_size, _model_file(args.model_file, spec.model.uri))
    plan = plan_deployment(
        derive_classes(nodes),
        spec,
        name=name,
        demand_rps=args.demand,
        profiles=profiles,
        policy=policy,
        model=model,
    )
    if notes:
        plan = dataclasses.replace(plan, notes=(*plan.notes, *notes))
    if args.output == "json":
        sys.stdout.write(json.dumps(plan_to_dict(plan), indent=2) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(plan_to_dict(plan), sort_keys=False))
    else:
        sys.stdout.write(plan_to_table(plan))
    return 0 if plan.feasible else EXIT_INFEASIBLE
