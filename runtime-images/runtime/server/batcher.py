"""Dynamic batching: many requests in, one engine call, each caller gets exactly its rows.

Policy (``BatchPolicy``):
- Requests whose inputs agree on everything but the batch (first) dimension form a group;
  a batch is a FIFO prefix of the oldest request's group, at most ``max_batch_size`` rows.
- A batch leaves the queue when it is full, when its oldest request has waited
  ``max_queue_delay``, or at once when no batch is running: waiting while the engine
  idles would only add latency. Under load the engine is busy, requests accumulate while it
  runs, and batches grow by themselves; at low load a request pays no batching delay.
- At most ``max_concurrent_batches`` batches run at once, each in a worker thread (the event
  loop never runs an engine). At most ``max_queue_size`` requests wait; one more is refused
  at once with :class:`Overloaded` instead of queueing without bound.
- With ``max_queue_wait`` (SLO-aware admission), a request is also refused at once when the
  rows waiting ahead of it and its own would take longer than that to run at the engine's
  recent speed: seconds per row of the last full batches (the batches a queue makes), of
  any batch until one was full. A request that could only answer late is refused while it
  can still go elsewhere, and those admitted still answer in time: past saturation the
  engine serves its capacity within the SLO instead of a backlog that makes every answer
  late (and takes minutes to drain).

Everything that touches the queue runs on the event loop thread, so no lock is needed; the
worker thread only concatenates inputs, runs the engine and splits outputs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infleet.runtime.server.errors import EngineError, Overloaded, ServeError

log = logging.getLogger(__name__)

ROW_SMOOTHING = 0.03
"""Weight of the latest batch in the engine's seconds per row (about the last 30 batches:
an engine's speed at full batches is steady, its batch times are not, and a short memory
refused requests after a few slow batches that the queue would have run in time)."""

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Mapping[str, np.ndarray]], Arrays]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int = 8
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    """Requests allowed to wait (not counting the running batches)."""
    max_concurrent_batches: int = 1
    """Batches run at once; 1 suits CPU engines that already use every core per batch."""
    max_queue_wait_s: float | None = None
    """Refuse a request whose expected time to run (the rows ahead and its own, at the
    engine's recent speed) is longer than this; None: only ``max_queue_size`` bounds."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_concurrent_batches < 1:
            raise ValueError("batch size, queue size and concurrency must be at least 1")
        if self.max_queue_delay_s < 0:
            raise ValueError("max queue delay must not be negative")
        if self.max_queue_wait_s is not None and self.max_queue_wait_s <= 0:
            raise ValueError("max queue wait must be positive (or None: off)")


class BatchObserver(Protocol):
    """Where the batcher reports what it did (the metrics adapter implements this)."""

    def batch_done(self, size: int, queue_waits_s: list[float], run_s: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...


class _NoObserver:
    def batch_done(self, size: int, queue_waits_s: list[float], run_s: float) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass


@dataclass(slots=True, eq=False)
class _Item:
    inputs: Arrays
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[Arrays]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue and dispatcher for one engine. Create and use it on one event loop."""

    def __init__(
        self,
        run: RunFn,
        policy: BatchPolicy,
        *,
        batchable: bool = True,
        observer: BatchObserver | None = None,
        name: str = "model",
    ) -> None:
        self._run = run
        self.policy = policy
        self.batchable = batchable
        """False when the engine has no batch dimension: every request runs alone."""
        self._observer = observer or _NoObserver()
        self._pending: deque[_Item] = deque()
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=policy.max_concurrent_batches, thread_name_prefix=f"infer-{name}"
        )
        self._idle: asyncio.Event | None = None
        self._row_s: float | None = None
        """Engine seconds per row, smoothed over recent batches (full ones once one ran)."""
        self._full_seen = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def seconds_per_row(self) -> float | None:
        """The admission's estimate of the engine's speed (None before any batch ran)."""
        return self._row_s

    @property
    def running(self) -> int:
        return self._running

    async def submit(self, inputs: Arrays) -> Arrays:
        """Queue one request (already validated) and wait for its own output rows."""
        if len(self._pending) >= self.policy.max_queue_size:
            raise Overloaded(
                f"the queue is full ({self.policy.max_queue_size} requests waiting); retry later"
            )
        first = next(iter(inputs.values()))
        rows = int(first.shape[0]) if self.batchable and first.ndim else 1
        self._admit(rows)
        # inputs arrive in the model's input order (the data plane builds the feed that way)
        if self.batchable:
            signature = tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())
        else:
            signature = ()  # never merged, so never compared
        loop = asyncio.get_running_loop()
        item = _Item(inputs, rows, signature, loop.create_future())
        self._pending.append(item)
        self._observer.queue_depth(len(self._pending))
        self._dispatch()
        return await item.future

    def _admit(self, rows: int) -> None:
        """Refuse (:class:`Overloaded`) a request that would wait past ``max_queue_wait``.
        Never one that finds nothing waiting: an engine slower than the budget still serves
        one request at a time."""
        budget = self.policy.max_queue_wait_s
        if budget is None or self._row_s is None or not self._pending:
            return
        # the queue is short whenever this rule is on (it refuses what a budget cannot run)
        ahead = sum(item.rows for item in self._pending)
        expected = (ahead + rows) * self._row_s
        if expected > budget:
            raise Overloaded(
                f"{len(self._pending)} requests waiting would take about "
                f"{expected * 1000:.0f} ms to run, over the {budget * 1000:g} ms queue budget; "
                "retry later"
            )

    def _learn_speed(self, rows: int, run_s: float) -> None:
        """Smooth the engine's seconds per row. Full batches are what a queue makes, so
        once one ran only they count: a lone request's batch of one runs slower per row
        and would make the queue look longer than it is."""
        full = rows >= self.policy.max_batch_size or not self.batchable
        if full and not self._full_seen:
            self._full_seen = True
            self._row_s = None
        elif self._full_seen and not full:
            return
        per_row = run_s / max(1, rows)
        prev = self._row_s
        self._row_s = per_row if prev is None else prev + ROW_SMOOTHING * (per_row - prev)

    def _dispatch(self) -> None:
        """Start every batch that the policy allows now; arm the timer for the rest."""
        policy = self.policy
        while self._pending and self._running < policy.max_concurrent_batches:
            while self._pending and self._pending[0].future.done():  # cancelled by the client
                self._pending.popleft()
            if not self._pending:
                break
            oldest = self._pending[0]
            batch, _rows, full = self._take_group(oldest)
            due = time.perf_counter() >= oldest.enqueued + policy.max_queue_delay_s
            if not (full or due or self._running == 0):
                self._arm_timer(oldest.enqueued + policy.max_queue_delay_s)
                break
            self._remove(batch)
            self._observer.queue_depth(len(self._pending))
            self._running += 1
            task = asyncio.get_running_loop().run_in_executor(self._executor, self._execute, batch)
            task.add_done_callback(functools.partial(self._finish, batch=batch))
        if not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _remove(self, batch: list[_Item]) -> None:
        # Under load every request shares one signature, so the batch is the queue's head:
        # pop it in O(batch) instead of rebuilding a queue that may hold thousands.
        pending = self._pending
        if len(pending) >= len(batch) and pending[len(batch) - 1] is batch[-1]:
            for _ in batch:
                pending.popleft()
            return
        chosen = set(map(id, batch))
        self._pending = deque(i for i in pending if id(i) not in chosen)

    def _take_group(self, oldest: _Item) -> tuple[list[_Item], int, bool]:
        if not self.batchable:
            return [oldest], oldest.rows, True
        limit = self.policy.max_batch_size
        batch: list[_Item] = []
        rows = 0
        for item in self._pending:
            if item.signature != oldest.signature or item.future.done():
                continue
            if rows + item.rows > limit:
                return batch, rows, True
            batch.append(item)
            rows += item.rows
        return batch, rows, rows >= limit

    def _arm_timer(self, deadline: float) -> None:
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.perf_counter())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _execute(self, batch: list[_Item]) -> tuple[list[Arrays], float, list[float]]:
        """Worker thread: merge, run, split. Returns each item's outputs."""
        started = time.perf_counter()
        waits = [started - item.enqueued for item in batch]
        if len(batch) == 1:
            merged = batch[0].inputs
        else:
            merged = {
                name: np.concatenate([item.inputs[name] for item in batch])
                for name in batch[0].inputs
            }
        outputs = self._run(merged)
        run_s = time.perf_counter() - started
        if len(batch) == 1:
            return [outputs], run_s, waits
        total = sum(item.rows for item in batch)
        bounds = np.cumsum([item.rows for item in batch])[:-1]
        parts: list[Arrays] = [{} for _ in batch]
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise EngineError(
                    f"output {name!r} has shape {array.shape}, expected {total} rows first"
                )
            for part, piece in zip(parts, np.split(array, bounds), strict=True):
                part[name] = piece
        return parts, run_s, waits

    def _finish(
        self, task: asyncio.Future[tuple[list[Arrays], float, list[float]]], batch: list[_Item]
    ) -> None:
        self._running -= 1
        try:
            parts, run_s, waits = task.result()
        except ServeError as e:
            self._fail(batch, e)
        except Exception as e:  # the engine's own error types: a real fault, logged once
            log.exception("engine failed on a batch of %d requests", len(batch))
            self._fail(batch, EngineError(f"the engine failed: {type(e).__name__}: {e}"))
        else:
            rows = sum(i.rows for i in batch)
            self._observer.batch_done(rows, waits, run_s)
            self._learn_speed(rows, run_s)
            for item, part in zip(batch, parts, strict=True):
                if not item.future.done():
                    item.future.set_result(part)
        self._dispatch()
        if self._idle is not None and not self._running and not self._pending:
            self._idle.set()

    @staticmethod
    def _fail(batch: list[_Item], error: Exception) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    async def wait_idle(self) -> None:
        """Return once nothing is queued or running."""
        while self._running or self._pending:
            self._idle = asyncio.Event()
            await self._idle.wait()
        self._idle = None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
