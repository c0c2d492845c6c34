"""``infleet build``: build, verify, profile and store one engine for one node class.

Progress goes to stderr; the summary (``infleet.api.engine.BuildSummary`` JSON, at most 4 KiB)
goes to stdout and to the pod's termination-message file, where the operator reads it without
extra RBAC. A failure writes a ``BuildFailure`` there (``error``, ``reason``: the error class,
``retryable``: that class's ``retryable``), then exits 1 with one clear line on stderr.

The target is the scheduler's hardware key: ``--hardware`` (the operator passes the class's
``HardwareKey.engine_fields()`` as JSON), or, for a person building by hand, this host's key
with the optional ``--arch``/``--cpu-features``/``--compute-capability``. ``--class`` is only a
name for the summary and the manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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
        "--class",
        dest="node_class",
        default="",
        metavar="CLASS",
        help="name of the node class built for (recorded in the summary; it keys nothing)",
    )
    p.add_argument(
        "--hardware",
        metavar="JSON",
        help="the class's hardware key, as HardwareKey.engine_fields() JSON (what the operator "
        "passes); default: this host's key, with --arch/--cpu-features/--compute-capability",
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
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="whole shape of one input, -1 for the batch dimension (first only), e.g. "
        "x=-1,3,48,192 (repeatable)",
    )
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=N",
        help="size of every open dimension named NAME, in every input (e.g. seq=128)",
    )
    p.add_argument("--name", default="model", help="served model name")
    p.add_argument(
        "--store",
        required=True,
        metavar="DIR|s3://BUCKET/PREFIX",
        help="engine store: a directory, or an S3 bucket and prefix (credentials and endpoint "
        "from INFLEET_STORE_AWS_* or else AWS_* variables)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="with an s3:// store: the local working copy (default: infleet-store in $TMPDIR)",
    )
    p.add_argument(
        "--calibration",
        metavar="URI",
        help=".npz of real inputs for INT8 calibration (one array per input name, first axis = "
        "samples; fetched like the model); also the validation data without --validation",
    )
    p.add_argument("--calibration-sha256", metavar="HEX", help="expected sha256 (verified)")
    p.add_argument("--calibration-samples", type=int, default=64)
    p.add_argument(
        "--validation",
        metavar="URI",
        help=".npz of real inputs the accuracy gate judges every rung on (format as "
        "--calibration); default: the calibration data, else synthetic inputs",
    )
    p.add_argument("--validation-sha256", metavar="HEX", help="expected sha256 (verified)")
    p.add_argument("--validation-samples", type=int, default=16)
    p.add_argument("--int8-method", default="auto", choices=["auto", "static", "dynamic"])
    p.add_argument(
        "--tuning-trials",
        type=int,
        default=0,
        help="TVM MetaSchedule trials per task (function) without stored records; 0 (the "
        "default) builds with the default CPU schedules, no tuning",
    )
    p.add_argument(
        "--tuning-seconds",
        type=float,
        default=1200.0,
        help="time bound of TVM tuning; what was measured by then is applied",
    )
    p.add_argument(
        "--batch-sizes", default="", help="static batch sizes for TVM (default: 1 and max batch)"
    )
    p.add_argument(
        "--arch",
        choices=["amd64", "arm64", "x86_64", "aarch64"],
        help="without --hardware: target architecture (default: this host's)",
    )
    p.add_argument(
        "--cpu-features",
        metavar="FLAGS",
        help="without --hardware: target CPU flags, comma-separated, as /proc/cpuinfo or NFD "
        "spells them (default: this host's on its arch, none on another)",
    )
    p.add_argument(
        "--compute-capability",
        metavar="MAJOR.MINOR",
        help="without --hardware: build for an NVIDIA GPU of this compute capability (default: "
        "the GPU the driver shows, if any)",
    )
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
    from infleet.api.engine import BuildFailure
    from infleet.errors import InfleetError

    try:
        request = _request(args)
        from infleet.runtime.build import build

        summary = build(
            request,
            progress=lambda msg: print(f"infleet build: {msg}", file=sys.stderr, flush=True),
        )
    except InfleetError as e:
        failure = BuildFailure(error=str(e), reason=type(e).__name__, retryable=e.retryable)
        write_termination(args.termination_log, failure.to_message())
        raise  # the CLI prints the one line and exits 1
    except Exception as e:
        # A bug: the operator still gets a readable failure; the traceback goes to stderr.
        failure = BuildFailure(
            error=f"internal error in infleet build: {type(e).__name__}: {e}",
            reason="InternalError",
            retryable=False,
        )
        write_termination(args.termination_log, failure.to_message())
        raise
    message = summary.to_message()
    write_termination(args.termination_log, message)
    print(message)
    return 0


def _request(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from infleet.api import AccuracyMetric, Backend, Precision
    from infleet.runtime import shapes
    from infleet.runtime.build import BuildRequest
    from infleet.runtime.errors import BuildError
    from infleet.runtime.fetch import FetchOptions

    try:
        ladder = tuple(Precision(p.lower()) for p in _csv(args.precision_ladder))
        batch_sizes = tuple(int(b) for b in _csv(args.batch_sizes))
    except ValueError as e:
        raise BuildError(f"bad argument: {e}") from e
    if not ladder:
        raise BuildError("--precision-ladder is empty")
    if args.max_batch < 1:
        raise BuildError("--max-batch must be at least 1")
    if args.calibration_samples < 1 or args.validation_samples < 1:
        raise BuildError("--calibration-samples and --validation-samples must be at least 1")
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
    remote = args.store if args.store.startswith("s3://") else None
    if remote is None and "://" in args.store:
        raise BuildError(f"--store {args.store}: a directory or s3://BUCKET/PREFIX")
    if remote is None and args.cache_dir is not None:
        raise BuildError("--cache-dir is for an s3:// --store; a directory store is its own")
    local = Path(args.store) if remote is None else (
        args.cache_dir or Path(tempfile.gettempdir()) / "infleet-store")
    return BuildRequest(
        model_uri=args.model,
        model_sha256=args.sha256,
        hardware=_hardware(args),
        node_class=args.node_class,
        store=local,
        remote_store=remote,
        backends=backends,
        ladder=ladder,
        model_name=args.name,
        metric=AccuracyMetric(args.metric),
        max_deviation=args.max_deviation,
        max_batch=args.max_batch,
        inputs=shapes.parse_inputs(args.inputs),
        dims=shapes.parse_dims(args.dim),
        calibration_uri=args.calibration,
        calibration_sha256=args.calibration_sha256,
        calibration_samples=args.calibration_samples,
        validation_uri=args.validation,
        validation_sha256=args.validation_sha256,
        validation_samples=args.validation_samples,
        tuning_trials=args.tuning_trials,
        tuning_seconds=args.tuning_seconds,
        batch_sizes=batch_sizes,
        int8_method=args.int8_method,
        threads=args.threads,
        profile_seconds=args.profile_seconds,
        fetch_options=FetchOptions(**fetch_kwargs),
    )


def _hardware(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The class's key from --hardware, else this host's (with the hand overrides)."""
    from infleet.runtime.errors import BuildError
    from infleet.runtime.hardware import host_key
    from infleet.scheduler.hardware import HardwareKey

    overrides = [
        f"--{n}"
        for n in ("arch", "cpu-features", "compute-capability")
        if getattr(args, n.replace("-", "_")) is not None
    ]
    if args.hardware is not None:
        if overrides:
            raise BuildError(f"--hardware says everything; drop {', '.join(overrides)}")
        try:
            fields = json.loads(args.hardware)
        except ValueError as e:
            raise BuildError(f"--hardware is not JSON: {e}") from e
        if not isinstance(fields, dict):
            raise BuildError("--hardware must be a JSON object (HardwareKey.engine_fields())")
        return HardwareKey.from_engine_fields(fields)
    cc = None
    if args.compute_capability is not None:
        major, _, minor = args.compute_capability.partition(".")
        if not major.isdigit() or not (minor or "0").isdigit():
            raise BuildError(
                f"--compute-capability {args.compute_capability!r}: expected MAJOR.MINOR, e.g. 8.9"
            )
        cc = (int(major), int(minor or 0))
    features = _csv(args.cpu_features) if args.cpu_features is not None else None
    return host_key(args.arch, features, cc)


def write_termination(path: Path | None, text: str) -> None:
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
