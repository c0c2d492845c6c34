"""Writes the Helm chart's generated files: ``values.schema.json`` and ``README.md``.

    .venv/bin/python hack/chart_gen.py          # write them
    .venv/bin/python hack/chart_gen.py --check  # exit 1 when a committed one is stale

The schema's ``config`` is the operator configuration's own JSON schema
(:class:`infleet.api.config.OperatorConfig`), so the values Helm accepts and the file the
operator validates at start are one model; the rest of the schema is written here. The README
table comes from the ``# --`` comments in ``values.yaml`` (one comment block above a key
documents it; the key's value in the file is its default).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "infleet"
SCHEMA_FILE = CHART / "values.schema.json"
README_FILE = CHART / "README.md"

_DNS_LABEL = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_QUANTITY = {"type": ["string", "integer", "number"],
             "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"}
_RESOURCES = {
    "type": "object", "additionalProperties": False,
    "properties": {k: {"type": "object", "additionalProperties": False,
                       "properties": {"cpu": _QUANTITY, "memory": _QUANTITY}}
                   for k in ("requests", "limits")},
}
_MONITOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def values_schema() -> dict[str, Any]:
    from infleet.api.config import OperatorConfig

    config = OperatorConfig.model_json_schema(by_alias=True)
    defs = config.pop("$defs", {})
    config.pop("title", None)
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Values of the infleet chart",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
            "image": {
                "type": "object", "additionalProperties": False,
                "required": ["repository"],
                "properties": {
                    "repository": {"type": "string", "minLength": 1},
                    "tag": {"type": "string"},
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                },
            },
            "imagePullSecrets": {"type": "array", "items": _DNS_LABEL},
            "watchNamespaces": {"type": "array", "items": _DNS_LABEL, "uniqueItems": True},
            "serviceAccount": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "create": {"type": "boolean"},
                    "name": {"type": "string", "maxLength": 253},
                    "annotations": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                },
            },
            "peering": {"type": "object", "additionalProperties": False,
                        "required": ["name"], "properties": {"name": _DNS_LABEL}},
            "resources": _RESOURCES,
            "healthPort": {"type": "integer", "minimum": 1024, "maximum": 65535},
            "verbose": {"type": "boolean"},
            "podDisruptionBudget": {"type": "object", "additionalProperties": False,
                                    "properties": {"enabled": {"type": "boolean"}}},
            "metrics": {
                "type": "object", "additionalProperties": False,
                "properties": {"serviceMonitor": _MONITOR, "podMonitor": _MONITOR},
            },
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "affinity": {"type": "object"},
            "podAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "config": config,
        },
        "$defs": defs,
    }
    return schema


@dataclass(frozen=True)
class Documented:
    key: str
    default: Any
    description: str


def documented(values_text: str) -> list[Documented]:
    """The keys with a ``# --`` comment block above them, in file order, with their value."""
    values = yaml.safe_load(values_text)
    out: list[Documented] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing this line
    comment: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            comment = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#") and comment is not None:
            comment.append(stripped.removeprefix("#").strip())
            continue
        if not stripped:
            comment = None
            continue
        if ":" not in stripped or stripped.startswith("-"):
            continue
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if comment is not None:
            path = [k for _, k in stack]
            node: Any = values
            for part in path:
                node = node[part]
            out.append(Documented(".".join(path), node, " ".join(comment)))
        comment = None
    return out


def _cell(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return f"`{text}`".replace("|", "\\|")


def readme() -> str:
    rows = documented((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lines = [
        "<!-- Generated by hack/chart_gen.py from values.yaml; do not edit. -->",
        f"# infleet chart {chart['version']} (app {chart['appVersion']})",
        "",
        str(chart["description"]).strip(),
        "",
        "```sh",
        "helm install infleet charts/infleet -n infleet-system --create-namespace",
        "```",
        "",
        "The CRDs (`crds/`, generated by `infleet crds`) are installed with the chart and left in",
        "place by `helm uninstall`, as Helm does with every CRD. `values.schema.json` refuses",
        "unknown keys and bad values before anything is installed; the operator validates its",
        "configuration (`config`) again at start.",
        "",
        "## Values",
        "",
        "| key | default | description |",
        "|---|---|---|",
    ]
    parents = {r.key.rpartition(".")[0] for r in rows}
    # A key whose children have rows of their own shows "(below)" rather than all of them.
    lines += [f"| `{r.key}` | {'(below)' if r.key in parents else _cell(r.default)} "
              f"| {r.description} |" for r in rows]
    return "\n".join(lines) + "\n"


def rendered() -> dict[Path, str]:
    return {SCHEMA_FILE: json.dumps(values_schema(), indent=2) + "\n", README_FILE: readme()}


def main(argv: list[str]) -> int:
    stale = [path for path, text in rendered().items()
             if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(CHART.parents[1])} is stale: run hack/chart_gen.py")
        return 1 if stale else 0
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
