"""Turn the engine profiles `bench/gpu_onnxruntime.py` measured on a GPU machine into the
profile fixtures the planner tests and the autoscaler's simulator read
(tests/fixtures/profiles/MODEL-ort-cuda-PRECISION-CLASS.json).

    python hack/device/profiles.py gpu.json --class nvidia-h200 --out tests/fixtures/profiles
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def fixtures(result: dict[str, Any], node_class: str, seconds: float
             ) -> dict[str, dict[str, Any]]:
    """One fixture per model and kept precision, named for the file it goes into."""
    out: dict[str, dict[str, Any]] = {}
    for model, ladders in result["build"].items():
        for ladder, built in ladders.items():
            if "profile" not in built:
                continue
            precision = built["precision"]
            # The GPU engine pads every batch above 1 to the build's max batch: a profile
            # holds for deployments of that maxBatchSize (16 unless the name says -bN).
            top = built["key"]["max_batch_size"]
            suffix = "" if top == 16 else f"-b{top}"
            name = (f"{model}-ort-cuda-{precision}-{node_class.removeprefix('nvidia-')}"
                    f"{suffix}.json")
            out[name] = {
                "model": model,
                "class": node_class,
                "backend": "onnxruntime",
                "precision": precision,
                "measured": True,
                "source": (
                    f"Measured by `infleet build --model file://{model}.onnx --class "
                    f"{node_class} --backend onnxruntime --precision-ladder {ladder} "
                    f"--max-batch {top} --profile-seconds {seconds:g}` through "
                    f"bench/gpu_onnxruntime.py "
                    f"(hack/device/gpu.sh run, STEPS=ort) on {result['gpu']}, onnxruntime-gpu "
                    f"{result['onnxruntime']} (CUDAExecutionProvider), model written by "
                    f"infleet.runtime.zoo; engine {built['engine_key']}, deviation "
                    f"{built['accuracy'][-1]['deviation']:.3g} (cosine, synthetic inputs). "
                    "The engine runs single rows in one session and pads larger batches to "
                    f"{top} in another, so batches of 2 to {top} cost about the same."),
                "points": [{"batchSize": p["batch_size"], "p50Ms": p["p50_ms"],
                            "p99Ms": p["p99_ms"], "throughputIps": p["throughput_ips"]}
                           for p in built["profile"]],
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, help="gpu.json written by bench/gpu_onnxruntime.py")
    ap.add_argument("--class", dest="node_class", default="nvidia-h200")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/profiles"))
    ap.add_argument("--profile-seconds", type=float, default=0.3,
                    help="what the run's PROFILE_SECONDS was (for the fixtures' source)")
    args = ap.parse_args()
    for name, body in fixtures(json.loads(args.result.read_text()), args.node_class,
                               args.profile_seconds).items():
        (args.out / name).write_text(json.dumps(body, indent=2) + "\n")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
