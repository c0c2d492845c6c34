"""What the autoscaler remembers between ticks, and its JSON form (a restarted operator
resumes from the status the last one wrote)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infleet.scheduler.errors import AutoscaleStateError

STATE_VERSION = 1

Series = tuple[tuple[float, float], ...]
"""(time, value) samples, oldest first."""


@dataclass(frozen=True, slots=True)
class ClassMemory:
    """What the autoscaler remembers of a class between ticks."""

    correction: float = 1.0
    """Factor on the profile's capacity, learnt from observation."""
    queue_depth: float = 0.0
    """The queue at the last tick (to see it grow)."""


@dataclass(frozen=True, slots=True)
class AutoscaleState:
    """Everything that must survive between ticks; :meth:`to_json` / :meth:`from_json`."""

    demand: Series = ()
    """(time, rps) samples within the stable window."""
    targets: Series = ()
    """(time, target rps) within the stabilization window; only those that some later one
    does not exceed (their maximum is the first, so the window's maximum is kept exactly)."""
    classes: Mapping[str, ClassMemory] = field(default_factory=lambda: MappingProxyType({}))
    last_scale_up: float | None = None
    last_scale_down: float | None = None

    def to_json(self) -> str:
        return _StateWire(
            version=STATE_VERSION,
            demand=[list(p) for p in self.demand],
            targets=[list(p) for p in self.targets],
            classes={k: _ClassWire(correction=v.correction, queue_depth=v.queue_depth)
                     for k, v in self.classes.items()},
            last_scale_up=self.last_scale_up,
            last_scale_down=self.last_scale_down,
        ).model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> AutoscaleState:
        """The state :meth:`to_json` wrote; :class:`AutoscaleStateError` names what is wrong."""
        try:
            wire = _StateWire.model_validate_json(text)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"]) or "state"
            raise AutoscaleStateError(f"autoscaler state: {loc}: {first['msg']}") from e
        if wire.version != STATE_VERSION:
            raise AutoscaleStateError(
                f"autoscaler state version {wire.version}; this operator reads {STATE_VERSION}"
            )
        return cls(
            demand=tuple((p[0], p[1]) for p in wire.demand),
            targets=tuple((p[0], p[1]) for p in wire.targets),
            classes=MappingProxyType(
                {k: ClassMemory(v.correction, v.queue_depth) for k, v in wire.classes.items()}
            ),
            last_scale_up=wire.last_scale_up,
            last_scale_down=wire.last_scale_down,
        )


def window(samples: Series, now: float, span: float) -> Series:
    """The samples of the last ``span`` seconds (none from the future)."""
    return tuple(p for p in samples if now - p[0] < span and p[0] <= now)


def push_max(samples: Series, now: float, value: float, span: float) -> Series:
    """A sliding-window maximum: drop the expired and those ``value`` outranks."""
    kept = [p for p in window(samples, now, span) if p[1] > value]
    kept.append((now, value))
    return tuple(kept)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Pair = Annotated[list[_Finite], Field(min_length=2, max_length=2)]


class _ClassWire(_Wire):
    correction: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    queue_depth: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class _StateWire(_Wire):
    version: int
    demand: Annotated[list[_Pair], Field(max_length=100_000)] = []
    targets: Annotated[list[_Pair], Field(max_length=100_000)] = []
    classes: dict[str, _ClassWire] = {}
    last_scale_up: _Finite | None = None
    last_scale_down: _Finite | None = None
