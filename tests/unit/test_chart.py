"""The Helm chart: lint, golden renders, the values schema, one CRD source, generated files in
step, RBAC exactly what the operator's code uses, and restricted pods. `helm` is the dev tools'
binary (no cluster needed; the install itself is tests/integration/test_chart_install.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chart import CHART, KUBE_VERSION, ROOT, helm, objects, of_kind, template

from infleet.api.render import render_crd, render_peering_crds

GOLDEN = Path(__file__).resolve().parent / "golden" / "chart"
UPDATE = os.environ.get("INFLEET_UPDATE_GOLDEN") == "1"

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], "replicas": 1,
                   "metrics.serviceMonitor.enabled": True, "metrics.podMonitor.enabled": True,
                   "config.classes": {"nvidia-h100": {"costPerHour": 12.3}}},
    "s3": {"config.engineStore": "s3://infleet-engines/prod",
           "config.engineStoreSecret": "infleet-engine-store",
           "config.engineStoreEndpoint": "https://minio.storage.svc:9000"},
}


def _chart_gen() -> Any:
    spec = importlib.util.spec_from_file_location("chart_gen", ROOT / "hack" / "chart_gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_gen"] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_helm_lint_passes() -> None:
    out = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_rendered_manifests_match_the_golden_files(variant: str) -> None:
    rendered = template(values=VARIANTS[variant])
    golden = GOLDEN / f"{variant}.yaml"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered)
    assert golden.is_file(), f"{golden} is missing: INFLEET_UPDATE_GOLDEN=1 writes it"
    assert rendered == golden.read_text(), (
        f"the chart renders differently from {golden.name}; review the diff and rerun with "
        "INFLEET_UPDATE_GOLDEN=1 if the change is intended")


@pytest.mark.parametrize(("values", "words"), [
    ({"replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
    ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
    ({"config.engineStore": "nfs://x"}, "at '/config/engineStore': 'nfs://x' does not match"),
    ({"config.engineStore": "s3://Bucket"}, "at '/config/engineStore': 's3://Bucket' does not"),
    ({"config.engineStore": "s3://engines/p"}, "at '/config/engineStoreSecret': minLength"),
    ({"config.engineStoreSecret": "creds"}, "at '/config/engineStoreSecret': maxLength"),
    ({"config.engineStore": "s3://engines", "config.engineStoreSecret": "creds",
      "config.engineStoreEndpoint": "minio:9000"}, "at '/config/engineStoreEndpoint'"),
    ({"config.cpuReplica": {"cpu": "lots"}}, "at '/config/cpuReplica/cpu': 'lots'"),
    ({"config.clases": {}}, "additional properties 'clases' not allowed"),
    ({"config.classes": {"x86": {"backend": "pytorch"}}}, "at '/config/classes/x86/backend'"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ({"image.pullPolicy": "Sometimes"}, "at '/image/pullPolicy'"),
], ids=lambda v: str(v)[:40])
def test_the_schema_refuses_bad_values_naming_the_field(values: dict[str, Any],
                                                        words: str) -> None:
    from support.chart import set_args

    result = helm("template", "infleet", str(CHART), "--kube-version", KUBE_VERSION,
                  *set_args(values), check=False)
    assert result.returncode != 0
    assert words in result.stderr, result.stderr


def test_the_config_schema_is_the_operators_own_model() -> None:
    from infleet.api.config import OperatorConfig, load_operator_config

    schema = _chart_gen().values_schema()["properties"]["config"]
    assert set(schema["properties"]) == {
        f.alias or name for name, f in OperatorConfig.model_fields.items()}
    # what the chart's ConfigMap holds with the default values is a valid operator config
    cm = of_kind(objects(template()), "ConfigMap")[0]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"infleet-chart-{os.getpid()}.yaml"
    path.write_text(cm["data"]["config.yaml"])
    try:
        loaded = load_operator_config(path)
    finally:
        path.unlink()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert loaded.engine_store == values["config"]["engineStore"]


def test_an_s3_store_in_values_reaches_the_operator_config(tmp_path: Path) -> None:
    from infleet.api.config import load_operator_config

    cm = of_kind(objects(template(values=VARIANTS["s3"])), "ConfigMap")[0]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    loaded = load_operator_config(path)
    assert loaded.store_is_s3 and loaded.engine_store == "s3://infleet-engines/prod"
    assert loaded.engine_store_secret == "infleet-engine-store"
    assert loaded.engine_store_endpoint == "https://minio.storage.svc:9000"


def test_the_generated_schema_and_readme_are_in_step() -> None:
    assert _chart_gen().main(["--check"]) == 0, "run .venv/bin/python hack/chart_gen.py"


def test_every_documented_value_exists_and_every_top_level_value_is_documented() -> None:
    rows = _chart_gen().documented((CHART / "values.yaml").read_text())
    keys = {r.key for r in rows}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undocumented = [k for k in values if k not in keys and not any(
        r.startswith(f"{k}.") for r in keys)]
    assert not undocumented, undocumented


def test_the_chart_crds_are_the_generated_ones() -> None:
    # One source: charts/infleet/crds is a link to the generated crds/ folder, and what Helm
    # installs from it is exactly what `infleet crds` renders.
    assert (CHART / "crds").is_symlink()
    assert (CHART / "crds").resolve() == (ROOT / "crds").resolve()
    # Helm installs each file of crds/ (`helm show crds` prints them without separators)
    shown = [d for f in sorted((CHART / "crds").glob("*.yaml"))
             for d in yaml.safe_load_all(f.read_text()) if d]
    printed = helm("show", "crds", str(CHART)).stdout
    assert all(f"name: {d['metadata']['name']}" in printed for d in shown)
    want = [render_crd(), *render_peering_crds()]
    key = lambda d: d["metadata"]["name"]  # noqa: E731
    assert sorted(shown, key=key) == sorted(want, key=key)


# --- RBAC: exactly what the code uses --------------------------------------------------------

# What infleet.operator.kube writes, per kind (a test below ties the kinds to kube.RESOURCES):
# apply is a server-side apply PATCH, which needs create too when it creates the object.
WRITES: dict[tuple[str, str], set[str]] = {
    ("", "configmaps"): {"create", "patch"},  # engine records; never deleted
    ("", "services"): {"create", "patch", "delete"},
    ("apps", "deployments"): {"create", "patch", "delete"},
    ("batch", "jobs"): {"create", "delete"},  # created once, never updated
    ("gateway.networking.k8s.io", "httproutes"): {"get", "create", "patch", "delete"},
    ("", "events"): {"create"},
    ("infleet.dev", "inferencedeployments/status"): {"patch"},
}


def _kopf_needs() -> dict[tuple[str, str], set[str]]:
    """list + watch of everything kopf indexes, watches or runs daemons on, and patch where it
    keeps its progress (the objects with change handlers), from the operator's own registry."""
    import kopf

    from infleet.operator import handlers

    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    needs: dict[tuple[str, str], set[str]] = {}
    for part, extra in ((registry._indexing, set()), (registry._watching, set()),
                        (registry._spawning, {"patch"}), (registry._changing, {"patch"})):
        for handler in part.get_all_handlers():
            s = handler.selector
            assert s is not None
            key = (s.group or "", s.plural or s.any_name or "")
            needs.setdefault(key, set()).update({"list", "watch"} | extra)
    return needs


def _needed(clusterwide: bool) -> dict[tuple[str, str], set[str]]:
    needs = _kopf_needs()
    for key, verbs in WRITES.items():
        needs.setdefault(key, set()).update(verbs)
    peering = "clusterkopfpeerings" if clusterwide else "kopfpeerings"
    needs[("kopf.dev", peering)] = {"list", "watch", "patch"}
    return needs


def _granted(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_write_table_covers_every_kind_the_client_knows() -> None:
    from infleet.operator.kube import RESOURCES

    kinds = {(prefix.removeprefix("/apis/").removeprefix("/api").split("/")[0]
              if prefix.startswith("/apis/") else "", plural)
             for prefix, plural in RESOURCES.values()}
    written = {k for k in WRITES if "/" not in k[1]} | {("infleet.dev", "inferencedeployments")}
    assert kinds == written


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_rbac_grants_exactly_what_the_operator_uses(variant: str) -> None:
    docs = objects(template(values={**VARIANTS[variant], "replicas": 2}))
    clusterwide = not VARIANTS[variant].get("watchNamespaces")
    assert _granted(docs) == _needed(clusterwide)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_no_wildcards_and_no_secrets(variant: str) -> None:
    docs = objects(template(values=VARIANTS[variant]))
    roles = of_kind(docs, "ClusterRole") + of_kind(docs, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, rule
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not {"secrets", "serviceaccounts/token"} & set(rule["resources"]), rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_only_nodes_are_read_cluster_wide_when_namespaces_are_listed() -> None:
    docs = objects(template(values=VARIANTS["namespaced"]))
    bindings = of_kind(docs, "ClusterRoleBinding")
    assert [b["roleRef"]["name"] for b in bindings] == ["infleet-cluster"]
    cluster_role = next(r for r in of_kind(docs, "ClusterRole")
                        if r["metadata"]["name"] == "infleet-cluster")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"],
                                      "verbs": ["list", "watch"]}]
    assert sorted(b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")) == [
        "team-a", "team-b"]


# --- the operator pods -------------------------------------------------------------------------


def _pod(values: dict[str, Any] | None = None) -> dict[str, Any]:
    sts = of_kind(objects(template(values=values)), "StatefulSet")
    assert len(sts) == 1
    pod: dict[str, Any] = sts[0]["spec"]["template"]
    return pod


def restricted_problems(pod_spec: dict[str, Any]) -> Iterator[str]:
    """What Pod Security `restricted` would refuse in a pod spec (the admission test on the
    real API server is the proof; this names the field when it regresses)."""
    pod_sec = pod_spec.get("securityContext") or {}
    for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        sec = c.get("securityContext") or {}
        name = c["name"]
        if sec.get("allowPrivilegeEscalation") is not False:
            yield f"{name}: allowPrivilegeEscalation must be false"
        if sec.get("capabilities", {}).get("drop") != ["ALL"]:
            yield f"{name}: capabilities.drop must be [ALL]"
        if not (sec.get("runAsNonRoot") or pod_sec.get("runAsNonRoot")):
            yield f"{name}: runAsNonRoot"
        seccomp = (sec.get("seccompProfile") or pod_sec.get("seccompProfile") or {})
        if seccomp.get("type") != "RuntimeDefault":
            yield f"{name}: seccompProfile RuntimeDefault"
        if sec.get("readOnlyRootFilesystem") is not True:
            yield f"{name}: readOnlyRootFilesystem"
        if sec.get("privileged"):
            yield f"{name}: privileged"
    for v in pod_spec.get("volumes", []):
        if "hostPath" in v:
            yield f"volume {v['name']}: hostPath"


def test_the_operator_pod_is_restricted_with_probes_and_resources() -> None:
    pod = _pod()
    spec = pod["spec"]
    assert list(restricted_problems(spec)) == []
    c = spec["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["command"] == ["infleet"] and c["args"][0] == "run"
    assert "--peering=infleet" in c["args"] and "--priority=$(INFLEET_PRIORITY)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["INFLEET_PRIORITY"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']")


def test_the_operator_command_line_is_what_infleet_run_accepts() -> None:
    import argparse

    from infleet.operator.command import configure

    for values in ({}, {"replicas": 1, "watchNamespaces": ["a", "b"], "verbose": True}):
        args = _pod(values)["spec"]["containers"][0]["args"]
        args = [a.replace("$(INFLEET_PRIORITY)", "1") for a in args]
        if args[0] == "--verbose":
            args = args[1:]
        parser = argparse.ArgumentParser(exit_on_error=False)
        configure(parser)
        parsed = parser.parse_args(args[1:])
        assert parsed.config == Path("/etc/infleet/config.yaml")
        assert parsed.all_namespaces == (not values.get("watchNamespaces"))


def test_a_config_change_changes_the_pod_template() -> None:
    before = _pod()["metadata"]["annotations"]["checksum/config"]
    after = _pod({"config.reconcileIntervalSeconds": 10})["metadata"]["annotations"]
    assert after["checksum/config"] != before
    assert _pod({"replicas": 3})["metadata"]["annotations"]["checksum/config"] == before
