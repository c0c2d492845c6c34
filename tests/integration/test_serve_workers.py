"""``infleet serve --workers 2`` answers as one server: /metrics sums every worker and
/v2/health/ready waits for every worker (real processes, real HTTP, fresh connections so
that the kernel spreads them over both workers)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import ServerProcess, json_input, promtool_check

from infleet.runtime.server import samples
from infleet.runtime.server.workers import SLOW_LOAD_FAULT_ENV

pytestmark = pytest.mark.integration

MODEL = "identity_fp32"


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    return samples.identity_engine(tmp_path_factory.mktemp("id"), "FP32").parent


def _workers(*args: str, tmp_path: Path, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(["--workers", "2", *args], tmp_path / "serve.log", env=env)


def _fresh_get(url: str) -> httpx.Response:
    # httpx.get opens (and closes) a connection of its own: a new 4-tuple each time
    return httpx.get(url, timeout=10, headers={"connection": "close"})


def _scrape(server: ServerProcess) -> tuple[bytes, dict[tuple[str, tuple], float]]:
    response = _fresh_get(f"{server.url}/metrics")
    assert response.status_code == 200
    values = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return response.content, values


def _per_worker_successes(metrics_dir: Path) -> list[float]:
    """Successful requests in each worker's own counter file (counter_<pid>.db)."""
    out = []
    for path in sorted(metrics_dir.glob("counter_*.db")):
        total = 0.0
        for family in MultiProcessCollector.merge([str(path)]):
            for s in family.samples:
                if s.name == "infleet_serve_requests_total" and s.labels["outcome"] == "success":
                    total += s.value
        out.append(total)
    return out


def test_every_scrape_sums_the_requests_of_both_workers(engine_dir, tmp_path) -> None:
    metrics_dir = tmp_path / "metrics"
    server = _workers(
        "--engine-dir", str(engine_dir), "--metrics-dir", str(metrics_dir), tmp_path=tmp_path
    )
    k = 200
    body = {"inputs": [json_input("x", np.ones((1, 3), np.float32), "FP32")]}
    try:
        server.wait_ready()  # ready only once both workers are: every later scrape sees both
        for _ in range(k):
            response = httpx.post(
                f"{server.url}/v2/models/{MODEL}/infer",
                json=body,
                timeout=10,
                headers={"connection": "close"},
            )
            assert response.status_code == 200, response.text
        per_worker = _per_worker_successes(metrics_dir)
        # both served some: a scrape answered by one worker alone could not show k
        assert len(per_worker) == 2 and min(per_worker) >= 1 and sum(per_worker) == k, per_worker
        success = ("infleet_serve_requests_total", (("model", MODEL), ("outcome", "success")))
        count = ("infleet_serve_request_duration_seconds_count", (("model", MODEL),))
        rows = ("infleet_serve_batch_size_rows_sum", (("model", MODEL),))
        for _ in range(8):  # fresh connections: the kernel picks a worker for each
            content, values = _scrape(server)
            # the warm-up batches are engine batches, not requests
            assert values[success] == k and values[count] == k
            assert values[rows] > k  # the requests' rows plus both workers' warm-up rows
            assert values[("infleet_serve_requests_in_flight", ())] == 0
            assert values[("infleet_serve_queue_depth_requests", (("model", MODEL),))] == 0
            assert values[("infleet_serve_ready", ())] == 1
        promtool_check(content)
    finally:
        assert server.stop() == 0, server.log()
    assert not metrics_dir.exists()  # the server created it, so it removes it at exit


def test_ready_waits_for_the_slowest_worker(engine_dir, tmp_path) -> None:
    # TEST-ONLY FAULT INJECTION: worker 1 waits 6 s before it loads; worker 0 loads at once
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = _workers(
        "--engine-dir",
        str(engine_dir),
        tmp_path=tmp_path,
        env={SLOW_LOAD_FAULT_ENV: "1:6", "TMPDIR": str(tmp)},
    )
    try:
        deadline = time.monotonic() + 60
        while server.log().count(f"ready: {MODEL}") < 1:  # worker 0 is ready
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert "TEST-ONLY FAULT: worker 1 waits" in server.log()
        health = [_fresh_get(f"{server.url}/v2/health/ready") for _ in range(12)]
        model = [_fresh_get(f"{server.url}/v2/models/{MODEL}/ready") for _ in range(6)]
        _, values = _scrape(server)
        # worker 1 had not loaded during any of these (else the test could not tell)
        assert server.log().count(f"ready: {MODEL}") == 1, server.log()
        assert [r.status_code for r in health] == [503] * 12
        assert all(r.json() == {"ready": False} for r in health)
        # worker 0 has the model but not every worker does; worker 1 is still loading it:
        # both answer 503, never 404 (the model is served here, just not yet)
        assert [r.status_code for r in model] == [503] * 6, [r.text for r in model]
        assert values[("infleet_serve_ready", ())] == 0  # livemin over the workers

        server.wait_ready(timeout_s=60)
        assert server.log().count(f"ready: {MODEL}") == 2
        assert [_fresh_get(f"{server.url}/v2/health/ready").status_code for _ in range(8)] == [
            200
        ] * 8
        assert [
            _fresh_get(f"{server.url}/v2/models/{MODEL}/ready").status_code for _ in range(4)
        ] == [200] * 4
        _, values = _scrape(server)
        assert values[("infleet_serve_ready", ())] == 1
        assert list(tmp.glob("infleet-metrics-*"))  # the private metrics directory
    finally:
        assert server.stop() == 0, server.log()
    assert not list(tmp.glob("infleet-metrics-*"))  # ...removed at exit
