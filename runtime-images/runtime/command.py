"""``infleet build``: build, verify, profile and store one engine for one node class.

Progress goes to stderr; the summary (JSON, at most 4 KiB) goes to stdout and to the pod's
termination-message file, where the operator reads it without extra RBAC. A failure writes
``{"error": ...}`` there too, then exits non-zero with one clear line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    from infleet.api import AccuracyMetric, Backend

    backends = [b.value for b in Backend]
    p = parser
    p.add_argument(
        "--model",
        required=True,
        metavar="URI",
        help="file://, pvc://, http(s):// or s3:// ONNX model",
    )
    p.add_argument("--sha256", help="expected sha256 of the model (verified; always recorded)")
    p.add_argument(
        "--class", dest="node_class", required=True, metavar="CLASS", help="node class to build for"
    )
    p.add_argument(
        "--backend", required=True, choices=backends, help="the scheduler's backend for the class"
    )
    p.add_argument(
        "--alternative",
        action="append",
        default=[],
        choices=backends,
        help="also build this backend and keep the fastest engine that passes (repeatable)",
    )
    p.add_argument(
        "--precision-ladder",
        default="fp32",
        metavar="L",
        help="comma-separated rungs, first that passes the gate wins (e.g. int8,fp32)",
    )
    p.add_argument(
        "--metric", default=AccuracyMetric.COSINE.value, choices=[m.value for m in AccuracyMetric]
    )
    p.add_argument(
        "--max-deviation", type=float, help="accuracy budget; INT8/FP8 are tried only with one"
    )
    p.add_argument(
        "--max-batch", type=int, default=8, help="largest batch the server forms (default 8)"
    )
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=N",
        help="size of a named dynamic dimension other than batch (e.g. seq=128)",
    )
    p.add_argument("--name", default="model", help="served model name")
    p.add_argument(
        "--store", required=True, type=Path, metavar="DIR", help="engine store directory"
    )
    p.add_argument(
        "--calibration", metavar="URI", help=".npz of input arrays for calibration/validation"
    )
    p.add_argument("--calibration-sha256")
    p.add_argument("--calibration-samples", type=int, default=64)
    p.add_argument("--validation-samples", type=int, default=16)
    p.add_argument("--int8-method", default="auto", choices=["auto", "static", "dynamic"])
    p.add_argument(
        "--tuning-trials", type=int, default=200, help="TVM MetaSchedule trials (0 = untuned)"
    )
    p.add_argument("--tuning-seconds", type=float, default=600.0, help="time bound of TVM tuning")
    p.add_argument(
        "--batch-sizes", default="", help="static batch sizes for TVM (default: 1 and max batch)"
    )
    p.add_argument(
        "--arch",
        choices=["x86_64", "aarch64"],
        help="target architecture (default: from the class)",
    )
    p.add_argument(
        "--cpu-features", help="target CPU flags, comma-separated (default: host's or the class's)"
    )
    p.add_argument("--compute-capability", help="GPU compute capability, e.g. 8.9")
    p.add_argument(
        "--threads", type=int, help="intra-op threads (default: the container's CPU limit)"
    )
    p.add_argument(
        "--profile-seconds", type=float, default=0.5, help="time per batch size when profiling"
    )
    p.add_argument("--fetch-timeout", type=float, default=30.0)
    p.add_argument("--fetch-retries", type=int, default=3)
    p.add_argument("--max-model-bytes", type=int, default=8 << 30)
    p.add_argument(
        "--pvc-root", type=Path, help="where pvc:// claims are mounted (default /mnt/pvc)"
    )
    p.add_argument(
        "--termination-log",
        type=Path,
        default=None,
        help=f"summary file (default {DEFAULT_TERMINATION_LOG}; skipped outside a pod)",
    )


def run(args: argparse.Namespace) -> int:
    from infleet.errors import InfleetError

    try:
        request = _request(args)
        from infleet.runtime.build import build

        summary = build(
            request,
            progress=lambda msg: print(f"infleet build: {msg}", file=sys.stderr, flush=True),
        )
    except InfleetError as e:
        _write_termination(args.termination_log, json.dumps({"error": str(e)[:3900]}))
        raise
    message = summary.to_message()
    _write_termination(args.termination_log, message)
    print(message)
    return 0


def _request(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from infleet.api import AccuracyMetric, Backend, Precision
    from infleet.runtime.build import BuildRequest
    from infleet.runtime.errors import BuildError
    from infleet.runtime.fetch import FetchOptions
    from infleet.runtime.hardware import Arch

    try:
        ladder = tuple(Precision(p.lower()) for p in _csv(args.precision_ladder))
        dims = {k: int(v) for k, _, v in (d.partition("=") for d in args.dim)}
        batch_sizes = tuple(int(b) for b in _csv(args.batch_sizes))
        cc = None
        if args.compute_capability:
            major, _, minor = args.compute_capability.partition(".")
            cc = (int(major), int(minor or 0))
    except ValueError as e:
        raise BuildError(f"bad argument: {e}") from e
    if not ladder:
        raise BuildError("--precision-ladder is empty")
    if args.max_batch < 1:
        raise BuildError("--max-batch must be at least 1")
    backends = tuple(
        dict.fromkeys([Backend(args.backend), *(Backend(a) for a in args.alternative)])
    )
    fetch_kwargs = {
        "timeout_s": args.fetch_timeout,
        "retries": args.fetch_retries,
        "max_bytes": args.max_model_bytes,
    }
    if args.pvc_root is not None:
        fetch_kwargs["pvc_root"] = args.pvc_root
    return BuildRequest(
        model_uri=args.model,
        model_sha256=args.sha256,
        node_class=args.node_class,
        store=args.store,
        backends=backends,
        ladder=ladder,
        model_name=args.name,
        metric=AccuracyMetric(args.metric),
        max_deviation=args.max_deviation,
        max_batch=args.max_batch,
        dims=dims,
        calibration_uri=args.calibration,
        calibration_sha256=args.calibration_sha256,
        calibration_samples=args.calibration_samples,
        validation_samples=args.validation_samples,
        tuning_trials=args.tuning_trials,
        tuning_seconds=args.tuning_seconds,
        batch_sizes=batch_sizes,
        int8_method=args.int8_method,
        arch=Arch(args.arch) if args.arch else None,
        features=frozenset(_csv(args.cpu_features.lower())) if args.cpu_features else None,
        compute_capability=cc,
        threads=args.threads,
        profile_seconds=args.profile_seconds,
        fetch_options=FetchOptions(**fetch_kwargs),
    )


def _write_termination(path: Path | None, text: str) -> None:
    """Write the termination message; the default path is skipped outside a pod."""
    if path is None:
        path = Path(os.environ.get("INFLEET_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG)
        if not path.parent.is_dir() or (path == DEFAULT_TERMINATION_LOG and not path.exists()):
            return
    from infleet.runtime.errors import BuildError

    try:
        path.write_text(text)
    except OSError as e:
        raise BuildError(f"cannot write the termination message to {path}: {e}") from e
