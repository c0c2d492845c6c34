"""Wire models of the v2 metadata and error responses (the JSON the protocol defines).

Infer requests and responses do not go through pydantic: their tensors would be validated
element by element. ``codec`` handles them with orjson and numpy instead.
"""

from __future__ import annotations

from pydantic import BaseModel


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class ErrorResponse(BaseModel):
    error: str
