"""Errors of the data plane.

    InfleetError                      (infleet.errors)
    └── RuntimeFailure                anything the data plane reports to a person
        └── BuildError                `infleet build` could not produce an engine
            ├── FetchError            the model (or calibration data) could not be fetched
            │   ├── SourceUnreachable     connection refused, DNS, HTTP error status, missing file
            │   ├── SourceTooLarge        the download passed the size cap
            │   └── ChecksumMismatch      sha256 differs from the expected digest (both shown)
            ├── ModelError            the file is not a usable ONNX model
            │   └── UnsupportedModel      an op or dtype the chosen backend cannot build
            ├── BackendUnavailable    the backend library is not installed or lacks a capability
            ├── AccuracyGateFailed    no rung of the precision ladder met the accuracy budget
            └── StoreError            the engine store could not be read or written
        (the server modules add their branches here)

Third-party exceptions (httpx, onnx, onnxruntime, tvm, tensorrt) are wrapped with
``from e`` at the adapter that calls them, so the CLI can print one clear line.
"""

from __future__ import annotations

from infleet.errors import InfleetError


class RuntimeFailure(InfleetError):
    """Base class of data-plane errors."""


class BuildError(RuntimeFailure):
    """An engine could not be built."""


class FetchError(BuildError):
    """A model or data file could not be fetched."""


class SourceUnreachable(FetchError):
    """The source did not answer, refused, or does not exist."""


class SourceTooLarge(FetchError):
    """The source is larger than the configured cap."""


class ChecksumMismatch(FetchError):
    """The fetched bytes do not have the expected sha256."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch for {uri}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class ModelError(BuildError):
    """The model file is not a valid ONNX model, or cannot be prepared."""


class UnsupportedModel(ModelError):
    """The backend cannot build this model (unsupported op, dtype or shape)."""


class BackendUnavailable(BuildError):
    """The backend's library is missing, or the hardware lacks a needed capability."""


class AccuracyGateFailed(BuildError):
    """Every rung of the precision ladder broke the accuracy budget."""


class StoreError(BuildError):
    """The engine store could not be read or written."""
