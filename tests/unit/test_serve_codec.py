"""The v2 wire codec: every datatype as JSON (flat and nested) and binary, and every way a
request body can be wrong."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from infleet.runtime.server.codec import (
    decode_infer_request,
    encode_bytes_elements,
    encode_infer_response,
)
from infleet.runtime.server.datatypes import NUMPY_DTYPES
from infleet.runtime.server.errors import InvalidInput
from infleet.runtime.server.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

NUMERIC = [d for d in NUMPY_DTYPES if d != "BYTES"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    n = math.prod(shape)
    if datatype == "BYTES":
        values = np.empty(n, dtype=object)
        values[:] = [f"s{i}-é".encode() for i in range(n)]
        return values.reshape(shape)
    if datatype == "BOOL":
        return (np.arange(n) % 2 == 0).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return (np.arange(n) * 0.5 - 1).astype(dtype).reshape(shape)
    info = np.iinfo(dtype)
    values = ([int(info.min), int(info.max), 0, 1, 7, 2] * (n // 6 + 1))[:n]
    return np.array(values, dtype=dtype).reshape(shape)


def json_data(array: np.ndarray, nested: bool) -> object:
    if array.dtype == object:
        flat = [v.decode() for v in array.ravel()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if nested else flat
    return array.tolist() if nested else array.ravel().tolist()


def body(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("datatype", list(NUMPY_DTYPES))
def test_json_tensor_round_trips_exactly(datatype: str, nested: bool) -> None:
    array = sample(datatype)
    raw = {"name": "x", "datatype": datatype, "shape": [2, 3], "data": json_data(array, nested)}
    request = decode_infer_request(body(raw))
    (tensor,) = request.inputs
    assert tensor.datatype == datatype and tensor.shape == (2, 3)
    assert tensor.array.dtype == NUMPY_DTYPES[datatype]
    np.testing.assert_array_equal(tensor.array, array)

    payload, header = encode_infer_response(
        InferResponse("m", "1", "id-1", (Tensor("y", datatype, tensor.array),)), request
    )
    assert header is None
    out = orjson.loads(payload)["outputs"][0]
    assert out["shape"] == [2, 3] and out["datatype"] == datatype
    assert out["data"] == json_data(array, nested=False)


@pytest.mark.parametrize("datatype", list(NUMPY_DTYPES))
def test_binary_tensor_round_trips_exactly(datatype: str) -> None:
    array = sample(datatype)
    raw_bytes = (
        encode_bytes_elements(list(array.ravel()))
        if datatype == "BYTES"
        else array.astype(NUMPY_DTYPES[datatype]).tobytes()
    )
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": len(raw_bytes)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    request = decode_infer_request(header + raw_bytes, len(header))
    np.testing.assert_array_equal(request.inputs[0].array, array)

    payload, json_length = encode_infer_response(
        InferResponse("m", None, None, (request.inputs[0],)), request
    )
    assert json_length is not None
    meta = orjson.loads(payload[:json_length])["outputs"][0]
    assert "data" not in meta and meta["parameters"]["binary_data_size"] == len(raw_bytes)
    assert payload[json_length:] == raw_bytes


def test_per_output_binary_flag_overrides_the_request_default() -> None:
    request = InferRequest(
        inputs=(),
        outputs=(RequestedOutput("a", binary=False), RequestedOutput("b", binary=True)),
        binary_output=True,
    )
    a = np.arange(3, dtype=np.float32)
    payload, json_length = encode_infer_response(
        InferResponse("m", None, None, (Tensor("a", "FP32", a), Tensor("b", "FP32", a))), request
    )
    assert json_length is not None
    outputs = orjson.loads(payload[:json_length])["outputs"]
    assert outputs[0]["data"] == [0.0, 1.0, 2.0]
    assert payload[json_length:] == a.tobytes()


def test_two_binary_inputs_and_one_json_input_share_a_body() -> None:
    a = np.arange(4, dtype=np.int32)
    b = np.arange(2, dtype=np.float64)
    header = body(
        {"name": "a", "datatype": "INT32", "shape": [4], "parameters": {"binary_data_size": 16}},
        {"name": "j", "datatype": "INT8", "shape": [2], "data": [1, -1]},
        {"name": "b", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}},
    )
    request = decode_infer_request(header + a.tobytes() + b.tobytes(), len(header))
    got = {t.name: t.array for t in request.inputs}
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    np.testing.assert_array_equal(got["j"], [1, -1])


def test_nested_data_only_needs_the_right_element_count() -> None:
    raw = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2], [3, 4], [5, 6]]}
    (tensor,) = decode_infer_request(body(raw)).inputs
    np.testing.assert_array_equal(tensor.array, [[1, 2, 3], [4, 5, 6]])


def bad(raw: dict) -> str:
    with pytest.raises(InvalidInput) as e:
        decode_infer_request(body(raw))
    return str(e.value)


def fp32(data: object, shape: list[int] | None = None) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": shape or [2], "data": data}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (fp32([1.0]), "has 1 elements but shape [2] needs 2"),
        (fp32([[1.0], [2.0, 3.0]], [3]), "not a rectangular list"),
        (fp32(["a", "b"]), "strings"),
        (fp32([1, {"a": 1}]), "not FP32"),
        (fp32([1e300, 1]), "out of range for FP32"),
        (fp32(1.0), "'data' must be a (flat or nested) list"),
        (
            {"name": "x", "datatype": "INT8", "shape": [2], "data": [1, 300]},
            "out of range for INT8",
        ),
        ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}, "out of range for UINT8"),
        ({"name": "x", "datatype": "INT32", "shape": [2], "data": [1.5, 2]}, "not INT32"),
        ({"name": "x", "datatype": "BOOL", "shape": [2], "data": [1, 0]}, "not BOOL"),
        ({"name": "x", "datatype": "BYTES", "shape": [2], "data": ["a", 1]}, "must be strings"),
        ({"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}, "unknown datatype"),
        ({"name": "x", "datatype": [[]], "shape": [1], "data": [1]}, "unknown datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
        ({"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}, "non-negative integers"),
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "'name'"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "neither 'data' nor binary_data_size"),
    ],
)
def test_bad_json_tensors_are_named_in_the_error(raw: dict, needle: str) -> None:
    message = bad(raw)
    assert needle in message
    assert "'x'" in message or "name" in needle


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": [1]}', "JSON object"),
        (
            b'{"inputs": [{"name":"x","datatype":"FP32","shape":[1],"data":[1]},'
            b'{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}',
            "given twice",
        ),
        (b'{"inputs": [{"name":"x","datatype":"FP32","shape":[1],"data":[1]}], "id": 3}', "'id'"),
        (
            b'{"inputs": [{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],'
            b' "outputs": [{"nom": "y"}]}',
            "requested output",
        ),
    ],
)
def test_malformed_documents(payload: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput) as e:
        decode_infer_request(payload)
    assert needle in str(e.value)


def binary_request(size: int, data: bytes, datatype: str = "FP32", shape: list[int] | None = None):
    header = body(
        {
            "name": "x",
            "datatype": datatype,
            "shape": shape or [2],
            "parameters": {"binary_data_size": size},
        }
    )
    return header + data, len(header)


@pytest.mark.parametrize(
    ("size", "data", "datatype", "needle"),
    [
        (4, b"\0" * 4, "FP32", "needs 8 bytes"),
        (8, b"\0" * 4, "FP32", "runs past the end"),
        (8, b"\0" * 12, "FP32", "binary_data_size add up to 8"),
        (15, encode_bytes_elements([b"a", b"b", b"c"]), "BYTES", "and trailing bytes"),
        (8, b"\xff\xff\xff\x7f" + b"abcd", "BYTES", "claims"),
        (5, b"\x01\0\0\0a", "BYTES", "holds 1 elements"),
    ],
)
def test_bad_binary_sizes(size: int, data: bytes, datatype: str, needle: str) -> None:
    payload, length = binary_request(size, data, datatype)
    with pytest.raises(InvalidInput) as e:
        decode_infer_request(payload, length)
    assert needle in str(e.value)


@pytest.mark.parametrize("length", [0, -1, 10_000])
def test_header_length_outside_the_body(length: int) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        decode_infer_request(b'{"inputs": []}', length)


def test_binary_bool_is_normalised() -> None:
    payload, length = binary_request(2, b"\x00\x05", "BOOL")
    (tensor,) = decode_infer_request(payload, length).inputs
    assert tensor.array.tolist() == [False, True]


def test_large_json_tensor_decodes_fast_enough_to_matter() -> None:
    # Not a timing assertion: a functional check that the 27k-float CNN input decodes
    # through the vectorised path with the exact values (bench/ measures the speed).
    array = np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)
    raw = {"name": "input", "datatype": "FP32", "shape": [1, 3, 48, 192]}
    raw["data"] = array.ravel().tolist()
    (tensor,) = decode_infer_request(body(raw)).inputs
    np.testing.assert_array_equal(tensor.array, array)


def test_error_bodies_are_the_error_response_model() -> None:
    from infleet.runtime.server.wire import ErrorResponse

    for message in ("no route GET /x", 'quotes " and \\ and é', ""):
        body = ErrorResponse.body(message)
        assert ErrorResponse.model_validate_json(body) == ErrorResponse(error=message)
        assert body == ErrorResponse(error=message).model_dump_json().encode()
