"""Turns raw objects into validated specs, with messages that name the offending field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from infleet.api.errors import SpecError
from infleet.api.spec import InferenceDeploymentSpec


def _path(loc: tuple[int | str, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def describe(error: ValidationError, prefix: str = "spec") -> list[str]:
    """One ``spec.a.b: message`` line per problem, in the wire's camelCase names."""
    lines = []
    for err in error.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{_path(err['loc'], prefix)}: {msg}")
    return lines


def parse_spec(raw: Mapping[str, Any]) -> InferenceDeploymentSpec:
    """Validate ``raw`` (the object's ``spec``), raising :class:`SpecError` when invalid."""
    try:
        return InferenceDeploymentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(describe(e)) from e
