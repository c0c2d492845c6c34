"""Errors of the API package.

    InfleetError                 (infleet.errors) root of every infleet error
    ├── SpecError                an InferenceDeployment spec that does not validate
    └── OperatorConfigError      an operator configuration that does not validate
"""

from __future__ import annotations

from infleet.errors import InfleetError


class SpecError(InfleetError):
    """A spec that does not validate; ``problems`` holds one ``path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid InferenceDeployment: " + "; ".join(problems))


class OperatorConfigError(InfleetError):
    """The operator configuration does not validate or cannot be read."""
