"""The default (untuned) TIR schedules of the TVM builder's CPU pipeline (``tvm_cpu``).

TVM 0.27's ``dlight.cpu`` has rules for GEMV and softmax/norm-style reductions only; these
cover the rest: :class:`Contraction` for anything with one reduction (conv2d, depthwise conv2d,
matmul, pooling), :class:`Injective` for functions without a reduction, :class:`Fallback` so
that no function is left as an unscheduled single-threaded loop nest. Each rule can schedule a
MetaSchedule schedule in place (:func:`schedule_in_place`): the tuner measures the default
schedule as a design space of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def node_kind(node: Any) -> str:
    """A TIR node's class name: several tirx names are constructor functions, not classes,
    so isinstance cannot test them."""
    return type(node).__name__


def _lanes(target: Any, dtype_bits: int) -> int:
    from tvm.target.codegen import llvm_get_vector_width

    width = int(llvm_get_vector_width(target))
    return max((width if width > 0 else 128) // dtype_bits, 2)


def _extent(sch: Any, loop: Any) -> int | None:
    extent = sch.get(loop).extent
    return int(extent.value) if node_kind(extent) == "IntImm" else None


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
    return node_kind(value) == "Call" and getattr(op, "name", "") == "tirx.if_then_else"


class _Rule:
    """Adapter to dlight's ScheduleRule (imported lazily: the module loads without TVM)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from tvm.s_tir.dlight import ScheduleRule

        body: dict[str, Any] = {}
        for klass in reversed(cls.__mro__[:-1]):  # this class's shared apply, then the rule's
            body.update({k: v for k, v in vars(klass).items() if not k.startswith("__")})
        rule = type(cls.__name__, (ScheduleRule,), body)
        return rule()

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """dlight's entry: a schedule of ``func`` when the rule takes it, else None."""
        from tvm import s_tir, tirx

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        return sch if self.schedule(sch, target) else None

    def schedule(self, sch: Any, target: Any) -> bool:  # pragma: no cover
        """Schedules ``sch`` in place; False (and ``sch`` untouched) when the rule does not
        apply."""
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

    def schedule(self, sch: Any, target: Any) -> bool:
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
            not isinstance(i.dom, int) and node_kind(i.dom) != "IntImm"
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

    def schedule(self, sch: Any, target: Any) -> bool:
        from tvm import tirx

        if not _has_root(sch):
            return False
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
        return True


def schedule_in_place(sch: Any, target: Any) -> None:
    """The default schedule of one function, applied to a MetaSchedule schedule: a design
    space of its own beside MetaSchedule's, so tuning measures it against the sampled ones and
    keeps a record only where something beat it (``tvm_tune``)."""
    for rule in (Contraction(), Injective()):
        if rule.schedule(sch, target):
            return
