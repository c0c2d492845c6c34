"""The samples a build calibrates INT8 on and judges every rung on.

Calibration and validation data are ``.npz`` files: one array per model input, named as the
input, the samples along the first axis, every other dimension the engine's. They are fetched
like the model (file://, pvc://, http(s)://, s3://; sha256 verified when expected, always
recorded). Without files, synthetic inputs stand in, and the data say so (``judged_on``):
synthetic inputs show an engine computes the model's function, not that it is accurate on
the inputs it will serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infleet.api import JudgedOn
from infleet.runtime import fetch as fetching
from infleet.runtime.errors import ModelError
from infleet.runtime.onnxmodel import ModelInfo, synthetic_inputs


@dataclass(frozen=True)
class Source:
    """One data file as asked for (uri None: synthetic inputs)."""

    uri: str | None
    sha256: str | None
    samples: int


@dataclass(frozen=True)
class Data:
    """The samples a build calibrates INT8 on and judges every rung on."""

    calibration: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    judged_on: JudgedOn
    calibration_sha: str | None
    validation_sha: str | None
    notes: tuple[str, ...]


def load(
    info: ModelInfo,
    dest_dir: Path,
    options: fetching.FetchOptions,
    *,
    calibration: Source,
    validation: Source,
) -> Data:
    """Calibration from its file, else synthetic; validation from its file, else the
    calibration file (its first samples), else synthetic (other samples than calibration's)."""
    cal = synthetic_inputs(info, calibration.samples, seed=0)
    calibration_sha: str | None = None
    validation_sha: str | None
    source: str | None
    if calibration.uri is not None:
        cal, calibration_sha = load_npz(calibration, info, dest_dir, options)
    if validation.uri is not None:
        val, validation_sha = load_npz(validation, info, dest_dir, options)
        source = validation.uri
    elif calibration.uri is not None:
        val = {k: v[: validation.samples] for k, v in cal.items()}
        validation_sha, source = calibration_sha, calibration.uri
    else:
        val = synthetic_inputs(info, validation.samples, seed=1)
        validation_sha, source = None, None
    cal_rows = len(next(iter(cal.values())))
    val_rows = len(next(iter(val.values())))
    cal_from = calibration.uri or "synthetic inputs"
    notes = [f"calibration: {cal_rows} samples from {cal_from}"]
    if source is None:
        notes.append(
            f"validation: synthetic inputs ({val_rows} samples): they show an engine computes "
            "the model's function, not that it is accurate on real inputs; give --validation"
        )
    else:
        notes.append(f"validation: {val_rows} samples from {source}")
    on = JudgedOn.SYNTHETIC if source is None else JudgedOn.REAL
    return Data(cal, val, on, calibration_sha, validation_sha, tuple(notes))


def load_npz(
    source: Source, info: ModelInfo, dest_dir: Path, options: fetching.FetchOptions
) -> tuple[dict[str, np.ndarray], str]:
    """An .npz of one array per model input (first axis = samples), fetched like a model and
    checked against the engine's inputs; its first ``samples`` rows and its sha256."""
    assert source.uri is not None
    uri = source.uri
    fetched = fetching.fetch(uri, dest_dir, source.sha256, options)
    try:
        loaded = np.load(fetched.path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ModelError(f"{uri}: an .npy array, not an .npz of named arrays")
        with loaded as npz:
            missing = [t.name for t in info.inputs if t.name not in npz.files]
            if missing:
                raise ModelError(
                    f"{uri}: no array named {', '.join(map(repr, missing))} for the model "
                    f"input (it holds {', '.join(map(repr, npz.files)) or 'nothing'}; the .npz "
                    "needs one array per input name, first axis = samples)"
                )
            data = {t.name: np.asarray(npz[t.name]) for t in info.inputs}
    except (OSError, ValueError) as e:
        raise ModelError(f"{uri}: not a readable .npz file: {e}") from e
    for t in info.inputs:
        a = data[t.name]
        fixed = all(d in (n, -1) for n, d in zip(a.shape[1:], t.spec().shape[1:], strict=False))
        if a.dtype != t.dtype or a.ndim != len(t.dims) or not fixed:
            raise ModelError(
                f"{uri}: {t.name} is {a.dtype}{list(a.shape)}, "
                f"the engine takes {t.dtype}{t.spec().shape} (-1: any number of samples)"
            )
    rows = {len(a) for a in data.values()}
    if len(rows) != 1 or 0 in rows:
        raise ModelError(
            f"{uri}: the arrays must hold the same number of samples (at least one): "
            + ", ".join(f"{k} has {len(v)}" for k, v in data.items())
        )
    return {k: v[: source.samples] for k, v in data.items()}, fetched.sha256
