"""What the processes of ``infleet serve --workers N`` share, so the pod answers as one server.

Each worker has its own engine, event loop and data plane; two things must still be the
pod's, not the one worker's that the kernel happened to pick for a connection:

* **metrics**: prometheus_client's multiprocess mode. Every worker writes its values to
  mmap files of its own (``<kind>_<pid>.db``) in one private directory, and every worker's
  ``/metrics`` merges all the files, so any scrape sees the sum over workers. The library
  picks its value class once, when ``prometheus_client.values`` is first imported, from the
  environment variable ``PROMETHEUS_MULTIPROC_DIR``: :func:`use_metrics_dir` therefore runs
  in ``infleet serve`` before anything imports prometheus_client (``infleet`` itself never
  imports it while parsing arguments), and the workers inherit the variable through fork.
  With one worker the variable is removed and the plain in-process registry is used.
* **readiness**: a :class:`ReadyBoard`, an anonymous shared mmap of one byte per (worker,
  model) made before the fork. A worker sets its bytes once its models are warm and clears
  them when it begins draining (the supervisor clears those of a worker that exited), so
  ``/v2/health/ready`` says ready only when every worker is.

Nothing here imports prometheus_client.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LEGACY_METRICS_DIR_ENV = "prometheus_multiproc_dir"  # still honoured by prometheus_client

SLOW_LOAD_FAULT_ENV = "INFLEET_TEST_FAULT_SLOW_LOAD"
"""TEST-ONLY FAULT INJECTION: ``"<worker index>:<seconds>"`` makes that worker of
``--workers N`` sleep before loading its models, so tests can hold one worker unready while
the others are ready. Never set it in a deployment."""


@dataclass(frozen=True, slots=True)
class MetricsDir:
    path: Path
    created: bool
    """True when ``infleet serve`` created the directory (then it removes the directory
    itself at exit; otherwise only what is inside)."""

    def remove(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in self.path.iterdir():  # e.g. a mounted emptyDir: keep the mount point
            with contextlib.suppress(OSError):
                entry.unlink()


def check_metrics_dir(path: Path) -> str | None:
    """Why ``path`` cannot be the metrics directory, or None: it must not exist yet or be an
    empty directory (files of another server would be summed into this one's metrics)."""
    if not path.exists():
        return None
    if not path.is_dir():
        return f"{path} is not a directory"
    if any(path.iterdir()):
        return f"{path} is not empty"
    return None


def use_metrics_dir(workers: int, path: Path | None) -> MetricsDir | None:
    """Choose prometheus_client's mode for this process and the workers it will fork.

    Call before prometheus_client is imported. With ``workers > 1``: create ``path`` (or a
    fresh private directory under ``$TMPDIR``), point ``PROMETHEUS_MULTIPROC_DIR`` at it and
    return it; the caller removes it at exit. With one worker: remove the variable (a value
    inherited from the environment would turn on the slower file-backed mode) and return None.
    """
    os.environ.pop(_LEGACY_METRICS_DIR_ENV, None)
    if workers <= 1:
        os.environ.pop(METRICS_DIR_ENV, None)
        return None
    if path is None:
        directory = MetricsDir(Path(tempfile.mkdtemp(prefix="infleet-metrics-")), created=True)
    else:
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        directory = MetricsDir(path, created)
    os.environ[METRICS_DIR_ENV] = str(directory.path)
    return directory


class ReadyBoard:
    """One byte per (worker, model) in an anonymous shared mmap, made before the fork.

    Model indexes are the order of the manifests, the same in every worker. A byte is 1
    while that worker's copy of that model is warm and the worker is not draining.
    """

    def __init__(self, workers: int, models: int) -> None:
        if workers < 1 or models < 1:
            raise ValueError("a ready board needs at least one worker and one model")
        self.workers = workers
        self.models = models
        self._map = mmap.mmap(-1, workers * models)  # MAP_SHARED: the children see writes

    def set(self, worker: int, model: int, ready: bool) -> None:
        self._map[worker * self.models + model] = 1 if ready else 0

    def clear(self, worker: int) -> None:
        start = worker * self.models
        self._map[start : start + self.models] = bytes(self.models)

    def all_ready(self) -> bool:
        return self._map.find(b"\0") == -1

    def model_ready(self, model: int) -> bool:
        m = self._map
        return all(m[w * self.models + model] for w in range(self.workers))

    def slot(self, worker: int) -> WorkerSlot:
        if not 0 <= worker < self.workers:
            raise ValueError(f"no worker {worker} among {self.workers}")
        return WorkerSlot(self, worker)


class WorkerSlot:
    """One worker's view of the :class:`ReadyBoard`: it writes its own bytes, reads all."""

    def __init__(self, board: ReadyBoard, worker: int) -> None:
        self.board = board
        self.worker = worker

    def set_model(self, model: int, ready: bool) -> None:
        self.board.set(self.worker, model, ready)

    def clear(self) -> None:
        self.board.clear(self.worker)

    def all_ready(self) -> bool:
        return self.board.all_ready()

    def model_ready(self, model: int) -> bool:
        return self.board.model_ready(model)


def slow_load_fault(worker: int, environ: dict[str, str] | None = None) -> float:
    """TEST-ONLY FAULT INJECTION (see :data:`SLOW_LOAD_FAULT_ENV`): the seconds worker
    ``worker`` must wait before loading its models; 0 when the fault is not set for it."""
    raw = (os.environ if environ is None else environ).get(SLOW_LOAD_FAULT_ENV, "")
    if not raw:
        return 0.0
    index, sep, seconds = raw.partition(":")
    try:
        if not sep:
            raise ValueError(raw)
        return float(seconds) if int(index) == worker else 0.0
    except ValueError:
        message = f"{SLOW_LOAD_FAULT_ENV} must be '<worker>:<seconds>', not {raw!r}"
        raise ValueError(message) from None
