"""Errors of the operator.

    InfleetError                 (infleet.errors) root of every infleet error
    └── OperatorError            anything the operator could not do
        └── ApiError             the API server refused a request or could not be reached

``retryable`` tells the handlers what kopf should do: a retryable failure (a timeout, a 5xx,
a conflict) becomes ``kopf.TemporaryError`` and is retried with a backoff; anything else is
reported in the status and an Event, and waits for a change instead of looping.
"""

from __future__ import annotations

from infleet.errors import InfleetError


class OperatorError(InfleetError):
    """Base class of the operator's errors."""


class ApiError(OperatorError):
    """A Kubernetes API request failed; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
