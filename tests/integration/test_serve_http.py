"""``infleet serve`` over real HTTP: one server process with a small CNN, one identity
model per v2 datatype and a TVM engine; every endpoint, datatype, error and a fuzz loop."""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import (
    DATATYPES,
    ServerProcess,
    binary_body,
    decode_response,
    json_input,
    promtool_check,
)

from infleet.runtime.server import samples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    dirs = [samples.cnn_engine(root / "cnn").parent]
    for datatype in DATATYPES:
        dirs.append(samples.identity_engine(root / f"id_{datatype.lower()}", datatype).parent)
    return root, dirs


@pytest.fixture(scope="module")
def server(engines, tmp_path_factory):
    _, dirs = engines
    args = [a for d in dirs for a in ("--engine-dir", str(d))]
    proc = ServerProcess(
        [*args, "--max-body-mb", "4", "--max-queue-delay-ms", "5"],
        tmp_path_factory.mktemp("log") / "serve.log",
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()
        assert "Traceback" not in proc.log()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def reference(engines):
    root, _ = engines
    session = ort.InferenceSession(
        str(root / "cnn" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(None, {"input": x})[0]


def sample(datatype: str, rows: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        values = np.empty(rows * 3, dtype=object)
        values[:] = [f"row{i // 3}-é-{rng.integers(1000)}".encode() for i in range(rows * 3)]
        return values.reshape(rows, 3)
    if datatype == "BOOL":
        return rng.random((rows, 3)) > 0.5
    from infleet.runtime.server.datatypes import numpy_dtype

    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        return rng.normal(size=(rows, 3)).astype(dtype)
    info = np.iinfo(dtype)
    values = rng.integers(max(info.min, -(2**62)), min(info.max, 2**62), size=(rows, 3))
    values = values.astype(dtype)
    values[0, 0], values[0, 1] = info.min, info.max  # the extremes survive the trip
    return values


# --- endpoints ---------------------------------------------------------------------------


def test_health_and_server_metadata(client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "infleet" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("prefix", ["/v2/models/cnn", "/v2/models/cnn/versions/1"])
def test_model_metadata_lists_the_real_inputs_and_outputs(client, prefix: str) -> None:
    meta = client.get(prefix).json()
    assert meta == {
        "name": "cnn",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 48, 192]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get(f"{prefix}/ready").json() == {"name": "cnn", "ready": True}


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/cnn/versions/2",
        "/v2/models/cnn/versions/2/ready",
    ],
)
def test_unknown_models_and_versions_are_404(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "cnn" in response.json()["error"] or "nope" in response.json()["error"]


def test_unknown_model_infer_is_404(client) -> None:
    body = {"inputs": [json_input("x", np.zeros((1, 3), np.float32), "FP32")]}
    response = client.post("/v2/models/nope/infer", json=body)
    assert response.status_code == 404 and "'nope'" in response.json()["error"]


# --- datatypes ---------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_as_json(client, datatype: str, nested: bool) -> None:
    array = sample(datatype)
    raw = json_input("x", array, datatype)
    if nested:
        raw["data"] = np.array(raw["data"], dtype=object).reshape(array.shape).tolist()
    model = f"identity_{datatype.lower()}"
    response = client.post(f"/v2/models/{model}/infer", json={"id": "r1", "inputs": [raw]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["id"] == "r1" and document["model_name"] == model
    out = decode_response(response)["y"]
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_as_binary(client, datatype: str) -> None:
    array = sample(datatype, rows=3, seed=1)
    body, headers = binary_body([("x", array, datatype)])
    response = client.post(
        f"/v2/models/identity_{datatype.lower()}/infer", content=body, headers=headers
    )
    assert response.status_code == 200, response.text
    assert "inference-header-content-length" in response.headers
    np.testing.assert_array_equal(decode_response(response)["y"], array)


def test_binary_input_with_json_output(client) -> None:
    array = sample("FP16", rows=2)
    body, headers = binary_body([("x", array, "FP16")], binary_output=False)
    response = client.post("/v2/models/identity_fp16/infer", content=body, headers=headers)
    assert response.status_code == 200
    assert "inference-header-content-length" not in response.headers
    np.testing.assert_array_equal(decode_response(response)["y"], array)


def test_cnn_answers_like_onnx_runtime_in_json_and_binary(client, reference) -> None:
    x = np.random.default_rng(3).random((2, 3, 48, 192), dtype=np.float32)
    as_json = client.post("/v2/models/cnn/infer", json={"inputs": [json_input("input", x, "FP32")]})
    body, headers = binary_body([("input", x, "FP32")])
    as_binary = client.post("/v2/models/cnn/infer", content=body, headers=headers)
    expected = reference(x)
    for response in (as_json, as_binary):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            decode_response(response)["logits"], expected, rtol=1e-5, atol=1e-6
        )


# --- batching ----------------------------------------------------------------------------


def test_concurrent_mixed_requests_are_batched_and_each_gets_its_own_rows(
    server, reference
) -> None:
    rng = np.random.default_rng(7)
    xs = [rng.random((int(rng.integers(1, 4)), 3, 48, 192), dtype=np.float32) for _ in range(40)]
    batches_before = _metric(server, "infleet_serve_batch_size_rows_count", {"model": "cnn"})

    async def one(client: httpx.AsyncClient, i: int, x: np.ndarray) -> np.ndarray:
        if i % 2:
            body, headers = binary_body([("input", x, "FP32")])
            response = await client.post("/v2/models/cnn/infer", content=body, headers=headers)
        else:
            body_json = {"inputs": [json_input("input", x, "FP32")]}
            response = await client.post("/v2/models/cnn/infer", json=body_json)
        assert response.status_code == 200, response.text
        return decode_response(response)["logits"]

    async def main() -> list[np.ndarray]:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, i, x) for i, x in enumerate(xs)))

    results = asyncio.run(main())
    for x, logits in zip(xs, results, strict=True):
        assert logits.shape == (len(x), 10)
        np.testing.assert_allclose(logits, reference(x), rtol=1e-4, atol=1e-5)
    batches = (
        _metric(server, "infleet_serve_batch_size_rows_count", {"model": "cnn"}) - batches_before
    )
    assert 0 < batches < len(xs), "40 concurrent requests should share engine batches"


# --- errors ------------------------------------------------------------------------------


def _cnn_input(rows: int = 1, **override) -> dict:
    raw = json_input("input", np.zeros((rows, 3, 48, 192), np.float32), "FP32")
    raw.update(override)
    return raw


ERRORS = {
    "malformed JSON": (b'{"inputs": [', {}, 400, "malformed JSON"),
    "unknown input": (
        orjson.dumps({"inputs": [_cnn_input(name="image")]}),
        {},
        400,
        "unknown input 'image'",
    ),
    "wrong datatype": (
        orjson.dumps({"inputs": [_cnn_input(datatype="FP64")]}),
        {},
        400,
        "is FP64, the model takes FP32",
    ),
    "wrong shape": (
        orjson.dumps({"inputs": [_cnn_input(shape=[1, 3, 192, 48])]}),
        {},
        400,
        "the model takes [-1, 3, 48, 192]",
    ),
    "length mismatch": (
        orjson.dumps({"inputs": [_cnn_input(shape=[2, 3, 48, 192])]}),
        {},
        400,
        "needs 55296",
    ),
    "bad binary size": (
        orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 3, 48, 192],
                        "parameters": {"binary_data_size": 100},
                    }
                ]
            }
        )
        + b"\0" * 100,
        {"inference-header-content-length": "121"},
        400,
        None,
    ),
    "header length not a number": (b"{}", {"inference-header-content-length": "x"}, 400, "integer"),
    "unknown output": (
        orjson.dumps({"inputs": [_cnn_input()], "outputs": [{"name": "probs"}]}),
        {},
        400,
        "unknown output 'probs'",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_problem(client, case: str) -> None:
    body, headers, status, needle = ERRORS[case]
    if case == "bad binary size":
        header_len = body.index(b"\0")
        headers = {"inference-header-content-length": str(header_len)}
        needle = "needs 110592 bytes"
    response = client.post("/v2/models/cnn/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]
    assert response.headers["x-request-id"]


def test_batch_above_the_max_batch_size_is_400(client) -> None:
    body = {"inputs": [json_input("x", np.zeros((9, 3), np.float32), "FP32")]}
    response = client.post("/v2/models/identity_fp32/infer", json=body)
    assert response.status_code == 400 and "max batch size 8" in response.json()["error"]


def test_body_above_the_cap_is_413(client) -> None:
    x = np.zeros((40, 3, 48, 192), np.float32)  # 4.4 MB of binary data, the cap is 4 MiB
    body, headers = binary_body([("input", x, "FP32")])
    response = client.post("/v2/models/cnn/infer", content=body, headers=headers)
    assert response.status_code == 413
    assert "bytes; the limit is 4194304" in response.json()["error"]


def test_wrong_method_and_unknown_route(client) -> None:
    assert client.get("/v2/models/cnn/infer").status_code == 405
    assert client.get("/v3/whatever").status_code == 404
    assert client.post("/v2/health/live").status_code == 404


# --- metrics -----------------------------------------------------------------------------


def _metric(server: ServerProcess, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_metrics_are_exposed_and_pass_promtool(client) -> None:
    client.post(
        "/v2/models/identity_int8/infer",
        json={"inputs": [json_input("x", np.zeros((1, 3), np.int8), "INT8")]},
    )
    client.post("/v2/models/identity_int8/infer", content=b"nope")
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name, kind in [
        ("infleet_serve_requests", "counter"),
        ("infleet_serve_request_duration_seconds", "histogram"),
        ("infleet_serve_queue_duration_seconds", "histogram"),
        ("infleet_serve_batch_size_rows", "histogram"),
        ("infleet_serve_requests_in_flight", "gauge"),
        ("infleet_serve_model_load_duration_seconds", "gauge"),
    ]:
        assert families[name].type == kind, name
    outcomes = {
        s.labels["outcome"]
        for s in families["infleet_serve_requests"].samples
        if s.labels.get("model") == "identity_int8" and s.name.endswith("_total")
    }
    assert {"success", "client_error"} <= outcomes
    promtool_check(response.content)  # --workers N: tests/integration/test_serve_workers.py


# --- abuse -------------------------------------------------------------------------------


def _mutations(rng: random.Random):
    valid = orjson.dumps(
        {"inputs": [json_input("x", np.arange(6, dtype=np.float32).reshape(2, 3), "FP32")]}
    )
    binary, headers = binary_body([("x", np.arange(6, dtype=np.float32).reshape(2, 3), "FP32")])
    junk_values = [None, True, -1, 2**64 - 1, 1e308, "", "x" * 1000, [], {}, [[[]]], {"a": [1]}]
    while True:
        kind = rng.randrange(8)
        if kind == 0:  # truncated
            yield valid[: rng.randrange(len(valid))], {}
        elif kind == 1:  # flipped bytes
            b = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b), {}
        elif kind == 2:  # a field replaced with junk
            doc = orjson.loads(valid)
            target = rng.choice(["name", "datatype", "shape", "data", "parameters"])
            doc["inputs"][0][target] = rng.choice(junk_values)
            yield orjson.dumps(doc), {}
        elif kind == 3:  # binary with a lying header length
            yield (
                binary,
                {"inference-header-content-length": str(rng.randrange(-5, len(binary) + 50))},
            )
        elif kind == 4:  # binary with a lying size
            doc = orjson.loads(binary[: int(headers["Inference-Header-Content-Length"])])
            doc["inputs"][0]["parameters"]["binary_data_size"] = rng.choice(
                [0, 1, 23, 25, 10**12, -3]
            )
            h = orjson.dumps(doc)
            yield (
                h + binary[int(headers["Inference-Header-Content-Length"]) :],
                {"inference-header-content-length": str(len(h))},
            )
        elif kind == 5:  # random bytes
            yield rng.randbytes(rng.randrange(1, 300)), {}
        elif kind == 6:  # deep nesting
            depth = rng.randrange(10, 2000)
            yield (
                b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2,3],"data":'
                + b"[" * depth
                + b"1"
                + b"]" * depth
                + b"}]}",
                {},
            )
        else:  # huge declared shape
            doc = orjson.loads(valid)
            doc["inputs"][0]["shape"] = [2**30, 2**30, 2**30]
            yield orjson.dumps(doc), {}


def test_fuzzed_requests_get_4xx_and_leave_the_server_healthy(server, client) -> None:
    rng = random.Random(1234)
    statuses: dict[int, int] = {}
    gen = _mutations(rng)

    def burst(n: int) -> None:
        for _ in range(n):
            payload, headers = next(gen)
            response = client.post(
                "/v2/models/identity_fp32/infer", content=payload, headers=headers
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (payload[:200], response.text)
            assert "error" in response.json() or response.status_code == 200

    burst(150)
    rss_warm = server.rss_bytes()
    burst(250)
    growth = server.rss_bytes() - rss_warm
    assert growth < 30 << 20, f"RSS grew by {growth >> 20} MiB over 250 malformed requests"
    assert statuses.get(400, 0) > 300
    assert client.get("/v2/health/ready").status_code == 200
    ok = client.post(
        "/v2/models/identity_fp32/infer",
        json={"inputs": [json_input("x", np.ones((1, 3), np.float32), "FP32")]},
    )
    assert ok.status_code == 200
