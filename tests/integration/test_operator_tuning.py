"""TVM tuning under the operator, on the real-executor class with real builds: the rollout never
waits for tuning. With the operator tuning TVM engines, a class whose backend is TVM builds its
untuned engine first, serves it (verified by a test inference), builds the tuned engine after it
and rolls it out in place of the untuned one, and requests through the gateway are answered,
correctly, all along the swap. (spec.build.waitForTuning, which keeps the rollout waiting
instead, is a planner decision: tests/unit/test_operator_planner.py.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serve_harness import binary_body, decode_response
from support.cluster import Kube, wait_until
from support.operator import (
    apply_deployment,
    condition,
    deployment,
    describe,
    events_of,
    local_class,
    put_model,
    running_operator,
    short_interval_config,
    status_of,
    wait_available,
    write_config,
)
from test_operator import cnn_spec, reference_logits

from infleet.runtime.server.samples import small_cnn

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_tuned_class_serves_its_untuned_engine_until_the_tuned_one_rolls_out(
    kube: Kube, namespace: str, store: dict[str, Path], tmp_path: Path, gateway_url: str
) -> None:
    x86 = local_class(kube)
    raw = short_interval_config()
    raw["build"].update(tuningTrials=2, tuningSeconds=600)
    config = write_config(tmp_path, raw)
    sha = put_model(store["models"], "cnn.onnx", small_cnn)
    spec = cnn_spec(sha, None, classes={"allow": [x86], "overrides": [
        {"class": x86, "backend": "tvm"}]}, batching={"maxBatchSize": 2, "maxQueueDelayMs": 2},
        scaling={"minReplicas": 1, "maxReplicas": 1})

    def engine_of(status: dict[str, Any]) -> dict[str, Any]:
        engine: dict[str, Any] = next(c for c in status["classes"] if c["name"] == x86)["engine"]
        return engine

    with running_operator(kube, tmp_path / "operator", "-n", namespace, config=config):
        started = time.monotonic()
        apply_deployment(kube, deployment("tuned", namespace, spec))
        # Available on the untuned engine while the tuned one builds (minutes: MetaSchedule
        # measures every trial; a pod starts and answers in seconds).
        first = wait_available(kube, namespace, "tuned", timeout=600)
        untuned_s = time.monotonic() - started
        engine = engine_of(first)
        assert engine["state"] == "Building", describe(kube, namespace, "tuned")
        assert "serving the untuned" in engine["message"], engine["message"]
        assert condition(first, "EnginesReady")["reason"] == "Building"

        # Requests through the gateway from here until the tuned engine has rolled out: every
        # one answered, with the model's outputs (the route keeps the untuned pods' weight
        # until the tuned engine has passed its test inference).
        x = np.random.default_rng(7).standard_normal((1, 3, 48, 192)).astype(np.float32)
        want = reference_logits(store["models"] / "cnn.onnx", x)
        body, headers = binary_body([("input", x, "FP32")])
        headers["Host"] = first["endpoint"].removeprefix("http://")
        url = f"{gateway_url}/v2/models/cnn/infer"
        client = httpx.Client(timeout=30)
        wait_until(lambda: client.post(url, content=body, headers=headers).status_code == 200,
                   60, "the gateway to route to the untuned engine")
        answers: list[tuple[int, str]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    r = client.post(url, content=body, headers=headers)
                except httpx.HTTPError as e:
                    answers.append((0, f"{type(e).__name__}: {e}"))
                    continue
                ok = r.status_code == 200 and np.allclose(
                    decode_response(r)["logits"], want, rtol=1e-3, atol=1e-4)
                answers.append((r.status_code, "" if ok else r.text[:200] or "wrong outputs"))
                time.sleep(0.02)

        sender = threading.Thread(target=load, daemon=True)
        sender.start()

        def rolled_out() -> dict[str, Any] | None:
            s = status_of(kube, namespace, "tuned")
            done = (s.get("classes") and engine_of(s)["state"] != "Building"
                    and condition(s, "Available").get("status") == "True"
                    and next(c for c in s["classes"] if c["name"] == x86)["verified"])
            return s if done else None

        try:
            final = wait_until(rolled_out, 1200, "the tuned engine to roll out",
                               lambda: describe(kube, namespace, "tuned"))
            # and on until the untuned pod has stopped (its shutdown delay, then its drain)
            wait_until(lambda: len(kube.core.list_namespaced_pod(
                namespace, label_selector="infleet.dev/deployment=tuned").items) == 1, 120,
                "the untuned engine's pod to be gone")
            time.sleep(2)
        finally:
            stop.set()
            sender.join(60)
            client.close()
        failed = [a for a in answers if a[1]]
        assert answers and not failed, (len(answers), failed[:5])
        tuned = engine_of(final)
        print(f"\nAvailable on the untuned engine {untuned_s:.0f} s after apply, the tuned "
              f"engine rolled out and verified {time.monotonic() - started:.0f} s after apply; "
              f"{len(answers)} requests through the gateway meanwhile, all answered")
        assert tuned["state"] == "Ready", describe(kube, namespace, "tuned")
        assert "tuned with MetaSchedule" in tuned["message"], tuned["message"]
        events = events_of(kube, namespace, "tuned")
        finished = [m for _, r, m in events if r == "BuildFinished"]
        assert any("untuned tvm" in m for m in finished), finished
        assert any(f"tuned tvm fp32 engine {tuned['key']}" in m for m in finished), finished
        rollouts = [m for _, r, m in events if r == "Rollout"]
        assert any(tuned["key"] in m for m in rollouts), events
        # Exactly two builds: the untuned one and the tuned one, each under its own key.
        started = [m for _, r, m in events if r == "BuildStarted"]
        assert len(started) == 2, started
        assert sorted("untuned tvm" in m for m in started) == [False, True], started
