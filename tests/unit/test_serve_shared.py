"""What the workers of ``infleet serve --workers N`` share: the ready board, the metrics
directory and prometheus_client's multiprocess mode (no HTTP; the real server processes
are tested in tests/integration/test_serve_workers.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infleet.runtime.manifest import EngineManifest
from infleet.runtime.server import samples
from infleet.runtime.server.batcher import BatchPolicy
from infleet.runtime.server.command import configure, parse_config
from infleet.runtime.server.dataplane import DataPlane
from infleet.runtime.server.engines import EngineOptions, load_engine
from infleet.runtime.server.errors import ConfigError
from infleet.runtime.server.metrics import Metrics, multiprocess_values
from infleet.runtime.server.workers import (
    METRICS_DIR_ENV,
    SLOW_LOAD_FAULT_ENV,
    ReadyBoard,
    check_metrics_dir,
    slow_load_fault,
    use_metrics_dir,
)

# --- ready board ---------------------------------------------------------------------------


def test_board_is_ready_only_when_every_worker_has_every_model() -> None:
    board = ReadyBoard(workers=2, models=2)
    a, b = board.slot(0), board.slot(1)
    assert not board.all_ready()
    a.set_model(0, True)
    a.set_model(1, True)
    assert not a.all_ready() and not b.all_ready()  # worker 1 still loading
    assert not board.model_ready(0)
    b.set_model(0, True)
    assert board.model_ready(0) and not board.model_ready(1) and not board.all_ready()
    b.set_model(1, True)
    assert board.all_ready() and a.all_ready() and board.model_ready(1)
    b.clear()  # worker 1 drains (or exited)
    assert not board.all_ready() and not board.model_ready(0) and not board.model_ready(1)
    with pytest.raises(ValueError):
        board.slot(2)


def test_board_writes_of_a_forked_worker_are_seen_by_the_others() -> None:
    board = ReadyBoard(workers=2, models=1)
    board.slot(0).set_model(0, True)
    pid = os.fork()
    if pid == 0:  # the "worker": set its byte and leave without any teardown
        board.slot(1).set_model(0, True)
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.all_ready()


def test_dataplane_with_peers_is_ready_only_with_every_worker(tmp_path) -> None:
    manifest_path = samples.identity_engine(tmp_path, "FP32")
    manifest = EngineManifest.model_validate_json(manifest_path.read_text())
    engine = load_engine(manifest, tmp_path, EngineOptions(threads=1))
    board = ReadyBoard(workers=2, models=1)
    plane = DataPlane(peers=board.slot(0))
    model = plane.add_model("m", "1", manifest, engine, BatchPolicy(max_batch_size=4))
    try:
        asyncio.run(plane.warm_up(model))
        # warm here, but worker 1 is not: the pod is not ready
        assert model.ready and not plane.ready() and not plane.model_ready("m")
        assert plane.metrics.ready._value.get() == 1  # this worker's own gauge: its part
        board.slot(1).set_model(0, True)
        assert plane.ready() and plane.model_ready("m", "1")
        plane.begin_drain()  # clears this worker's bytes: the other workers see it
        assert not board.all_ready() and not board.model_ready(0)
        assert plane.metrics.ready._value.get() == 0
    finally:
        plane.close()


# --- fault injection, configuration ---------------------------------------------------------


def test_slow_load_fault_parses_worker_and_seconds() -> None:
    assert slow_load_fault(0, {}) == 0.0
    assert slow_load_fault(1, {SLOW_LOAD_FAULT_ENV: "1:2.5"}) == 2.5
    assert slow_load_fault(0, {SLOW_LOAD_FAULT_ENV: "1:2.5"}) == 0.0
    for bad in ("2", "x:1", "1:soon"):
        with pytest.raises(ValueError, match="<worker>:<seconds>"):
            slow_load_fault(1, {SLOW_LOAD_FAULT_ENV: bad})


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["--manifest", "m.json", *argv])


def test_queue_wait_budget_is_off_unless_given() -> None:
    assert parse_config(_args("--port", "1")).policy.max_queue_wait_s is None
    assert parse_config(_args("--max-queue-wait-ms", "70")).policy.max_queue_wait_s == 0.07
    with pytest.raises(ConfigError, match="max queue wait"):
        parse_config(_args("--max-queue-wait-ms", "-5"))


def test_metrics_dir_needs_workers_and_an_empty_directory(tmp_path) -> None:
    assert parse_config(_args("--workers", "2", "--port", "1")).metrics_dir is None
    fresh = tmp_path / "fresh"
    config = parse_config(_args("--workers", "2", "--port", "1", "--metrics-dir", str(fresh)))
    assert config.metrics_dir == fresh
    with pytest.raises(ConfigError, match="--workers above 1"):
        parse_config(_args("--metrics-dir", str(fresh)))
    (tmp_path / "old.db").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is not empty"):
        parse_config(_args("--workers", "2", "--port", "1", "--metrics-dir", str(tmp_path)))
    assert check_metrics_dir(tmp_path / "old.db") is not None
    assert check_metrics_dir(fresh) is None


def test_engine_threads_default_to_the_containers_cpus_shared_among_workers(monkeypatch) -> None:
    # Our own seam, fixed: a container that may use 8 CPUs (how that number is read from the
    # cgroup and the CPU set is tests/unit/test_build_hardware.py's business).
    from infleet.runtime import hardware

    monkeypatch.setattr(hardware, "cpu_limit_threads", lambda: 8)
    threads = {
        workers: parse_config(_args("--workers", str(workers), "--port", "1")).engine.threads
        for workers in (1, 2, 3, 8, 64)
    }
    assert threads == {1: 8, 2: 4, 3: 2, 8: 1, 64: 1}  # never zero: one thread at least
    given = parse_config(_args("--workers", "2", "--port", "1", "--threads", "3"))
    assert given.engine.threads == 3  # an explicit --threads is never divided
    with pytest.raises(ConfigError, match="--threads must not be negative"):
        parse_config(_args("--threads", "-1"))


def test_use_metrics_dir_sets_the_variable_only_for_several_workers(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(METRICS_DIR_ENV, str(tmp_path / "inherited"))
    assert use_metrics_dir(1, None) is None
    assert METRICS_DIR_ENV not in os.environ  # one worker: plain in-process values

    made = use_metrics_dir(2, None)
    assert made is not None and made.created and made.path.is_dir()
    assert os.environ[METRICS_DIR_ENV] == str(made.path)
    (made.path / "counter_1.db").write_bytes(b"")
    made.remove()
    assert not made.path.exists()

    given = tmp_path / "given"
    given.mkdir()
    kept = use_metrics_dir(2, given)
    assert kept is not None and not kept.created
    (given / "counter_1.db").write_bytes(b"")
    kept.remove()  # emptied, not removed (it may be a mount point)
    assert given.is_dir() and not any(given.iterdir())


def test_serve_does_not_import_prometheus_client_before_choosing_the_mode(tmp_path) -> None:
    # The value class is fixed when prometheus_client.values is first imported: everything
    # `infleet serve` runs before use_metrics_dir must leave it unimported.
    manifest = samples.identity_engine(tmp_path / "id", "FP32")
    script = textwrap.dedent(
        f"""
        import sys
        from infleet.cli import build_parser
        from infleet.runtime.server.command import parse_config, read_manifest
        args = build_parser().parse_args(
            ["serve", "--manifest", {str(manifest)!r}, "--workers", "2", "--port", "1"]
        )
        config = parse_config(args)
        read_manifest(config.manifests[0])
        assert not [m for m in sys.modules if m.startswith("prometheus_client")], "imported"
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- metrics in multiprocess mode ----------------------------------------------------------


def test_multiprocess_metrics_need_the_variable_at_import() -> None:
    if multiprocess_values():  # pragma: no cover (the test run never sets the variable)
        pytest.skip("PROMETHEUS_MULTIPROC_DIR was set for the test run")
    with pytest.raises(RuntimeError, match="imported before PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiprocess=True)


_WORKER = """
import sys
from infleet.runtime.server.metrics import Metrics
requests, ready, in_flight = map(int, sys.argv[1:4])
load_s = float(sys.argv[4])
m = Metrics(multiprocess=True)
for _ in range(requests):
    m.requests.labels("m", "success").inc()
    m.request_duration.labels("m").observe(0.003)
m.ready.set(ready)
m.in_flight.inc(in_flight)
m.model_load.labels("m").set(load_s)
m.observer("m").queue_depth(2)
"""


def _samples(exposition: bytes) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            if s.labels.get("le") is None:
                out[s.name] = s.value
    return out


def test_multiprocess_exposition_merges_the_workers(tmp_path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    env = {**os.environ, METRICS_DIR_ENV: str(tmp_path)}
    pids = []
    for args in (["3", "1", "2", "0.5"], ["4", "0", "1", "1.5"]):  # the second one not ready
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, *args], env=env)
        assert proc.wait(60) == 0
        pids.append(proc.pid)

    def expose() -> bytes:
        # what Metrics(multiprocess=True).exposition() does, without adding a third
        # process's values (a worker's own are in the files like every other worker's)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(tmp_path))
        return generate_latest(registry)

    text = expose()
    values = _samples(text)
    assert values["infleet_serve_requests_total"] == 7  # counters: summed
    assert values["infleet_serve_request_duration_seconds_count"] == 7
    assert values["infleet_serve_requests_in_flight"] == 3  # livesum
    assert values["infleet_serve_queue_depth_requests"] == 4  # livesum
    assert values["infleet_serve_model_load_duration_seconds"] == 1.5  # max
    assert values["infleet_serve_ready"] == 0  # livemin: one worker is not ready
    mark_process_dead(pids[1], str(tmp_path))  # what the supervisor does when one exits
    values = _samples(expose())
    assert values["infleet_serve_ready"] == 1 and values["infleet_serve_requests_in_flight"] == 2
    assert values["infleet_serve_requests_total"] == 7  # what it served stays counted
    np.testing.assert_allclose(values["infleet_serve_request_duration_seconds_sum"], 7 * 0.003)
    assert b"# TYPE infleet_serve_requests_total counter" in text
