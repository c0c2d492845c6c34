"""Errors of the data plane.

    InfleetError                      (infleet.errors)
    └── RuntimeFailure                anything the data plane reports to a person
        ├── BackendUnavailable        a backend library (or its device) is not on this machine
        ├── BuildError                `infleet build` could not produce an engine
        │   ├── FetchError            the model (or calibration data) could not be fetched
        │   │   ├── SourceUnreachable     connection refused, DNS, HTTP error status, missing
        │   │   │                         file (retryable: the source may come back)
        │   │   ├── SourceTooLarge        the download passed the size cap
        │   │   └── ChecksumMismatch      sha256 differs from the expected digest (both shown)
        │   ├── ModelError            the file is not a usable ONNX model
        │   │   ├── UnsupportedModel      an op or dtype the chosen backend cannot build
        │   │   └── ShapeError            input shapes given to the build do not fit the model,
        │   │                             or a dynamic dimension has no size
        │   ├── UnsupportedHardware   no builder targets the class's hardware
        │   ├── AccuracyGateFailed    no rung of the precision ladder met the accuracy budget
        │   └── StoreError            the engine store could not be read or written (retryable)
        └── ServeError                (infleet.runtime.server.errors) what `infleet serve` reports

``BackendUnavailable`` sits beside both branches because builds and the server meet it alike
(a builder's library, a server image's library or GPU). Third-party exceptions (httpx, onnx,
onnxruntime, tvm, tensorrt) are wrapped with ``from e`` at the adapter that calls them, chosen
by their type, never by their message, so the CLI can print one clear line.
"""

from __future__ import annotations

from infleet.errors import InfleetError


class RuntimeFailure(InfleetError):
    """Base class of data-plane errors."""


class BackendUnavailable(RuntimeFailure):
    """The backend's library is missing, or the machine lacks its device or a capability."""


class EndpointError(RuntimeFailure):
    """An endpoint answered with something other than a v2 inference response
    (``infleet infer``)."""


class BuildError(RuntimeFailure):
    """An engine could not be built."""


class FetchError(BuildError):
    """A model or data file could not be fetched."""


class SourceUnreachable(FetchError):
    """The source did not answer, refused, or does not exist (yet)."""

    retryable = True


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


class ShapeError(ModelError):
    """The build's input shapes do not fit the model, or leave a dynamic dimension open."""


class UnsupportedHardware(BuildError):
    """No builder can target the class's hardware (an arch infleet does not compile for)."""


class AccuracyGateFailed(BuildError):
    """Every rung of the precision ladder broke the accuracy budget."""


class StoreError(BuildError):
    """The engine store could not be read or written.

    Retryable: storage faults (a volume still attaching, a full or flaky disk) are outside the
    spec, and a repeated build finds what the first one committed.
    """

    retryable = True
