"""Errors of the model server; none of them knows about HTTP.

    InfleetError                          (infleet.errors)
    └── RuntimeFailure                    (infleet.runtime.errors)
        └── ServeError                    anything ``infleet serve`` reports
            ├── InvalidInput              the request is wrong: malformed JSON, unknown
            │   │                         input, wrong datatype/shape, bad binary sizes
            │   └── PayloadTooLarge       the request body is above the size cap
            ├── ModelNotFound             no such model (or version) is served
            ├── Unavailable               the server cannot take the request now (retryable)
            │   ├── Overloaded            queue or concurrency limit reached: retry later
            │   └── NotReady              model loading/warming up, or the server draining
            ├── EngineError               the engine failed to load or to run (a real fault)
            └── ConfigError               bad ``infleet serve`` arguments or manifest

A missing backend library or device is ``infleet.runtime.errors.BackendUnavailable``, the same
class a build meets (re-exported here for the server's modules). The transport maps these
classes to status codes in one place (``app.STATUS``, walked along the MRO), so adding a class
never needs a second mapping elsewhere.
"""

from __future__ import annotations

from infleet.runtime.errors import BackendUnavailable, RuntimeFailure

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "EngineError",
    "InvalidInput",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "ServeError",
    "Unavailable",
]


class ServeError(RuntimeFailure):
    """Base class of the server's errors."""


class InvalidInput(ServeError):
    """The client sent something the model cannot take; the message names the problem."""


class PayloadTooLarge(InvalidInput):
    """The request body exceeds the configured cap."""


class ModelNotFound(ServeError):
    """The named model (or version) is not served here."""


class Unavailable(ServeError):
    """Temporarily unable to serve; ``retry_after_s`` tells clients when to come back."""

    retryable = True

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(Unavailable):
    """The bounded queue or the concurrency limit is full."""


class NotReady(Unavailable):
    """The model is still loading or warming up, or the server is draining."""


class EngineError(ServeError):
    """The engine failed; a fault on our side, never the client's."""


class ConfigError(ServeError):
    """Invalid server configuration (arguments or manifest)."""
