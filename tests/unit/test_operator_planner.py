"""The reconcile planner on plain data: what an InferenceDeployment's world turns into.

Each test walks the planner through a stage of a deployment's life (fresh, building, built,
serving, verified, changed, failed) with observed objects built the way the cluster would
hold them, and checks the children, the status and the Events it asks for, and that a
converged world asks for no write at all.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infleet.api import (
    EngineState,
    InferenceDeploymentStatus,
    LatencyPoint,
    Phase,
    RungResult,
    parse_spec,
)
from infleet.api.config import OperatorConfig
from infleet.api.engine import BuildSummary, EngineKey
from infleet.operator import engines, naming
from infleet.operator.children import Owner
from infleet.operator.engines import BuildJobState, EngineResult, Outcome
from infleet.operator.observed import ServingPod, serving_set
from infleet.operator.planner import ProbeResult, Reconcile, Snapshot, plan
from infleet.scheduler.capacity import queue_wait_budget_ms
from infleet.scheduler.classes import derive_classes
from infleet.scheduler.hardware import SIMULATED_LABEL
from infleet.scheduler.inventory import NodeInfo, Resources, Taint
from infleet.scheduler.settings import cluster_policy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OWNER = Owner("cnn", "demo", "uid-cnn")
CPU = "x86-avx512vnni-c6i-8xlarge"
GPU = "nvidia-t4-16gb-g4dn-12xlarge"
SIM = "x86-avx2-c5a-4xlarge"

CONFIG = OperatorConfig.model_validate({
    "cpuReplica": {"cpu": "1", "memory": "2Gi"},
    "build": {"resources": {"cpu": "1", "memory": "2Gi"}},
    "classes": {CPU: {"costPerHour": 0.1}, GPU: {"costPerHour": 1.0}, SIM: {"costPerHour": 0.5}},
    "gateway": {"domain": "infleet.local"},
})
POLICY = cluster_policy(CONFIG)


def _node(name: str, labels: dict[str, str], cpu: int, gpus: int = 0,
          taints: tuple[Taint, ...] = ()) -> NodeInfo:
    return NodeInfo(name, {"kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64",
                           **labels},
                    Resources(cpu * 1000, 64 * 2**30, gpus), taints=taints)


NFD = "feature.node.kubernetes.io/cpu-cpuid."
NODES = [
    *(_node(f"c6i-{i}", {"node.kubernetes.io/instance-type": "c6i.8xlarge",
                         NFD + "AVX2": "true", NFD + "AVX512F": "true",
                         NFD + "AVX512VNNI": "true"}, 1) for i in range(2)),
    _node("t4-0", {"node.kubernetes.io/instance-type": "g4dn.12xlarge",
                   "nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360",
                   "nvidia.com/gpu.compute.major": "7", "nvidia.com/gpu.compute.minor": "5"},
          48, gpus=4, taints=(Taint("nvidia.com/gpu", "present", "NoSchedule"),)),
    _node("c5a-0", {"node.kubernetes.io/instance-type": "c5a.4xlarge", NFD + "AVX2": "true",
                    SIMULATED_LABEL: "true"}, 16),
]
CLASSES = tuple(derive_classes(NODES))


def spec(**changes: Any) -> Any:
    raw: dict[str, Any] = {
        "model": {"uri": "pvc://models/cnn.onnx", "sha256": "a" * 64,
                  "inputs": [{"name": "x", "shape": [-1, 3, 48, 192]}]},
        # two CPU replicas (one per node) hold 1,800 rps: the rest goes to the next class
        "slo": {"latencyP99Ms": 50, "maxThroughputRps": 2000},
        "batching": {"maxBatchSize": 8},
        "scaling": {"minReplicas": 1, "maxReplicas": 10},
    }
    for key, value in changes.items():
        raw[key] = value
    return parse_spec(raw)


SPEC = spec()
PROFILE = [LatencyPoint(batch_size=1, p50_ms=2.0, p99_ms=3.0, throughput_ips=400.0),
           LatencyPoint(batch_size=8, p50_ms=8.0, p99_ms=10.0, throughput_ips=900.0)]


def snap(**changes: Any) -> Snapshot:
    base = Snapshot(
        owner=OWNER, generation=1, spec=SPEC, classes=CLASSES, config=CONFIG, policy=POLICY,
        records={}, jobs={}, serving={}, pods=(), children={}, probes={}, gateway_api=True,
        previous=InferenceDeploymentStatus(), now=NOW,
    )
    return replace(base, **changes)


def kinds(r: Reconcile, kind: str) -> list[dict[str, Any]]:
    return [m for m in r.apply if m["kind"] == kind]


def by_class(r: Reconcile) -> dict[str, Any]:
    return {c.name: c for c in r.status.classes}


def summary(node_class: str, *, simulated: bool = False, engine: str = "e" * 32) -> BuildSummary:
    key = None if simulated else EngineKey(
        model_sha256="a" * 64, backend="onnxruntime", backend_version="1.32.0",
        precision="fp32", hardware_fingerprint="hw1-x", builder_version="b")
    return BuildSummary(engine_key="simulated" if simulated else engine, key=key,
                        backend="onnxruntime", precision="fp32", node_class=node_class,
                        profile=PROFILE, simulated=simulated, notes=["built"])


def keys_of(r: Reconcile) -> dict[str, str]:
    return {c.name: c.engine.build_key for c in r.status.classes if not c.excluded}


def ok(node_class: str, **kw: Any) -> EngineResult:
    return EngineResult(Outcome.SUCCEEDED, summary=summary(node_class, **kw),
                        finished_at="2026-12-01T11:00:00Z")


def observed_world(r: Reconcile, world: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    """The children after the API server took ``r``'s writes (with a defaulted field, so
    the comparison is a subset test, not equality)."""
    out = dict(world)
    for m in r.apply:
        body = copy.deepcopy(m)
        body.setdefault("metadata", {})["resourceVersion"] = "1"
        out[(m["kind"], m["metadata"]["name"])] = body
    for ref in r.delete:
        out.pop((ref.kind, ref.name), None)
    return out


# --- a fresh deployment ----------------------------------------------------------------------


def test_a_fresh_deployment_starts_one_build_job_per_class() -> None:
    r = plan(snap())
    jobs = kinds(r, "Job")
    assert {j["metadata"]["labels"][naming.CLASS_LABEL] for j in jobs} == {CPU, GPU, SIM}
    assert len({j["metadata"]["name"] for j in jobs}) == 3
    assert not kinds(r, "Deployment")
    assert r.status.phase is Phase.BUILDING
    assert [e.reason for e in r.events].count("BuildStarted") == 3
    assert [e.reason for e in r.events].count("ClassPlaced") == 3
    gpu = next(j for j in jobs if j["metadata"]["labels"][naming.CLASS_LABEL] == GPU)
    pod = gpu["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
            "effect": "NoSchedule"} in pod["tolerations"]
    assert gpu["spec"]["backoffLimit"] == 1 and gpu["spec"]["activeDeadlineSeconds"] == 3600
    args = container["args"]
    # the model's claim is mounted by the Job: the build reads the file there
    assert args[:3] == ["build", "--model", "file:///mnt/pvc/models/cnn.onnx"]
    assert args[args.index("--input") + 1] == "x=-1,3,48,192"
    hardware = json.loads(args[args.index("--hardware") + 1])
    assert hardware["gpu_model"] == "t4" and hardware["compute"] == [7, 5]
    # the model's claim is mounted read-only where `infleet build --pvc-root` looks
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] is True
    # exactly the class's nodes: the affinity matches t4-0 and nothing else
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    cls = next(c for c in CLASSES if c.name == GPU)
    assert terms == cls.affinity.to_k8s()["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [n.name for n in NODES if cls.affinity.matches(n.labels)] == ["t4-0"]


def test_every_pod_is_restricted_and_runs_an_argv() -> None:
    r = plan(snap(records={k: ok(c) for c, k in keys_of(plan(snap())).items()}))
    pods = [m["spec"]["template"]["spec"] for m in r.apply if m["kind"] in ("Job", "Deployment")]
    pods += [j["spec"]["template"]["spec"] for j in kinds(plan(snap()), "Job")]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert c["command"] == ["infleet"] and all(isinstance(a, str) for a in c["args"])
        for v in pod["volumes"]:
            assert "hostPath" not in v


def test_an_observed_running_job_is_not_written_again() -> None:
    first = plan(snap())
    jobs = {c: BuildJobState(naming.build_job_name(k), OWNER.uid, active=True, result=None)
            for c, k in keys_of(first).items()}
    second = plan(snap(jobs={keys_of(first)[c]: j for c, j in jobs.items()},
                       previous=first.status, children=observed_world(first, {})))
    assert not kinds(second, "Job")
    assert not [e for e in second.events if e.reason == "BuildStarted"]
    assert all(c.engine.state is EngineState.BUILDING for c in second.status.classes)


def test_a_build_shared_with_another_deployment_is_waited_for() -> None:
    keys = keys_of(plan(snap()))
    other = BuildJobState(naming.build_job_name(keys[CPU]), "uid-other", active=True, result=None)
    r = plan(snap(jobs={keys[CPU]: other}))
    assert CPU not in {j["metadata"]["labels"][naming.CLASS_LABEL] for j in kinds(r, "Job")}
    assert "shared with another deployment" in by_class(r)[CPU].engine.message


# --- built, served, verified ----------------------------------------------------------------


def finished(keys: dict[str, str]) -> dict[str, BuildJobState]:
    return {
        keys[CPU]: BuildJobState(naming.build_job_name(keys[CPU]), OWNER.uid, False, ok(CPU)),
        keys[SIM]: BuildJobState(naming.build_job_name(keys[SIM]), OWNER.uid, False,
                                 ok(SIM, simulated=True)),
    }


def test_a_finished_job_becomes_a_record_and_the_job_goes() -> None:
    keys = keys_of(plan(snap()))
    r = plan(snap(jobs=finished(keys)))
    records = {m["metadata"]["labels"][naming.BUILD_KEY_LABEL]: m for m in kinds(r, "ConfigMap")}
    assert set(records) == {keys[CPU], keys[SIM]}
    assert engines.parse_record(records[keys[CPU]]["data"]) == ok(CPU)
    assert {d.name for d in r.delete if d.kind == "Job"} == {
        naming.build_job_name(keys[CPU]), naming.build_job_name(keys[SIM])}
    assert "ownerReferences" not in records[keys[CPU]]["metadata"]  # outlives the deployment
    assert {e.reason for e in r.events} >= {"BuildFinished"}


def served(keys: dict[str, str]) -> dict[str, EngineResult]:
    return {keys[CPU]: ok(CPU), keys[SIM]: ok(SIM, simulated=True)}


def test_built_engines_are_served_with_replicas_from_the_capacity_planner() -> None:
    keys = keys_of(plan(snap()))
    r = plan(snap(records=served(keys), jobs={
        keys[GPU]: BuildJobState(naming.build_job_name(keys[GPU]), OWNER.uid, True, None)}))
    deployments = {d["metadata"]["labels"][naming.CLASS_LABEL]: d for d in kinds(r, "Deployment")}
    assert set(deployments) == {CPU, SIM}
    total = sum(d["spec"]["replicas"] for d in deployments.values())
    assert total >= 1
    cpu = deployments[CPU]
    assert cpu["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    args = cpu["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--engine-dir") + 1] == "/var/lib/infleet/store/engines/" + "e" * 32
    # SLO-aware admission: a share of the deployment's SLO
    slo = SPEC.slo.latency_p99_ms
    assert float(args[args.index("--max-queue-wait-ms") + 1]) == queue_wait_budget_ms(slo) < slo
    assert {s["metadata"]["name"] for s in kinds(r, "Service")} == {
        "cnn", naming.serving_name("cnn", CPU), naming.serving_name("cnn", SIM)}
    route = kinds(r, "HTTPRoute")[0]
    assert route["spec"]["hostnames"] == ["cnn.demo.infleet.local"]
    # nothing is Ready or verified yet: no traffic anywhere
    assert all(b["weight"] == 0 for b in route["spec"]["rules"][0]["backendRefs"])
    assert r.status.phase is Phase.BUILDING  # the GPU class still builds


def _serving_state(s: Snapshot, ready: dict[str, int]) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The Deployments of the observed world with ``ready`` Ready pods per class."""
    sets, pods = {}, []
    for (kind, _), d in s.children.items():
        if kind != "Deployment":
            continue
        body = copy.deepcopy(d)
        cls = d["metadata"]["labels"][naming.CLASS_LABEL]
        body["status"] = {"readyReplicas": ready.get(cls, 0), "replicas": d["spec"]["replicas"]}
        sets[cls] = serving_set(body)
        engine = d["spec"]["template"]["metadata"]["annotations"]["infleet.dev/engine-key"]
        pods += [ServingPod(f"{cls}-{i}", cls, f"127.0.0.{i + 2}", True, engine, False)
                 for i in range(ready.get(cls, 0))]
    return sets, tuple(pods)


def converge(s: Snapshot, rounds: int = 4) -> tuple[Snapshot, Reconcile]:
    """Plan, let the API take the writes, plan again with that as the observed world."""
    r = plan(s)
    for _ in range(rounds):
        s = replace(s, children=observed_world(r, dict(s.children)), previous=r.status)
        r = plan(s)
    return s, r


def test_available_only_after_a_test_inference_passed_on_every_real_class() -> None:
    keys = keys_of(plan(snap()))
    records = {**served(keys), keys[GPU]: EngineResult(
        Outcome.FAILED, message="no", finished_at="2026-12-01T11:00:00Z")}
    s, r = converge(snap(records=records))
    sets, pods = _serving_state(s, {CPU: 1, SIM: 1})
    s = replace(s, serving=sets, pods=pods)
    r = plan(s)
    available = next(c for c in r.status.conditions if c.type == "Available")
    assert available.status == "False" and "waiting for a test inference" in available.message
    assert [t.node_class for t in r.probes] == [CPU]  # never a simulated class
    probe = ProbeResult(True, "e" * 32, "ok", NOW)
    r = plan(replace(s, probes={CPU: probe}, previous=r.status))
    available = next(c for c in r.status.conditions if c.type == "Available")
    assert available.status == "True" and SIM in available.message
    weights = {c.name: c.weight for c in r.status.classes}
    assert weights[CPU] == 100 and weights[SIM] == 0  # simulated classes take no traffic
    assert r.status.phase is Phase.DEGRADED  # the GPU class failed, the rest serves
    assert "Available" in {e.reason for e in r.events}


def test_a_converged_deployment_writes_nothing() -> None:
    keys = keys_of(plan(snap()))
    s, _ = converge(snap(records={**served(keys), keys[GPU]: ok(GPU)}))
    sets, pods = _serving_state(s, {CPU: 4, SIM: 4, GPU: 4})
    probes = {c: ProbeResult(True, "e" * 32, "ok", NOW) for c in (CPU, GPU)}
    s, _ = converge(replace(s, serving=sets, pods=pods, probes=probes))
    final = plan(s)
    assert final.apply == () and final.delete == () and final.events == ()
    assert final.status == s.previous


# --- changes and failures -----------------------------------------------------------------------


def test_a_changed_budget_rebuilds_only_the_classes_whose_key_changed() -> None:
    before = keys_of(plan(snap()))
    after = keys_of(plan(snap(spec=spec(accuracy={"metric": "cosine", "maxDeviation": 0.01}))))
    # INT8 joins the ladder where the class can run it (VNNI CPU, T4); plain AVX2 keeps FP32
    assert after[CPU] != before[CPU] and after[GPU] != before[GPU] and after[SIM] == before[SIM]


def test_a_tighter_budget_fails_an_fp32_engine_that_no_longer_meets_it() -> None:
    keys = keys_of(plan(snap()))
    measured = ok(SIM)
    assert measured.summary is not None
    rung = RungResult(precision="fp32", deviation=0.02, passed=True, message="")
    measured = replace(measured, summary=measured.summary.model_copy(
        update={"accuracy": [rung], "simulated": False, "engine_key": "d" * 32}))
    tight = spec(accuracy={"metric": "cosine", "maxDeviation": 0.01})
    assert keys_of(plan(snap(spec=tight)))[SIM] == keys[SIM]  # no rebuild for FP32 only
    r = plan(snap(spec=tight, records={keys[SIM]: measured}))
    sim = by_class(r)[SIM]
    assert sim.engine.state is EngineState.FAILED and "over the budget 0.01" in sim.engine.message
    loose = spec(accuracy={"metric": "cosine", "maxDeviation": 0.05})
    assert by_class(plan(snap(spec=loose, records={keys[SIM]: measured})))[SIM].engine.state \
        is EngineState.READY


def test_validation_and_calibration_data_reach_the_build_job_and_its_key() -> None:
    data = {"metric": "cosine",
            "calibration": {"uri": "pvc://data/cal.npz", "sha256": "c" * 64, "samples": 128},
            "validation": {"uri": "s3://bucket/val.npz", "sha256": "d" * 64, "samples": 32}}
    r = plan(snap(spec=spec(accuracy=data)))
    job = next(j for j in kinds(r, "Job") if j["metadata"]["labels"][naming.CLASS_LABEL] == SIM)
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    flags = {f: args[args.index(f) + 1] for f in (
        "--calibration", "--calibration-sha256", "--calibration-samples",
        "--validation", "--validation-sha256", "--validation-samples")}
    assert flags == {"--calibration": "file:///mnt/pvc/data/cal.npz",
                     "--calibration-sha256": "c" * 64, "--calibration-samples": "128",
                     "--validation": "s3://bucket/val.npz", "--validation-sha256": "d" * 64,
                     "--validation-samples": "32"}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/mnt/pvc/data"}
    # SIM (plain AVX2) builds FP32 only: the calibration file cannot change its outcome, the
    # validation file can (it is what every rung is judged on).
    base = keys_of(plan(snap()))
    with_data = keys_of(r)
    assert with_data[SIM] != base[SIM]
    cal_only = {"metric": "cosine", "calibration": {"uri": "pvc://data/cal.npz", "samples": 9}}
    other_val = {**data, "validation": {**data["validation"], "sha256": "e" * 64}}
    assert keys_of(plan(snap(spec=spec(accuracy=other_val))))[SIM] != with_data[SIM]
    # without validation data the calibration file is the validation data: it keys FP32 too
    assert keys_of(plan(snap(spec=spec(accuracy=cal_only))))[SIM] != base[SIM]


def test_an_fp32_engine_within_the_references_noise_is_not_over_a_later_budget() -> None:
    keys = keys_of(plan(snap()))
    measured = ok(SIM)
    assert measured.summary is not None
    rung = RungResult(precision="fp32", deviation=0.02, noise=0.015, passed=True,
                      judged_on="synthetic", message="within noise")
    measured = replace(measured, summary=measured.summary.model_copy(
        update={"accuracy": [rung], "simulated": False, "engine_key": "d" * 32}))
    tight = spec(accuracy={"metric": "cosine", "maxDeviation": 0.01})
    sim = by_class(plan(snap(spec=tight, records={keys[SIM]: measured})))[SIM]
    assert sim.engine.state is EngineState.READY
    assert sim.engine.accuracy[0].judged_on == "synthetic"  # the status says what judged it


def test_while_a_class_rebuilds_it_keeps_serving_its_previous_engine() -> None:
    keys = keys_of(plan(snap()))
    s, _ = converge(snap(records=served(keys)))
    sets, pods = _serving_state(s, {CPU: 1, SIM: 1})
    new_spec = spec(accuracy={"metric": "cosine", "maxDeviation": 0.01})
    s2 = replace(s, spec=new_spec, serving=sets, pods=pods, generation=2)
    r2 = plan(s2)
    new_keys = keys_of(r2)
    cpu = by_class(r2)[CPU]
    assert cpu.engine.state is EngineState.BUILDING and "serving the previous" in cpu.engine.message
    assert not [d for d in kinds(r2, "Deployment")
                if d["metadata"]["labels"][naming.CLASS_LABEL] == CPU]  # left as it is
    assert naming.serving_name("cnn", CPU) not in {d.name for d in r2.delete}
    # once the new engine is built the class rolls, and only it
    new_engine = ok(CPU, engine="f" * 32)
    r3 = plan(replace(s2, records={**s2.records, new_keys[CPU]: new_engine}, previous=r2.status))
    rolled = [d for d in kinds(r3, "Deployment")
              if d["metadata"]["labels"][naming.CLASS_LABEL] == CPU]
    assert rolled and "f" * 32 in rolled[0]["spec"]["template"]["spec"]["containers"][0]["args"][2]
    assert "Rollout" in {e.reason for e in r3.events}


def test_a_failed_build_fails_only_its_class_and_is_not_retried_when_permanent() -> None:
    keys = keys_of(plan(snap()))
    failure = EngineResult(Outcome.FAILED, message="sha256 mismatch for pvc://models/cnn.onnx",
                           retryable=False, finished_at="2026-12-01T11:00:00Z")
    r = plan(snap(records={**served(keys), keys[GPU]: failure},
                  now=NOW + timedelta(days=1)))
    gpu = by_class(r)[GPU]
    assert gpu.engine.state is EngineState.FAILED and "sha256 mismatch" in gpu.engine.message
    assert not kinds(r, "Job")
    engines_ready = next(c for c in r.status.conditions if c.type == "EnginesReady")
    assert engines_ready.reason == "BuildFailed" and "sha256 mismatch" in engines_ready.message


def test_a_retryable_failure_is_tried_again_after_its_backoff() -> None:
    keys = keys_of(plan(snap()))
    failure = EngineResult(Outcome.FAILED, message="source unreachable", retryable=True,
                           finished_at="2026-12-01T11:59:30Z", attempts=1)
    records = {**served(keys), keys[GPU]: failure}
    assert not kinds(plan(snap(records=records)), "Job")  # 30 s after: still waiting
    later = plan(snap(records=records, now=NOW + timedelta(minutes=2)))
    assert [j["metadata"]["labels"][naming.CLASS_LABEL] for j in kinds(later, "Job")] == [GPU]


def test_old_capacity_shrinks_only_after_new_capacity_is_ready() -> None:
    keys = keys_of(plan(snap()))
    s, _ = converge(snap(records=served(keys)))
    sets, pods = _serving_state(s, {CPU: 1, SIM: 1})
    before = {c: st.replicas for c, st in sets.items()}
    # The GPU engine arrives: the cheapest mix moves capacity there, none of it Ready yet.
    s2 = replace(s, serving=sets, pods=pods,
                 records={**s.records, keys[GPU]: ok(GPU, engine="9" * 32)})
    r2 = plan(s2)
    for d in kinds(r2, "Deployment"):
        cls = d["metadata"]["labels"][naming.CLASS_LABEL]
        if cls in before:
            assert d["spec"]["replicas"] >= before[cls]


def test_an_excluded_class_gets_no_job_and_says_why() -> None:
    r = plan(snap(spec=spec(classes={"allow": ["x86"]})))
    assert by_class(r)[GPU].excluded and "not in spec.classes.allow" in by_class(r)[GPU].reason
    assert GPU not in {j["metadata"]["labels"][naming.CLASS_LABEL] for j in kinds(r, "Job")}
    assert "ClassExcluded" in {e.reason for e in r.events}


@pytest.mark.parametrize("gateway", [True, False])
def test_the_endpoint_follows_the_gateway_api(gateway: bool) -> None:
    r = plan(snap(gateway_api=gateway))
    assert bool(kinds(r, "HTTPRoute")) is gateway
    assert r.status.endpoint == ("http://cnn.demo.infleet.local" if gateway
                                 else "http://cnn.demo.svc:8080")


def test_a_class_that_rebuilds_keeps_room_for_its_build_job() -> None:
    keys = keys_of(plan(snap()))
    s, _ = converge(snap(records=served(keys)))
    # SIM has Ready room to take what CPU gives up (else the old capacity is held)
    sets, pods = _serving_state(s, {CPU: 2, SIM: 3})
    assert sets[CPU].replicas == 2  # both 1-CPU nodes hold a replica: the class is full
    rebuild = replace(s, spec=spec(accuracy={"metric": "cosine", "maxDeviation": 0.01}),
                      serving=sets, pods=pods, generation=2)
    r = plan(rebuild)
    assert by_class(r)[CPU].engine.state is EngineState.BUILDING
    assert by_class(r)[CPU].desired_replicas == 1  # one node's room is kept for the build


def test_reserving_room_takes_it_from_the_emptiest_node() -> None:
    cls = next(c for c in CLASSES if c.name == SIM)
    reserved = cls.with_reserved(Resources(1000, 2**30, 0))
    assert reserved.replicas_that_fit(Resources(1000, 2**30, 0)) == (
        cls.replicas_that_fit(Resources(1000, 2**30, 0)) - 1)
    assert cls.with_reserved(Resources(10**6, 0, 0)) == cls  # fits nowhere: unchanged


# --- TVM tuning never holds a rollout back (unless the spec asks) ---------------------------

TUNING = CONFIG.model_copy(update={"build": CONFIG.build.model_copy(
    update={"tuning_trials": 4, "tuning_seconds": 900.0})})
TVM_ON_CPU = {"overrides": [{"class": CPU, "backend": "tvm"}]}


def _job_of(r: Reconcile, cls: str) -> dict[str, Any]:
    (job,) = [j for j in kinds(r, "Job") if j["metadata"]["labels"][naming.CLASS_LABEL] == cls]
    return job


def _trials(job: dict[str, Any]) -> str:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return str(args[args.index("--tuning-trials") + 1])


def test_a_tuned_class_serves_its_untuned_engine_while_the_tuned_one_builds() -> None:
    s = snap(config=TUNING, spec=spec(classes=TVM_ON_CPU))
    # 1. the untuned engine builds first, alone on the class
    r1 = plan(s)
    untuned_job = _job_of(r1, CPU)
    untuned_key = untuned_job["metadata"]["labels"][naming.BUILD_KEY_LABEL]
    tuned_key = by_class(r1)[CPU].engine.build_key
    assert _trials(untuned_job) == "0" and untuned_key != tuned_key
    assert untuned_key in r1.waiting_on
    cpu = by_class(r1)[CPU]
    assert cpu.engine.state is EngineState.BUILDING and "untuned" in cpu.engine.message
    assert any("untuned tvm engine" in e.message for e in r1.events if e.reason == "BuildStarted")
    assert _trials(_job_of(r1, GPU)) == "4"  # TensorRT: the key's budget, no interim build
    # 2. untuned built: it serves, and the tuned build starts
    running = BuildJobState(naming.build_job_name(untuned_key), OWNER.uid, True, None)
    s2 = replace(s, jobs={untuned_key: running}, previous=r1.status,
                 children=observed_world(r1, {}))
    assert not [j for j in kinds(plan(s2), "Job")
                if j["metadata"]["labels"][naming.CLASS_LABEL] == CPU]  # one build at a time
    untuned = ok(CPU, engine="u" * 32)
    s3 = replace(s2, jobs={untuned_key: replace(running, active=False, result=untuned)})
    r3 = plan(s3)
    assert _trials(_job_of(r3, CPU)) == "4"
    assert any(m["kind"] == "ConfigMap" for m in r3.apply)  # the untuned engine's record
    (deployment,) = [d for d in kinds(r3, "Deployment")
                     if d["metadata"]["labels"][naming.CLASS_LABEL] == CPU]
    assert "u" * 32 in deployment["spec"]["template"]["spec"]["containers"][0]["args"][2]
    cpu = by_class(r3)[CPU]
    assert cpu.engine.state is EngineState.BUILDING and tuned_key in r3.waiting_on
    assert "serving the untuned" in cpu.engine.message and cpu.precision is not None
    # 3. while tuning, the untuned engine is never built again; tuned built: it rolls out
    s4 = replace(s3, records={untuned_key: untuned},
                 jobs={tuned_key: BuildJobState(naming.build_job_name(tuned_key), OWNER.uid,
                                                True, None)},
                 children=observed_world(r3, dict(s3.children)), previous=r3.status)
    r4 = plan(s4)
    assert not kinds(r4, "Job") or all(
        j["metadata"]["labels"][naming.CLASS_LABEL] != CPU for j in kinds(r4, "Job"))
    sets, pods = _serving_state(s4, {CPU: 1})
    s5 = replace(s4, serving=sets, pods=pods, jobs={},
                 records={untuned_key: untuned, tuned_key: ok(CPU, engine="t" * 32)},
                 probes={CPU: ProbeResult(True, "u" * 32, "ok", NOW)})
    r5 = plan(s5)
    (rolled,) = [d for d in kinds(r5, "Deployment")
                 if d["metadata"]["labels"][naming.CLASS_LABEL] == CPU]
    assert "t" * 32 in rolled["spec"]["template"]["spec"]["containers"][0]["args"][2]
    assert "Rollout" in {e.reason for e in r5.events}
    assert by_class(r5)[CPU].engine.state is EngineState.READY
    # while it rolls, the untuned engine's verified pods keep the class's traffic
    assert not by_class(r5)[CPU].verified and by_class(r5)[CPU].weight == 100


def test_a_rolling_class_keeps_its_traffic_until_the_new_engine_answers() -> None:
    keys = keys_of(plan(snap()))
    s, _ = converge(snap(records=served(keys)))
    sets, pods = _serving_state(s, {CPU: 2, SIM: 1})
    verified = {CPU: ProbeResult(True, "e" * 32, "ok", NOW)}
    s = replace(s, serving=sets, pods=pods, probes=verified)
    assert by_class(plan(s))[CPU].weight == 100
    # a new engine arrives (a changed budget): the old pods serve until the new one answers
    new_spec = spec(accuracy={"metric": "cosine", "maxDeviation": 0.01})
    new_key = keys_of(plan(replace(s, spec=new_spec)))[CPU]
    rolling = replace(s, spec=new_spec, generation=2,
                      records={**s.records, new_key: ok(CPU, engine="f" * 32)})
    r = plan(rolling)
    assert by_class(r)[CPU].weight == 100 and not by_class(r)[CPU].verified
    # its first pod is Ready and answered: from then on the new engine's pods carry it
    new_pod = ServingPod("cpu-new", CPU, "127.0.0.9", True, "f" * 32, False)
    r = plan(replace(rolling, pods=(*pods, new_pod),
                     probes={CPU: ProbeResult(True, "f" * 32, "ok", NOW)}))
    assert by_class(r)[CPU].verified and by_class(r)[CPU].weight == 100
    # a failed test inference on the new engine takes the class out of the route
    r = plan(replace(rolling, pods=(*pods, new_pod),
                     probes={CPU: ProbeResult(False, "f" * 32, "HTTP 500", NOW)}))
    assert by_class(r)[CPU].weight == 0


def test_a_tuned_build_of_another_deployment_is_joined_with_the_untuned_engine_beside_it(
) -> None:
    s = snap(config=TUNING, spec=spec(classes=TVM_ON_CPU))
    tuned_key = by_class(plan(s))[CPU].engine.build_key
    theirs = BuildJobState(naming.build_job_name(tuned_key), "uid-other", True, None)
    r = plan(replace(s, jobs={tuned_key: theirs}))
    job = _job_of(r, CPU)  # the untuned engine's: this deployment does not wait for tuning
    assert _trials(job) == "0"
    assert {job["metadata"]["labels"][naming.BUILD_KEY_LABEL], tuned_key} <= set(r.waiting_on)
    assert "shared with another deployment" in by_class(r)[CPU].engine.message


def test_wait_for_tuning_builds_only_the_tuned_engine_and_serves_nothing_new_meanwhile() -> None:
    s = snap(config=TUNING, spec=spec(classes=TVM_ON_CPU, build={"waitForTuning": True}))
    r = plan(s)
    job = _job_of(r, CPU)
    assert _trials(job) == "4"
    assert job["metadata"]["labels"][naming.BUILD_KEY_LABEL] == by_class(r)[CPU].engine.build_key
    # the untuned engine exists (another deployment built it): still not served
    untuned_key = _job_of(plan(replace(s, spec=spec(classes=TVM_ON_CPU))), CPU)[
        "metadata"]["labels"][naming.BUILD_KEY_LABEL]
    r2 = plan(replace(s, records={untuned_key: ok(CPU, engine="u" * 32)}))
    assert not [d for d in kinds(r2, "Deployment")
                if d["metadata"]["labels"][naming.CLASS_LABEL] == CPU]


def test_an_untuned_operator_builds_each_class_once() -> None:
    r = plan(snap(spec=spec(classes=TVM_ON_CPU)))
    job = _job_of(r, CPU)
    assert _trials(job) == "0"
    assert job["metadata"]["labels"][naming.BUILD_KEY_LABEL] == by_class(r)[CPU].engine.build_key
