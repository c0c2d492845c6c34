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
