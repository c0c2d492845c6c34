"""PyTorch eager CPU reference for bench_engines.py; runs in an interpreter that has torch.

It rebuilds the two models the way a PyTorch user would run them: EfficientNet-Lite0 as an
nn.Module loading the package's checkpoint with ``torch.load`` (TF "same" padding, BN eps 1e-3,
ReLU6), all-MiniLM-L6-v2 through ``transformers.BertModel`` with sentence-transformers' mean
pooling and normalisation. Inputs come from, and outputs go back to, .npz files, so the bench
can check that the ONNX graphs infleet builds compute what PyTorch computes.

Usage: python torch_eager.py MODEL WEIGHTS IN.npz OUT.npz BATCH_LAT BATCH_THR SECONDS THREADS
Prints one JSON line: {"latency_ms": ..., "throughput": ...}.
"""

import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STAGES = [
    (1, 1, 1, 16),
    (2, 2, 6, 24),
    (2, 2, 6, 40),
    (3, 2, 6, 80),
    (3, 1, 6, 112),
    (4, 2, 6, 192),
    (1, 1, 6, 320),
]


class SameConvBN(nn.Module):
    def __init__(self, cin, cout, k, stride, groups, act):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.k, self.s, self.act = k, stride, act

    def forward(self, x):
        size = x.shape[-1]
        total = max((math.ceil(size / self.s) - 1) * self.s + self.k - size, 0)
        x = F.pad(x, [total // 2, total - total // 2, total // 2, total - total // 2])
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class Block(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.expand = SameConvBN(cin, hidden, 1, 1, 1, True) if expand != 1 else None
        self.dw = SameConvBN(hidden, hidden, k, stride, hidden, True)
        self.project = SameConvBN(hidden, cout, 1, 1, 1, False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, state):
        super().__init__()
        self.stem = SameConvBN(3, 32, 3, 2, 1, True)
        blocks, cin, i = [], 32, 0
        for repeats, stride, expand, cout in STAGES:
            for r in range(repeats):
                k = state[f"_blocks.{i}._depthwise_conv.weight"].shape[-1]
                blocks.append(Block(cin, cout, k, stride if r == 0 else 1, expand))
                cin, i = cout, i + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = SameConvBN(320, 1280, 1, 1, 1, True)
        self.fc = nn.Linear(1280, 1000)
        self._load(state)

    def _load(self, state):
        def conv_bn(mod, conv, bn):
            mod.conv.weight.data.copy_(state[f"{conv}.weight"])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(mod.bn, name).data.copy_(state[f"{bn}.{name}"])

        conv_bn(self.stem, "_conv_stem", "_bn0")
        for i, b in enumerate(self.blocks):
            p = f"_blocks.{i}"
            if b.expand is not None:
                conv_bn(b.expand, f"{p}._expand_conv", f"{p}._bn0")
            conv_bn(b.dw, f"{p}._depthwise_conv", f"{p}._bn1")
            conv_bn(b.project, f"{p}._project_conv", f"{p}._bn2")
        conv_bn(self.head, "_conv_head", "_bn1")
        self.fc.weight.data.copy_(state["_fc.weight"])
        self.fc.bias.data.copy_(state["_fc.bias"])

    def forward(self, image):
        x = self.head(self.blocks(self.stem(image)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MiniLM(nn.Module):
    def __init__(self, model_dir):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def timed(fn, seconds, min_iters=5):
    fn()
    samples = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_iters or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def main(argv):
    model, weights, inputs, outputs, b_lat, b_thr, seconds, threads = argv
    torch.set_num_threads(int(threads))
    if model == "efficientnet-lite0":
        net = EfficientNetLite0(torch.load(weights, map_location="cpu", weights_only=False)).eval()
    else:
        net = MiniLM(weights).eval()
    data = {k: torch.from_numpy(v) for k, v in np.load(inputs).items()}
    with torch.inference_mode():
        np.savez(outputs, out=net(**data).numpy())

        def run(batch):
            feeds = {k: v[:batch] for k, v in data.items()}
            return lambda: net(**feeds)

        lat = timed(run(int(b_lat)), float(seconds))
        thr = timed(run(int(b_thr)), float(seconds))
    print(json.dumps({"latency_ms": lat * 1e3, "throughput": int(b_thr) / thr}))


if __name__ == "__main__":
    main(sys.argv[1:])
