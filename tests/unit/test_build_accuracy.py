"""The accuracy gate's metrics and budget rules."""

from __future__ import annotations

import numpy as np
import pytest

from infleet.api import AccuracyMetric, JudgedOn, Precision
from infleet.runtime.accuracy import (
    Budget,
    Reference,
    degenerate,
    deviation,
    judge,
    needs_noise,
    output_deviations,
    verdict,
    worst_deviation,
)

REF = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)


def test_identical_outputs_deviate_by_zero() -> None:
    for metric in AccuracyMetric:
        assert deviation(metric, REF, REF.copy()) == pytest.approx(0.0, abs=1e-12)


def test_max_abs_error() -> None:
    cand = REF.copy()
    cand[1, 2] += 0.25
    assert deviation(AccuracyMetric.MAX_ABS_ERROR, REF, cand) == pytest.approx(0.25)


def test_top1_is_the_fraction_of_changed_argmax() -> None:
    cand = REF.copy()
    cand[0] = [3.0, 2.0, 1.0]  # row 0's arg-max moves; row 1's stays
    assert deviation(AccuracyMetric.TOP1, REF, cand) == 0.5


def test_cosine_is_the_worst_row() -> None:
    cand = REF.copy()
    cand[1] = -cand[1]  # opposite direction: 1 - cos = 2
    assert deviation(AccuracyMetric.COSINE, REF, cand) == pytest.approx(2.0)
    assert deviation(AccuracyMetric.COSINE, REF, REF * 3) == pytest.approx(0.0, abs=1e-12)


def test_cosine_of_zero_rows() -> None:
    zeros = np.zeros((1, 3))
    assert deviation(AccuracyMetric.COSINE, zeros, zeros) == 0.0
    assert deviation(AccuracyMetric.COSINE, zeros, np.ones((1, 3))) == 1.0


def test_shape_mismatch_is_infinitely_wrong() -> None:
    assert deviation(AccuracyMetric.MAX_ABS_ERROR, REF, REF[:1]) == float("inf")


def test_integer_outputs_must_match_exactly() -> None:
    labels = np.array([1, 2])
    assert worst_deviation(AccuracyMetric.COSINE, [REF, labels], [REF, labels]) == 0.0
    assert worst_deviation(AccuracyMetric.COSINE, [REF, labels], [REF, labels + 1]) == float("inf")


def test_budget_rules() -> None:
    none = Budget(AccuracyMetric.COSINE, None)
    assert none.limit(Precision.INT8) is None and none.limit(Precision.FP8) is None
    assert none.limit(Precision.FP16) == 1e-3 and none.limit(Precision.FP32) == 1e-3
    tight = Budget(AccuracyMetric.COSINE, 1e-4)
    assert tight.limit(Precision.INT8) == 1e-4


def test_verdict_reports_measured_deviation_and_budget() -> None:
    rung = verdict(Budget(AccuracyMetric.COSINE, 1e-4), Precision.INT8, 2.5e-3)
    assert not rung.passed and rung.deviation == 2.5e-3
    assert "0.0025" in rung.message and "0.0001" in rung.message


# --- degenerate references and the noise floor ------------------------------------------

RNG = np.random.default_rng(0)
FAINT = (1e-7 * RNG.random((8, 1, 4, 4))).astype(np.float32)  # a sigmoid map on noise
LIVE = RNG.random((8, 10)).astype(np.float32)


def test_near_zero_and_near_constant_outputs_are_degenerate() -> None:
    assert degenerate(FAINT) is not None and "over 8 samples" in str(degenerate(FAINT))
    same = np.tile(RNG.random((1, 10)).astype(np.float32), (8, 1))
    assert "the same for all 8 samples" in str(degenerate(same))
    assert degenerate(LIVE) is None
    assert degenerate(same[:1]) is None  # one sample cannot show a constant
    assert degenerate(np.array([[1, 2]], np.int64) * 0) is None  # integers compare exactly


def test_hint_names_the_output_and_the_fix() -> None:
    ref = Reference.of(["scores", "heatmap"], [LIVE, FAINT], JudgedOn.SYNTHETIC)
    assert list(ref.degenerate) == ["heatmap"]
    assert ref.hint().startswith(
        "synthetic inputs give a degenerate reference for output heatmap ("
    )
    assert ref.hint().endswith("give validation data (--validation, spec.accuracy.validation)")
    real = Reference.of(["heatmap"], [FAINT], JudgedOn.REAL)
    assert real.hint().startswith("the validation data give a degenerate reference")
    assert Reference.of(["scores"], [LIVE], JudgedOn.REAL).hint() == ""


def test_reduced_precision_is_not_judged_on_a_degenerate_reference() -> None:
    ref = Reference.of(["heatmap"], [FAINT], JudgedOn.SYNTHETIC)
    # max-abs-error would pass anything next to values of 1e-7: the rung is not judged at all.
    rung = judge(Budget(AccuracyMetric.MAX_ABS_ERROR, 0.01), Precision.INT8, ref, [1e-7])
    assert not rung.passed and rung.message.startswith("not judged: synthetic inputs give")
    assert rung.judged_on == JudgedOn.SYNTHETIC and rung.deviation == 1e-7


def test_fp32_within_the_noise_floor_passes_and_says_so() -> None:
    budget = Budget(AccuracyMetric.COSINE, 1e-4)
    ref = Reference.of(["heatmap"], [FAINT], JudgedOn.SYNTHETIC)
    assert needs_noise(budget, Precision.FP32, [1.5e-3])
    assert not needs_noise(budget, Precision.FP32, [5e-5])
    assert not needs_noise(budget, Precision.INT8, [1.5e-3])
    rung = judge(budget, Precision.FP32, ref, [1.5e-3], noise=[1.0e-3])
    assert rung.passed and rung.noise == 1.0e-3
    assert "over budget 0.0001 but within 2x onnxruntime's own noise" in rung.message
    assert "degenerate reference for output heatmap" in rung.message
    assert rung.admits(1e-4)  # what the operator checks again under a later budget


def test_fp32_beyond_the_noise_floor_fails() -> None:
    budget = Budget(AccuracyMetric.COSINE, 1e-4)
    ref = Reference.of(["scores", "heatmap"], [LIVE, FAINT], JudgedOn.REAL)
    # heatmap is within its noise, scores is over budget with no noise of its own: fail.
    rung = judge(budget, Precision.FP32, ref, [5e-3, 1.5e-3], noise=[0.0, 1.0e-3])
    assert not rung.passed and rung.deviation == 5e-3 and rung.judged_on == JudgedOn.REAL
    assert not rung.admits(1e-4)
    int8 = judge(budget, Precision.INT8, Reference.of(["s"], [LIVE], JudgedOn.REAL), [5e-5])
    assert int8.passed and int8.noise is None and int8.message.endswith("within budget 0.0001")


def test_output_deviations_are_per_output() -> None:
    labels = np.array([1, 2])
    devs = output_deviations(AccuracyMetric.MAX_ABS_ERROR, [REF, labels], [REF + 0.5, labels])
    assert devs == [pytest.approx(0.5), 0.0]
    assert output_deviations(AccuracyMetric.COSINE, [REF], []) == [float("inf")]


def test_on_real_data_a_degenerate_output_is_named_but_the_data_decide() -> None:
    anchors = np.tile(RNG.random((1, 8)).astype(np.float32), (8, 1))
    assert Reference.of(["anchors"], [anchors], JudgedOn.REAL).degenerate == {}
    assert "anchors" in Reference.of(["anchors"], [anchors], JudgedOn.SYNTHETIC).degenerate
    faint = Reference.of(["heatmap"], [FAINT], JudgedOn.REAL)
    assert faint.degenerate and faint.judges_reduced
    rung = judge(Budget(AccuracyMetric.COSINE, 0.01), Precision.INT8, faint, [0.02])
    assert not rung.passed and rung.message.startswith("cosine deviation 0.02 over budget 0.01")
    assert "the validation data give a degenerate reference for output heatmap" in rung.message
