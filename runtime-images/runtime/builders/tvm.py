"""TVM engines: Relax import from ONNX, compiled for the class's CPU, exported as one .so.

Shapes are static per compiled batch size: the graph is pinned to each size and its shape
subgraphs folded (TVM's importer refuses many of them otherwise), every size becomes one VM
function ``main_b{n}`` of a single library, and the server pads a batch up to the next size.
Arm64 classes are cross-compiled with Debian's aarch64 toolchain when the host is x86; such an
engine is verified under qemu-user (`infleet.runtime.builders.qemu`). Everywhere else the gate
and the profile run the engine through the server's TVM engine (``server/engines/tvm_engine``).

MetaSchedule tuning runs in a child process with a time bound: a crash or a timeout there (the
current wheel has segfaulted) leaves the untuned engine, never a failed build, and the reason
lands in the build notes. The database is written as tuning goes, so a time-bounded run still
applies what it measured.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from infleet import toolbox
from infleet.api import Backend, Precision
from infleet.runtime.builders import tvm_cpu
from infleet.runtime.builders import tvm_tuning as tuning
from infleet.runtime.builders.base import BuildJob, BuiltEngine, op_label, pick_batch_sizes
from infleet.runtime.errors import BackendUnavailable, BuildError, UnsupportedModel
from infleet.runtime.hardware import Arch, HardwareTarget
from infleet.runtime.onnxmodel import fix_shapes_and_fold, load_model

log = logging.getLogger(__name__)

ENGINE_FILE = "engine.so"
CROSS_CC = {Arch.AARCH64: "aarch64-linux-gnu-gcc", Arch.X86_64: "x86_64-linux-gnu-gcc"}
ELF_MACHINE = {Arch.X86_64: 62, Arch.AARCH64: 183}


def _tvm() -> Any:
    try:
        import tvm
    except ImportError as e:
        raise BackendUnavailable("apache-tvm is not installed (pip install 'infleet[tvm]')") from e
    return tvm


def target_spec(target: HardwareTarget, threads: int) -> dict[str, Any]:
    """The LLVM target for a class, as TVM's JSON target dict (string targets are gone)."""
    f = target.features
    if target.arch == Arch.AARCH64:
        mattr = ["+neon"]
        mattr += ["+dotprod"] if "asimddp" in f else []
        mattr += ["+fullfp16"] if "asimdhp" in f else []
        mattr += ["+sve"] if "sve" in f else []
        mattr += ["+sve2"] if "sve2" in f else []
        mattr += ["+i8mm"] if "i8mm" in f else []
        return {
            "kind": "llvm",
            "mtriple": "aarch64-linux-gnu",
            "mcpu": target.cpu or "generic",
            "mattr": mattr,
            "num-cores": threads,
        }
    x86 = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni")
    return {
        "kind": "llvm",
        "mtriple": "x86_64-linux-gnu",
        "mcpu": target.cpu or "x86-64-v2",
        "mattr": [f"+{x}" for x in x86 if x in f],
        "num-cores": threads,
    }


def elf_machine(path: Path) -> int | None:
    """The ELF e_machine of a file (183 = AArch64, 62 = x86-64), None if it is no 64-bit ELF."""
    with path.open("rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] != 2:
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


class TvmBuilder:
    backend = Backend.TVM

    def version(self) -> str:
        return str(_tvm().__version__)

    def batch_sizes(self, job: BuildJob) -> tuple[int, ...]:
        """Static shapes: one compiled function per size (the server pads up to the next)."""
        if job.info.fixed_batch is not None:
            return (job.info.fixed_batch,)
        return pick_batch_sizes(job.max_batch, job.batch_sizes)

    def tuning(self, job: BuildJob) -> str:
        """MetaSchedule runs only where its measurements mean something: on the class's own
        CPU (the build host), with a budget."""
        if job.tuning_trials <= 0 or job.tuning_seconds <= 0 or not job.target.is_host():
            return ""
        return f"metaschedule-{job.tuning_trials}"

    def unsupported_ops(self, ops: frozenset[tuple[str, str]]) -> tuple[str, ...]:
        _tvm()  # BackendUnavailable when missing
        from tvm.relax.frontend.onnx import onnx_frontend

        # The Relax importer's own table: an op missing there fails the import.
        known = set(onnx_frontend._get_convert_map())
        return tuple(
            sorted(op_label(d, o) for d, o in ops if d not in ("", "ai.onnx") or o not in known)
        )

    def unsupported(self, precision: Precision, target: HardwareTarget) -> str | None:
        if target.gpu:
            return "the TVM builder targets CPUs (llvm); GPU classes use TensorRT"
        if precision != Precision.FP32:
            # Relax's ONNX path has no calibrated INT8 flow, and FP16 via ToMixedPrecision
            # is not validated on CPUs here: refuse rather than ship an untested engine.
            return f"{precision} is not offered by the TVM builder yet (FP32 only)"
        if not target.is_host() and shutil.which(CROSS_CC[target.arch]) is None:
            return (
                f"cross-compiling for {target.arch} needs {CROSS_CC[target.arch]} "
                "(apt-get install gcc-aarch64-linux-gnu, or run hack/arm64-sysroot.sh)"
            )
        return None

    def build(self, job: BuildJob, precision: Precision, out_dir: Path) -> BuiltEngine:
        tvm = _tvm()
        batch_sizes = self.batch_sizes(job)
        model = load_model(job.model_path)
        prepared: dict[int, tuple[str, dict[str, list[int]]]] = {}
        for b in batch_sizes:
            shapes = {t.name: list(t.shape(b)) for t in job.info.inputs}
            path = fix_shapes_and_fold(
                model, {k: tuple(v) for k, v in shapes.items()}, job.work_dir / f"tvm-b{b}.onnx"
            )
            prepared[b] = (str(path), shapes)
        mod = import_module(prepared)
        spec = target_spec(job.target, job.threads)
        target = tvm.target.Target(spec)
        notes: list[str] = []
        db_dir = self._tune(job, prepared, spec, notes)
        try:
            pipeline = tvm_cpu.pipeline(target, str(db_dir) if db_dir is not None else None)
            ex = tvm.compile(mod, target=target, relax_pipeline=pipeline)
        except Exception as e:
            raise _wrap(e, "compiling") from e
        engine = out_dir / ENGINE_FILE
        try:
            if job.target.is_host():
                ex.export_library(str(engine))
            else:
                from tvm.support import cc

                ex.export_library(
                    str(engine), fcompile=cc.cross_compiler(CROSS_CC[job.target.arch])
                )
        except Exception as e:
            raise _wrap(e, "exporting the shared library") from e
        machine = elf_machine(engine)
        if machine != ELF_MACHINE[job.target.arch]:
            raise BuildError(
                f"tvm: exported {engine.name} is not an {job.target.arch} ELF (e_machine={machine})"
            )
        options = {
            "target": json.dumps(spec, sort_keys=True),
            "entry": "main_b{batch}",
            "input_order": ",".join(t.name for t in job.info.inputs),
            "tuning": "metaschedule" if db_dir is not None else "none",
            "schedules": tvm_cpu.SCHEDULES,
            "cross_compiled": str(not job.target.is_host()).lower(),
        }
        return BuiltEngine(ENGINE_FILE, options, batch_sizes, tuple(notes))

    def _tune(
        self,
        job: BuildJob,
        prepared: Mapping[int, Any],
        spec: dict[str, Any],
        notes: list[str],
    ) -> Path | None:
        """MetaSchedule records for this build: the directory of a JSON database to apply, or
        None (untuned; the notes say why). Runs the tuner child unless the store's database
        for (model, target, TVM version) already covers every task."""
        if job.tuning_trials <= 0 or job.tuning_seconds <= 0:
            notes.append("tvm: untuned: default CPU schedules (tuning budget 0)")
            return None
        if not job.target.is_host():
            notes.append(
                "tvm: untuned: MetaSchedule measures on the target CPU and this build is for "
                f"{job.target.arch} on another host (emulated timings would tune for the "
                "emulator); the build Job on a node of the class tunes"
            )
            return None
        key = tuning_key(job.model_sha256, spec, self.version())
        shared = job.tuning_dir / key if job.tuning_dir is not None else None
        work = job.work_dir / "tuning"
        with _locked(shared):
            tuning.copy_database(shared, work)
            before = tuning.count_records(work)
            # The child re-imports the prepared graphs: serialising a Relax module with its
            # constants (tvm.ir.save_json) segfaults in apache-tvm 0.27.
            spec_file = job.work_dir / "tune.json"
            spec_file.write_text(
                json.dumps(
                    {
                        "prepared": prepared,
                        "target": spec,
                        "db": str(work),
                        "trials_per_task": job.tuning_trials,
                        "threads": job.threads,
                    }
                )
            )
            cmd = [sys.executable, "-m", "infleet.runtime.builders.tvm_tune", str(spec_file)]
            started = time.monotonic()
            outcome = run_child(cmd, job.tuning_seconds)
            took = time.monotonic() - started
            kept = tuning.repair_database(work)
            if shared is not None and kept > before:
                tuning.publish_database(work, shared)
        notes.append(tuning.note(outcome, key, job.tuning_trials, before, kept, took))
        return work if kept > 0 else None


def tuning_key(model_sha256: str, spec: Mapping[str, Any], tvm_version: str) -> str:
    """The store's key of a tuning database: records belong to one model on one target with
    one TVM (its schedules and their measurements change with each), not to a batch size."""
    fields = {"model": model_sha256, "target": spec, "tvm": tvm_version}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return "tvm-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(shared: Path | None) -> Iterator[None]:
    """One tuner per database at a time: a second build of the class waits for the first's
    records instead of measuring the same tasks beside it on the same CPUs."""
    if shared is None:
        yield
        return
    shared.mkdir(parents=True, exist_ok=True)
    fd = os.open(shared / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def import_module(prepared: Mapping[int, tuple[str, Mapping[str, list[int]]]]) -> Any:
    """One IRModule with a Relax function ``main_b{n}`` per prepared (static-shape) graph.

    The importer also emits helper functions (TE kernels such as ``maximum`` for Clip) whose
    names repeat across batch sizes with different shapes; they are re-added under per-batch
    names through one BlockBuilder and the calls in each ``main`` are pointed at them.
    """
    import onnx

    _tvm()
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    @relax.expr_functor.mutator
    class Rename(relax.PyExprMutator):  # type: ignore[misc]
        def __init__(self, mapping: Mapping[Any, Any]) -> None:
            super().__init__()
            self.mapping = mapping

        def visit_global_var_(self, gv: Any) -> Any:
            return self.mapping.get(gv, gv)

    bb = relax.BlockBuilder()
    for b, (path, shapes) in sorted(prepared.items()):
        try:
            mod = from_onnx(onnx.load(path), shape_dict=dict(shapes))
        except Exception as e:
            raise _wrap(e, "importing the ONNX graph", importing=True) from e
        helpers = [(gv, f) for gv, f in mod.functions.items() if gv.name_hint != "main"]
        mapping = {gv: bb.add_func(f, f"{gv.name_hint}_b{b}") for gv, f in helpers}
        main = Rename(mapping).visit_expr(mod["main"]).with_attr("global_symbol", f"main_b{b}")
        bb.add_func(main, f"main_b{b}")
    return bb.get()


def run_child(cmd: Sequence[str], timeout_s: float) -> tuning.ChildOutcome:
    """Run the tuner child; its outcome (None reason when it exits 0) and its last JSON line.

    The child stays in this process's group (a signal to the build's group, as a pod's stop
    or a time-out sends, reaches it and its workers) and gets SIGTERM when this process dies
    (PR_SET_PDEATHSIG), on which it kills its own descendants. On its time-out the child and
    every process below it are killed here.
    """
    env = {**os.environ, "INFLEET_TUNE_PARENT": str(os.getpid())}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=toolbox.die_with_parent,  # prctl only: safe between fork and exec
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        toolbox.kill_tree(proc.pid)
        output, _ = proc.communicate()
        return tuning.ChildOutcome(f"time budget of {timeout_s:.0f}s", tuning.last_json(output))
    finally:
        toolbox.kill_tree(proc.pid)  # stray workers of a finished tuner
    if proc.returncode == 0:
        return tuning.ChildOutcome(None, tuning.last_json(output))
    if proc.returncode < 0:
        reason = f"child process killed by {signal.Signals(-proc.returncode).name}"
        return tuning.ChildOutcome(reason, tuning.last_json(output))
    tail = output.strip().splitlines()[-1:] or ["no output"]
    return tuning.ChildOutcome(
        f"exit code {proc.returncode}: {tail[0][:300]}", tuning.last_json(output)
    )


def _wrap(e: Exception, doing: str, *, importing: bool = False) -> BuildError:
    """TVM's error as ours, chosen by its type and the step, never by its text: whatever the
    ONNX importer refuses (its OpError family, NotImplementedError, the ValueErrors it raises
    for forms it does not handle) is an unsupported model, since the model is valid ONNX that
    the reference ran; at compile or export time only NotImplementedError and OpError are."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # TVM's messages carry a C++ backtrace: the line naming the error says what happened.
    first = next(
        (ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else type(e).__name__
    )
    if importing or isinstance(e, (NotImplementedError, _tvm().error.OpError)):
        return UnsupportedModel(f"tvm, {doing}: {first.strip()[:400]}")
    return BuildError(f"tvm, {doing}: {first.strip()[:400]}")
