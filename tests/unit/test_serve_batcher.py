"""The dynamic batcher with real numpy "engines" (plain functions: our own seam, no mocks)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
import pytest

from infleet.runtime.server.batcher import ROW_SMOOTHING, Batcher, BatchPolicy
from infleet.runtime.server.errors import EngineError, Overloaded


class RecordingEngine:
    """y = 2x + row-sum, so a mixed-up row would show; remembers each batch's size. Its gate
    holds a batch that started, so the test decides what queues up behind it."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.gate.wait(20), "the test never opened the gate"
        x = inputs["x"]
        self.batches.append(len(x))
        return {"y": 2 * x + x.sum(axis=tuple(range(1, x.ndim)), keepdims=True)}


def expected(x: np.ndarray) -> np.ndarray:
    return 2 * x + x.sum(axis=tuple(range(1, x.ndim)), keepdims=True)


def run(coro):
    return asyncio.run(coro)


async def until(condition: Callable[[], bool], what: str, within_s: float = 10) -> None:
    """Let the loop run until ``condition()`` holds (a bounded wait, never a fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def held(batcher: Batcher, waiting: int) -> None:
    """Wait until one batch runs (held at the engine's gate) and ``waiting`` requests queue."""
    await until(
        lambda: batcher.running == 1 and batcher.depth == waiting,
        f"one running batch and {waiting} queued requests",
    )


def test_requests_arriving_while_the_engine_is_busy_are_merged_and_split_exactly() -> None:
    engine = RecordingEngine()
    batcher = Batcher(engine, BatchPolicy(max_batch_size=16, max_queue_delay_s=0.05))
    rows = [2, 1, 3, 1, 2, 3, 1, 2, 1]  # 2 first, then 14: one batch of at most 16

    async def main() -> None:
        engine.gate.clear()  # hold the first batch so the others queue up behind it
        rng = np.random.default_rng(1)
        xs = [rng.random((n, 5)) for n in rows]
        tasks = [asyncio.create_task(batcher.submit({"x": x})) for x in xs]
        await held(batcher, waiting=8)
        engine.gate.set()
        results = await asyncio.gather(*tasks)
        for x, out in zip(xs, results, strict=True):  # each caller got exactly its own rows
            np.testing.assert_array_equal(out["y"], expected(x))

    run(main())
    # the first ran alone; the eight that queued behind it ran as ONE merged batch
    assert engine.batches == [2, 14]
    batcher.close()


def test_a_lone_request_runs_at_once_without_waiting_for_the_delay() -> None:
    engine = RecordingEngine()
    batcher = Batcher(engine, BatchPolicy(max_batch_size=8, max_queue_delay_s=10.0))

    async def main() -> None:
        # bounded at half the delay: a batcher that waited for it would time out here
        await asyncio.wait_for(batcher.submit({"x": np.ones((1, 2))}), 5.0)

    run(main())
    assert engine.batches == [1]
    batcher.close()


def test_incompatible_shapes_are_never_merged() -> None:
    engine = RecordingEngine()
    batcher = Batcher(engine, BatchPolicy(max_batch_size=8, max_queue_delay_s=0.01))

    async def main() -> None:
        engine.gate.clear()
        xs = [np.ones((1, 3)), np.ones((1, 4)), np.full((2, 3), 2.0), np.full((1, 4), 3.0)]
        tasks = [asyncio.create_task(batcher.submit({"x": x})) for x in xs]
        await held(batcher, waiting=3)
        engine.gate.set()
        for x, out in zip(xs, await asyncio.gather(*tasks), strict=True):
            np.testing.assert_array_equal(out["y"], expected(x))

    run(main())
    # the first runs alone; then the oldest group ([1, 4] twice), then the [2, 3] one
    assert engine.batches == [1, 2, 2]
    batcher.close()


def test_batches_never_exceed_the_max_batch_size() -> None:
    engine = RecordingEngine()
    batcher = Batcher(engine, BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0))

    async def main() -> None:
        engine.gate.clear()
        tasks = [asyncio.create_task(batcher.submit({"x": np.full((1, 2), i)})) for i in range(11)]
        await held(batcher, waiting=10)
        engine.gate.set()
        outs = await asyncio.gather(*tasks)
        assert [o["y"][0, 0] for o in outs] == [2 * i + 2 * i for i in range(11)]

    run(main())
    assert engine.batches == [1, 4, 4, 2]  # the ten queued ones in full batches of four
    batcher.close()


def test_a_full_queue_refuses_at_once() -> None:
    engine = RecordingEngine()
    batcher = Batcher(engine, BatchPolicy(max_batch_size=1, max_queue_size=2))

    async def main() -> None:
        engine.gate.clear()
        running = asyncio.create_task(batcher.submit({"x": np.ones((1, 1))}))
        queued = [asyncio.create_task(batcher.submit({"x": np.ones((1, 1))})) for _ in range(2)]
        await held(batcher, waiting=2)
        # at once: the gate is still closed, so a submit that queued would never return
        with pytest.raises(Overloaded, match="queue is full"):
            await asyncio.wait_for(batcher.submit({"x": np.ones((1, 1))}), 5.0)
        engine.gate.set()
        await asyncio.gather(running, *queued)

    run(main())
    batcher.close()


def test_an_engine_fault_fails_only_its_batch_and_the_batcher_keeps_working() -> None:
    calls = {"n": 0}

    def flaky(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")  # a fault injected on purpose
        return {"y": inputs["x"]}

    batcher = Batcher(flaky, BatchPolicy())

    async def main() -> None:
        with pytest.raises(EngineError, match="injected fault"):
            await batcher.submit({"x": np.ones((1, 1))})
        out = await batcher.submit({"x": np.ones((1, 1))})
        assert out["y"].shape == (1, 1)

    run(main())
    batcher.close()


def test_wrong_row_count_from_the_engine_is_an_engine_error() -> None:
    gate = threading.Event()

    def broken(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert gate.wait(20), "the test never opened the gate"
        return {"y": np.zeros((1, 1))}  # always one row, whatever the batch

    batcher = Batcher(broken, BatchPolicy())

    async def main() -> None:
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 1))}))
        rest = [asyncio.create_task(batcher.submit({"x": np.ones((1, 1))})) for _ in range(2)]
        await held(batcher, waiting=2)
        gate.set()
        await first
        for task in rest:
            with pytest.raises(EngineError, match="expected 2 rows"):
                await task

    run(main())
    batcher.close()


def test_unbatchable_engines_run_each_request_alone() -> None:
    engine = RecordingEngine()
    batcher = Batcher(engine, BatchPolicy(max_batch_size=8), batchable=False)

    async def main() -> None:
        engine.gate.clear()
        tasks = [asyncio.create_task(batcher.submit({"x": np.ones((2, 2))})) for _ in range(3)]
        await held(batcher, waiting=2)
        engine.gate.set()
        await asyncio.gather(*tasks)
        await batcher.wait_idle()

    run(main())
    assert engine.batches == [2, 2, 2]
    batcher.close()


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=0)
    with pytest.raises(ValueError):
        BatchPolicy(max_queue_delay_s=-1)


class TimedEngine(RecordingEngine):
    """Takes at least ``seconds_per_row`` per row (a sleep is never shorter), so the
    batcher's estimate of its speed is at least that."""

    def __init__(self, seconds_per_row: float) -> None:
        super().__init__()
        self.seconds_per_row = seconds_per_row

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(inputs)
        time.sleep(self.seconds_per_row * len(inputs["x"]))
        return out


def test_admission_refuses_at_once_what_could_only_answer_past_the_queue_budget() -> None:
    # 50 ms a row at least and a 90 ms budget: one request waiting plus a new one is
    # 100 ms or more of engine time, so the new one is refused; one that finds nothing
    # waiting is always taken, however slow the engine
    engine = TimedEngine(0.05)
    policy = BatchPolicy(max_batch_size=1, max_queue_size=100, max_queue_wait_s=0.09)
    batcher = Batcher(engine, policy)

    async def main() -> None:
        one = {"x": np.ones((1, 1))}
        await batcher.submit(one)  # before any batch ran there is no estimate: admitted
        assert batcher.seconds_per_row is not None and batcher.seconds_per_row >= 0.05
        engine.gate.clear()
        running = asyncio.create_task(batcher.submit(one))
        await until(lambda: batcher.running == 1, "the held batch")
        waiting = asyncio.create_task(batcher.submit(one))  # nothing waits: taken
        await held(batcher, waiting=1)
        with pytest.raises(Overloaded, match="over the 90 ms queue budget"):
            await asyncio.wait_for(batcher.submit(one), 5.0)
        engine.gate.set()
        await asyncio.gather(running, waiting)

    run(main())
    batcher.close()


def test_the_speed_estimate_follows_full_batches_once_one_ran() -> None:
    # a lone request's batch of one runs slower per row than a full batch, and a queue is
    # made of full batches: once one ran, only they move the estimate
    batcher = Batcher(RecordingEngine(), BatchPolicy(max_batch_size=4, max_queue_wait_s=0.1))
    batcher._learn_speed(1, 0.010)
    assert batcher.seconds_per_row == pytest.approx(0.010)
    batcher._learn_speed(4, 0.008)  # the first full batch replaces the estimate
    assert batcher.seconds_per_row == pytest.approx(0.002)
    batcher._learn_speed(1, 0.010)  # ignored now
    assert batcher.seconds_per_row == pytest.approx(0.002)
    batcher._learn_speed(4, 0.012)  # smoothed toward 3 ms a row
    assert batcher.seconds_per_row == pytest.approx(0.002 + ROW_SMOOTHING * (0.003 - 0.002))
    batcher.close()


def test_admission_is_off_by_default_and_its_budget_must_be_positive() -> None:
    assert BatchPolicy().max_queue_wait_s is None
    with pytest.raises(ValueError, match="max queue wait"):
        BatchPolicy(max_queue_wait_s=0)
