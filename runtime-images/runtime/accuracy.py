"""The accuracy gate: how far an engine's outputs are from the FP32 ONNX Runtime reference.

Pure functions over arrays. Every output of the model is compared and the worst one counts;
the metric's meaning follows `infleet.api.AccuracyMetric`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from infleet.api import AccuracyMetric, Precision, RungResult
from infleet.api.spec import DEFAULT_FP16_DEVIATION


def deviation(metric: AccuracyMetric, reference: np.ndarray, candidate: np.ndarray) -> float:
    """Deviation of one output over all validation rows, in the metric's units."""
    if reference.shape != candidate.shape:
        return float("inf")
    ref = (
        reference.astype(np.float64).reshape(len(reference), -1)
        if reference.ndim
        else reference.astype(np.float64).reshape(1, 1)
    )
    cand = candidate.astype(np.float64).reshape(ref.shape)
    if metric == AccuracyMetric.MAX_ABS_ERROR:
        return float(np.max(np.abs(ref - cand))) if ref.size else 0.0
    if metric == AccuracyMetric.COSINE:
        num = np.sum(ref * cand, axis=1)
        den = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
        # Two all-zero rows agree perfectly; one all-zero row against a non-zero one does not.
        cos = np.where(
            den > 0,
            num / np.where(den > 0, den, 1.0),
            np.where(np.all(ref == cand, axis=1), 1.0, 0.0),
        )
        return float(np.max(1.0 - cos))
    # top1: fraction of rows whose arg-max over the flattened row differs.
    return float(np.mean(np.argmax(ref, axis=1) != np.argmax(cand, axis=1)))


def worst_deviation(
    metric: AccuracyMetric, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]
) -> float:
    if len(reference) != len(candidate):
        return float("inf")
    devs = [
        deviation(metric, r, c)
        for r, c in zip(reference, candidate, strict=True)
        # top1 only means something for float score outputs; integer outputs must match exactly.
        if not (metric == AccuracyMetric.TOP1 and r.dtype.kind not in "f")
    ]
    exact = [
        bool(np.array_equal(r, c))
        for r, c in zip(reference, candidate, strict=True)
        if r.dtype.kind not in "fc"
    ]
    if not all(exact):
        return float("inf")
    return max(devs, default=0.0)


@dataclass(frozen=True)
class Budget:
    metric: AccuracyMetric
    max_deviation: float | None
    """None: no budget was given; reduced precisions then follow the spec's rules."""

    def limit(self, precision: Precision) -> float | None:
        """The deviation allowed at ``precision``; None = this rung may not be tried at all.

        FP32 engines are still gated (at FP16's default when no budget is given) because a
        graph optimiser can break a model too. INT8/FP8 need an explicit budget.
        """
        if self.max_deviation is not None:
            return self.max_deviation
        if precision in (Precision.FP32, Precision.FP16):
            return DEFAULT_FP16_DEVIATION[self.metric]
        return None


def verdict(budget: Budget, precision: Precision, measured: float) -> RungResult:
    limit = budget.limit(precision)
    assert limit is not None  # callers skip rungs without a limit
    passed = measured <= limit
    word = "within" if passed else "over"
    return RungResult(
        precision=precision,
        deviation=measured,
        passed=passed,
        message=f"{budget.metric} deviation {measured:.3g} {word} budget {limit:.3g}",
    )
