"""The opt-in IOBinding / CUDA-graph path of the ORT CUDA engine: its switch and which
sessions it can take (the binding itself needs a GPU: bench/bench_serve.py measured it)."""

from __future__ import annotations

import pytest

from infleet.runtime.manifest import TensorSpec
from infleet.runtime.server.engines import ort_cuda_bound as b


def test_mode_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    for off in ("", "0", "off"):
        monkeypatch.setenv(b.ENV, off)
        assert b.mode() is None
    monkeypatch.setenv(b.ENV, "graph")
    assert b.mode() == "graph" and b.pool_size(graph=True) == 1
    monkeypatch.setenv(b.ENV, "iobinding")
    monkeypatch.setenv("INFLEET_ORT_CUDA_BINDINGS", "3")
    assert b.mode() == "iobinding" and b.pool_size(graph=False) == 3
    monkeypatch.setenv(b.ENV, "cudagraph")
    with pytest.raises(ValueError, match="is not one of off, iobinding, graph"):
        b.mode()


def test_only_fully_fixed_shapes_are_bound() -> None:
    x = TensorSpec(name="x", datatype="FP32", shape=[-1, 3, 48, 192])
    y = TensorSpec(name="y", datatype="FP32", shape=[-1, 10])
    seq = TensorSpec(name="ids", datatype="INT64", shape=[-1, -1])
    text = TensorSpec(name="t", datatype="BYTES", shape=[-1])
    assert b.fixed_shape(x, 16) == [16, 3, 48, 192]
    assert b.fixed_shape(seq, 16) is None
    assert b.BoundSession.possible(16, [x], [y])
    assert not b.BoundSession.possible(16, [seq], [y])
    assert not b.BoundSession.possible(1, [text], [y])
