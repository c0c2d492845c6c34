"""INT8 for the ONNX Runtime builder: prepare the model, quantise it, say why when it cannot.

Exported models often sit at ONNX opset 11 or 12 (paddle2onnx, older ``torch.onnx`` and
tf2onnx defaults). ORT's quantiser writes per-channel weights and int32 biases as
``DequantizeLinear`` with an ``axis``, which exists from opset 13 on; quantising an opset-12
model as it is yields a graph ORT itself refuses to load (INVALID_GRAPH on the first fused
Conv+BN bias). So the model is first brought to opset 13 through onnx's version converter,
then through ORT's quantisation pre-processing (shape inference and basic folding, which the
quantiser needs for value shapes), and only then quantised.

A model that still cannot be quantised fails the rung with one line a person can act on
(``INT8 not possible: ...``): the stage that failed and the first sentence of the library's
reason, never its multi-line dump.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from infleet.runtime.builders.base import BuildJob, Feeds
from infleet.runtime.errors import UnsupportedModel

QDQ_MIN_OPSET = 13
"""The first opset whose QuantizeLinear/DequantizeLinear take an ``axis`` (per-channel)."""
CALIBRATION_BATCH = 8
REASON_CHARS = 200

log = logging.getLogger(__name__)


def default_opset(model: Any) -> int:
    """The model's ai.onnx opset (0 when it imports none)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def prepare(source: Path, out: Path) -> tuple[Path, list[str]]:
    """``source`` at opset >= 13 and through ORT's pre-processing, written to ``out``.

    Returns the prepared file and notes saying what was changed. Raises UnsupportedModel
    (``INT8 not possible: ...``) when either step fails.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    notes: list[str] = []
    model = onnx.load(str(source))
    opset = default_opset(model)
    upgraded = source
    if opset < QDQ_MIN_OPSET:
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(model, QDQ_MIN_OPSET)
            onnx.checker.check_model(converted)
        except Exception as e:
            raise not_quantisable(
                f"per-channel INT8 needs ONNX opset {QDQ_MIN_OPSET}, and onnx's version "
                f"converter could not upgrade this opset-{opset} model",
                e,
            ) from e
        upgraded = out.with_name(out.stem + "-opset.onnx")
        onnx.save(converted, str(upgraded))
        notes.append(
            f"onnxruntime int8: model upgraded from opset {opset} to {QDQ_MIN_OPSET} "
            "(per-channel QDQ needs it)"
        )
    try:
        # Symbolic shape inference is skipped: it is slow and fails on many exports; ONNX's
        # own shape inference, which always runs, gives the quantiser what it needs.
        quant_pre_process(str(upgraded), str(out), skip_symbolic_shape=True)
    except Exception as e:
        raise not_quantisable("ORT's quantisation pre-processing failed", e) from e
    finally:
        if upgraded != source:
            upgraded.unlink(missing_ok=True)
    return out, notes


def quantise(job: BuildJob, method: str) -> tuple[Path, list[str]]:
    """The INT8 model (static QDQ or dynamic) of ``job``'s model, and notes."""
    from onnxruntime import quantization as q

    pre = job.work_dir / "int8-pre.onnx"
    out = job.work_dir / "int8.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs every tensor at INFO
    try:
        prepared, notes = prepare(job.model_path, pre)
        vnni = bool(job.target.features & {"avx512vnni", "avxvnni", "amxint8"})
        try:
            if method == "dynamic":
                # Per-channel weight scales: measured on all-MiniLM-L6-v2, worst cosine
                # deviation 0.019 against 0.095 with one scale per tensor.
                q.quantize_dynamic(
                    str(prepared), str(out), weight_type=q.QuantType.QInt8, per_channel=True
                )
            else:
                q.quantize_static(
                    str(prepared),
                    str(out),
                    _reader(q.CalibrationDataReader, job.calibration),
                    quant_format=q.QuantFormat.QDQ,
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                    per_channel=True,
                    # Without VNNI, u8*s8 products can saturate the 16-bit accumulation of
                    # AVX2's vpmaddubsw; ORT's guidance is 7-bit weights there.
                    reduce_range=not vnni,
                    calibrate_method=q.CalibrationMethod.MinMax,
                )
        except Exception as e:
            raise not_quantisable(f"ORT's {method} quantisation failed", e) from e
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
    return out, notes


# ORT's status prefix and the path it names: "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load
# model from /x/int8.onnx failed:". Dropped from the one line; the kind is kept in words.
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(?P<kind>[A-Z_]+)\s*:\s*")
_LOAD_FAILED = re.compile(r"^Load model from \S+ failed:\s*")


def one_line(e: BaseException) -> str:
    """The first line of a library's error, without ORT's status prefix or file path, cut to
    REASON_CHARS. For people only: nothing decides on it."""
    lines = [" ".join(line.split()) for line in str(e).splitlines()]
    text = next((line for line in lines if line), type(e).__name__)
    kind = ""
    if m := _ORT_PREFIX.match(text):
        kind, text = m.group("kind").lower().replace("_", " "), text[m.end() :]
    text = _LOAD_FAILED.sub("", text)
    text = text.removeprefix("This is an invalid model. ")
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 3].rstrip() + "..."
    return f"{kind}: {text}" if kind else text


def not_quantisable(what: str, e: BaseException) -> UnsupportedModel:
    """The rung's one-line reason; the library's whole text goes to the debug log."""
    log.debug("INT8 quantisation failed: %s", e, exc_info=e)
    return UnsupportedModel(f"INT8 not possible: {what} ({one_line(e)})")


def _reader(base: type, data: Feeds) -> Any:
    """A CalibrationDataReader feeding the calibration samples in small batches."""

    class Reader(base):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter_batches(data, CALIBRATION_BATCH)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Reader()


def iter_batches(data: Feeds, batch: int) -> Iterator[dict[str, np.ndarray]]:
    rows = len(next(iter(data.values())))
    for start in range(0, rows, batch):
        yield {k: v[start : start + batch] for k, v in data.items()}
