"""Pod -> local process translation of the local executor (pure, no cluster)."""

from __future__ import annotations

from pathlib import Path

from infleet.devcluster import podspec
from infleet.devcluster.podspec import ProbeKind, RestartPolicy, VolumeKind

ENV = podspec.Environment(
    pod_ip="127.1.2.3", host_ip="127.0.0.1", api_host="127.0.0.1", api_port=6443,
    base_path="/venv/bin:/usr/bin", pods_root=Path("/pods"), claims_root=Path("/claims"),
    config_maps={"settings": {"MODE": "fast", "LEVEL": "3"}},
    secrets={"creds": {"TOKEN": "s3cret"}},
)


def pod(**spec) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "0a1b2c3d-0000-4000-8000-000000000000",
                     "labels": {"app": "demo"}},
        "spec": {"nodeName": "x86-local-0", "serviceAccountName": "default", **spec},
    }


def container(**fields) -> dict:
    return {"name": "main", "image": "ignored", **fields}


def test_command_and_args_become_one_argv_with_var_expansion() -> None:
    plan = podspec.plan_pod(pod(containers=[container(
        command=["python", "-c"],
        args=["print('$(GREETING) $(UNSET)')", "--ip=$(POD_IP)", "$$(GREETING)"],
        env=[{"name": "GREETING", "value": "hi"}],
    )]), ENV)
    assert plan.problems == ()
    (c,) = plan.containers
    assert c.argv == ("python", "-c", "print('hi $(UNSET)')", "--ip=127.1.2.3", "$(GREETING)")


def test_shell_metacharacters_stay_one_argument() -> None:
    # Nothing is ever joined into a shell string: `; rm -rf /` is just text in argv[1].
    plan = podspec.plan_pod(pod(containers=[container(command=["echo", "a; rm -rf / && $(x)"])]),
                            ENV)
    assert plan.containers[0].argv == ("echo", "a; rm -rf / && $(x)")


def test_env_sources_and_downward_api() -> None:
    plan = podspec.plan_pod(pod(containers=[container(
        command=["true"],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        env=[
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
            {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k",
                                                               "optional": True}}},
        ],
    )]), ENV)
    env = dict(plan.containers[0].env)
    assert env["IP"] == "127.1.2.3" and env["POD_IP"] == "127.1.2.3"
    assert env["NS"] == "ns" and env["APP"] == "demo" and env["TOKEN"] == "s3cret"
    assert env["CFG_MODE"] == "fast" and env["CFG_LEVEL"] == "3"
    assert "GONE" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["PATH"] == "/venv/bin:/usr/bin"


def test_missing_required_reference_is_a_problem_not_a_crash() -> None:
    plan = podspec.plan_pod(pod(containers=[container(
        command=["true"],
        env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
    )]), ENV)
    assert plan.problems == ("env X: configMapKeyRef nope/k not found",)


def test_volumes_map_to_local_folders_and_paths_are_rewritten() -> None:
    plan = podspec.plan_pod(pod(
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": "/srv/models"}},
            {"name": "engines", "persistentVolumeClaim": {"claimName": "store"}},
        ],
        containers=[container(
            command=["infleet", "build"],
            args=["--out", "/engines/resnet", "--tmp=/scratch", "/models/m.onnx", "/other/x"],
            env=[{"name": "CACHE", "value": "/scratch/cache"}],
            workingDir="/scratch",
            volumeMounts=[
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "host", "mountPath": "/models", "readOnly": True},
                {"name": "engines", "mountPath": "/engines", "subPath": "v1"},
            ],
        )],
    ), ENV)
    pod_dir = Path("/pods/ns_p_0a1b2c3d-0000-4000-8000-000000000000")
    assert plan.pod_dir == pod_dir
    kinds = {v.name: (v.kind, v.local_dir) for v in plan.volumes}
    assert kinds["scratch"] == (VolumeKind.EMPTY_DIR, pod_dir / "volumes" / "scratch")
    assert kinds["host"] == (VolumeKind.HOST_PATH, Path("/srv/models"))
    assert kinds["engines"] == (VolumeKind.CLAIM, Path("/claims/ns/store"))
    c = plan.containers[0]
    assert c.argv == (
        "infleet", "build", "--out", "/claims/ns/store/v1/resnet",
        f"--tmp={pod_dir}/volumes/scratch", "/srv/models/m.onnx", "/other/x",
    )
    assert dict(c.env)["CACHE"] == f"{pod_dir}/volumes/scratch/cache"
    assert c.cwd == pod_dir / "volumes" / "scratch"


def test_termination_message_path_is_mapped_into_the_pod_folder() -> None:
    plan = podspec.plan_pod(pod(restartPolicy="Never", containers=[container(
        command=["sh-free-writer", "/dev/termination-log"],
        terminationMessagePolicy="FallbackToLogsOnError",
    ), container(name="side", command=["x", "--summary=/tmp/summary"],
                 terminationMessagePath="/tmp/summary")]), ENV)
    main, side = plan.containers
    assert main.termination_message_path == plan.pod_dir / "termination" / "main"
    assert main.argv[1] == str(main.termination_message_path)
    assert main.fallback_to_logs
    assert side.argv[1] == f"--summary={side.termination_message_path}"
    assert plan.restart_policy is RestartPolicy.NEVER


def test_readiness_probes() -> None:
    plan = podspec.plan_pod(pod(containers=[
        container(command=["srv"], ports=[{"name": "http", "containerPort": 8080}],
                  readinessProbe={"httpGet": {"path": "/v2/health/ready", "port": "http"},
                                  "periodSeconds": 2, "failureThreshold": 5}),
        container(name="tcp", command=["srv"],
                  readinessProbe={"tcpSocket": {"port": 9000}}),
        container(name="exec", command=["srv"],
                  readinessProbe={"exec": {"command": ["test", "-f", "/dev/termination-log"]}}),
    ]), ENV)
    http, tcp, exe = (c.readiness for c in plan.containers)
    assert http is not None and http.kind is ProbeKind.HTTP
    assert (http.host, http.port, http.path, http.period, http.failure_threshold) == (
        "127.1.2.3", 8080, "/v2/health/ready", 2.0, 5)
    assert tcp is not None and (tcp.kind, tcp.host, tcp.port) == (ProbeKind.TCP, "127.1.2.3", 9000)
    assert exe is not None and exe.kind is ProbeKind.EXEC and exe.argv[0] == "test"


def test_unsupported_things_are_reported() -> None:
    plan = podspec.plan_pod(pod(
        volumes=[{"name": "nfs", "nfs": {"server": "x", "path": "/"}}],
        containers=[container()],  # no command: the image entrypoint is unknown here
    ), ENV)
    assert any("volume nfs: unsupported type ['nfs']" in p for p in plan.problems)
    assert any("no command" in p for p in plan.problems)


def test_defaults() -> None:
    plan = podspec.plan_pod(pod(containers=[container(command=["true"])]), ENV)
    assert plan.restart_policy is RestartPolicy.ALWAYS
    assert plan.grace_seconds == 30.0
    assert plan.ip == "127.1.2.3"


def test_pod_ips_are_loopback_stable_and_distinct() -> None:
    a = podspec.pod_ip_for("0a1b2c3d-aaaa")
    assert a == podspec.pod_ip_for("0a1b2c3d-aaaa")
    assert a.startswith("127.") and not a.startswith("127.0.")
    b = podspec.pod_ip_for("0a1b2c3d-aaaa", frozenset({a}))
    assert b != a and b.startswith("127.")
    octets = [int(x) for x in b.split(".")]
    assert 1 <= octets[1] <= 254 and 1 <= octets[3] <= 254


def test_termination_message_rules() -> None:
    assert podspec.termination_message("done", "", 0, False) == "done"
    assert podspec.termination_message(None, "a\nb\nboom", 1, True) == "a\nb\nboom"
    assert podspec.termination_message(None, "log", 0, True) == ""  # only on error
    assert len(podspec.termination_message("x" * 10000, "", 0, False)) == 4096
    assert podspec.exit_reason(0) == "Completed" and podspec.exit_reason(3) == "Error"


def test_the_executors_own_path_is_never_mapped_into_a_pod_volume() -> None:
    """A checkout under /tmp puts the venv's bin at /tmp/...: a pod with an emptyDir at /tmp
    (the sample's model Job has one) must still find its programs there."""
    from dataclasses import replace

    env = replace(ENV, base_path="/tmp/clone/.venv/bin:/usr/bin")
    plan = podspec.plan_pod(pod(
        volumes=[{"name": "tmp", "emptyDir": {}}],
        containers=[container(
            command=["infleet", "zoo"], args=["--output", "/tmp/m.onnx"],
            env=[{"name": "SCRATCH", "value": "/tmp/work"}],
            volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
        )],
    ), env)
    c = plan.containers[0]
    values = dict(c.env)
    assert values["PATH"] == "/tmp/clone/.venv/bin:/usr/bin"
    scratch = plan.pod_dir / "volumes" / "tmp"
    assert values["SCRATCH"] == f"{scratch}/work"  # what the pod set is still mapped
    assert c.argv[-1] == f"{scratch}/m.onnx"
    # a PATH the pod sets itself is the pod's: mapped like any of its values
    plan = podspec.plan_pod(pod(
        volumes=[{"name": "tmp", "emptyDir": {}}],
        containers=[container(command=["x"], env=[{"name": "PATH", "value": "/tmp/bin"}],
                              volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}])],
    ), env)
    assert dict(plan.containers[0].env)["PATH"] == f"{scratch}/bin"
