"""Child process of the TVM builder: MetaSchedule tuning of one model's functions.

Run as ``python -m infleet.runtime.builders.tvm_tune SPEC.json`` (prepared graphs per batch
size, target, database directory, trials per task; written by the TVM builder). It prints one
JSON line at the end: how many tasks the model has, how many were tuned now, how many the
database already held.

It lives in its own process because a tuning crash (seen: SIGSEGV) must not take the build
down; the parent applies whatever the JSON database holds. The tasks are the functions the
builder compiles (``tvm_cpu.relax_passes``), so a record found here is a record applied there.
Tasks whose workload the database already has are not tuned again: a second build of the same
model for the same target (a new batch size, a rebuilt engine) costs no trials for them.

Dying with the parent: the builder starts this process with PR_SET_PDEATHSIG (SIGTERM), in the
builder's process group, so a signal to the build's group reaches it and MetaSchedule's
builder/runner workers alike, and the builder's death alone reaches it too. On SIGTERM it kills
its own descendants (the workers are plain children, not a group of their own) before exiting;
a thread watching the parent pid does the same should the signal be lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from infleet.toolbox import descendants

CHUNK = 4
"""Tasks tuned per MetaSchedule call (see ``main``)."""

# Set by a test that needs a tuner that crashes; the builder must keep the untuned engine.
FAULT_ENV = "INFLEET_TVM_TUNE_FAULT"


def _die(*_args: Any) -> None:
    for child in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    os._exit(143)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            _die()
        time.sleep(0.5)


def load_intrinsics(arch: str) -> None:
    """Registers the tensor intrinsics of one CPU architecture, not TVM's whole set.

    MetaSchedule imports ``tvm.s_tir.tensor_intrin`` (every backend's intrinsics: CUDA, ROCm,
    Hexagon, ...) in the tuner and again in each builder worker, which it restarts for every
    batch of candidates. Each intrinsic is TVMScript that the parser reads with
    ``inspect.stack()``, and on 2 busy cores that import took 33 to 94 s: more than the
    tuning itself. The package is entered into ``sys.modules`` without running its
    ``__init__`` and only the module for this architecture is imported (x86 for VNNI/AMX rules,
    arm_cpu for dot-product ones), which is all a CPU target's schedule rules look up.
    """
    import importlib.util
    import types

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations is not None
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules[name] = package
    tvm.s_tir.tensor_intrin = package
    importlib.import_module(f"{name}.{'arm_cpu' if arch == 'aarch64' else 'x86'}")


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's ``default_build`` without its import of every tensor intrinsic (see
    :func:`load_intrinsics`); runs in the builder's worker processes."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    load_intrinsics("aarch64" if "aarch64" in str(target) else "x86_64")
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


def _builder(ms: Any, workers: int) -> Any:
    """MetaSchedule's LocalBuilder with one pool for the whole run: the stock one starts new
    worker processes for every batch (against a leak in long runs), and each start imports
    TVM again, seconds per batch on a small budget's one batch per task."""
    from tvm.ir.utils import derived_object
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class Builder(ms.builder.PyBuilder):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=workers, timeout=30)

        def build(self, build_inputs: list[Any]) -> list[Any]:
            from tvm.s_tir.meta_schedule.builder import local_builder

            jobs = [
                (build_candidate, None, i.mod, i.target, None)
                for i in build_inputs
            ]
            results = []
            for r in self.pool.map_with_error_catching(
                lambda x: local_builder._worker_func(*x), jobs
            ):
                if r.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(r.value, None))
                else:
                    results.append(ms.builder.BuilderResult(None, f"{r.status}: {r.value}"))
            return results

    return Builder()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _die)
    parent = int(os.environ.get("INFLEET_TUNE_PARENT", os.getppid()))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    spec = json.loads(Path(argv[0]).read_text())
    fault = os.environ.get(FAULT_ENV, "")
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)  # injected fault, as the wheel once did
    import tvm

    arch = str(spec["target"].get("mtriple", "x86_64")).split("-")[0]
    load_intrinsics(arch)
    from tvm.s_tir import meta_schedule as ms

    from infleet.runtime.builders.tvm import import_module
    from infleet.runtime.builders.tvm_cpu import relax_passes

    if fault == "hang":
        time.sleep(3600)  # injected fault: a tuner that never finishes
    mod = import_module({int(b): (p, s) for b, (p, s) in spec["prepared"].items()})
    target = tvm.target.Target(spec["target"])
    db_dir, per_task = spec["db"], int(spec["trials_per_task"])
    with target:
        mod = tvm.transform.Sequential(relax_passes(target))(mod)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    database = ms.database.JSONDatabase(work_dir=db_dir)
    todo = [
        t
        for t in tasks
        if database.query_tuning_record(t.dispatched[0], target, "main") is None
    ]
    reused = len(tasks) - len(todo)
    print(json.dumps({"tasks": len(tasks), "to_tune": len(todo), "reused": reused}), flush=True)
    if todo:
        # Replayed random traces, not the evolutionary search: without a learned cost model
        # (xgboost, a large dependency) evolution only ranks at random, and its population of
        # 512 per task cost minutes before the first measurement (36 tasks of EfficientNet-Lite0
        # wrote no record in 8 minutes on 2 cores). Sampling measures from the first second.
        from infleet.runtime.builders.tvm_schedules import schedule_in_place

        # MetaSchedule's own design space, and the untuned engine's schedule as a space of its
        # own: measured beside the sampled ones, it keeps a task at the default schedule
        # unless a sample beat it.
        space = ms.space_generator.SpaceGeneratorUnion(
            [
                ms.space_generator.PostOrderApply(),
                ms.space_generator.ScheduleFn(lambda sch: schedule_in_place(sch, target)),
            ]
        )
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            todo,
            db_dir,
            space=space,
            strategy="replay-trace",
            num_threads=int(spec.get("threads", 1)),
        )
        builder = _builder(ms, int(spec.get("threads", 1)))
        runner = ms.runner.LocalRunner()
        # A few tasks per call: MetaSchedule joins a task's measurements only when it picks the
        # task again or at the end, so one call over every task writes no record until its
        # end, and a time-out would keep nothing. Each call's records are in the database
        # when it returns.
        for start in range(0, len(contexts), CHUNK):
            ms.tune.tune_tasks(
                tasks=contexts[start : start + CHUNK],
                task_weights=weights[start : start + CHUNK],
                work_dir=db_dir,
                max_trials_global=per_task * len(contexts[start : start + CHUNK]),
                max_trials_per_task=per_task,
                num_trials_per_iter=min(per_task, 16),
                builder=builder,
                runner=runner,
                cost_model="random",
                database=database,
            )
            done = min(start + CHUNK, len(contexts))
            print(json.dumps({"tasks": len(tasks), "tuned": done, "reused": reused}), flush=True)
    print(json.dumps({"tasks": len(tasks), "tuned": len(todo), "reused": reused}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
