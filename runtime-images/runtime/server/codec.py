"""The v2 wire format: JSON tensors and the binary tensor data extension.

A request body is a JSON document, optionally followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header then says where the JSON ends. An input with
``parameters.binary_data_size`` takes its data from the next that many raw bytes, in input
order. Outputs go back the same way when the client asks (``binary_data_output`` for the
request, ``binary_data`` per output).

Speed matters here more than anywhere: JSON is parsed by orjson, and numeric ``data`` (flat
or nested) becomes an array in one ``np.asarray`` call, so no Python code runs per element.
BYTES is the exception: its elements are Python ``bytes`` objects of varying length anyway.
Every check raises :class:`InvalidInput` with a message naming the tensor and the problem.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from infleet.runtime.server.datatypes import DATATYPES, is_float, is_integer, numpy_dtype
from infleet.runtime.server.errors import InvalidInput
from infleet.runtime.server.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = b"inference-header-content-length"
"""The binary extension's header (lower case, as HTTP/1.1 transports compare field names)."""
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_U32 = struct.Struct("<I")


def dumps(document: object) -> bytes:
    """Serialize a JSON document; numpy arrays are written natively by orjson."""
    return orjson.dumps(document, option=_JSON_OPTIONS)


# --- requests ---------------------------------------------------------------------------


def decode_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse an infer request body; ``header_length`` comes from Inference-Header-Content-Length."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes"
            )
        json_part, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"malformed JSON: {e}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request must be a JSON object")

    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs: list[Tensor] = []
    offset = 0
    seen: set[str] = set()
    for raw in raw_inputs:
        tensor, used = _decode_input(raw, binary, offset)
        if tensor.name in seen:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        seen.add(tensor.name)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary)} bytes of binary data but the inputs' "
            f"binary_data_size add up to {offset}"
        )

    params = _parameters(document, "request")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInput("parameters.binary_data_output must be true or false")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(
        inputs=tuple(inputs),
        outputs=_decode_requested_outputs(document.get("outputs")),
        id=request_id,
        binary_output=binary_output,
    )


def _parameters(obj: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{what} 'parameters' must be an object")
    return params


def _decode_input(raw: object, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput("each input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("each input needs a 'name' string")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(
            f"input {name!r}: unknown datatype {datatype!r} (one of {', '.join(sorted(DATATYPES))})"
        )
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > 32
        or not all(type(d) is int and 0 <= d < 2**31 for d in shape)
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = math.prod(shape)
    params = _parameters(raw, f"input {name!r}")
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in raw:
            raise InvalidInput(f"input {name!r} has both 'data' and binary_data_size")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} binary bytes left)"
            )
        chunk = binary[offset : offset + size]
        array = _array_from_binary(chunk, datatype, shape, count, name)
        return Tensor(name, datatype, array), size
    if "data" not in raw:
        raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
    return Tensor(name, datatype, _array_from_json(raw["data"], datatype, shape, count, name)), 0


def _decode_requested_outputs(raw: object) -> tuple[RequestedOutput, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output needs a 'name' string")
        binary = _parameters(item, f"output {item['name']!r}").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output {item['name']!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(item["name"], binary))
    return tuple(outputs)


def _array_from_json(
    data: object, datatype: str, shape: list[int], count: int, name: str
) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: 'data' must be a (flat or nested) list")
    if datatype == "BYTES":
        flat = _flatten_strings(data, name)
        if len(flat) != count:
            raise _count_mismatch(name, len(flat), shape, count)
        array = np.empty(count, dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"input {name!r}: 'data' is not a rectangular list of {datatype} values"
        ) from None
    if values.size != count:
        raise _count_mismatch(name, values.size, shape, count)
    if count and values.dtype.kind in "fO" and datatype in ("INT64", "UINT64"):
        values = _wide_integers(data, values, datatype, name)
    if count:
        _check_kind(values, datatype, name)
    target = numpy_dtype(datatype)
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(target, copy=False).reshape(shape)
    if count and is_float(datatype) and not np.isfinite(array).all():
        # JSON has no inf/nan, so a non-finite result is an overflow of the target type
        raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
    return array


def _wide_integers(data: list[Any], values: np.ndarray, datatype: str, name: str) -> np.ndarray:
    """numpy infers float64 (or object) for integers past 2**63; parse them as the target.

    The direct conversion truncates fractions silently, so it is kept only when it agrees
    with the inferred values: then every element was an integer.
    """
    try:
        exact = np.asarray(data, dtype=numpy_dtype(datatype))
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input {name!r}: a value is not an integer within {datatype}") from None
    if values.dtype.kind == "f" and not np.array_equal(exact.astype(np.float64), values):
        raise InvalidInput(f"input {name!r}: 'data' holds non-integer numbers, not {datatype}")
    return exact


def _check_kind(values: np.ndarray, datatype: str, name: str) -> None:
    kind = values.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b"
    elif is_integer(datatype):
        ok = kind in "iu"
        if ok:
            info = np.iinfo(numpy_dtype(datatype))
            ok = int(values.min()) >= info.min and int(values.max()) <= info.max
            if not ok:
                raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
    else:
        ok = kind in "iuf"
    if not ok:
        raise InvalidInput(
            f"input {name!r}: 'data' holds {_kind_name(kind)}, which is not {datatype}"
        )


def _kind_name(kind: str) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "non-integer numbers",
        "U": "strings",
    }.get(kind, "mixed or nested values of different kinds")


def _flatten_strings(data: list[Any], name: str) -> list[bytes]:
    out: list[bytes] = []
    stack: list[Any] = [iter(data)]
    while stack:  # iterative, so deep nesting cannot exhaust the Python stack
        for item in stack[-1]:
            if isinstance(item, str):
                out.append(item.encode())
            elif isinstance(item, list):
                if len(stack) > 32:
                    raise InvalidInput(f"input {name!r}: 'data' is nested too deeply")
                stack.append(iter(item))
                break
            else:
                raise InvalidInput(f"input {name!r}: BYTES data must be strings")
        else:
            stack.pop()
    return out


def _count_mismatch(name: str, got: int, shape: list[int], count: int) -> InvalidInput:
    return InvalidInput(
        f"input {name!r}: 'data' has {got} elements but shape {shape} needs {count}"
    )


def _array_from_binary(
    chunk: memoryview, datatype: str, shape: list[int], count: int, name: str
) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_from_binary(chunk, shape, count, name)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"input {name!r}: binary_data_size is {len(chunk)} but shape {shape} of "
            f"{datatype} needs {expected} bytes"
        )
    if datatype == "BOOL":  # any non-zero byte is true; never reinterpret bytes as bool
        flags: np.ndarray = np.frombuffer(chunk, dtype=np.uint8) != 0
        return flags.reshape(shape)
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _bytes_from_binary(chunk: memoryview, shape: list[int], count: int, name: str) -> np.ndarray:
    # Each element: a 4-byte little-endian length, then that many bytes.
    raw = chunk.tobytes()
    items: list[bytes] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 4 > end or len(items) >= count:
            break
        (length,) = _U32.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(
                f"input {name!r}: BYTES element {len(items)} claims {length} bytes, "
                f"only {end - pos} left"
            )
        items.append(raw[pos : pos + length])
        pos += length
    if len(items) != count or pos != end:
        raise InvalidInput(
            f"input {name!r}: binary BYTES data holds {len(items)} elements"
            f"{' and trailing bytes' if pos != end else ''}; shape {shape} needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


# --- responses --------------------------------------------------------------------------


def encode_infer_response(
    response: InferResponse, request: InferRequest
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary data follows it."""
    wanted = {o.name: o.binary for o in request.outputs}
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        binary = wanted.get(tensor.name)
        if binary is None:
            binary = request.binary_output
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary:
            raw = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json_data(tensor)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "outputs": outputs}
    if response.model_version is not None:
        document["model_version"] = response.model_version
    if response.id is not None:
        document["id"] = response.id
    header = dumps(document)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_json_data(tensor: Tensor) -> object:
    if tensor.datatype == "BYTES":
        return [_text(v) for v in tensor.array.ravel().tolist()]
    return np.ascontiguousarray(tensor.array).ravel()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        # JSON cannot carry arbitrary bytes; clients that need them ask for binary_data
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _to_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        parts: list[bytes] = []
        for value in tensor.array.ravel().tolist():
            item = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_U32.pack(len(item)))
            parts.append(item)
        return b"".join(parts)
    array = tensor.array.astype(numpy_dtype(tensor.datatype), copy=False)
    return np.ascontiguousarray(array).tobytes()


def encode_bytes_elements(values: Sequence[bytes]) -> bytes:
    """Binary form of a BYTES tensor (length-prefixed elements), for clients and tests."""
    return b"".join(_U32.pack(len(v)) + v for v in values)
