"""Which error a failed build reports: chosen by the exception's class and the build step,
never by sniffing a message (third-party or our own)."""

from __future__ import annotations

import pytest

from infleet.api import Backend, Precision, RungResult
from infleet.runtime.build import _Candidate, _no_engine
from infleet.runtime.errors import (
    AccuracyGateFailed,
    BuildError,
    ModelError,
    UnsupportedModel,
)


def test_onnxruntime_errors_map_by_type() -> None:
    pytest.importorskip("onnxruntime")
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    from infleet.runtime.builders.onnxruntime import _wrap

    assert type(_wrap(state.NotImplemented("no kernel for Foo(19)"), "loading")) is UnsupportedModel
    assert type(_wrap(NotImplementedError("int4"), "quantising")) is UnsupportedModel
    assert type(_wrap(state.InvalidGraph("bad edge"), "loading")) is ModelError
    # The words do not decide: a generic failure that mentions NOT_IMPLEMENTED stays one.
    generic = _wrap(state.Fail("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : looks like it"), "x")
    assert type(generic) is BuildError and "onnxruntime, x:" in str(generic)


def test_tvm_errors_map_by_type_and_step() -> None:
    tvm = pytest.importorskip("tvm")
    from infleet.runtime.builders.tvm import _wrap

    refused = _wrap(ValueError("Unsqueeze requires a statically known input rank."), "importing",
                    importing=True)  # fmt: skip
    assert type(refused) is UnsupportedModel
    assert type(_wrap(tvm.error.OpNotImplemented("op Foo"), "compiling")) is UnsupportedModel
    assert type(_wrap(NotImplementedError("sve gather"), "compiling")) is UnsupportedModel
    failed = _wrap(ValueError("Traceback ...\n  3: foo\nValueError: not supported here"), "x")
    assert type(failed) is BuildError and str(failed) == "tvm, x: ValueError: not supported here"


def _rung(deviation: float | None, message: str = "m") -> RungResult:
    return RungResult(precision=Precision.FP32, deviation=deviation, passed=False, message=message)


def test_no_engine_is_unsupported_only_when_every_failure_says_so() -> None:
    ops = UnsupportedModel("tvm cannot run the operators Foo")
    also = UnsupportedModel("onnxruntime, optimising: no kernel")
    err = _no_engine([
        _Candidate(Backend.TVM, failures=[ops]),
        _Candidate(Backend.ONNXRUNTIME, rungs=[_rung(None)], failures=[also]),
    ])  # fmt: skip
    assert type(err) is UnsupportedModel and "tvm cannot run the operators Foo" in str(err)
    mixed = _no_engine([
        _Candidate(Backend.TVM, failures=[ops]),
        _Candidate(Backend.ONNXRUNTIME, rungs=[_rung(None)], failures=[BuildError("crash")]),
    ])  # fmt: skip
    assert type(mixed) is BuildError


def test_no_engine_is_the_gate_when_a_rung_was_measured() -> None:
    err = _no_engine([_Candidate(Backend.ONNXRUNTIME, rungs=[_rung(0.5, "over budget 0.01")])])
    assert type(err) is AccuracyGateFailed and "over budget 0.01" in str(err)


def test_no_engine_when_every_rung_was_skipped() -> None:
    skipped = _rung(None, "skipped: int8 is tried only with accuracy.maxDeviation")
    err = _no_engine([_Candidate(Backend.ONNXRUNTIME, rungs=[skipped])])
    assert type(err) is BuildError and "tried only with accuracy.maxDeviation" in str(err)
