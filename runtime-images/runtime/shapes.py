"""Input shapes for a build: the model's own dims, completed by ``--input`` and ``--dim``.

An ONNX model may leave dimensions open: the batch (the first dimension, which stays dynamic:
the server batches along it) and others such as a sequence length or an image's height and
width. Every open dimension other than the batch needs a size before an engine can be built,
calibrated and checked. Two ways to give one:

* ``--input NAME=D0,D1,...`` (the operator passes ``spec.model.inputs`` this way): the whole
  shape of one input, -1 for the batch dimension (first, and only there). It must fit the
  model: the input exists, the rank is the model's, fixed dimensions are the model's.
* ``--dim NAME=N``: every open dimension named NAME, in every input. Exporters do not always
  name dimensions apart: paddle2onnx names every open one ``?``, so ``--dim ?=48`` makes a
  ``[N, 3, ?, ?]`` input 48x48; ``--input x=-1,3,48,192`` says what was meant.

:func:`resolve` returns the model's :class:`ModelInfo` with those sizes filled in, so the
manifest's tensor specs carry them (the server checks requests against them) and the engine
key holds them (engines for other shapes are other engines). Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from infleet.runtime.errors import ShapeError
from infleet.runtime.onnxmodel import Dim, ModelInfo, TensorInfo

BATCH = -1


def parse_input(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=D0,D1,...`` as (name, dims); -1 marks the batch dimension (the first only)."""
    name, sep, dims_text = text.rpartition("=")  # input names may hold "=", sizes never do
    if not sep or not name:
        raise ShapeError(f"--input {text!r}: expected NAME=D0,D1,... (e.g. x=-1,3,48,192)")
    try:
        dims = tuple(int(d) for d in dims_text.split(","))
    except ValueError:
        raise ShapeError(
            f"--input {text!r}: dimensions must be whole numbers, -1 for the batch"
        ) from None
    if any(d == 0 or d < BATCH for d in dims):
        raise ShapeError(f"--input {text!r}: a dimension is at least 1 (or -1 for the batch)")
    if BATCH in dims[1:]:
        raise ShapeError(f"--input {text!r}: -1 marks the batch dimension, which is the first")
    return name, dims


def parse_inputs(texts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, dims = parse_input(text)
        if name in shapes:
            raise ShapeError(f"--input {name}: given twice")
        shapes[name] = dims
    return shapes


def parse_dim(text: str) -> tuple[str, int]:
    """``NAME=N``: the size of every open dimension named NAME."""
    name, sep, size_text = text.rpartition("=")
    try:
        size = int(size_text)
    except ValueError:
        size = 0
    if not sep or not name or size < 1:
        raise ShapeError(f"--dim {text!r}: expected NAME=N with N >= 1 (e.g. seq=128)")
    return name, size


def parse_dims(texts: Sequence[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for text in texts:
        name, size = parse_dim(text)
        if dims.get(name, size) != size:
            raise ShapeError(f"--dim {name}: given twice with different sizes")
        dims[name] = size
    return dims


def _label(d: Dim) -> str:
    return repr(d) if isinstance(d, str) and d else "unnamed"


def _hinted(t: TensorInfo, hint: tuple[int, ...]) -> TensorInfo:
    """The input with its hinted shape, checked against the model's own dims."""
    shown = f"--input {t.name}={','.join(map(str, hint))}"
    if len(hint) != len(t.dims):
        raise ShapeError(
            f"{shown}: the model's input {t.name!r} has {len(t.dims)} dimensions "
            f"({_model_shape(t)}), not {len(hint)}"
        )
    dims: list[Dim] = []
    for i, (model, given) in enumerate(zip(t.dims, hint, strict=True)):
        if isinstance(model, int):
            if given != model:
                raise ShapeError(
                    f"{shown}: dimension {i} of {t.name!r} is fixed at {model} by the model"
                )
            dims.append(model)
        else:
            dims.append(model if given == BATCH else given)  # -1: stays the batch dimension
    return replace(t, dims=tuple(dims))


def _model_shape(t: TensorInfo) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in t.dims) + "]"


def resolve(
    info: ModelInfo,
    inputs: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
) -> ModelInfo:
    """The model with every open dimension other than the batch sized, or ShapeError naming
    what does not fit and each dimension still open (by input and position)."""
    inputs = dict(inputs or {})
    dims = dict(dims or {})
    by_name = {t.name: t for t in info.inputs}
    unknown = sorted(set(inputs) - set(by_name))
    if unknown:
        raise ShapeError(
            f"--input {', '.join(unknown)}: the model has no such input "
            f"(its inputs: {', '.join(f'{t.name} {_model_shape(t)}' for t in info.inputs)})"
        )
    open_names = {d for t in info.inputs for d in t.dims[1:] if isinstance(d, str) and d}
    unused = sorted(set(dims) - open_names)
    if unused:
        raise ShapeError(
            f"--dim {', '.join(unused)}: the model has no open dimension of that name "
            f"(named open dimensions: {', '.join(sorted(open_names)) or 'none'})"
        )
    resolved: list[TensorInfo] = []
    missing: list[tuple[TensorInfo, int, Dim]] = []
    for t in info.inputs:
        if t.name in inputs:
            resolved.append(_hinted(t, tuple(inputs[t.name])))
            continue
        sized: list[Dim] = list(t.dims)
        for i, d in enumerate(t.dims):
            if i == 0 or isinstance(d, int):
                continue  # the batch, or fixed by the model
            if d in dims:
                sized[i] = dims[d]
            else:
                missing.append((t, i, d))
        resolved.append(replace(t, dims=tuple(sized)))
    if missing:
        first = missing[0][0]
        form = ",".join(
            "-1" if i == 0 and isinstance(d, str) else str(d) if isinstance(d, int) else "N"
            for i, d in enumerate(first.dims)
        )
        named = "; ".join(f"input {t.name!r} dimension {i} ({_label(d)})" for t, i, d in missing)
        raise ShapeError(
            f"the model leaves dimensions open that need a size: {named}. Give each input's "
            f"shape (--input {first.name}={form}, spec.model.inputs in a deployment), or "
            "--dim NAME=N for a named dimension"
        )
    return replace(info, inputs=tuple(resolved))


def input_shapes(info: ModelInfo) -> dict[str, list[int]]:
    """Each input's shape as the engine key and the manifest state it: -1 for the batch."""
    return {t.name: t.spec().shape for t in info.inputs}
