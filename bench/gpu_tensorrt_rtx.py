"""TensorRT-RTX as observed on this machine's GPU: what runs and what does not, in numbers.

CI has no GPU; hack/device/gpu.sh runs this on the lent H200 and its output is what the
README's TensorRT section quotes. Needs the tensorrt-rtx-cu13 wheels and, for the zoo models,
their ONNX files (``--models DIR``, as bench/gpu_onnxruntime.py takes them):

    python bench/gpu_tensorrt_rtx.py [--models DIR] [--json OUT]

Per model and build target (``SM89`` ahead of time, ``CURRENT`` = this GPU, and RTX's
defaults with no target set): parse seconds, build seconds (one dynamic-batch optimisation
profile 1 / 4 / max), plan bytes, the runtime's up-front validity verdict and diagnostics,
and what deserializing gave (an engine, or None with TensorRT's message). Then the same through
``infleet build --backend tensorrt`` for this GPU with the library forced to TensorRT-RTX: the
BuildFailure it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infleet.runtime.builders.tensorrt_lib import make_logger
from infleet.runtime.hardware import host_key
from infleet.runtime.zoo import synthetic

SEQ = 128


def plan_for(trt: Any, logger: Any, model: Path, target: str | None, max_batch: int) -> dict:
    row: dict[str, Any] = {"target": target or "default"}
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    ok = parser.parse_from_file(str(model))
    row["parse_s"] = round(time.perf_counter() - t0, 3)
    if not ok:
        row["parse_errors"] = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return row
    row["layers"] = network.num_layers
    config = builder.create_builder_config()
    if target is not None:
        config.num_compute_capabilities = 1
        row["target_set"] = bool(
            config.set_compute_capability(getattr(trt.ComputeCapability, target), 0)
        )
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = list(inp.shape)
        rest = [SEQ if d == -1 else d for d in dims[1:]]
        shapes[inp.name] = dims
        profile.set_shape(inp.name, [1, *rest], [4, *rest], [max_batch, *rest])
    row["inputs"] = shapes
    config.add_optimization_profile(profile)
    before = len(logger.messages)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    row["build_s"] = round(time.perf_counter() - t0, 3)
    if plan is None:
        row["build"] = "no plan: " + "; ".join(logger.messages[before:])[-600:]
        return row
    data = bytes(plan)
    row["plan_bytes"] = len(data)
    runtime = trt.Runtime(logger)
    before = len(logger.messages)
    validity, diagnostics = runtime.get_engine_validity(data)
    row["validity"] = validity.name
    row["diagnostics"] = [
        d.name
        for d in trt.EngineInvalidityDiagnostics.__members__.values()
        if int(diagnostics) & int(d.value)
    ]
    t0 = time.perf_counter()
    engine = runtime.deserialize_cuda_engine(data)
    row["deserialize_s"] = round(time.perf_counter() - t0, 3)
    row["engine"] = "loaded" if engine is not None else "None"
    row["said"] = "; ".join(logger.messages[before:])[-600:]
    return row


def forced_build(model: Path, cc: tuple[int, int], work: Path) -> dict:
    term = work / "term.json"
    cmd = [
        *(sys.executable, "-m", "infleet", "build", "--model", f"file://{model}"),
        *("--class", "nvidia-gpu", "--backend", "tensorrt", "--precision-ladder", "fp16,fp32"),
        *("--max-deviation", "0.01", "--compute-capability", f"{cc[0]}.{cc[1]}"),
        *("--store", str(work / "store"), "--termination-log", str(term)),
    ]
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "INFLEET_TENSORRT_IMPL": "tensorrt-rtx"},
    )
    out = {"exit": r.returncode, "seconds": round(time.perf_counter() - t0, 2)}
    out["termination_log"] = json.loads(term.read_text()) if term.is_file() else None
    out["traceback"] = "Traceback" in r.stderr
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", type=Path, help="folder with efficientnet-lite0.onnx, minilm-l6.onnx"
    )
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import tensorrt_rtx_bindings as trt

    key = host_key()
    cc = key.compute or (0, 0)
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    facts: dict[str, Any] = {
        "tensorrt_rtx": trt.__version__,
        "onnx_parser": str(trt.get_nv_onnx_parser_version()),
        "gpu": smi,
        "compute": f"{cc[0]}.{cc[1]}",
        "full_tensorrt_importable": _importable("tensorrt"),
        "models": {},
    }
    print(json.dumps({k: v for k, v in facts.items() if k != "models"}))
    logger = make_logger(trt)
    work = Path(tempfile.mkdtemp(prefix="rtx-"))
    models = {"small-cnn": synthetic.small_cnn(work / "cnn.onnx")}
    if args.models:
        for name in ("efficientnet-lite0", "minilm-l6"):
            if (args.models / f"{name}.onnx").is_file():
                models[name] = args.models / f"{name}.onnx"
    for name, path in models.items():
        rows = [plan_for(trt, logger, path, t, args.max_batch) for t in ("SM89", "CURRENT", None)]
        facts["models"][name] = rows
        for r in rows:
            print(f"{name:>20} {json.dumps(r)}")
    facts["forced_infleet_build"] = forced_build(models["small-cnn"], cc, work)
    print(
        "infleet build, INFLEET_TENSORRT_IMPL=tensorrt-rtx:",
        json.dumps(facts["forced_infleet_build"]),
    )
    if args.json:
        args.json.write_text(json.dumps(facts, indent=1))
    return 0


def _importable(module: str) -> str:
    try:
        __import__(module)
    except Exception as e:  # a stub package raises its own errors
        return f"no ({type(e).__name__}: {str(e)[:120]})"
    return "yes"


if __name__ == "__main__":
    sys.exit(main())
