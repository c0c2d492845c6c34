"""The engine manifest: the JSON file written next to every engine in the store.

It is the contract between ``infleet build`` (which writes it), ``infleet serve`` (which
loads the engine it describes) and the operator (which reads the build summary). Bump
MANIFEST_VERSION on any incompatible change.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from infleet.api import LatencyPoint, RungResult
from infleet.api.engine import BuildSummary, Datatype, EngineKey, TensorSpec

# The wire contract (engine key, tensor specs, build summary) lives with the API models;
# named here too because every runtime module reads manifests and keys together.
__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "BuildSummary",
    "Datatype",
    "EngineKey",
    "EngineManifest",
    "TensorSpec",
]

MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EngineManifest(_Frozen):
    """What was built, how well it matches the reference, and how fast it is."""

    manifest_version: int = MANIFEST_VERSION
    key: EngineKey
    engine_file: str
    """Engine artefact, relative to the manifest's directory."""
    model_name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: Annotated[int, Field(ge=1)]
    batch_sizes: list[int] = []
    """Batch sizes compiled into the engine; empty = any batch from 1 to max_batch_size.
    With static sizes (TVM) the server pads a batch up to the next listed size."""
    node_class: str
    accuracy: list[RungResult] = []
    """Every precision rung tried, with its measured deviation."""
    profile: list[LatencyPoint] = []
    """Latency and throughput per batch size on the build node."""
    options: dict[str, str] = {}
    """Backend-specific build options (target string, threads, tuning trials...)."""
    notes: list[str] = []
    """Why this engine was kept over the alternatives that were measured."""
    created_at: str
    build_seconds: float
    files: dict[str, str] = {}
    """sha256 of every file of the engine, by its path relative to the manifest's directory,
    filled when the engine is committed to a store: what a copy (an S3 store's download into a
    serving pod) is verified against. Empty in manifests written before it existed."""
