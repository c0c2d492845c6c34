"""Latency profile arithmetic and the batching helper, with our own fake runner and clock."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from infleet.api import LatencyPoint
from infleet.runtime.builders.base import pick_batch_sizes, run_any_batch
from infleet.runtime.profile import measure, profile_batch_sizes, speed_score


class FakeRunner:
    """Doubles its input; optionally accepts only fixed batch sizes, like a TVM engine."""

    emulated = False

    def __init__(self, sizes: tuple[int, ...] = ()) -> None:
        self.batch_sizes = sizes
        self.seen: list[int] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        if self.batch_sizes:
            assert len(x) in self.batch_sizes
        self.seen.append(len(x))
        return [x * 2]


def test_profile_batch_sizes() -> None:
    assert profile_batch_sizes(1) == [1]
    assert profile_batch_sizes(8) == [1, 2, 4, 8]
    assert profile_batch_sizes(12) == [1, 2, 4, 8, 12]


def test_static_batch_sizes_pad_and_split() -> None:
    runner = FakeRunner((1, 4))
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    (out,) = run_any_batch(runner, {"x": x}, max_batch=4)
    assert out[:, 0].tolist() == [0, 2, 4, 6, 8, 10]
    assert runner.seen == [4, 4]  # 6 rows: 4, then 2 padded up to 4


def test_dynamic_runner_takes_chunks_up_to_max_batch() -> None:
    runner = FakeRunner()
    run_any_batch(runner, {"x": np.zeros((10, 1))}, max_batch=4)
    assert runner.seen == [4, 4, 2]


def test_pick_batch_sizes() -> None:
    assert pick_batch_sizes(8) == (1, 8)
    assert pick_batch_sizes(8, (2, 4, 64)) == (2, 4, 8)


def test_measure_with_a_fake_clock() -> None:
    ticks = iter(np.arange(0, 1000, 0.002))  # every clock read advances 2 ms
    points = measure(
        FakeRunner(),
        lambda b: {"x": np.zeros((b, 1))},
        max_batch=4,
        seconds_per_size=0.05,
        min_iters=3,
        clock=lambda: float(next(ticks)),
    )
    assert [p.batch_size for p in points] == [1, 2, 4]
    for p in points:
        assert p.p50_ms == 2.0 and p.p99_ms == 2.0
        assert p.throughput_ips == p.batch_size / 0.002


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
    points = measure(
        FakeRunner((1, 8)),
        lambda b: {"x": np.zeros((b, 1))},
        max_batch=8,
        seconds_per_size=0.01,
        min_iters=2,
        clock=lambda: float(next(ticks)),
        sizes=[1, 8],
    )
    assert [p.batch_size for p in points] == [1, 8]
