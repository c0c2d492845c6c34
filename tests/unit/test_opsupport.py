"""Operator support per backend, asked of the real libraries before any build: ONNX Runtime's
kernel registry, TVM's Relax importer table; TensorRT's parser where tensorrt imports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # part of CI's install; never skips there

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from infleet.api import Backend  # noqa: E402
from infleet.runtime.errors import ModelError  # noqa: E402
from infleet.runtime.opsupport import check, model_ops  # noqa: E402


def _model(path: Path, node: onnx.NodeProto, *, extra_domains: tuple[str, ...] = ()) -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[w],
    )
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in extra_domains)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_ort_contrib_op_is_fine_for_ort_and_named_for_tvm(tmp_path: Path) -> None:
    fused = helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft")
    support = check(_model(tmp_path / "m.onnx", fused, extra_domains=("com.microsoft",)))
    assert support.unsupported[Backend.ONNXRUNTIME] == ()
    assert support.unsupported[Backend.TVM] == ("com.microsoft:FusedMatMul",)


def test_standard_ops_pass_everywhere_they_are_checked(tmp_path: Path) -> None:
    support = check(_model(tmp_path / "m.onnx", helper.make_node("MatMul", ["x", "w"], ["y"])))
    assert support.unsupported == {Backend.ONNXRUNTIME: (), Backend.TVM: ()} | (
        {Backend.TENSORRT: ()} if Backend.TENSORRT in support.unsupported else {}
    )


def test_a_backend_that_is_not_installed_is_unchecked_not_supported(tmp_path: Path) -> None:
    support = check(_model(tmp_path / "m.onnx", helper.make_node("MatMul", ["x", "w"], ["y"])))
    if importlib.util.find_spec("tensorrt") is None:
        assert Backend.TENSORRT not in support.unsupported
        why = support.unchecked[Backend.TENSORRT]
        assert "tensorrt nor tensorrt_rtx_bindings can be imported" in why
    else:
        assert Backend.TENSORRT in support.unsupported


def test_ops_inside_subgraphs_are_found(tmp_path: Path) -> None:
    branch = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["z"], domain="example.com")],
        "then",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z2"])],
        "else",
        [],
        [helper.make_tensor_value_info("z2", TensorProto.FLOAT, ["n", 4])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)
    path = _model(tmp_path / "m.onnx", node, extra_domains=("example.com",))
    assert ("example.com", "Frobnicate") in model_ops(path)
    support = check(path, (Backend.ONNXRUNTIME, Backend.TVM))
    for backend in (Backend.ONNXRUNTIME, Backend.TVM):
        assert "example.com:Frobnicate" in support.unsupported[backend]


def test_calls_of_the_models_own_functions_count_as_their_bodies(tmp_path: Path) -> None:
    # torch.onnx (dynamo) exports wrap ops in local functions of a domain of its own.
    body = helper.make_function(
        "pkg.example", "Gelu2", ["a"], ["b"],
        [helper.make_node("Erf", ["a"], ["e"]), helper.make_node("Mul", ["a", "e"], ["b"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    node = helper.make_node("Gelu2", ["x"], ["y"], domain="pkg.example")
    path = tmp_path / "m.onnx"
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("pkg.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, functions=[body]), str(path))
    assert model_ops(path) == {("", "Erf"), ("", "Mul")}
    support = check(path, (Backend.ONNXRUNTIME, Backend.TVM))
    assert support.unsupported == {Backend.ONNXRUNTIME: (), Backend.TVM: ()}


def test_a_file_that_is_not_onnx_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"\x00\x01 not a protobuf \xff" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        model_ops(bad)


def test_the_kernel_list_read_in_a_child_is_the_one_read_here() -> None:
    # The GPU build of onnxruntime is asked in a child process (its registry walk can crash);
    # on this CPU build both ways run, and must agree kernel for kernel.
    from infleet.runtime.builders.onnxruntime import kernels_here, kernels_in_child

    here = kernels_here()
    assert ("", "Conv") in here and ("com.microsoft", "FusedMatMul") in here
    assert kernels_in_child() == here


def test_a_child_that_dies_leaves_the_op_check_to_the_session_load(tmp_path: Path) -> None:
    # Fault injected on purpose: a "python" that dies of SIGSEGV, as the GPU build did.
    from infleet.runtime.builders.onnxruntime import kernels_in_child

    crash = tmp_path / "python"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    assert kernels_in_child(str(crash)) is None
    assert kernels_in_child(str(tmp_path / "absent")) is None
