"""How fast the operator turns InferenceDeployments into children, and what it costs.

    .venv/bin/python bench/bench_operator.py [--runs 10] [--many 200] [--skip-many]

Two measurements on local clusters started here (numbers only, no pass/fail):

1. ``dev`` fleet, one deployment at a time, ``--runs`` times (a fresh namespace each): apply ->
   every child the first reconcile makes exists (a build Job per placed class, the endpoint
   Service), and apply -> ``Available`` (a real build on the real-executor class, its serving
   pod Ready, a test inference passed). p50/p95. Baseline in the same run: the API server's own
   round trip for creating one object (a ConfigMap), which bounds what any operator can do.
2. ``large`` fleet (2,151 nodes, 12 classes): ``--many`` deployments of one model applied at once
   to the simulated classes -> every one reconciled (its status written for its generation,
   every placed class's engine recorded, its serving Deployments created), and the operator's
   peak resident memory (VmHWM) over the run.

Targets (issue 10): p95 <= 2 s to children created; 200 deployments on `large` in <= 3 min
with a peak RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support code starts the operator

from support.cluster import Kube, wait_until  # noqa: E402
from support.operator import (  # noqa: E402
    DEV_CONFIG,
    Operator,
    apply_deployment,
    claim,
    deployment,
    local_class,
    put_model,
    status_of,
    wait_available,
)

from infleet.api.render import render_crd  # noqa: E402
from infleet.devcluster import fleet, tools  # noqa: E402
from infleet.devcluster.cluster import LocalCluster  # noqa: E402
from infleet.runtime.server.samples import small_cnn  # noqa: E402


def say(message: str) -> None:
    """Progress on stderr, flushed: a run takes minutes and must not look hung."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cluster(profile: str, workdir: Path) -> tuple[LocalCluster, Kube]:
    c = LocalCluster(
        workdir,
        tools.locate(),
        fleet.load_profile(profile),
        name=f"bench-operator-{profile}",
        die_with_parent=True,
    )
    say(f"starting the {profile} cluster")
    t0 = time.monotonic()
    c.start(timeout=1200)
    say(f"{profile} cluster up after {time.monotonic() - t0:.0f} s")
    c.apply_crd(render_crd())
    return c, Kube.connect(c.kubeconfig, c)


def namespace(kube: Kube, name: str) -> str:
    kube.core.create_namespace({"metadata": {"name": name}})
    wait_until(
        lambda: kube.core.read_namespaced_service_account("default", name),
        30,
        f"the default ServiceAccount of {name}",
    )
    return name


def spec(sha: str, allow: list[str]) -> dict[str, Any]:
    return {
        "model": {"uri": "pvc://infleet-models/cnn.onnx", "sha256": sha, "name": "cnn"},
        "slo": {"latencyP99Ms": 10000},
        "batching": {"maxBatchSize": 4},
        "scaling": {"minReplicas": 1, "maxReplicas": 4},
        "classes": {"allow": allow},
    }


def first_children(kube: Kube, ns: str, name: str, placed: int) -> bool:
    jobs = kube.batch.list_namespaced_job(ns).items
    services = kube.core.list_namespaced_service(
        ns, label_selector=f"infleet.dev/deployment={name}"
    ).items
    return len(jobs) >= placed and len(services) >= 1


def bench_dev(runs: int, workdir: Path) -> None:
    c, kube = cluster("dev", workdir / "dev")
    try:
        local = local_class(kube)
        baseline, children, ready = [], [], []
        for i in range(runs):
            ns = namespace(kube, f"bench-{i}")
            store = claim(kube, ns, "infleet-engines")
            models = claim(kube, ns, "infleet-models")
            sha = put_model(models, "cnn.onnx", small_cnn)
            del store
            t0 = time.monotonic()
            kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "baseline"}})
            baseline.append(time.monotonic() - t0)
            op = Operator(kube, workdir / f"op-{i}", ["-n", ns, "--config", str(DEV_CONFIG)])
            op.start()
            try:
                t0 = time.monotonic()
                apply_deployment(kube, deployment("cnn", ns, spec(sha, [local])))
                wait_until(
                    lambda ns=ns: first_children(kube, ns, "cnn", 1),
                    60,
                    "the first children",
                    op.tail,
                    interval=0.02,
                )
                children.append(time.monotonic() - t0)
                wait_available(kube, ns, "cnn")
                ready.append(time.monotonic() - t0)
                say(
                    f"run {i + 1}/{runs}: children {children[-1]:.3f} s, "
                    f"Available {ready[-1]:.1f} s"
                )
            finally:
                op.stop()
                # Each run's serving pod holds a CPU of the real class: left running, a few
                # runs fill its nodes and a later build pod never schedules.
                kube.core.delete_namespace(ns)
                wait_until(lambda ns=ns: not kube.core.list_namespaced_pod(ns).items, 120,
                           f"the pods of {ns} to go")
        print(f"\ndev fleet, {runs} runs, one deployment on {local} (real build + serve)")
        print(f"{'':34} {'p50 s':>8} {'p95 s':>8}")
        for label, xs in (
            ("API round trip (one ConfigMap)", baseline),
            ("apply -> children created", children),
            ("apply -> Available (real class)", ready),
        ):
            print(f"{label:34} {statistics.median(xs):8.3f} {pct(xs, 0.95):8.3f}")
    finally:
        c.stop()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reconciled(s: dict[str, Any]) -> bool:
    if s.get("observedGeneration") != 1:
        return False
    engines = next((c for c in s.get("conditions", []) if c["type"] == "EnginesReady"), {})
    wanted = [c for c in s.get("classes", []) if c.get("desiredReplicas")]
    return engines.get("status") == "True" and bool(wanted)


def bench_many(count: int, workdir: Path) -> None:
    c, kube = cluster("large", workdir / "large")
    try:
        ns = namespace(kube, "many")
        claim(kube, ns, "infleet-engines")
        sha = put_model(claim(kube, ns, "infleet-models"), "cnn.onnx", small_cnn)
        local = local_class(kube)
        classes = sorted({c["name"] for c in _classes(kube)} - {local})
        op = Operator(kube, workdir / "op-many", ["-n", ns, "--config", str(DEV_CONFIG)])
        op.start()
        try:
            assert op.proc is not None
            t0 = time.monotonic()
            for i in range(count):
                apply_deployment(kube, deployment(f"m{i:03d}", ns, spec(sha, classes)))
            applied = time.monotonic() - t0
            say(f"{count} deployments applied in {applied:.1f} s; waiting for reconciles")

            def done() -> bool:
                items = kube.custom.list_namespaced_custom_object(
                    "infleet.dev", "v1alpha1", ns, "inferencedeployments"
                )["items"]
                return sum(reconciled(i.get("status") or {}) for i in items) == count

            wait_until(done, 1800, f"{count} deployments to reconcile", op.tail, interval=1.0)
            took = time.monotonic() - t0
            rss = peak_rss_mib(op.proc.pid)
            example = status_of(kube, ns, "m000")
        finally:
            op.stop()
        placed = sum(1 for c in example.get("classes", []) if not c.get("excluded"))
        print(
            f"\nlarge fleet ({len(list(c.profile.classes))} fleet classes, "
            f"{c.profile.node_count()} nodes): {count} deployments x {placed} classes"
        )
        print(
            f"  applied in {applied:.1f} s; all reconciled after {took:.1f} s "
            f"(target <= 180 s); operator peak RSS {rss:.0f} MiB (target <= 300)"
        )
    finally:
        c.stop()


def _classes(kube: Kube) -> list[dict[str, Any]]:
    from infleet.scheduler.classes import derive_classes
    from infleet.scheduler.inventory import nodes_from_objects

    raw = kube.api.sanitize_for_serialization(kube.core.list_node().items)
    return [{"name": c.name} for c in derive_classes(nodes_from_objects(raw))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--many", type=int, default=200)
    parser.add_argument("--skip-dev", action="store_true")
    parser.add_argument("--skip-many", action="store_true")
    args = parser.parse_args()
    # A SIGTERM (a time-out, a CI cancel) unwinds through the finally blocks, so the clusters
    # and operators started here stop with the bench instead of running on.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="infleet-bench-operator-") as tmp:
        if not args.skip_dev:
            bench_dev(args.runs, Path(tmp))
        if not args.skip_many:
            bench_many(args.many, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
