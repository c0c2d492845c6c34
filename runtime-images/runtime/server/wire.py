"""Wire models of the v2 metadata, readiness and error responses (the JSON the protocol
defines), and their making from the data plane's internal answers.

Infer requests and responses do not go through pydantic: their tensors would be validated
element by element. ``codec`` handles them with orjson and numpy instead.
"""

from __future__ import annotations

from pydantic import BaseModel

from infleet.runtime.manifest import TensorSpec
from infleet.runtime.server.codec import dumps
from infleet.runtime.server.tensors import ModelMetadata, ServerMetadata


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]

    @classmethod
    def of(cls, spec: TensorSpec) -> MetadataTensor:
        return cls(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]

    @classmethod
    def of(cls, meta: ServerMetadata) -> ServerMetadataResponse:
        return cls(name=meta.name, version=meta.version, extensions=list(meta.extensions))


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]

    @classmethod
    def of(cls, meta: ModelMetadata) -> ModelMetadataResponse:
        return cls(
            name=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=[MetadataTensor.of(s) for s in meta.inputs],
            outputs=[MetadataTensor.of(s) for s in meta.outputs],
        )


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class ErrorResponse(BaseModel):
    """The body of every error answer: ``{"error": "<what went wrong>"}``."""

    error: str

    @staticmethod
    def body(message: str) -> bytes:
        """This model's JSON for ``message``, without building the model: error answers are
        the hot path of an overload (429s), where pydantic's validation and dump would cost
        more than the rest of the answer together."""
        return dumps({"error": message})
