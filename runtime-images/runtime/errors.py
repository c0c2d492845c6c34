"""Errors of the data plane.

    InfleetError                      (infleet.errors)
    └── RuntimeFailure                anything the data plane reports to a person
        (the builder and server modules add their branches here)
"""

from __future__ import annotations

from infleet.errors import InfleetError


class RuntimeFailure(InfleetError):
    """Base class of data-plane errors."""
