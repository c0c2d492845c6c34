"""The server's internal request/response types, independent of any wire format.

The codec turns JSON or binary wire data into these; the data plane and the batcher only
ever see them. Arrays are already shaped and typed (see ``datatypes``). The metadata answers
are the data plane's too; ``wire`` turns them into the REST models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infleet.runtime.manifest import TensorSpec


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None
    """Send this output as binary data; None follows the request-level default."""


@dataclass(frozen=True, slots=True)
class InferRequest:
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    """Outputs the client asked for, in its order; empty means all of the model's outputs."""
    id: str | None = None
    binary_output: bool = False
    """Request-level ``binary_data_output``: outputs default to binary data."""


@dataclass(frozen=True, slots=True)
class InferResponse:
    model_name: str
    model_version: str | None
    id: str | None
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    """The protocol's platform name of the backend (``onnxruntime_onnx``, ``tensorrt_plan``)."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
