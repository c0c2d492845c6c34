"""The accuracy gate: how far an engine's outputs are from the FP32 ONNX Runtime reference.

Pure functions over arrays. Every output of the model is compared and the worst one counts;
the metric's meaning follows `infleet.api.AccuracyMetric`.

Two things keep the gate honest on inputs that do not exercise the model. A **degenerate
reference** (an output near zero, or the same for every validation sample) cannot tell a good
engine from a bad one: a detector's sigmoid map is about 1e-8 everywhere on random inputs,
where cosine measures rounding and max-abs-error passes anything. On synthetic inputs,
reduced-precision rungs are then not judged (they fail, saying to give validation data); on
real data the output is named and the data decide. The FP32 rung is judged against the
**noise floor**: the deviation onnxruntime's own optimisation levels show on the
same inputs. An FP32 rung is never failed on noise of that size (``FP32_NOISE_MARGIN``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from infleet.api import AccuracyMetric, JudgedOn, Precision, RungResult
from infleet.api.spec import DEFAULT_FP16_DEVIATION
from infleet.api.status import FP32_NOISE_MARGIN

NEAR_ZERO = 1e-6
"""Largest |value| of an output that counts as near zero over the whole validation set: a
millionth of the O(1) scale of logits, probabilities and embeddings."""
NEAR_CONSTANT = 1e-6
"""Largest spread across samples, relative to the output's scale, that counts as constant."""


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


def output_deviations(
    metric: AccuracyMetric, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]
) -> list[float]:
    """Each output's deviation, in the model's output order. Integer outputs must match
    exactly (0 or inf); top1 only means something for float score outputs."""
    if len(reference) != len(candidate):
        return [float("inf")] * max(len(reference), 1)
    devs: list[float] = []
    for r, c in zip(reference, candidate, strict=True):
        if r.dtype.kind not in "fc":
            devs.append(0.0 if np.array_equal(r, c) else float("inf"))
        else:
            devs.append(deviation(metric, r, c))
    return devs


def worst_deviation(
    metric: AccuracyMetric, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]
) -> float:
    return max(output_deviations(metric, reference, candidate), default=0.0)


def degenerate(reference: np.ndarray, constant: bool = True) -> str | None:
    """Why one reference output cannot judge an engine, or None: near zero over every sample,
    or (``constant``, with two samples or more) the same for every sample."""
    if reference.dtype.kind != "f" or reference.size == 0:
        return None
    ref = reference.astype(np.float64)
    rows = ref.reshape(len(ref), -1) if ref.ndim else ref.reshape(1, 1)
    if not np.all(np.isfinite(rows)):
        return None  # inf/nan are compared as they are; they are not "small"
    scale = float(np.max(np.abs(rows)))
    if scale <= NEAR_ZERO:
        return f"|values| <= {scale:.2g} over {len(rows)} samples"
    spread = float(np.max(np.ptp(rows, axis=0)))
    if constant and len(rows) >= 2 and spread <= NEAR_CONSTANT * scale:
        return f"the same for all {len(rows)} samples (spread {spread:.2g} at scale {scale:.2g})"
    return None


@dataclass(frozen=True)
class Reference:
    """The FP32 reference the gate compares with, and what it can judge."""

    names: tuple[str, ...]
    outputs: tuple[np.ndarray, ...]
    judged_on: JudgedOn
    degenerate: Mapping[str, str]
    """Output name -> why it is degenerate (``degenerate()``), for the outputs that are."""

    @classmethod
    def of(cls, names: Sequence[str], outputs: Sequence[np.ndarray], on: JudgedOn) -> Reference:
        # On real data an output that never changes is taken as the model's nature (anchors,
        # a fixed image size); on synthetic inputs it more often means they saturate the model.
        constant = on == JudgedOn.SYNTHETIC
        bad = {
            n: why
            for n, o in zip(names, outputs, strict=True)
            if (why := degenerate(o, constant))
        }
        return cls(tuple(names), tuple(outputs), on, bad)

    @property
    def judges_reduced(self) -> bool:
        """Whether reduced-precision rungs can be judged on it: not on a degenerate synthetic
        reference. On real data a degenerate output is reported, and the user's data decide."""
        return not (self.degenerate and self.judged_on == JudgedOn.SYNTHETIC)

    def hint(self) -> str:
        """The sentence that says so, or "" when every output can judge."""
        if not self.degenerate:
            return ""
        which = ", ".join(f"{n} ({why})" for n, why in self.degenerate.items())
        plural = "s" if len(self.degenerate) > 1 else ""
        if self.judged_on == JudgedOn.SYNTHETIC:
            inputs = "synthetic inputs"
            fix = "give validation data (--validation, spec.accuracy.validation)"
        else:
            inputs, fix = "the validation data", "give validation data that exercise it"
        return f"{inputs} give a degenerate reference for output{plural} {which}; {fix}"


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
    """The plain verdict: ``measured`` against the rung's limit."""
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


def needs_noise(budget: Budget, precision: Precision, measured: Sequence[float]) -> bool:
    """Whether judging this rung needs the reference's noise floor: an FP32 rung over budget."""
    limit = budget.limit(precision)
    return precision == Precision.FP32 and limit is not None and max(measured, default=0) > limit


def judge(
    budget: Budget,
    precision: Precision,
    reference: Reference,
    measured: Sequence[float],
    noise: Sequence[float] | None = None,
) -> RungResult:
    """The gate's verdict on one rung from its per-output deviations (``output_deviations``).

    ``noise`` is each output's deviation between the reference and onnxruntime's other
    optimisation levels (``needs_noise`` says when it is wanted). A reduced-precision rung on
    a degenerate synthetic reference fails unjudged; an FP32 rung within FP32_NOISE_MARGIN times the
    noise of every output it is over budget on passes.
    """
    worst = max(measured, default=0.0)
    rung = verdict(budget, precision, worst)
    limit = budget.limit(precision)
    assert limit is not None
    hint = reference.hint()
    update: dict[str, object] = {"judged_on": reference.judged_on}
    if noise is not None:
        update["noise"] = max(noise, default=0.0)
    if precision != Precision.FP32 and not reference.judges_reduced:
        update |= {"passed": False, "message": f"not judged: {hint}"}
    elif not rung.passed and precision == Precision.FP32 and noise is not None:
        allowed = [max(limit, FP32_NOISE_MARGIN * n) for n in noise]
        if all(m <= a for m, a in zip(measured, allowed, strict=True)):
            update |= {
                "passed": True,
                "message": f"{rung.message} but within {FP32_NOISE_MARGIN:g}x onnxruntime's "
                f"own noise on these inputs (its optimisation levels differ by {max(noise):.3g}): "
                "rounding, not lost precision",
            }
    message = str(update.get("message", rung.message))
    if hint and not message.startswith("not judged"):
        update["message"] = f"{message}; {hint}"
    return rung.model_copy(update=update)
