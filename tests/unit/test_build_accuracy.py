"""The accuracy gate's metrics and budget rules."""

from __future__ import annotations

import numpy as np
import pytest

from infleet.api import AccuracyMetric, Precision
from infleet.runtime.accuracy import Budget, deviation, verdict, worst_deviation

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
