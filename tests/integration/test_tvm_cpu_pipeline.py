"""The TVM builder's CPU pipeline on real graphs: every fused function gets a schedule (none is
left as TVM's unscheduled single-threaded loop nest, the cause of 50-120x slower engines), the
convolutions run in NHWC with their activation fused, and the compiled module computes what
ONNX Runtime computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infleet.runtime.onnxmodel import fix_shapes_and_fold, load_model
from infleet.runtime.zoo import minilm_l6, synthetic

pytestmark = pytest.mark.integration
tvm = pytest.importorskip("tvm")


def _prepared(model: Path, shapes: dict[str, list[int]], work: Path):
    from infleet.runtime.builders.tvm import import_module

    path = fix_shapes_and_fold(
        load_model(model), {k: tuple(v) for k, v in shapes.items()}, work / "b.onnx"
    )
    return import_module({shapes[next(iter(shapes))][0]: (str(path), shapes)}), path


def _scheduled(mod, target):
    """The module after the pipeline's Relax passes and schedule rules (no lowering)."""
    from tvm.s_tir import dlight as dl

    from infleet.runtime.builders import tvm_cpu

    with target:
        mod = tvm.transform.Sequential(tvm_cpu.relax_passes(target))(mod)
        return mod, dl.ApplyDefaultSchedule(*tvm_cpu.default_rules())(mod)


def _unscheduled(mod) -> list[str]:
    return [
        gv.name_hint
        for gv, f in mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)
    ]


def _ort(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from infleet.runtime.builders.onnxruntime import reference_outputs

    return reference_outputs(model, feeds, threads=2)[0]


def _run(mod, target, feeds: list[np.ndarray]) -> np.ndarray:
    from infleet.runtime.builders import tvm_cpu

    ex = tvm.compile(mod, target=target, relax_pipeline=tvm_cpu.pipeline(target))
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    out = vm[next(gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.startswith("main"))](
        *[tvm.runtime.tensor(a) for a in feeds]
    )
    return (out if hasattr(out, "numpy") else out[0]).numpy()


TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3", "num-cores": 2}


def test_conv_net_is_fully_scheduled_in_nhwc_and_matches_ort(tmp_path: Path) -> None:
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    mod, _ = _prepared(model, {"image": [2, 3, 32, 32]}, tmp_path)
    target = tvm.target.Target(TARGET)
    fused, scheduled = _scheduled(mod, target)
    convs = [gv.name_hint for gv in fused.get_global_vars() if "conv2d" in gv.name_hint]
    assert convs, "no fused convolution"
    assert all("nhwc" in fused[c].script() for c in convs)
    assert _unscheduled(scheduled) == []
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = _run(mod, target, [x])
    np.testing.assert_allclose(got, _ort(model, {"image": x}), rtol=1e-4, atol=1e-4)


def test_transformer_is_fully_scheduled_and_matches_ort(tmp_path: Path) -> None:
    model = minilm_l6(tmp_path / "minilm.onnx")
    shapes = {"input_ids": [1, 16], "attention_mask": [1, 16]}
    mod, _ = _prepared(model, shapes, tmp_path)
    target = tvm.target.Target(TARGET)
    _, scheduled = _scheduled(mod, target)
    assert _unscheduled(scheduled) == []
    ids = np.random.default_rng(1).integers(1000, 30000, (1, 16)).astype(np.int64)
    mask = np.ones((1, 16), np.int64)
    got = _run(mod, target, [ids, mask])
    want = _ort(model, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
