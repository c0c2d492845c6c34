"""ONNX Runtime's CUDA execution provider end to end, on a machine with an NVIDIA GPU.

CI has no GPU: this is run by hand (hack/device/gpu.sh does it on a lent H100) and its
output is what the README's `infleet build` section quotes. It needs onnxruntime-gpu and the
two zoo models as ONNX files (written with `infleet.runtime.zoo` on a machine with the
`infleet[zoo]` weights; the GPU machine needs no network):

    python bench/gpu_onnxruntime.py --models DIR [--class nvidia-h100] [--seconds 2]

1. raw ORT, fresh process, no preloading: which provider a plain CUDA session really gets;
2. `infleet build --backend onnxruntime` for the GPU class, both models, ladders fp32 and
   fp16,fp32: precision kept, accuracy deviation against the FP32 CPU reference, profile
   p50/p99/throughput per batch size, the providers the engine was built and gated with;
3. `infleet serve --device gpu` on the EfficientNet engine: one Open Inference Protocol
   request (JSON tensors), its logits checked against the FP32 CPU reference, and the
   provider the server logged;
4. ORT CUDA (infleet's FP32 and FP16 engines) against ORT CPU (same model, optimiser on, all
   cores) in this process: batch-1 p50/p99 and batch-N throughput, and each row's deviation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from infleet import toolbox

MODELS = {
    "efficientnet-lite0": ("efficientnet-lite0.onnx", []),
    "minilm-l6": ("minilm-l6.onnx", ["--dim", "seq=128"]),
}
SEQ = 128

RAW_CHECK = """
import json, sys, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print(json.dumps({"available": ort.get_available_providers(), "used": s.get_providers()}))
"""


def infleet_cmd() -> list[str]:
    exe = shutil.which("infleet")
    return [exe] if exe else [sys.executable, "-m", "infleet"]


def inputs_for(name: str, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "efficientnet-lite0":
        return {"image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    ids = rng.integers(1000, 30522, (batch, SEQ))
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, SEQ), np.int64)}


def timed(fn, seconds: float, min_iters: int = 10) -> list[float]:
    fn()
    fn()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_iters or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def raw_check(model: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    r = subprocess.run(
        [sys.executable, "-c", RAW_CHECK, str(model)], capture_output=True, text=True, env=env
    )
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (r.stderr or r.stdout)[-800:]}


def build(name: str, path: Path, args: argparse.Namespace, ladder: str) -> dict:
    cmd = [
        *infleet_cmd(), "build", "--model", f"file://{path}", "--class", args.node_class,
        "--backend", "onnxruntime", "--precision-ladder", ladder, "--metric", "cosine",
        "--max-deviation", str(args.max_deviation), "--max-batch", str(args.max_batch),
        "--compute-capability", args.compute_capability, "--name", name,
        "--store", str(args.store), "--termination-log", str(args.work / f"{name}.term"),
        "--profile-seconds", str(args.profile_seconds), *MODELS[name][1],
    ]  # fmt: skip
    print("$", " ".join(cmd[len(infleet_cmd()) - 1 :]).replace(str(path.parent), "DIR"))
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if r.returncode != 0:
        print(f"  FAILED (exit {r.returncode}) after {took:.1f} s:\n{r.stderr[-2000:]}{r.stdout}")
        return {"failed": r.stdout.strip() or r.stderr[-500:]}
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    manifest = json.loads(
        (args.store / "engines" / summary["engine_key"] / "manifest.json").read_text()
    )
    opts = manifest["options"]
    print(f"  kept {summary['precision']} in {took:.1f} s; engine {summary['engine_key'][:12]}")
    print(f"  providers asked {opts.get('providers')}; built with {opts.get('providers_used')}")
    for rung in summary["accuracy"]:
        print(
            f"  gate {rung['precision']}: {'PASS' if rung['passed'] else 'FAIL'} "
            f"{rung.get('message', '')}"
        )
    print("  profile  batch   p50 ms   p99 ms   items/s")
    for p in summary["profile"]:
        print(
            f"           {p['batch_size']:5d} {p['p50_ms']:8.3f} {p['p99_ms']:8.3f} "
            f"{p['throughput_ips']:9.1f}"
        )
    for note in summary.get("notes", []):
        print(f"  note: {note}")
    return {
        "summary": summary,
        "engine": args.store / "engines" / summary["engine_key"] / manifest["engine_file"],
        "engine_dir": args.store / "engines" / summary["engine_key"],
        "seconds": took,
    }


def post(url: str, body: dict) -> dict:
    response = httpx.post(url, json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def serve_check(engine_dir: Path, model: Path, name: str, args: argparse.Namespace) -> bool:
    import onnxruntime as ort

    from infleet.api import AccuracyMetric
    from infleet.runtime.accuracy import deviation

    port = toolbox.free_port()
    log = args.work / "serve.log"
    cmd = [
        *infleet_cmd(), "serve", "--engine-dir", str(engine_dir), "--host", "127.0.0.1",
        "--port", str(port), "--device", "gpu",
    ]  # fmt: skip
    print("$", " ".join(cmd[len(infleet_cmd()) - 1 :]))
    log.unlink(missing_ok=True)
    proc = toolbox.spawn(cmd, log)
    try:
        base = f"http://127.0.0.1:{port}"

        def exited() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}")

        try:
            toolbox.wait_until(
                lambda: httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200,
                90, "the server to turn ready", abort=exited)
        except (RuntimeError, toolbox.WaitTimeout) as e:
            print(f"  {e}:\n{log.read_text()[-2000:]}")
            return False
        x = inputs_for(name, 4)["image"]
        body = {
            "id": "gpu-check",
            "inputs": [
                {"name": "image", "shape": list(x.shape), "datatype": "FP32",
                 "data": x.ravel().tolist()}
            ],
        }  # fmt: skip
        t0 = time.perf_counter()
        out = post(f"{base}/v2/models/{name}/infer", body)
        took = (time.perf_counter() - t0) * 1e3
        o = out["outputs"][0]
        got = np.asarray(o["data"], np.float32).reshape(o["shape"])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        ref = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        want = ref.run(None, {"image": x})[0]
        dev = deviation(AccuracyMetric.COSINE, want, got)
        top1 = bool((got.argmax(1) == want.argmax(1)).all())
        loaded = [ln for ln in log.read_text().splitlines() if "loaded on" in ln]
        print(f"  server: {loaded[-1].strip() if loaded else '(no load line in the log)'}")
        ok = top1 and dev < 1e-3 and o["datatype"] == "FP32" and o["shape"] == [4, 1000]
        print(
            f"  POST /v2/models/{name}/infer, 4 rows, JSON: {took:.1f} ms, output {o['name']} "
            f"{o['datatype']} {o['shape']}; cosine deviation vs FP32 CPU {dev:.2e}; top-1 "
            f"{'equal' if top1 else 'DIFFERENT'} ({got.argmax(1).tolist()}) -> "
            f"{'OK' if ok else 'MISMATCH'}"
        )
        return ok
    finally:
        toolbox.stop_groups([proc.pid], 15, {proc.pid: proc})


def bench(name: str, model: Path, engines: dict[str, Path], args: argparse.Namespace) -> list:
    import onnxruntime as ort

    from infleet.api import AccuracyMetric
    from infleet.runtime.accuracy import deviation

    one, big = inputs_for(name, 1), inputs_for(name, args.batch)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = os.cpu_count() or 1
    ref = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]).run(None, big)
    sessions = {}
    cpu = ort.SessionOptions()
    cpu.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cpu.intra_op_num_threads = os.cpu_count() or 1
    sessions[f"ORT CPU FP32 ({cpu.intra_op_num_threads} threads)"] = ort.InferenceSession(
        str(model), cpu, providers=["CPUExecutionProvider"]
    )
    for label, path in engines.items():
        gpu = ort.SessionOptions()
        gpu.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(
            str(path), gpu, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        sessions[f"{label} [{s.get_providers()[0].replace('ExecutionProvider', '')}]"] = s
    rows = []
    for label, s in sessions.items():
        lat = timed(lambda s=s: s.run(None, one), args.seconds)
        thr = timed(lambda s=s: s.run(None, big), args.seconds, min_iters=5)
        dev = deviation(AccuracyMetric.COSINE, ref[0], s.run(None, big)[0])
        rows.append(
            {
                "model": name,
                "engine": label,
                "b1_p50_ms": float(np.percentile(lat, 50) * 1e3),
                "b1_p99_ms": float(np.percentile(lat, 99) * 1e3),
                f"b{args.batch}_p50_ms": float(np.percentile(thr, 50) * 1e3),
                "items_per_s": args.batch / float(np.percentile(thr, 50)),
                "cosine_dev": dev,
            }
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, required=True, help="folder with the zoo's .onnx")
    p.add_argument("--work", type=Path, default=Path("/tmp/infleet-gpu"))
    p.add_argument("--class", dest="node_class", default="nvidia-h100")
    p.add_argument("--compute-capability", default="9.0")
    p.add_argument("--max-deviation", type=float, default=0.01)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--profile-seconds", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=2.0, help="per row and batch size")
    p.add_argument("--batch", type=int, default=32, help="throughput batch size")
    p.add_argument("--only", default="", help="comma list: raw,build,serve,bench")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    steps = set(args.only.split(",")) if args.only else {"raw", "build", "serve", "bench"}
    args.work.mkdir(parents=True, exist_ok=True)
    args.store = args.work / "store"
    import onnxruntime as ort

    smi = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    gpu = (
        subprocess.run(smi, capture_output=True, text=True).stdout.strip()
        if shutil.which("nvidia-smi")
        else ""
    )
    print(f"onnxruntime {ort.__version__} from {Path(ort.__file__).parent}")
    print(f"available providers: {ort.get_available_providers()}; GPU: {gpu or 'none'}")
    result: dict = {"onnxruntime": ort.__version__, "gpu": gpu}
    ok = True
    # The models carried to the GPU machine (MiniLM travels in a payload of its own, optional).
    models = {n: args.models / f for n, (f, _) in MODELS.items() if (args.models / f).is_file()}
    for n in sorted(set(MODELS) - set(models)):
        print(f"{n}: not in {args.models}, skipped")

    if "raw" in steps:
        raw = raw_check(models["efficientnet-lite0"])
        print(f"\n== 1. plain ORT session, no preload, fresh process: {raw}")
        result["raw"] = raw

    built: dict[str, dict[str, dict]] = {}
    if "build" in steps or "serve" in steps or "bench" in steps:
        print(f"\n== 2. infleet build --backend onnxruntime --class {args.node_class}")
        for name, path in models.items():
            built[name] = {}
            for ladder in ("fp32", "fp16,fp32"):
                b = build(name, path, args, ladder)
                built[name][ladder] = b
                ok = ok and "failed" not in b
        result["build"] = {
            n: {k: v.get("summary", v) for k, v in d.items()} for n, d in built.items()
        }

    if "serve" in steps:
        print("\n== 3. infleet serve --device gpu, one Open Inference Protocol request")
        fp32 = built["efficientnet-lite0"]["fp32"]
        if "engine_dir" in fp32:
            served = serve_check(
                fp32["engine_dir"], models["efficientnet-lite0"], "efficientnet-lite0", args
            )
        else:
            print("  skipped: no engine")
            served = False
        result["serve_ok"] = served
        ok = ok and served

    if "bench" in steps:
        print(f"\n== 4. ORT CUDA vs ORT CPU, batch 1 and batch {args.batch}, {args.seconds} s each")
        rows = []
        for name, path in models.items():
            engines = {}
            for ladder in ("fp32", "fp16,fp32"):
                b = built[name].get(ladder, {})
                if "engine" in b:
                    engines[f"infleet engine {b['summary']['precision'].upper()}"] = b["engine"]
            rows += bench(name, path, dict(sorted(set(engines.items()))), args)
        print(
            f"| model | engine | batch 1 p50 ms | batch 1 p99 ms | batch {args.batch} p50 ms "
            f"| items/s at batch {args.batch} | cosine dev. vs FP32 CPU |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['model']} | {r['engine']} | {r['b1_p50_ms']:.2f} | {r['b1_p99_ms']:.2f} "
                f"| {r[f'b{args.batch}_p50_ms']:.2f} | {r['items_per_s']:.0f} "
                f"| {r['cosine_dev']:.1e} |"
            )
        result["bench"] = rows

    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print(f"\n{'ALL OK' if ok else 'SOMETHING FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
