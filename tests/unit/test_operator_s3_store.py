"""The S3 engine store on the operator's side, on plain data: the configuration that names it,
the build Jobs and serving pods it gives (the Secret only in the pods, never read by the
operator), and what the operator says when serving pods cannot start."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError
from test_operator_planner import (
    CONFIG,
    CPU,
    SIM,
    _serving_state,
    converge,
    keys_of,
    kinds,
    plan,
    served,
    snap,
)

from infleet.api.config import OperatorConfig
from infleet.operator import naming
from infleet.operator.observed import pod_problem

S3 = {"engineStore": "s3://infleet-engines/prod", "engineStoreSecret": "engine-store",
      "engineStoreEndpoint": "http://minio.storage:9000", "engineStoreRegion": "eu-west-1"}
S3_CONFIG = OperatorConfig.model_validate({**CONFIG.model_dump(by_alias=True), **S3})


# --- the configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["s3://infleet-engines", "s3://my.bucket/a/b-c_d.e",
                                 "pvc://infleet-engines"])
def test_store_uris_that_are_accepted(uri: str) -> None:
    extra = {"engineStoreSecret": "creds"} if uri.startswith("s3://") else {}
    config = OperatorConfig.model_validate({"engineStore": uri, **extra})
    assert config.store_is_s3 == uri.startswith("s3://")
    assert config.store_claim == ("" if config.store_is_s3 else "infleet-engines")


@pytest.mark.parametrize(("raw", "words"), [
    ({"engineStore": "s3://Engines"}, "should match pattern"),
    ({"engineStore": "s3://ab/prefix//x", "engineStoreSecret": "c"}, "should match pattern"),
    ({"engineStore": "s3://ab/../x", "engineStoreSecret": "c"}, "should match pattern"),
    ({"engineStore": "nfs://server/x"}, "should match pattern"),
    ({"engineStore": "s3://engines"}, "engineStoreSecret: an s3:// engine store needs"),
    ({"engineStoreSecret": "creds"}, "engineStoreSecret: only for an s3:// engine store"),
    ({"engineStoreEndpoint": "http://x:9000"}, "engineStoreEndpoint: only for an s3://"),
    ({"engineStore": "s3://engines", "engineStoreSecret": "Creds"}, "should match pattern"),
    ({"engineStore": "s3://engines", "engineStoreSecret": "c",
      "engineStoreEndpoint": "minio:9000"}, "should match pattern"),
])
def test_bad_store_settings_are_refused_naming_the_field(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        OperatorConfig.model_validate(raw)


def test_the_endpoint_is_part_of_the_store_in_build_keys() -> None:
    # One bucket name on two services is two stores: their engines never mix.
    other = S3_CONFIG.model_copy(update={"engine_store_endpoint": "http://other:9000"})
    assert plan(snap(config=S3_CONFIG)).status.classes[0].engine.build_key != plan(
        snap(config=other)).status.classes[0].engine.build_key
    assert S3_CONFIG.store_identity == "s3://infleet-engines/prod@http://minio.storage:9000"
    assert CONFIG.store_identity == CONFIG.engine_store == "pvc://infleet-engines"


# --- build Jobs and serving pods -----------------------------------------------------------


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in pod.get("initContainers", []) + pod["containers"]
                                 if c["name"] == name)
    return found


def _store_secret_use(container: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return container.get("envFrom", []), env


SECRET_FROM = [{"prefix": "INFLEET_STORE_",
                "secretRef": {"name": "engine-store", "optional": True}}]


def test_a_build_job_uploads_to_the_bucket_with_the_secret_in_its_env_and_no_claim() -> None:
    job = next(j for j in kinds(plan(snap(config=S3_CONFIG)), "Job")
               if j["metadata"]["labels"][naming.CLASS_LABEL] == CPU)
    pod = job["spec"]["template"]["spec"]
    build = _container(pod, "build")
    args = build["args"]
    assert args[args.index("--store") + 1] == "s3://infleet-engines/prod"
    assert args[args.index("--cache-dir") + 1] == "/tmp/store"
    env_from, env = _store_secret_use(build)
    assert env_from == SECRET_FROM
    assert env["INFLEET_STORE_SECRET"] == "engine-store"
    assert env["INFLEET_STORE_AWS_ENDPOINT_URL_S3"] == "http://minio.storage:9000"
    assert env["INFLEET_STORE_AWS_REGION"] == "eu-west-1"
    # the model's claim is still mounted; no claim holds the store
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["models"]
    assert "/var/lib/infleet/store" not in {m["mountPath"] for m in build["volumeMounts"]}


def test_a_serving_pod_pulls_its_engine_into_an_emptydir_before_the_server_starts() -> None:
    keys = keys_of(plan(snap(config=S3_CONFIG)))
    r = plan(snap(config=S3_CONFIG, records=served(keys)))
    deployment = next(d for d in kinds(r, "Deployment")
                      if d["metadata"]["labels"][naming.CLASS_LABEL] == CPU)
    pod = deployment["spec"]["template"]["spec"]
    engine = deployment["spec"]["template"]["metadata"]["annotations"]["infleet.dev/engine-key"]
    [init] = pod["initContainers"]
    assert init["name"] == "pull-engine" and init["command"] == ["infleet"]
    assert init["args"] == ["pull", "--store", "s3://infleet-engines/prod", "--engine", engine,
                            "--dest", "/var/lib/infleet/engine"]
    assert _store_secret_use(init)[0] == SECRET_FROM
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    server = _container(pod, "server")
    args = server["args"]
    assert args[args.index("--engine-dir") + 1] == f"/var/lib/infleet/engine/{engine}"
    # the server only reads the engine and never sees the store's credentials
    assert {"name": "engine", "mountPath": "/var/lib/infleet/engine", "readOnly": True} in (
        server["volumeMounts"])
    assert "envFrom" not in server
    assert {"name": "engine", "emptyDir": {}} in pod["volumes"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    # Guaranteed QoS holds with the init container: equal requests and limits
    assert init["resources"]["requests"] == init["resources"]["limits"] == {
        k: v for k, v in server["resources"]["requests"].items() if k in ("cpu", "memory")}


def test_every_s3_pod_and_init_container_is_restricted() -> None:
    keys = keys_of(plan(snap(config=S3_CONFIG)))
    pods = [m["spec"]["template"]["spec"]
            for m in [*plan(snap(config=S3_CONFIG)).apply,
                      *plan(snap(config=S3_CONFIG, records=served(keys))).apply]
            if m["kind"] in ("Job", "Deployment")]
    assert any(p.get("initContainers") for p in pods)
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
            assert sc["capabilities"] == {"drop": ["ALL"]}
        # Secrets reach pods only through env; no Secret volume, nothing for the operator
        assert not [v for v in pod["volumes"] if "secret" in v]


def test_a_pvc_store_gives_the_pods_no_secret_and_no_init_container() -> None:
    keys = keys_of(plan(snap()))
    for m in [*plan(snap()).apply, *plan(snap(records=served(keys))).apply]:
        if m["kind"] in ("Job", "Deployment"):
            pod = m["spec"]["template"]["spec"]
            assert "initContainers" not in pod
            assert all("envFrom" not in c for c in pod["containers"])


# --- pods that do not start ----------------------------------------------------------------

PULL_FAILED = {
    "phase": "Pending",
    "initContainerStatuses": [{
        "name": "pull-engine", "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff",
                              "message": "back-off 40s restarting failed container"}},
        "lastState": {"terminated": {"exitCode": 1, "message": (
            "infleet pull: GET s3://b/p/engines/k/manifest.json at http://minio:9000: "
            "S3 error SignatureDoesNotMatch (HTTP 403)")}},
    }],
    "containerStatuses": [{"name": "server", "state": {"waiting": {"reason": "PodInitializing"}}}],
}


@pytest.mark.parametrize(("status", "expected"), [
    (PULL_FAILED, "init container pull-engine: CrashLoopBackOff: infleet pull: GET s3://b/p/"
                  "engines/k/manifest.json at http://minio:9000: S3 error SignatureDoesNotMatch "
                  "(HTTP 403)"),
    ({"phase": "Pending", "containerStatuses": [{"name": "server", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "x" not found'}}}]},
     'container server: CreateContainerConfigError: secret "x" not found'),
    # the local executor shows a failed init container terminated before its back-off
    ({"phase": "Pending", "initContainerStatuses": [{"name": "pull-engine", "state": {
        "terminated": {"exitCode": 1, "message": "line one\nthe cause\n"}}}]},
     "init container pull-engine: exit code 1: the cause"),
    ({"phase": "Running", "containerStatuses": [{"name": "server", "state": {"running": {}}}]},
     ""),
    ({"phase": "Pending", "containerStatuses": [{"name": "server", "state": {"waiting": {
        "reason": "ContainerCreating"}}}]}, ""),
])
def test_why_a_pod_does_not_start(status: dict[str, Any], expected: str) -> None:
    assert pod_problem(status) == expected


def test_pods_that_cannot_pull_their_engine_are_named_once_in_status_and_events() -> None:
    keys = keys_of(plan(snap(config=S3_CONFIG)))
    s, _ = converge(snap(config=S3_CONFIG, records=served(keys)))
    sets, _ = _serving_state(s, {})
    from infleet.operator.observed import ServingPod

    engine = "e" * 32
    problem = pod_problem(PULL_FAILED)
    stuck = (ServingPod("cnn-b", CPU, "127.0.0.3", False, engine, False, problem),
             ServingPod("cnn-a", CPU, "127.0.0.2", False, engine, False, problem),
             ServingPod("cnn-old", CPU, None, False, engine, True, "container server: x"))
    r = plan(replace(s, serving=sets, pods=stuck))
    cls = next(c for c in r.status.classes if c.name == CPU)
    assert cls.problem == f"serving pods do not start: {problem}"
    assert next(c for c in r.status.classes if c.name == SIM).problem == ""
    available = next(c for c in r.status.conditions if c.type == "Available")
    assert available.reason == "PodsFailing" and "SignatureDoesNotMatch" in available.message
    warnings = [e for e in r.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["ServingFailed"]
    assert "SignatureDoesNotMatch" in warnings[0].message
    # the next reconcile sees the same cause: the status stays, no second Event
    again = plan(replace(s, serving=sets, pods=stuck, previous=r.status))
    assert again.status == r.status
    assert "ServingFailed" not in {e.reason for e in again.events}
