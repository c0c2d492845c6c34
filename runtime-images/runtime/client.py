"""A small Open Inference Protocol (KServe v2) client: what a user's first request looks like.

``infleet infer`` uses it to smoke-test a deployment's endpoint (``hack/try.sh`` sends its one
request through the gateway with it), and the tests use its encoder and decoder so requests are
built one way everywhere. JSON and the binary tensor extension, as tritonclient sends them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
import numpy as np
import orjson

from infleet.runtime.errors import EndpointError
from infleet.runtime.server.codec import encode_bytes_elements
from infleet.runtime.server.datatypes import datatype_of, numpy_dtype


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dimension the server leaves free


def json_body(inputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """A request with every input as JSON ``data`` (flat, row-major)."""
    specs = []
    for name, array in inputs.items():
        datatype = datatype_of(array)
        data = ([v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
                if datatype == "BYTES" else array.ravel().tolist())
        specs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                      "data": data})
    return orjson.dumps({"inputs": specs}), {"Content-Type": "application/json"}


def binary_body(inputs: Mapping[str, np.ndarray],
                binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    """A request with every input as binary data after the JSON header, and its headers."""
    specs, chunks = [], []
    for name, array in inputs.items():
        datatype = datatype_of(array)
        raw = (encode_bytes_elements(list(array.ravel())) if datatype == "BYTES"
               else np.ascontiguousarray(array).tobytes())
        specs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                      "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    header = orjson.dumps({"inputs": specs, "parameters": {"binary_data_output": binary_output}})
    return header + b"".join(chunks), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def decode_response(content: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Output arrays of a v2 response, JSON or binary (the way a Triton client reads it)."""
    try:
        length = int(header_length) if header_length else None
        header = orjson.loads(content[:length] if length is not None else content)
        offset = length or 0
        out: dict[str, np.ndarray] = {}
        for o in header["outputs"]:
            shape, datatype = o["shape"], o["datatype"]
            if "data" in o:
                values = ([v.encode() for v in o["data"]] if datatype == "BYTES" else o["data"])
                out[o["name"]] = np.array(
                    values, dtype=object if datatype == "BYTES" else numpy_dtype(datatype)
                ).reshape(shape)
                continue
            size = o["parameters"]["binary_data_size"]
            chunk = content[offset:offset + size]
            offset += size
            out[o["name"]] = (_bytes_elements(chunk, shape) if datatype == "BYTES"
                              else np.frombuffer(chunk, dtype=numpy_dtype(datatype)).reshape(shape))
        return out
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as e:
        raise EndpointError(f"not a v2 inference response ({e}): {content[:200]!r}") from e


def _bytes_elements(chunk: bytes, shape: Sequence[int]) -> np.ndarray:
    items, pos = [], 0
    while pos < len(chunk):
        n = int.from_bytes(chunk[pos:pos + 4], "little")
        items.append(chunk[pos + 4:pos + 4 + n])
        pos += 4 + n
    return np.array(items, dtype=object).reshape(shape)


class Client:
    """One model behind one endpoint. ``host`` overrides the Host header (a gateway routes
    by host name: the deployment's ``status.endpoint``)."""

    def __init__(self, url: str, model: str, host: str | None = None,
                 timeout: float = 30.0) -> None:
        self.base = f"{url.rstrip('/')}/v2/models/{model}"
        self.headers = {"Host": host} if host else {}
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def inputs(self) -> list[InputSpec]:
        """The model's inputs, from its metadata (``GET /v2/models/{name}``)."""
        meta = self._ok(self.http.get(self.base, headers=self.headers)).json()
        return [InputSpec(i["name"], i["datatype"], tuple(int(d) for d in i["shape"]))
                for i in meta["inputs"]]

    def infer(self, inputs: Mapping[str, np.ndarray],
              binary: bool = False) -> dict[str, np.ndarray]:
        body, headers = binary_body(inputs) if binary else json_body(inputs)
        r = self._ok(self.http.post(f"{self.base}/infer", content=body,
                                    headers={**self.headers, **headers}))
        return decode_response(r.content, r.headers.get("inference-header-content-length"))

    def _ok(self, r: httpx.Response) -> httpx.Response:
        if r.status_code != 200:
            raise EndpointError(f"{r.request.method} {r.request.url} answered {r.status_code}: "
                                f"{r.text[:300]}")
        return r


def sample_inputs(specs: Sequence[InputSpec], batch: int, seed: int = 0,
                  fixed: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Deterministic inputs for a model's metadata: the first free dimension is the batch, any
    other free dimension must be given in ``fixed`` (by input name: a whole shape)."""
    rng = np.random.default_rng(seed)
    fixed = fixed or {}
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in fixed:
            shape = tuple(int(d) for d in fixed[spec.name])
        else:
            shape = tuple(batch if (i == 0 and d == -1) else d for i, d in enumerate(spec.shape))
            if any(d < 0 for d in shape):
                raise ValueError(f"input {spec.name!r} has free dimensions {list(spec.shape)} "
                                 f"besides the batch; give its shape with --shape "
                                 f"{spec.name}=D0,D1,...")
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 100, shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = np.ones(shape, dtype=dtype)
        else:
            raise ValueError(f"input {spec.name!r}: cannot make sample data of type "
                             f"{spec.datatype}")
    return out
