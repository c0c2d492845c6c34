"""The TVM builder's CPU compilation: the Relax pipeline and the default (untuned) schedules.

Why this exists: ``tvm.compile(mod, target)`` on an llvm target runs TVM's generic "default"
pipeline, which legalizes every operator to a naive TIR loop nest and schedules nothing: no
operator fusion, no vectorization, no thread parallelism. Measured on EfficientNet-Lite0
(2 cores, batch 1) that spends 95% of 350 ms in single-threaded scalar conv2d loops; MiniLM
spends 98% of 2.3 s in scalar matmuls. TVM 0.27 ships CPU schedule rules (``dlight.cpu``)
only for GEMV and softmax/norm-style reductions, not for convolutions or matrix products.

So the pipeline here is TVM's CPU pipeline (``relax.backend.cpu_generic``: legalize, fold,
FuseOps, FuseTIR) with three additions:

- conv2d converted to NHWC activations and HWIO weights (weights fold at build time), so the
  output channel is the innermost, contiguous axis of outputs and weights: the axis to
  vectorize. The ONNX importer emits Clip (ReLU6) as opaque TIR calls that layout conversion
  cannot see through, which would put two transposes around every activation; they are
  rewritten to Relax ``maximum``/``minimum`` first (:func:`clip_calls_to_relax`).
- default schedules (``tvm_schedules``): ``Contraction`` for any function with one reduction
  block (conv2d, depthwise conv2d, matmul, pooling): a register tile of rows x one vector of
  the innermost output axis, accumulated in a local buffer, the fused epilogue (bias,
  activation, residual) applied as the tile is written back, the outer loops on the thread
  pool; ``Injective`` (and ``Fallback``) for what is left: parallel outer loops, vectorized
  inner loop.

MetaSchedule records, when a build has them, take precedence over these schedules per
function (``MetaScheduleApplyDatabase`` runs first and marks what it scheduled). The tuning
child (``tvm_tune``) applies the same Relax passes before extracting its tasks, so the tasks it
tunes are the functions compiled here.
"""

from __future__ import annotations

from typing import Any

from infleet.runtime.builders.tvm_schedules import Contraction, Fallback, Injective, node_kind

SCHEDULES = "infleet-cpu-1"
"""Names the default schedules in engine manifests; bump it when they change."""

# The importer's helper for Clip is a one-block TIR function: out[i] = max(a[i], b[()]).
_CLIP_OPS = ("Max", "Min")


def relax_passes(target: Any, *, nhwc: bool = True) -> list[Any]:
    """Relax-level passes up to fused, legalized (unscheduled) TIR: shared by the compile
    pipeline and the tuner's task extraction, so both see the same functions."""
    from tvm import relax

    passes = [
        relax.transform.FoldConstant(),
        clip_calls_to_relax(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
    ]
    if nhwc:
        passes.append(relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}))
    passes += [
        # erf (GELU), exp and softmax as TVM's vectorizable approximations: the libm calls
        # they replace are scalar, and GELU alone was 10% of MiniLM.
        relax.transform.FastMathTransform(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
    return passes


def pipeline(target: Any, database_dir: str | None = None) -> Any:
    """The Relax pipeline for ``tvm.compile`` on a CPU target: :func:`relax_passes`, tuned
    schedules from the MetaSchedule database in ``database_dir`` where it has them, the
    default schedules below for the rest, then TVM's CPU lowering."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight as dl
    from tvm.s_tir import meta_schedule as ms

    @tvm.transform.module_pass(opt_level=0, name="InfleetCpuPipeline")  # type: ignore[untyped-decorator]
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            mod = tvm.transform.Sequential(relax_passes(target))(mod)
            if database_dir is not None:
                database = ms.database.JSONDatabase(work_dir=database_dir, allow_missing=False)
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            mod = dl.ApplyDefaultSchedule(*default_rules())(mod)
            return tvm.transform.Sequential(
                cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)
            )(mod)

    return _pipeline


def default_rules() -> list[Any]:
    """The schedule rules of an untuned function, the first that applies wins: Contraction
    before dlight's Reduction, which would take a conv with its epilogue and parallelise only
    its batch axis."""
    from tvm.s_tir import dlight as dl

    return [Contraction(), dl.cpu.Reduction(), dl.cpu.GEMV(), Injective(), Fallback()]


def clip_calls_to_relax() -> Any:
    """Rewrites the importer's Clip helpers (``call_tir`` of a one-block TIR max/min against a
    scalar constant) into Relax ``maximum``/``minimum``, which layout conversion and fusion
    understand. Anything else is left as it is."""
    import tvm
    from tvm import relax, s_tir, tirx

    def clip_kind(func: Any) -> str | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) != 1:
            return None
        store = sch.get(blocks[0]).body
        if node_kind(store) != "BufferStore":
            return None
        kind = node_kind(store.value)
        b = getattr(store.value, "b", None)
        if kind not in _CLIP_OPS or not (
            node_kind(b) in ("BufferLoad", "TensorLoad") and b is not None and len(b.indices) == 0
        ):
            return None
        return kind

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):  # type: ignore[misc]
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.mod_ = mod
            self.kinds = {gv: clip_kind(f) for gv, f in mod.functions.items()}

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op != tvm.ir.Op.get("relax.call_tir"):
                return call
            callee, args = call.args[0], call.args[1]
            kind = self.kinds.get(callee) if isinstance(callee, relax.GlobalVar) else None
            if kind is None or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
                return call
            x, bound = args.fields
            if not isinstance(bound, tvm.ir.GenericConst):
                return call
            op = relax.op.maximum if kind == "Max" else relax.op.minimum
            return op(x, bound)

    @tvm.transform.module_pass(opt_level=0, name="ClipCallsToRelax")  # type: ignore[untyped-decorator]
    def _pass(mod: Any, _ctx: Any) -> Any:
        rewriter = Rewrite(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return _pass
