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
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infleet.api import Backend, Precision
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
        db_dir = job.work_dir / "tuning"
        tuned = self._tune(job, prepared, spec, db_dir, notes)
        try:
            if tuned:
                from tvm import relax

                mod = relax.get_pipeline(
                    "static_shape_tuning", total_trials=0, target=target, work_dir=str(db_dir)
                )(mod)
            ex = tvm.compile(mod, target=target)
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
            "tuning": "metaschedule" if tuned else "none",
            "cross_compiled": str(not job.target.is_host()).lower(),
        }
        return BuiltEngine(ENGINE_FILE, options, batch_sizes, tuple(notes))

    def _tune(
        self,
        job: BuildJob,
        prepared: Mapping[int, Any],
        spec: dict[str, Any],
        db_dir: Path,
        notes: list[str],
    ) -> bool:
        if job.tuning_trials <= 0 or job.tuning_seconds <= 0:
            notes.append("tvm: untuned (tuning budget 0)")
            return False
        if not job.target.is_host():
            notes.append(
                "tvm: untuned: MetaSchedule measures on the target CPU; cross builds "
                "skip it (run the build on an arm64 node to tune)"
            )
            return False
        db_dir.mkdir(parents=True, exist_ok=True)
        # The child re-imports the prepared graphs: serialising a Relax module with its
        # constants (tvm.ir.save_json) segfaults in apache-tvm 0.27.
        spec_file = job.work_dir / "tune.json"
        spec_file.write_text(
            json.dumps(
                {
                    "prepared": prepared,
                    "target": spec,
                    "db": str(db_dir),
                    "trials": job.tuning_trials,
                }
            )
        )
        cmd = [sys.executable, "-m", "infleet.runtime.builders.tvm_tune", str(spec_file)]
        started = time.monotonic()
        reason = run_child(cmd, job.tuning_seconds)
        records = _count_records(db_dir)
        took = time.monotonic() - started
        if reason is None:
            notes.append(f"tvm: tuned with MetaSchedule, {records} records in {took:.0f}s")
            return records > 0
        if records > 0 and reason.startswith("time budget"):
            notes.append(
                f"tvm: tuning stopped at its {reason}; applied the {records} records measured"
            )
            return True
        notes.append(
            f"tvm: untuned: MetaSchedule tuning failed ({reason}); kept the untuned engine"
        )
        return False


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


def run_child(cmd: Sequence[str], timeout_s: float) -> str | None:
    """Run a child process in its own process group; None when it exits 0, else why not.

    On timeout the whole group is killed: MetaSchedule starts builder/runner workers of its own.
    """
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"time budget of {timeout_s:.0f}s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray workers of a finished tuner
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"child process killed by {signal.Signals(-proc.returncode).name}"
    tail = output.strip().splitlines()[-1:] or ["no output"]
    return f"exit code {proc.returncode}: {tail[0][:300]}"


def _count_records(db_dir: Path) -> int:
    path = db_dir / "database_tuning_record.json"
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return 0


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
