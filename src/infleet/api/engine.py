"""The engine contract between ``infleet build``, ``infleet serve`` and the operator.

``infleet build`` writes a :class:`BuildSummary` (or, when it fails, a :class:`BuildFailure`)
to stdout and to the build pod's termination message; the operator reads it back from the
pod's status without extra RBAC and copies it into ``status.classes[].engine``. The engine key
names an engine in the store. Snake_case on the wire: these are files and messages written
by infleet's own tools, not Kubernetes objects.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from infleet import __version__
from infleet.api.spec import Backend, Precision
from infleet.api.status import LatencyPoint, RungResult

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

# /3: TVM engines compiled with infleet's CPU pipeline and default schedules (the /2 ones are
# unscheduled loops, 10-50x slower): they are rebuilt, not reused.
BUILDER_VERSION = f"infleet-{__version__}/3"
"""Enters every engine key and build key: bump the suffix when a builder change makes old engines
stale. Here, with the contract, because `infleet build` (which writes keys) and the operator
(which computes build keys and must never import a backend) both need the same value."""

TERMINATION_MESSAGE_LIMIT = 4096
"""Bytes Kubernetes keeps of a container's termination message."""


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
    """``infleet.scheduler.hardware.HardwareKey.fingerprint()`` of the class built for: classes
    that differ only in instance type share engines."""
    builder_version: str
    input_shapes: dict[str, list[int]] = {}
    """Every input's shape as the engine takes it: -1 for the batch dimension, every other
    dimension fixed (by the model, or by the build's ``--input``/``--dim``). Engines for other
    shapes are other engines. Empty only in manifests written by hand."""
    max_batch_size: Annotated[int, Field(ge=0)] = 0
    """The largest batch the engine takes (0 only in manifests written by hand)."""
    batch_sizes: list[int] = []
    """The batch sizes compiled in, for backends that compile static shapes (TVM); empty:
    any batch up to ``max_batch_size``."""
    tuning: str = ""
    """How the engine's code was tuned for the hardware ("metaschedule-16": MetaSchedule, 16
    trials per task); empty when it was not. A tuned engine is another engine than the untuned
    one of the same class, so a request for one never gets the other from the store."""

    def digest(self) -> str:
        """Content address of the engine: the store's directory name."""
        fields = self.model_dump(mode="json")
        if not fields["tuning"]:
            del fields["tuning"]  # untuned engines keep the address they had before the field
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class BuildSummary(_Frozen):
    """What `infleet build` reports: written to stdout and the pod's termination message.

    The operator copies it into ``status.classes[].engine``; `to_message` keeps it within the
    4 KiB Kubernetes allows for a termination message.
    """

    engine_key: str
    """``EngineKey.digest()`` of the engine kept: its directory in the store."""
    key: EngineKey | None = None
    """None only for a simulated build (the dev fleet's kwok classes build nothing)."""
    backend: Backend
    precision: Precision
    cache_hit: bool = False
    """True when the engine (or this whole build request) was already in the store."""
    model_sha256: str = ""
    node_class: str
    accuracy: list[RungResult] = []
    profile: list[LatencyPoint] = []
    notes: list[str] = []
    build_seconds: float = 0.0
    simulated: bool = False
    """True when no engine was built: a simulated class of the dev fleet ended the build Job
    with this summary, and its profile is the fleet profile's nominal one."""
    emulated: bool = False
    """True when the engine was checked under an emulator (an aarch64 engine cross-built on an
    x86 host and gated under qemu-user): its outputs were compared as any engine's, but its
    profile, if any, is the emulator's speed, not the hardware's."""

    def to_message(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
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


class BuildFailure(_Frozen):
    """What a failed `infleet build` writes to its termination message (and exits 1)."""

    error: str
    """One line (or a few) for people."""
    reason: str = ""
    """The error class, for machines (``ChecksumMismatch``, ``SourceUnreachable``,
    ``ShapeError``...; ``InternalError`` for a bug)."""
    retryable: bool = False
    """Whether trying the same build again may succeed (an unreachable source may come back;
    a checksum mismatch will not): the error class's ``retryable``."""

    def to_message(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """Compact JSON of at most ``limit`` bytes: the error text is cut to fit."""
        text = self.model_dump_json()
        error = self.error
        while len(text.encode()) > limit and error:
            error = error[: max(0, len(error) - (len(text.encode()) - limit) - 3)] + "..."
            text = self.model_copy(update={"error": error}).model_dump_json()
            if len(error) <= 3:
                break
        return text
