"""The Helm chart as tests use it: the dev tools' ``helm`` binary, ``helm template`` into
objects, and the pieces of a render that RBAC and admission tests apply.

A missing helm binary fails the test saying how to build it (CI builds the dev tools first);
it never skips.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "infleet"
# The API server version of the dev cluster (helm template assumes an old one otherwise and
# the chart's kubeVersion refuses it).
KUBE_VERSION = "1.36.3"


def helm_binary() -> Path:
    from infleet.devcluster import tools

    path = tools.bin_dir() / "helm"
    if not path.is_file():
        pytest.fail(f"helm is not built (expected {path}); run `infleet dev tools`",
                    pytrace=False)
    return path


def helm(*args: str, check: bool = True, env: Mapping[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                            timeout=120, env=dict(env) if env is not None else None, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stderr}")
    return result


def set_args(values: Mapping[str, Any] | None, files: Sequence[Path] = ()) -> list[str]:
    out: list[str] = []
    for f in files:
        out += ["-f", str(f)]
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template(release: str = "infleet", namespace: str = "infleet-system",
             values: Mapping[str, Any] | None = None, files: Sequence[Path] = ()) -> str:
    return helm("template", release, str(CHART), "-n", namespace, "--kube-version",
                KUBE_VERSION, *set_args(values, files)).stdout


def objects(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def of_kind(docs: Sequence[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(d) for d in docs if d["kind"] == kind]


# --- applying a render to the test cluster -----------------------------------------------------


def kubectl(kube: Any, *args: str, stdin: str | None = None, kubeconfig: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """The cluster's own kubectl (the same build as its API server)."""
    from infleet.devcluster import tools

    binary = tools.bin_dir() / "kubectl"
    result = subprocess.run([str(binary), "--kubeconfig", str(kubeconfig or kube.kubeconfig),
                             *args], input=stdin, capture_output=True, text=True, timeout=120,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result


def apply(kube: Any, docs: Sequence[Mapping[str, Any]]) -> None:
    kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(list(docs)))


def delete(kube: Any, docs: Sequence[Mapping[str, Any]]) -> None:
    kubectl(kube, "delete", "--ignore-not-found", "--wait=false", "-f", "-",
            stdin=yaml.safe_dump_all(list(docs)), check=False)


def service_account_kubeconfig(kube: Any, namespace: str, name: str, path: Path,
                               seconds: int = 3600) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` with a token from
    the TokenRequest API (what the kubelet projects into its pods), nothing else."""
    token = kube.core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": seconds}}).status.token
    config = yaml.safe_load(Path(kube.kubeconfig).read_text())
    user = f"system:serviceaccount:{namespace}:{name}"
    config["users"] = [{"name": user, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = user
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(kube: Any, kubeconfig: Path, verb: str, resource: str, namespace: str | None) -> bool:
    args = ["auth", "can-i", verb, resource]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    out = kubectl(kube, *args, kubeconfig=kubeconfig, check=False).stdout.strip()
    assert out in ("yes", "no"), out
    return out == "yes"
