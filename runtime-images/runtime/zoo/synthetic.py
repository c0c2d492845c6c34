"""Small random graphs for tests: dynamic batch, open spatial dims, several dtypes, and an
unsupported op."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from infleet.runtime.zoo._graph import GraphBuilder
from infleet.runtime.zoo.efficientnet import _save


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def mlp(out: Path, seed: int = 0, features: int = 64, classes: int = 10) -> Path:
    """x FP32 [batch, features] -> y FP32 [batch, classes]: two dense layers with ReLU."""
    from onnx import TensorProto, helper

    r = _rng(seed)
    g = GraphBuilder()
    h = g.op(
        "Relu",
        g.op(
            "Add",
            g.op(
                "MatMul", "x", g.const(r.standard_normal((features, 128)).astype(np.float32) * 0.1)
            ),
            g.const(r.standard_normal(128).astype(np.float32) * 0.1),
        ),
    )
    g.op(
        "Add",
        g.op("MatMul", h, g.const(r.standard_normal((128, classes)).astype(np.float32) * 0.1)),
        g.const(r.standard_normal(classes).astype(np.float32)),
    )
    g.nodes[-1].output[0] = "y"
    model = g.model(
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
    )
    _save(model, out)
    return out


def small_cnn(out: Path, seed: int = 0) -> Path:
    """image FP32 [batch, 3, 32, 32] -> logits FP32 [batch, 10]; flattens through a
    Shape/Gather/Concat/Reshape subgraph, as exported models do."""
    from onnx import TensorProto, helper

    r = _rng(seed)
    g = GraphBuilder()
    x = "image"
    for cin, cout in ((3, 16), (16, 32)):
        w = (r.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        x = g.op(
            "Relu",
            g.op(
                "Conv",
                x,
                g.const(w),
                g.const(r.standard_normal(cout).astype(np.float32) * 0.1),
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            ),
        )
    x = g.flatten_batch(g.op("GlobalAveragePool", x))
    g.op(
        "Gemm",
        x,
        g.const(r.standard_normal((10, 32)).astype(np.float32)),
        g.const(np.zeros(10, np.float32)),
        transB=1,
    )
    g.nodes[-1].output[0] = "logits"
    model = g.model(
        "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    _save(model, out)
    return out


def conv_bn_relu(out: Path, opset: int, seed: int = 0) -> Path:
    """image FP32 [batch, 3, 32, 32] -> logits FP32 [batch, 10], written at ``opset``: two
    Conv+BatchNormalization+Relu blocks, global pooling, Flatten, Gemm, as exporters write
    classifiers at opsets 11-17 (paddle2onnx and older torch.onnx default to 11-12).

    Each convolution's output channels have weight scales spread over three decades, so one
    scale per tensor would flatten the small channels to zero: INT8 needs per-channel (per-axis)
    QDQ here, which exists from opset 13 on.
    """
    from onnx import TensorProto, helper

    r = _rng(seed)
    g = GraphBuilder()
    x = "image"
    for cin, cout in ((3, 8), (8, 16)):
        spread = np.logspace(-2, 1, cout).reshape(-1, 1, 1, 1)
        w = r.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9)) * spread
        conv = g.op("Conv", x, g.const(w), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        bn = g.op(
            "BatchNormalization",
            conv,
            g.const(r.uniform(0.5, 2.0, cout)),  # scale
            g.const(r.standard_normal(cout) * 0.1),  # bias
            g.const(r.standard_normal(cout) * 0.1 * spread.ravel()),  # running mean
            g.const(r.uniform(0.5, 2.0, cout) * spread.ravel() ** 2),  # running variance
        )
        x = g.op("Relu", bn)
    x = g.op("Flatten", g.op("GlobalAveragePool", x), axis=1)
    g.op("Gemm", x, g.const(r.standard_normal((10, 16))), g.const(np.zeros(10)), transB=1)
    g.nodes[-1].output[0] = "logits"
    model = g.model(
        f"conv_bn_relu_opset{opset}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        opset=opset,
    )
    _save(model, out)
    return out


def faint_detector(out: Path, seed: int = 0) -> Path:
    """pixels FP32 [batch, 3, 16, 16] (raw 0-255 values) -> heatmap FP32 [batch, 1, 16, 16]:
    a conv, ReLU, a 1x1 conv with a strongly negative bias and a sigmoid, like a text
    detector's probability map.

    On real images (``pixels()``) the map spans (0, 1). On synthetic standard-normal inputs the
    pre-activation sits near -16, where the sigmoid is about 1e-7 everywhere: a degenerate
    reference, on which onnxruntime's own optimisation levels already differ by a cosine
    deviation near 1e-3 (its sigmoid kernel's absolute error is ~1e-8).
    """
    from onnx import TensorProto, helper

    r = _rng(seed)
    g = GraphBuilder()
    w = 0.002 + 0.01 * r.standard_normal((8, 3, 3, 3))
    h = g.op("Relu", g.op("Conv", "pixels", g.const(w), kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    logit = g.op(
        "Conv", h, g.const(np.ones((1, 8, 1, 1))), g.const(np.array([-16.0])), kernel_shape=[1, 1]
    )
    g.op("Sigmoid", logit)
    g.nodes[-1].output[0] = "heatmap"
    model = g.model(
        "faint_detector",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["batch", 1, 16, 16])],
    )
    _save(model, out)
    return out


def pixels(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` images as a detector sees them: smooth blobs of raw 0-255 pixel values."""
    r = _rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        cy, cx, width = r.uniform(0.2, 0.8), r.uniform(0.2, 0.8), r.uniform(0.1, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
        for c in range(3):
            images[i, c] = np.clip(
                255 * blob * r.uniform(0.5, 1.0) + r.normal(0, 8, blob.shape), 0, 255
            )
    return images


def open_spatial_cnn(out: Path, seed: int = 0) -> Path:
    """x FP32 [N, 3, ?, ?] -> softmax FP32 [N, 2]: a text-direction classifier as paddle2onnx
    exports one (PaddleOCR's), whose height and width are open and both named ``?``.

    Two strided convolutions, global average pooling, a dense layer and a softmax: any height
    and width run, and the output depends on both (the real model reads 48x192 crops).
    """
    from onnx import TensorProto, helper

    r = _rng(seed)
    g = GraphBuilder()
    x = "x"
    for cin, cout in ((3, 8), (8, 16)):
        w = (r.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        x = g.op(
            "Relu",
            g.op(
                "Conv",
                x,
                g.const(w),
                g.const(r.standard_normal(cout).astype(np.float32) * 0.1),
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            ),
        )
    x = g.flatten_batch(g.op("GlobalAveragePool", x))
    logits = g.op(
        "Gemm",
        x,
        g.const(r.standard_normal((2, 16)).astype(np.float32)),
        g.const(np.zeros(2, np.float32)),
        transB=1,
    )
    g.op("Softmax", logits, axis=1)
    g.nodes[-1].output[0] = "softmax"
    model = g.model(
        "text_direction",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "?", "?"])],
        [helper.make_tensor_value_info("softmax", TensorProto.FLOAT, ["N", 2])],
    )
    _save(model, out)
    return out


def mixed_dtypes(out: Path, seed: int = 0) -> Path:
    """ids INT32 [batch, 8], scale FP16 [batch, 1] -> scores FP16 [batch, 4], label INT64 [batch].

    An embedding lookup (Gather), FP16 arithmetic and an ArgMax: integer, half and float paths.
    """
    from onnx import TensorProto, helper

    r = _rng(seed)
    g = GraphBuilder()
    table = r.standard_normal((100, 4)).astype(np.float32)
    emb = g.op("Gather", g.const(table), "ids", axis=0)  # [batch, 8, 4]
    pooled = g.op(
        "ReduceMean", emb, g.const(np.array([1], np.int64)), keepdims=0
    )  # opset 18 form avoided below
    g.nodes[-1].input.pop()  # ReduceMean takes axes as an attribute before opset 18
    g.nodes[-1].attribute.append(helper.make_attribute("axes", [1]))
    half = g.op("Cast", pooled, to=TensorProto.FLOAT16)
    g.op("Mul", half, "scale")
    g.nodes[-1].output[0] = "scores"
    g.op("ArgMax", "scores", axis=1, keepdims=0)
    g.nodes[-1].output[0] = "label"
    model = g.model(
        "mixed_dtypes",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 8]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT16, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT16, ["batch", 4]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
    )
    _save(model, out)
    return out


def unsupported_op(out: Path) -> Path:
    """x FP32 [batch, 4] -> y through an operator of a custom domain no backend implements."""
    from onnx import TensorProto, helper

    g = GraphBuilder()
    g.nodes.append(helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example"))
    model = g.model(
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    _save(model, out)
    return out
