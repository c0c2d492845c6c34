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
- :class:`Contraction`, a schedule for any function with one reduction block (conv2d,
  depthwise conv2d, matmul, pooling): a register tile of rows x one vector of the innermost
  output axis, accumulated in a local buffer, the fused epilogue (bias, activation, residual)
  applied as the tile is written back, and the outer loops run on the thread pool.
- :class:`Injective` for what is left (pads, layout transforms, elementwise): parallel outer
  loops, vectorized inner loop.

MetaSchedule records, when a build has them, take precedence over these schedules per
function (``MetaScheduleApplyDatabase`` runs first and marks what it scheduled). The tuning
child (``tvm_tune``) applies the same Relax passes before extracting its tasks, so the tasks it
tunes are the functions compiled here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
        if _kind(store) != "BufferStore":
            return None
        kind = _kind(store.value)
        b = getattr(store.value, "b", None)
        if kind not in _CLIP_OPS or not (
            _kind(b) in ("BufferLoad", "TensorLoad") and b is not None and len(b.indices) == 0
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


def _kind(node: Any) -> str:
    """A TIR node's class name: several tirx names are constructor functions, not classes,
    so isinstance cannot test them."""
    return type(node).__name__


def _lanes(target: Any, dtype_bits: int) -> int:
    from tvm.target.codegen import llvm_get_vector_width

    width = int(llvm_get_vector_width(target))
    return max((width if width > 0 else 128) // dtype_bits, 2)


def _extent(sch: Any, loop: Any) -> int | None:
    extent = sch.get(loop).extent
    return int(extent.value) if _kind(extent) == "IntImm" else None


def _divisor(n: int, candidates: Sequence[int]) -> int | None:
    return next((c for c in candidates if c <= n and n % c == 0), None)


def _vectorize_inner(sch: Any, loop: Any, lanes: int) -> None:
    """Vectorizes the innermost loop in pieces of at most ``lanes`` (divisors first, so no
    predicated tail), or leaves it scalar when it has no constant extent."""
    extent = _extent(sch, loop)
    if extent is None or extent < 2:
        return
    if extent <= lanes:
        sch.vectorize(loop)
        return
    piece = _divisor(extent, [lanes, lanes // 2, lanes // 4]) or lanes
    if piece < 2:
        return
    _, inner = sch.split(loop, factors=[None, piece])
    sch.vectorize(inner)


def _schedule_injective(sch: Any, block: Any, lanes: int) -> None:
    """Parallel outer loops, vectorized inner loop, for a block with no reduction."""
    loops = sch.get_loops(block)
    if not loops:
        return
    _vectorize_inner(sch, loops[-1], lanes)
    loops = sch.get_loops(block)
    outer = loops[:-1] if len(loops) > 1 else []
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _is_pad(sch: Any, block: Any) -> bool:
    """A padding block: its value is ``if_then_else(in bounds, input, 0)``."""
    value = getattr(sch.get(block).body, "value", None)
    op = getattr(value, "op", None)
    return _kind(value) == "Call" and getattr(op, "name", "") == "tirx.if_then_else"


class _Rule:
    """Adapter to dlight's ScheduleRule (imported lazily: the module loads without TVM)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from tvm.s_tir.dlight import ScheduleRule

        body = {k: v for k, v in vars(cls).items() if not k.startswith("__")}
        rule = type(cls.__name__, (ScheduleRule,), body)
        return rule()

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:  # pragma: no cover
        raise NotImplementedError


class Contraction(_Rule):
    """One reduction block (conv2d, depthwise conv2d, matmul, pooling) plus injective
    producers and epilogues, on an llvm target.

    The reduction's spatial loops are [outer..., rows, vec], with ``vec`` the innermost output
    axis (the output channel in NHWC, the column of a matmul). The schedule is the classic CPU
    micro-kernel: a tile of up to 8 rows x one vector of ``vec`` accumulates in a local buffer
    (registers, once LLVM has unrolled it) over the whole reduction, then is written back with
    the fused epilogue applied; the outer loops and the tile loops are fused and run in
    parallel. Producers that are not pads are inlined (a transpose before a matmul becomes a
    strided read); pads stay separate blocks, scheduled as injective, so the inner loop has no
    bounds checks."""

    rows = (8, 7, 6, 4, 5, 3, 2)
    """Row counts of the register tile, in order of preference (the first that divides)."""
    max_rows = 12
    """Rows x vectors at most: the accumulators must fit in the vector registers (16 on AVX2
    and NEON, 32 on AVX-512), beside the operands."""

    def tile(self, rows: int, vectors: int) -> tuple[int, int]:
        """(vectors, rows) of the register tile: the most accumulators, one vector per row
        unless two give more (7 rows of a 7x7 map fit one vector each, not two)."""
        best = (1, 1)
        for nv in (1, 2):
            if vectors % nv:
                continue
            ri = _divisor(rows, [r for r in self.rows if r * nv <= self.max_rows]) or 1
            if ri * nv > best[0] * best[1]:
                best = (nv, ri)
        return best

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        from tvm import s_tir, tirx

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        return sch if self.schedule(sch, target) else None

    def schedule(self, sch: Any, target: Any) -> bool:
        """Schedules ``sch`` in place; False (and ``sch`` untouched) when the rule does not
        apply."""
        from tvm import tirx
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        infos = normalize_prim_func(sch)
        if not infos:
            return False
        reductions = [i for i, b in enumerate(infos) if b.is_reduction()]
        if len(reductions) != 1:
            return False
        at = reductions[0]
        red = infos[at]
        kinds = red.dom_kind()
        n_spatial = len(kinds) - len(kinds.lstrip("S"))
        if n_spatial < 2 or kinds[n_spatial:].strip("R") or not all(
            b.is_injective() for i, b in enumerate(infos) if i != at
        ):
            return False
        if any(
            not isinstance(i.dom, int) and _kind(i.dom) != "IntImm"
            for i in red.iters[n_spatial - 2 : n_spatial]
        ):
            return False
        for b in infos[:at]:
            if not _is_pad(sch, b.block_rv):
                try:
                    sch.compute_inline(b.block_rv)
                except Exception:  # noqa: S112 - TVM says no with its own error types
                    continue
        block = red.block_rv
        lanes = _lanes(target, sch.get(block).writes[0].source.dtype.bits)
        writeback = sch.cache_write(block, 0, "local")
        for b in infos[at + 1 :]:
            try:
                sch.reverse_compute_inline(b.block_rv)
            except Exception:  # noqa: S112 - left at the root, scheduled as injective
                continue
        loops = sch.get_loops(block)
        spatial, reduce = loops[:n_spatial], loops[n_spatial:]
        vec_extent, row_extent = _extent(sch, spatial[-1]), _extent(sch, spatial[-2])
        assert vec_extent is not None and row_extent is not None  # IntImm, checked above
        vi = _divisor(vec_extent, [lanes, lanes // 2, lanes // 4]) or min(vec_extent, lanes)
        nv, ri = self.tile(row_extent, vec_extent // vi)
        vo, vv, vin = sch.split(spatial[-1], factors=[None, nv, vi])
        ro, rin = sch.split(spatial[-2], factors=[None, ri])
        sch.reorder(*spatial[:-2], ro, vo, *reduce, rin, vv, vin)
        sch.reverse_compute_at(writeback, vo, preserve_unit_loops=True)
        sch.parallel(sch.fuse(*spatial[:-2], ro, vo))
        # Loop kinds first: once the reduction is decomposed, the update block is no longer a
        # "reduction block" to vectorize's checks.
        sch.unroll(vv)
        sch.unroll(rin)
        sch.vectorize(vin)
        wb_loops = sch.get_loops(writeback)
        sch.vectorize(wb_loops[-1])
        sch.unroll(wb_loops[-2])
        if reduce:
            init = sch.decompose_reduction(block, reduce[0])
            init_loops = sch.get_loops(init)
            if sch.get(init_loops[-1]).kind != tirx.ForKind.VECTORIZED:
                sch.vectorize(init_loops[-1])
                sch.unroll(init_loops[-2])
                sch.unroll(init_loops[-3])
        root = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
        for b in root:
            if sch.get(b).name_hint not in (sch.get(block).name_hint,):
                _maybe_injective(sch, b, lanes)
        return True


def _has_root(sch: Any) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:
        return False
    return True


def _maybe_injective(sch: Any, block: Any, lanes: int) -> None:
    """Schedules a leftover root block (a pad, an epilogue that did not inline) unless it is
    already under a parallel loop."""
    from tvm import tirx

    loops = sch.get_loops(block)
    if not loops or sch.get(loops[0]).kind == tirx.ForKind.PARALLEL:
        return
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
        return
    _schedule_injective(sch, block, lanes)


class Injective(_Rule):
    """Functions without a reduction: every block inlined where it can be, what remains
    parallel over its outer loops and vectorized along the innermost one."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        from tvm import s_tir, tirx

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        return sch if self.schedule(sch, target) else None

    def schedule(self, sch: Any, target: Any) -> bool:
        from tvm.s_tir.dlight.analysis import normalize_prim_func
        from tvm.s_tir.dlight.base import try_inline

        infos = normalize_prim_func(sch)
        if not infos or not all(b.is_injective() for b in infos):
            return False
        remaining = try_inline(sch, infos)
        lanes = _lanes(target, 32)
        for b in remaining:
            _schedule_injective(sch, b.block_rv, lanes)
        return True


class Fallback(_Rule):
    """Whatever no other rule took (a reduction to one axis, as MiniLM's mean pooling): each
    root block's leading spatial loops fused and run in parallel, so no function is left as
    TVM's single-threaded loop nest."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        from tvm import s_tir, tirx

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        if not _has_root(sch):
            return None
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            iters = sch.get(block).iter_vars
            loops = sch.get_loops(block)
            lead = 0
            while (
                lead < min(len(iters), len(loops))
                and iters[lead].iter_type == tirx.IterVar.DataPar
            ):
                lead += 1
            if lead:
                sch.parallel(sch.fuse(*loops[:lead]) if lead > 1 else loops[0])
        return sch


def schedule_in_place(sch: Any, target: Any) -> None:
    """The default schedule of one function, applied to a MetaSchedule schedule: a design
    space of its own beside MetaSchedule's, so tuning measures it against the sampled ones and
    keeps a record only where something beat it (``tvm_tune``)."""
    for rule in (Contraction(), Injective()):
        if rule.schedule(sch, target):
            return
