"""Errors of the operator.

    InfleetError                 (infleet.errors) root of every infleet error
    └── OperatorError            anything the operator could not do
        └── ApiError             the API server refused a request
            └── ApiUnavailable   ...or could not be reached, timed out, was busy (retryable)

``retryable`` tells the reconcile loop how to go on: either way it retries with a growing
backoff and logs, but a refusal (403, 422) is logged as an error someone must fix (RBAC, a
webhook), a transient failure (timeouts, 5xx, 409, 429) as a warning.
"""

from __future__ import annotations

from infleet.errors import InfleetError


class OperatorError(InfleetError):
    """Base class of the operator's errors."""


class ApiError(OperatorError):
    """A Kubernetes API request was refused; ``status`` is its HTTP status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiUnavailable(ApiError):
    """No answer, or a transient one (5xx, 408, 409, 429): trying again may succeed."""

    retryable = True
