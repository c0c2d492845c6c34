"""The engine manifest: the JSON file written next to every engine in the store.

It is the contract between ``infleet build`` (which writes it), ``infleet serve`` (which
loads the engine it describes) and the operator (which reads the build summary). Bump
MANIFEST_VERSION on any incompatible change.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from infleet.api import Backend, LatencyPoint, Precision, RungResult

MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"

# Open Inference Protocol (KServe v2) tensor datatypes.
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One model input or output as the server exposes it."""

    name: str
    datatype: Datatype
    shape: list[int]
    """Row-major shape; -1 marks a dynamic dimension (the batch dimension first)."""


class EngineKey(_Frozen):
    """Everything an engine depends on; equal keys mean an interchangeable engine."""

    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    backend: Backend
    backend_version: str
    precision: Precision
    hardware_fingerprint: str
    builder_version: str

    def digest(self) -> str:
        """Content address of the engine: the store's directory name."""
        canonical = self.model_dump_json()  # field order is fixed by the model
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


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


class BuildSummary(_Frozen):
    """What `infleet build` reports: written to stdout and the pod's termination message.

    The operator copies it into ``status.classes[].engine``; `to_message` keeps it within the
    4 KiB Kubernetes allows for a termination message.
    """

    engine_key: str
    """``EngineKey.digest()`` of the engine kept: its directory in the store."""
    key: EngineKey
    backend: Backend
    precision: Precision
    cache_hit: bool
    """True when the engine (or this whole build request) was already in the store."""
    model_sha256: str
    node_class: str
    accuracy: list[RungResult] = []
    profile: list[LatencyPoint] = []
    notes: list[str] = []
    build_seconds: float = 0.0

    def to_message(self, limit: int = 4096) -> str:
        """Compact JSON of at most ``limit`` bytes: notes, then profile points, are trimmed."""
        summary = self
        text = summary.model_dump_json(exclude_none=True)
        while len(text.encode()) > limit and summary.notes:
            summary = summary.model_copy(update={"notes": summary.notes[:-1]})
            text = summary.model_dump_json(exclude_none=True)
        while len(text.encode()) > limit and len(summary.profile) > 1:
            profile = summary.profile
            summary = summary.model_copy(update={"profile": [profile[0], *profile[2:]]})
            text = summary.model_dump_json(exclude_none=True)
        while len(text.encode()) > limit and summary.accuracy:
            summary = summary.model_copy(update={"accuracy": summary.accuracy[1:]})
            text = summary.model_dump_json(exclude_none=True)
        return text
