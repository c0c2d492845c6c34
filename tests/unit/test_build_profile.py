"""Latency profile arithmetic and how the build hands rows to an engine, with our own fake
engine (the server's engine interface) and a fake clock."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from infleet.api import LatencyPoint
from infleet.runtime.builders.base import pick_batch_sizes
from infleet.runtime.manifest import TensorSpec
from infleet.runtime.profile import measure, profile_batch_sizes, speed_score
from infleet.runtime.server.engines.base import run_batches, run_padded


class FakeEngine:
    """Doubles its input; with ``sizes`` it takes only those batch sizes and pads like the
    server's TVM engine."""

    text_strings = False
    description = "fake"

    def __init__(self, sizes: tuple[int, ...] = (), batched: bool = True) -> None:
        first = -1 if batched else 6
        self.inputs = (TensorSpec(name="x", datatype="FP32", shape=[first, 1]),)
        self.outputs = (TensorSpec(name="y", datatype="FP32", shape=[first, 1]),)
        self.warm_batch_sizes = sizes
        self.seen: list[int] = []

    def _double(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append(len(feeds["x"]))
        if self.warm_batch_sizes:
            assert len(feeds["x"]) in self.warm_batch_sizes
        return {"y": feeds["x"] * 2}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.warm_batch_sizes:
            return run_padded(self._double, feeds, self.warm_batch_sizes)
        return self._double(feeds)

    def close(self) -> None:
        pass


def test_profile_batch_sizes() -> None:
    assert profile_batch_sizes(1) == [1]
    assert profile_batch_sizes(8) == [1, 2, 4, 8]
    assert profile_batch_sizes(12) == [1, 2, 4, 8, 12]


def test_rows_go_in_batches_the_server_would_form() -> None:
    engine = FakeEngine()
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    out = run_batches(engine, {"x": x}, max_batch=4)
    assert out["y"][:, 0].tolist() == [2 * i for i in range(10)]
    assert engine.seen == [4, 4, 2]


def test_static_sizes_pad_inside_the_engine() -> None:
    engine = FakeEngine((1, 4))
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    out = run_batches(engine, {"x": x}, max_batch=4)
    assert out["y"][:, 0].tolist() == [0, 2, 4, 6, 8, 10]
    assert engine.seen == [4, 4]  # 6 rows: 4, then 2 padded up to 4 by the engine


def test_an_engine_without_a_batch_dimension_takes_its_rows_whole() -> None:
    engine = FakeEngine(batched=False)
    run_batches(engine, {"x": np.zeros((6, 1), np.float32)}, max_batch=4)
    assert engine.seen == [6]


def test_pick_batch_sizes() -> None:
    assert pick_batch_sizes(8) == (1, 8)
    assert pick_batch_sizes(8, (2, 4, 64)) == (2, 4, 8)


def test_measure_with_a_fake_clock() -> None:
    ticks = iter(np.arange(0, 1000, 0.002))  # every clock read advances 2 ms
    engine = FakeEngine()
    points = measure(
        engine,
        lambda b: {"x": np.zeros((b, 1), np.float32)},
        max_batch=4,
        seconds_per_size=0.05,
        min_iters=3,
        clock=lambda: float(next(ticks)),
    )
    assert [p.batch_size for p in points] == [1, 2, 4]
    for p in points:
        assert p.p50_ms == 2.0 and p.p99_ms == 2.0
        assert p.throughput_ips == p.batch_size / 0.002
    assert max(engine.seen) == 4  # never more than one batch per call


def test_speed_score_weighs_batch_sizes_geometrically() -> None:
    fast_small = [
        LatencyPoint(batch_size=1, p50_ms=1, p99_ms=1, throughput_ips=1000),
        LatencyPoint(batch_size=8, p50_ms=8, p99_ms=8, throughput_ips=1000),
    ]
    fast_big = [
        LatencyPoint(batch_size=1, p50_ms=2, p99_ms=2, throughput_ips=500),
        LatencyPoint(batch_size=8, p50_ms=2, p99_ms=2, throughput_ips=4000),
    ]
    assert speed_score(fast_big) > speed_score(fast_small)
    assert speed_score(fast_small, [1]) > speed_score(fast_big, [1])
    assert speed_score([]) == 0.0


def test_measure_at_compiled_sizes_only() -> None:
    ticks = iter(np.arange(0, 1000, 0.001))
    engine = FakeEngine((1, 8))
    points = measure(
        engine,
        lambda b: {"x": np.zeros((b, 1), np.float32)},
        max_batch=8,
        seconds_per_size=0.01,
        min_iters=2,
        clock=lambda: float(next(ticks)),
        sizes=[1, 8],
    )
    assert [p.batch_size for p in points] == [1, 8]
    assert set(engine.seen) == {1, 8}
