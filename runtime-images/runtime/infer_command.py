"""``infleet infer``: send one Open Inference Protocol request to an endpoint and, given the
model file, check the answer against plain ONNX Runtime on this machine.

    infleet infer http://127.0.0.1:8080 efficientnet --host efficientnet.default.infleet.local \\
        --reference efficientnet-lite0.onnx --metric cosine --max-deviation 0.01

Inputs are deterministic sample data made from the model's metadata (``--seed``, ``--batch``).
Exit status 0 when the answer matches within the budget, 2 when it does not, 1 on any other
error (the endpoint unreachable, a non-200 answer, an output missing).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the endpoint: a gateway, a Service or a serving pod")
    parser.add_argument("model", help="the model name (the InferenceDeployment's spec.model.name)")
    parser.add_argument("--host", help="Host header (the host of the deployment's status.endpoint"
                        " when calling a gateway by address)")
    parser.add_argument("--batch", type=int, default=1, help="rows in the request (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample inputs")
    parser.add_argument("--shape", action="append", default=[], metavar="INPUT=D0,D1,...",
                        help="an input's whole shape, for free dimensions besides the batch")
    parser.add_argument("--binary", action="store_true",
                        help="send and receive tensors as binary data (the binary extension)")
    parser.add_argument("--reference", type=Path,
                        help="the ONNX model: run it with ONNX Runtime here and compare")
    parser.add_argument("--metric", choices=["top1", "cosine", "max-abs-error"], default="cosine",
                        help="how to compare with the reference (default cosine)")
    parser.add_argument("--max-deviation", type=float, default=0.01,
                        help="largest deviation accepted, in the metric's units (default 0.01)")


def run(args: argparse.Namespace) -> int:
    import httpx
    import numpy as np

    from infleet.api import AccuracyMetric
    from infleet.errors import InfleetError
    from infleet.runtime.accuracy import deviation
    from infleet.runtime.client import Client, sample_inputs
    from infleet.runtime.errors import EndpointError

    try:
        fixed = {name: [int(d) for d in dims.split(",")]
                 for name, _, dims in (s.partition("=") for s in args.shape)}
    except ValueError:
        raise InfleetError(f"--shape takes INPUT=D0,D1,... (got {args.shape})") from None
    try:
        with Client(args.url, args.model, host=args.host) as client:
            inputs = sample_inputs(client.inputs(), args.batch, args.seed, fixed)
            outputs = client.infer(inputs, binary=args.binary)
    except (EndpointError, ValueError) as e:
        raise InfleetError(str(e)) from e
    except httpx.HTTPError as e:
        raise InfleetError(f"cannot reach {args.url}: {e}") from e
    for name, array in inputs.items():
        print(f"input  {name}: {array.dtype} {list(array.shape)} (seed {args.seed})")
    for name, array in outputs.items():
        line = f"output {name}: {array.dtype} {list(array.shape)}"
        if array.dtype.kind == "f" and array.ndim == 2:
            top = np.argsort(array[0])[::-1][:5]
            line += "; row 0 top-5 " + ", ".join(f"{i} ({array[0, i]:.3f})" for i in top)
        print(line)
    if args.reference is None:
        return 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(args.reference), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise InfleetError(f"the answer lacks outputs {missing} of {args.reference}")
    metric = AccuracyMetric(args.metric)
    worst = 0.0
    for name, want in zip(names, session.run(names, inputs), strict=True):
        dev = deviation(metric, np.asarray(want), outputs[name])
        worst = max(worst, dev)
        print(f"check  {name}: {metric.value} deviation {dev:.3g} from ONNX Runtime FP32 here")
    if worst > args.max_deviation:
        print(f"MISMATCH: worst deviation {worst:.3g} > {args.max_deviation}")
        return 2
    print(f"OK: the answer matches the model (worst {metric.value} deviation {worst:.3g} "
          f"<= {args.max_deviation})")
    return 0
