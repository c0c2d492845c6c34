"""The autoscaler's metrics sources against real `infleet serve` processes (ONNX Runtime on
the sample CNN) and a real Prometheus server (Debian's `prometheus`, started here).

Load is a bounded number of real inference requests; every wait polls a condition with a
deadline. The checks are exact where the server counts (requests answered) and bounded
where time enters (rates over windows measured by the scraper's own clock).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_harness import ServerProcess, binary_body
from support.cluster import wait_until

from infleet.devcluster.cluster import free_port
from infleet.operator.metrics_source import PodScraper, PodTarget, PrometheusSource, promql
from infleet.runtime.server import samples
from infleet.scheduler.metrics import observe_class

pytestmark = pytest.mark.integration

MODEL = "cnn"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    root = tmp_path_factory.mktemp("engines")
    engine = samples.cnn_engine(root / "cnn").parent
    procs = [
        ServerProcess(["--engine-dir", str(engine), "--threads", "1"],
                      tmp_path_factory.mktemp("log") / f"serve{i}.log")
        for i in range(2)
    ]
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            assert p.stop() == 0, p.log()
            assert "Traceback" not in p.log()


def send(server: ServerProcess, n: int, rows: int = 1) -> None:
    x = np.random.default_rng(0).normal(size=(rows, 3, 48, 192)).astype(np.float32)
    body, headers = binary_body([("input", x, "FP32")])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(n):
            r = c.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
            assert r.status_code == 200, r.text


class Silent:
    """A TCP server that accepts and never answers: a pod that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self._held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        for c in self._held:
            c.close()
        self.sock.close()


def targets(servers: list[ServerProcess]) -> list[PodTarget]:
    return [PodTarget(f"pod-{i}", f"{s.url}/metrics") for i, s in enumerate(servers)]


def scrape(scraper_targets: list[PodTarget], timeout_s: float = 2.0) -> list:
    async def go() -> list:
        async with httpx.AsyncClient() as client:
            return await PodScraper(client, timeout_s=timeout_s).scrape(scraper_targets, MODEL)

    return asyncio.run(go())


def test_scrapes_of_real_servers_give_the_rate_and_p99(servers: list[ServerProcess]) -> None:
    before = scrape(targets(servers))
    assert all(s.metrics is not None for s in before), [s.error for s in before]
    send(servers[0], 150)
    send(servers[1], 50, rows=2)
    after = scrape(targets(servers))
    o = observe_class(before, after, slo_ms=1000)
    assert o is not None
    assert o.requests == 200  # exactly the requests sent: the counters, differenced
    assert (o.pods_known, o.pods_unknown) == (2, 0)
    elapsed = max(b.at - a.at for a, b in zip(before, after, strict=True))
    assert o.rate_rps == pytest.approx(200 / elapsed, rel=0.05)
    assert o.refused_rps == 0 and o.error_rps == 0
    assert o.p99_ms is not None and 0 < o.p99_ms <= 10_000
    assert o.within_slo is not None and o.within_slo > 0.5
    assert o.queue_depth == 0  # nothing waits once the requests are answered


def test_pods_that_do_not_answer_are_unknown(servers: list[ServerProcess]) -> None:
    silent = Silent()
    try:
        ts = [
            *targets(servers),
            PodTarget("refused", f"http://127.0.0.1:{free_port()}/metrics"),  # nothing listens
            PodTarget("hangs", f"http://127.0.0.1:{silent.port}/metrics"),
            PodTarget("wrong", f"{servers[0].url}/v2/health/ready"),  # answers, not metrics
            PodTarget("404", f"{servers[0].url}/nope"),
        ]
        before = scrape(ts, timeout_s=1.0)
        send(servers[0], 40)
        send(servers[1], 40)
        after = scrape(ts, timeout_s=1.0)
    finally:
        silent.close()
    errors = {s.pod: s.error for s in after}
    assert errors["pod-0"] is None and errors["pod-1"] is None
    assert "ConnectError" in (errors["refused"] or "")
    assert "no answer within 1 s" in (errors["hangs"] or "")
    # 200, with the readiness JSON instead of metrics
    assert "not a Prometheus text exposition" in (errors["wrong"] or "")
    assert "HTTP 404" in (errors["404"] or "")
    o = observe_class(before, after)
    assert o is not None
    assert (o.pods_known, o.pods_unknown) == (2, 4)
    assert o.requests == 80
    # the four silent pods are taken to carry what the two that answered carry each
    elapsed = max(b.at - a.at for a, b in zip(before[:2], after[:2], strict=True))
    assert o.rate_rps == pytest.approx(80 / elapsed * 6 / 2, rel=0.1)


# --- Prometheus ----------------------------------------------------------------------------

class Prometheus:
    def __init__(self, work: Path, servers: list[ServerProcess]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: install the Debian package 'prometheus'"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the two servers and a third pod of the class where nothing listens (up == 0)
        ports = [s.port for s in servers] + [free_port()]
        static = "\n".join(
            f"      - targets: ['127.0.0.1:{port}']\n"
            f"        labels: {{infleet_dev_class: x86, infleet_dev_deployment: demo, "
            f"pod: pod-{i}}}"
            for i, port in enumerate(ports)
        )
        config = work / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: infleet-serve\n"
            "    scrape_timeout: 900ms\n"
            "    static_configs:\n" + static + "\n"
        )
        self.log_path = work / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def observe(prom: Prometheus, window_s: float = 15):
    async def go():
        async with httpx.AsyncClient() as client:
            return await PrometheusSource(client, prom.url).observe(
                MODEL, selector='infleet_dev_deployment="demo"', by="infleet_dev_class",
                window_s=window_s)

    return asyncio.run(go())


def test_prometheus_as_the_metrics_source(tmp_path: Path,
                                          servers: list[ServerProcess]) -> None:
    prom = Prometheus(tmp_path, servers)
    try:
        wait_until(prom.ready, 60, "prometheus ready", prom.log)
        def scraping() -> bool:
            o = observe(prom).get("x86")
            return o is not None and (o.pods_known, o.pods_unknown) == (2, 1)

        wait_until(scraping, 60, "prometheus scraping both servers and the dead pod", prom.log)
        stop = time.monotonic() + 60
        # load until a window holds it (the loop is bounded: 60 s at most)
        sent = 0
        seen = None
        while time.monotonic() < stop:
            send(servers[0], 40)
            send(servers[1], 40)
            sent += 80
            o = observe(prom)["x86"]
            if o.requests >= 200 and o.p99_ms is not None:
                seen = o
                break
        assert seen is not None, f"no load seen after {sent} requests:\n{prom.log()}"
        assert seen.rate_rps > 0 and seen.success_rps == pytest.approx(seen.rate_rps)
        assert seen.p99_ms is not None and 0 < seen.p99_ms < 10_000
        assert seen.refused_rps == 0 and seen.error_rps == 0
        assert (seen.pods_known, seen.pods_unknown) == (2, 1)  # the dead pod: unknown
        # its load is taken as the others' (x 3/2), never as zero
        raw = promql(MODEL, 'infleet_dev_deployment="demo"', "infleet_dev_class", 15)["rate"]
        plain = httpx.get(f"{prom.url}/api/v1/query", params={"query": raw}, timeout=5).json()
        measured = float(plain["data"]["result"][0]["value"][1])
        assert measured > 0 and seen.rate_rps >= measured * 1.2
        # The same PromQL, by hand, against the same server: the queries are what we say
        q = promql(MODEL, 'infleet_dev_deployment="demo"', "infleet_dev_class", 15)
        r = httpx.get(f"{prom.url}/api/v1/query", params={"query": q["up"]}, timeout=5).json()
        assert r["status"] == "success" and r["data"]["result"][0]["value"][1] == "2"
        bad = httpx.get(f"{prom.url}/api/v1/query", params={"query": "sum by ("}, timeout=5)
        assert bad.json()["status"] == "error"
    finally:
        prom.stop()
